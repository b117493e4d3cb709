"""DDP evaluation numbers are exact: 2 CPU processes (Lightning ddp, gloo) give the single-process
validation and test metrics, every frame counted once (odd-sized sets, no padded duplicates)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_eval_script.py")


def _run(root, out, devices):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(root), str(out), str(devices)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(Path(out).read_text())


def test_ddp_eval_equals_single_process(tmp_path):
    from data_modules.fixtures import ensure_fixture

    root = tmp_path / "fx"
    ensure_fixture(root, n_videos=5, frames_per_video=3, image_size=32)  # written once, read by both runs
    one = _run(root, tmp_path / "one.json", 1)
    two = _run(root, tmp_path / "two.json", 2)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert set(two["samplers"]) == {"UnrepeatedDistributedSampler"}  # the Trainer kept ours
    assert one["table_frames"]["FSAll_ff"] % 2 == 1  # an odd set: a padding sampler would repeat a frame
    for name, n in two["table_frames"].items():
        assert two["n_frames"][name] == one["n_frames"][name] == n
        assert two["n_videos"][name] == one["n_videos"][name]
        for key, value in one["per_set"][name].items():
            assert two["per_set"][name][key] == pytest.approx(value, abs=1e-6), (name, key)
    # val/loss is left out: DeepfakeDetector averages per-batch mean losses (MeanMetric without a
    # batch-size weight), so it depends on how frames fall into batches, in one process too
    assert {"val/auc", "val/acc"} <= set(one["val"])
    for key in ("val/auc", "val/acc"):
        assert two["val"][key] == pytest.approx(one["val"][key], abs=1e-6), key
