"""DDP sync: 2 processes (gloo), each updating with its shard; compute() equals the union."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from r2m.evaluation import DetectionMetrics, SplitEvaluator, compute_metrics

WORLD = 2
N = 300


def _data():
    rng = np.random.default_rng(123)
    vids = rng.integers(0, 40, N)
    labels = vids % 2  # a video's frames share its label
    probs = np.clip(rng.normal(0.45 + 0.1 * labels, 0.2), 0, 1).astype(np.float32)
    probs[:30] = np.round(probs[:30], 1)  # some ties
    return probs, labels, vids


def _shards(rank: int):
    """Uneven shards: rank 0 gets frames [0, 110), rank 1 gets [110, N)."""
    lo, hi = (0, 110) if rank == 0 else (110, N)
    return slice(lo, hi)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        probs, labels, vids = _data()
        sl = _shards(rank)
        p, y, v = (torch.from_numpy(a[sl]) for a in (probs, labels, vids))

        # 1) one metric, uneven shards, several updates per rank
        metric = DetectionMetrics()
        for i in range(0, len(p), 16):
            metric.update(p[i:i + 16], y[i:i + 16], v[i:i + 16])
        metrics = metric.compute()
        fpr, tpr = metric.roc()
        local_after = metric.n_frames_local  # states must be restored after the sync

        # 2) a metric that only rank 0 feeds (rank 1 has empty states of all dtypes)
        lonely = DetectionMetrics()
        if rank == 0:
            lonely.update(torch.from_numpy(probs), torch.from_numpy(labels), torch.from_numpy(vids))
        lonely_metrics = lonely.compute_full().metrics

        # 3) SplitEvaluator over two sets, both sharded
        ev = SplitEvaluator(["s0", "s.1"], {"in_distribution": ["s0"], "unseen": ["s.1"]})
        ev.update(0, p, y, v)
        ev.update(1, 1.0 - p, y)  # second set without video ids
        res = ev.compute()

        payload = {"metrics": metrics, "fpr": fpr.tolist(), "tpr": tpr.tolist(),
                   "local_after": local_after, "lonely": lonely_metrics,
                   "per_set": res.per_set, "per_split": res.per_split, "n_frames": res.n_frames}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(payload))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_sync_equals_union(tmp_path):
    port = _free_port()
    ctx = mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise AssertionError("DDP workers did not finish in time")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                os.kill(proc.pid, 9)

    probs, labels, vids = _data()
    union = compute_metrics(probs, labels, vids)
    union_plain = compute_metrics(1.0 - probs.astype(np.float64), labels)
    single = DetectionMetrics()
    single.update(torch.from_numpy(probs), torch.from_numpy(labels))
    s_fpr, s_tpr = single.roc()
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["metrics"] == union, rank
        assert got["lonely"] == union, rank
        assert got["fpr"] == s_fpr.tolist() and got["tpr"] == s_tpr.tolist()
        assert got["local_after"] == len(range(N)[_shards(rank)])
        assert got["per_set"]["s0"] == union
        assert got["per_set"]["s.1"] == pytest.approx(union_plain, abs=1e-12)
        assert got["n_frames"] == {"s0": N, "s.1": N}
        assert got["per_split"]["overall"]["auc"] == pytest.approx(
            (union["auc"] + union_plain["auc"]) / 2, abs=1e-12)
