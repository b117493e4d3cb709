"""The merge workflows as a user runs them, on specialists really trained by ``train.py``.

One tiny training sweep (``train.py -m experiment=tiny data.family=fs,fr,joint`` with the Hydra
merge callback and W&B offline) is shared by every test here. Checked: the automatic merge and its
W&B runs, ``merge.py`` without ``data=`` evaluating on the specialists' own (DF40-layout fixture)
data with the joint model set aside, a ``merge.py -m`` sweep with ``eval.specialists=true`` and the
joint model (the SweepSummary table holds shared models once; one W&B run per job plus one sweep
table run), a mismatched ``data.val_fraction`` refused before any merge, and failing automatic
merges (Hydra and Lightning callbacks) exiting non-zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_helpers import run_script
from r2m.checkpoints import read_metadata
from wandb_reader import read_runs

OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
TINY = ["experiment=tiny", "trainer.max_epochs=1", "test_after_fit=false"]
METRIC_PREFIXES = ("val/", "test/")


def _out(proc) -> str:
    return proc.stdout[-4000:] + proc.stderr[-4000:]


def _metric_keys(run) -> set[str]:
    return {k for k in run.history_keys if k.startswith(METRIC_PREFIXES)}


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    sweep = root / "sweep"
    proc = run_script("train.py", [
        "-m", *TINY, "data.family=fs,fr,joint", f"paths.root_dir={root}", f"hydra.sweep.dir={sweep}",
        "logger=wandb", "+hydra.callbacks.merge._target_=r2m.callbacks.hydra.MergeOnMultirunEnd",
        "+hydra.callbacks.merge.methods=[r2m,average]",
    ], cwd=root, timeout=900, env=OFFLINE)
    assert proc.returncode == 0, _out(proc)
    return {"root": root, "sweep": sweep}


def test_training_sweep_merge_callback_and_its_wandb_runs(trained):
    sweep = trained["sweep"]
    merge = sweep / "merge"
    summary = json.loads((merge / "summary.json").read_text())
    assert summary["status"] == "complete" and not (merge / "FAILED").exists()
    assert sorted(s["task"] for s in summary["specialists"]) == ["fr", "fs"]  # the joint model is not merged
    assert summary["joint"] is not None and summary["data"]["source"] == "specialists"
    # the validation set merges are chosen on was recomputed and checked against every file's carve
    assert summary["data"]["carve"]["status"] == "checked"
    assert len(summary["data"]["carve"]["files"]) == 3
    rows = {r["model"] for r in json.loads((merge / "comparison.json").read_text())["rows"]}
    assert rows == {"specialist:fr", "specialist:fs", "joint", "r2m", "average"}
    runs = [r for r in read_runs(merge) if r.job_type == "merge"]
    assert sorted(r.name for r in runs) == ["average", "r2m"]
    assert all(r.exit_code == 0 for r in runs)
    assert {r.config["merge/method"] for r in runs} == {"r2m", "average"}
    assert all(sorted(r.config["specialists/tasks"]) == ["fr", "fs"] for r in runs)
    assert all(len(sha) == 64 for r in runs for sha in r.config["specialists/sha256"].values())
    keys = [_metric_keys(r) for r in runs]
    assert keys[0] == keys[1] and {"val/auc", "test/overall/auc", "test/in_distribution/eer"} <= keys[0]
    assert not any("specialist" in k or "r2m" in k for k in keys[0])  # no model names in metric keys
    assert all("merge/comparison/_type" in r.history_keys and "merge/roc_overall/_type" in r.history_keys
               for r in runs)
    assert [r.job_type for r in read_runs(merge)].count("merge-summary") == 1
    # the merge runs share the group of the training runs of the same sweep
    training = [r for r in read_runs(sweep) if r.job_type == "train"]
    assert len(training) == 3 and {r.group for r in training} == {r.group for r in runs} != {""}


def test_merge_py_without_data_uses_the_specialists_data_and_sets_the_joint_aside(trained, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("merge.py", [f"specialists={trained['sweep']}", f"paths.root_dir={trained['root']}",
                                   f"hydra.run.dir={run_dir}", "device=cpu", "diagnostics=false"],
                      cwd=trained["root"])
    assert proc.returncode == 0, _out(proc)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"] == {**summary["data"], "source": "specialists",
                               "target": "data_modules.fixtures.fixture_datamodule", "family": "joint"}
    assert [s["path"] for s in summary["skipped"]] == [summary["joint"]["path"]]
    table = json.loads((run_dir / "results.json").read_text())
    test_sets = {r["test_set"] for r in table["rows"] if r["kind"] == "set"}
    assert "FSAll_ff" in test_sets and not any("photo" in t for t in test_sets)  # not the built-in benchmark
    assert {r["model"] for r in table["rows"]} == {"joint", "r2m"}


def test_merge_py_sweep_with_specialists_and_joint_one_wandb_run_per_job(trained, tmp_path):
    sweep_dir = tmp_path / "msweep"
    joint = next(p for p in trained["sweep"].glob("*/specialist.safetensors")
                 if read_metadata(p).get("families", [None, None])[1:])  # several families
    proc = run_script("merge.py", ["-m", "merge=r2m", "merge.alpha=0.4,0.8", "eval.specialists=true",
                                   f"eval.joint={joint}",
                                   f"specialists={trained['sweep']}", f"paths.root_dir={trained['root']}",
                                   f"hydra.sweep.dir={sweep_dir}", "device=cpu", "diagnostics=false",
                                   "save_merged=false", "logger=wandb", "logger.wandb.group=grid"],
                      cwd=trained["root"], env=OFFLINE)
    assert proc.returncode == 0, _out(proc)
    rows = json.loads((sweep_dir / "sweep_comparison.json").read_text())["rows"]
    names = [r["model"] for r in rows]
    assert sorted(names) == sorted(["specialist:fr", "specialist:fs", "joint", "r2m[alpha=0.4]", "r2m[alpha=0.8]"])
    best = json.loads((sweep_dir / "best.json").read_text())
    vals = {r["model"]: r["val_auc"] for r in rows if r["group"] == "merge"}
    assert best["name"] in vals and best["val_auc"] == max(vals.values())
    runs = read_runs(sweep_dir)
    merges = [r for r in runs if r.job_type == "merge"]
    assert sorted(r.name for r in merges) == ["r2m[alpha=0.4]", "r2m[alpha=0.8]"]
    assert {r.group for r in runs} == {"grid"}
    assert sorted(r.config["merge/alpha"] for r in merges) == [0.4, 0.8]
    assert _metric_keys(merges[0]) == _metric_keys(merges[1])
    assert [r.job_type for r in runs].count("merge-summary") == 1


def test_mismatched_val_fraction_is_refused_before_any_merge(trained, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("merge.py", [f"specialists={trained['sweep']}", f"paths.root_dir={trained['root']}",
                                   f"hydra.run.dir={run_dir}", "device=cpu", "+data.val_fraction=0.5"],
                      cwd=trained["root"])
    assert proc.returncode != 0
    assert "val_fraction" in _out(proc) and "0.5" in _out(proc)
    assert not (run_dir / "merged").exists() and not (run_dir / "summary.json").exists()


def test_failing_automatic_merges_exit_non_zero(tmp_path):
    # Hydra callback: a one-family sweep has a single specialist → no merge possible
    proc = run_script("train.py", [
        "-m", *TINY, "data.family=fs", f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "logger=none", "+hydra.callbacks.merge._target_=r2m.callbacks.hydra.MergeOnMultirunEnd",
        "+hydra.callbacks.merge.methods=[r2m]",
    ], cwd=tmp_path, timeout=900)
    assert proc.returncode != 0, _out(proc)
    assert "needs at least two specialists" in _out(proc) and "MergeOnMultirunEnd" in _out(proc)
    # Lightning callback: train.py tasks=[fs] callbacks=merge
    run_dir = tmp_path / "run"
    proc = run_script("train.py", [*TINY, "tasks=[fs]", "callbacks=merge", f"paths.root_dir={tmp_path}",
                                   f"hydra.run.dir={run_dir}", "logger=none", "callbacks.merge.diagnostics=false"],
                      cwd=tmp_path, timeout=900)
    assert proc.returncode != 0, _out(proc)
    assert "needs at least two specialists" in _out(proc)


def test_lightning_merge_callback_one_wandb_run_per_job_in_the_training_group(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("train.py", [*TINY, "tasks=[fs,fr]", "callbacks=merge", f"paths.root_dir={tmp_path}",
                                   f"hydra.run.dir={run_dir}", "logger=wandb", "logger.wandb.group=lightning",
                                   "callbacks.merge.methods=[r2m,average]", "callbacks.merge.diagnostics=false",
                                   "callbacks.merge.eval_specialists=false"], cwd=tmp_path, timeout=900, env=OFFLINE)
    assert proc.returncode == 0, _out(proc)
    assert json.loads((run_dir / "merge" / "summary.json").read_text())["status"] == "complete"
    runs = read_runs(run_dir)
    merges = [r for r in runs if r.job_type == "merge"]
    assert sorted(r.name for r in merges) == ["average", "r2m"]
    assert sorted(r.name for r in runs if r.job_type == "train") == ["fr", "fs"]  # merges do not log into them
    assert {r.group for r in runs} == {"lightning"}
    assert _metric_keys(merges[0]) == _metric_keys(merges[1]) and "val/auc" in _metric_keys(merges[0])
