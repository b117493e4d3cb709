"""Multi-seed aggregation of the built-in benchmark: the pure statistics, reading the merge step's
result tables, and a real two-seed Hydra multirun (`train.py -m seed=0,1`) at a tiny size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r2m.evaluation.aggregate import aggregate, aggregate_markdown, read_split_means

REPO = Path(__file__).resolve().parents[2]


def _runs():
    # two seeds; "tsv" beats r2m in both, "average" loses once and wins once
    return {
        "0": {("r2m", "overall"): {"auc": 0.70, "eer": 0.35}, ("tsv", "overall"): {"auc": 0.75, "eer": 0.30},
              ("average", "overall"): {"auc": 0.68, "eer": 0.36}},
        "1": {("r2m", "overall"): {"auc": 0.80, "eer": 0.25}, ("tsv", "overall"): {"auc": 0.81, "eer": 0.25},
              ("average", "overall"): {"auc": 0.83, "eer": 0.20}},
    }


def test_aggregate_mean_sd_and_paired_sign_counts():
    agg = aggregate(_runs(), reference="r2m")
    stat = {(r["model"], r["metric"]): r for r in agg["stats"]}
    assert stat[("r2m", "auc")]["mean"] == pytest.approx(0.75)
    assert stat[("r2m", "auc")]["sd"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))  # sample sd (n − 1)
    pair = {(r["model"], r["metric"]): r for r in agg["paired"]}
    tsv, avg = pair[("tsv", "auc")], pair[("average", "auc")]
    assert tsv["diffs"] == pytest.approx([0.05, 0.01]) and tsv["better"] == 2 and tsv["n"] == 2
    assert tsv["mean_diff"] == pytest.approx(0.03) and tsv["consistent"]
    assert avg["better"] == 1 and not avg["consistent"]
    # EER: lower is better; tsv ties r2m in run 1
    assert pair[("tsv", "eer")]["better"] == 1 and pair[("tsv", "eer")]["ties"] == 1
    assert ("r2m", "auc") not in pair
    md = aggregate_markdown(agg, "auc")
    assert "0.750 ± 0.071" in md and "+0.030 ± 0.028 (2/2) *" in md and "(1/2)" in md
    json.dumps(agg)


def test_aggregate_errors():
    with pytest.raises(ValueError, match="no runs"):
        aggregate({})
    runs = _runs()
    del runs["1"][("r2m", "overall")]
    with pytest.raises(ValueError, match="reference model 'r2m'"):
        aggregate(runs)


def test_read_split_means_from_a_results_table(tmp_path):
    from r2m.evaluation import ResultsTable
    from r2m.evaluation.splits import EvalResult

    table = ResultsTable()
    splits = {"in_distribution": ["a", "b"], "unseen": ["c"]}
    for model, auc in (("r2m", 0.6), ("average", 0.7)):
        result = EvalResult.from_per_set({n: {"auc": auc + 0.01 * i, "eer": 0.3} for i, n in enumerate("abc")}, splits)
        table.add(model, result)
    table.write(tmp_path)
    means = read_split_means(tmp_path / "results.json")
    assert means[("r2m", "in_distribution")]["auc"] == pytest.approx(0.605)
    assert means[("average", "unseen")]["auc"] == pytest.approx(0.72)
    assert ("r2m", "overall") in means


def test_two_seed_multirun_writes_the_aggregate(tmp_path):
    """`python train.py -m seed=0,1` → <sweep dir>/aggregate.{md,json} from the jobs' merge tables."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([
        sys.executable, str(REPO / "train.py"), "-m", "seed=0,1", f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}", "extras.print_config=false", "tasks=[blend,warp]",
        "callbacks.merge.methods=[r2m,average]", "callbacks.merge.diagnostics=false", "callbacks.merge.save_merged=false",
        "data.n_train=64", "data.n_test=16", "data.n_pretrain=32", "data.batch_size=16", "data.families_unseen=[fingerprint]",
        "trainer.max_epochs=1", "pretrain.epochs=1", "logger=none",
    ], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    agg = json.loads((sweep / "aggregate.json").read_text())
    assert agg["runs"] == ["0", "1"] and agg["run_labels"] == {"0": "seed=0", "1": "seed=1"}
    assert {"r2m", "average", "specialist:blend", "specialist:warp"} <= set(agg["models"])
    stat = {(r["model"], r["split"], r["metric"]): r for r in agg["stats"]}
    for split in ("in_distribution", "cross_dataset", "unseen", "overall"):
        row = stat[("average", split, "auc")]
        assert row["n"] == 2 and math.isfinite(row["mean"]) and math.isfinite(row["sd"])
        # the values are the jobs' own tables
        for job, value in zip(("0", "1"), row["values"]):
            assert value == pytest.approx(read_split_means(sweep / job / "merge" / "results.json")[("average", split)]["auc"])
    pair = [r for r in agg["paired"] if r["model"] == "average" and r["metric"] == "auc"]
    assert pair and all(0 <= r["better"] <= r["n"] == 2 for r in pair)
    md = (sweep / "aggregate.md").read_text()
    assert "mean ± sd" in md and "beats r2m in k of n runs" in md
    # θ0 is the same for both fine-tuning seeds (one cached base file)
    assert len(list((tmp_path / ".cache" / "pretrained").glob("pretrained-*.safetensors"))) == 1
