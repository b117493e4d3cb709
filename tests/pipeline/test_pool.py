"""The specialist pool: kinds from metadata, and every bad specialist set → its own clear error."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from pipeline_helpers import make_specialists
from r2m.checkpoints import file_kind, file_sha256, load_checkpoint, read_metadata, save_merged, save_specialist
from r2m.merging.jobs import jobs_from_entries
from r2m.pipeline import MergeRequest, run_merge
from r2m.pool import SpecialistPool


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A training-sweep-like folder: three specialists, a joint model (metadata families) and a
    merged file, each in its own job folder."""
    root = tmp_path_factory.mktemp("sweep")
    paths = make_specialists(root, tasks=("fs", "fr", "efs"))
    ck = load_checkpoint(paths["fs"])
    meta = {**ck.meta, "task": "all", "families": ["fs", "fr", "efs"]}
    backbone = {k: v * 1.001 for k, v in ck.backbone.items()}
    save_specialist(root / "joint_job" / "specialist.safetensors", backbone, ck.head, meta)
    merged_meta = {k: v for k, v in ck.meta.items() if k != "format"}
    save_merged(root / "merge" / "merged" / "r2m" / "merged.safetensors", ck.backbone, ck.head,
                {**merged_meta, "kind": "merged"})
    return root


def _spec(root: Path, task: str) -> Path:
    return root / task / "specialist.safetensors"


def test_kinds_from_metadata(sweep):
    assert file_kind(read_metadata(_spec(sweep, "fs"))) == "specialist"
    assert file_kind(read_metadata(sweep / "joint_job" / "specialist.safetensors")) == "joint"
    assert file_kind(read_metadata(sweep / "merge" / "merged" / "r2m" / "merged.safetensors")) == "merged"
    # files written before `families`: the old keys decide (task / config.data.family)
    assert file_kind({"format": "r2m-specialist/1", "task": "joint"}) == "joint"
    assert file_kind({"format": "r2m-specialist/1", "task": "x", "config": {"data": {"family": "joint"}}}) == "joint"
    assert file_kind({"format": "r2m-specialist/1", "task": "fs", "config": {"data": {"family": "fs"}}}) == "specialist"
    assert file_kind({"format": "r2m-specialist/1", "families": ["a", "b"]}) == "joint"
    assert file_kind({"format": "r2m-base/1"}) == "base"


def test_folder_takes_specialists_only_and_logs_what_it_skipped(sweep, caplog):
    with caplog.at_level(logging.INFO, logger="r2m.pool"):
        pool = SpecialistPool.collect(str(sweep))
    assert pool.names == ["efs", "fr", "fs"]
    assert pool.joint is not None and pool.joint.path == (sweep / "joint_job" / "specialist.safetensors").resolve()
    assert [str(p) for p, _ in pool.skipped] == [str(sweep / "joint_job" / "specialist.safetensors")]
    assert "joint model" in caplog.text and "skipped" in caplog.text
    assert all(len(e.sha256) == 64 and e.sha256 == file_sha256(e.path) for e in pool.entries)
    # a glob too
    assert SpecialistPool.collect(str(sweep / "f*")).names == ["fr", "fs"]


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("missing", ValueError, "no specialists given"),
        ("empty_list", ValueError, "no specialists given"),
        ("empty_string", ValueError, "empty specialist source"),
        ("not_found", FileNotFoundError, "nothing-here"),
        ("same_path_twice", ValueError, "given twice"),
        ("same_content", ValueError, "identical content"),
        ("add_already_in", ValueError, r"\+add=.*already in the specialist set"),
        ("add_merged", ValueError, r"\+add=.*merged model, not a specialist"),
        ("add_joint", ValueError, r"\+add=.*joint model, not a specialist"),
        ("explicit_joint", ValueError, "joint model .* not a specialist"),
        ("one_specialist", ValueError, "needs at least two specialists"),
        ("only_joint_in_folder", ValueError, "needs at least two specialists"),
    ],
)
def test_bad_specialist_sets_are_clear_errors_before_any_merge(sweep, tmp_path, case, error, match):
    fs, fr = _spec(sweep, "fs"), _spec(sweep, "fr")
    joint = sweep / "joint_job" / "specialist.safetensors"
    merged = sweep / "merge" / "merged" / "r2m" / "merged.safetensors"
    add = None
    if case == "missing":
        sources = None
    elif case == "empty_list":
        sources = []
    elif case == "empty_string":
        sources = ""
    elif case == "not_found":
        sources = [str(tmp_path / "nothing-here")]
    elif case == "same_path_twice":
        sources = [str(fs), str(fr), str(fs)]
    elif case == "same_content":
        copy = tmp_path / "copy" / "specialist.safetensors"
        copy.parent.mkdir()
        shutil.copyfile(fs, copy)
        sources = [str(fs), str(fr), str(copy)]
    elif case == "add_already_in":
        sources, add = str(sweep), [str(fs)]
    elif case == "add_merged":
        sources, add = [str(fs), str(fr)], [str(merged)]
    elif case == "add_joint":
        sources, add = [str(fs), str(fr)], [str(joint)]
    elif case == "explicit_joint":
        sources = [str(fs), str(fr), str(joint)]
    elif case == "one_specialist":
        sources = [str(fs)]
    else:  # a one-family training sweep: data.family=fs,joint
        only = tmp_path / "one_family"
        for name, src in (("0", fs), ("1", joint)):
            (only / name).mkdir(parents=True)
            shutil.copyfile(src, only / name / "specialist.safetensors")
        sources = str(only)
    out = tmp_path / "out"
    request = MergeRequest(specialists=sources, add=add, base_dirs=[sweep / "base"], device="cpu",
                           validate=False, test=False, progress=False)
    with pytest.raises(error, match=match) as err:
        run_merge(request, jobs_from_entries(["r2m", "average"]), out_dir=out)
    if case in ("same_path_twice", "same_content", "add_already_in", "add_merged", "explicit_joint"):
        assert str(sources[-1] if add is None else add[0]).split("/")[-2] in str(err.value)  # names the file
    assert not out.exists()  # nothing written


def test_duplicate_task_names_get_their_folder(sweep, tmp_path):
    other = tmp_path / "again" / "specialist.safetensors"
    ck = load_checkpoint(_spec(sweep, "fs"))
    save_specialist(other, {k: v + 0.01 for k, v in ck.backbone.items()}, ck.head, dict(ck.meta))
    pool = SpecialistPool.collect([str(_spec(sweep, "fs")), str(other)])
    assert sorted(pool.names) == ["fs@again", "fs@fs"]


@pytest.mark.parametrize(("override", "match"), [("specialists=[]", "specialists=\\[\\] is empty"),
                                                 ("specialists=", "empty specialist source")])
def test_merge_config_with_empty_specialists_is_a_clear_error(tmp_path, override, match):
    """What `python merge.py specialists=` / `specialists=[]` compose to (real Hydra compose)."""
    from hydra import compose, initialize_config_dir

    from pipeline_helpers import REPO
    from r2m.pipeline import request_from_config

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs")):
        cfg = compose("merge", overrides=[override, f"paths.root_dir={tmp_path}"])
    cfg.paths.output_dir = str(tmp_path / "out")
    with pytest.raises(ValueError, match=match):
        run_merge(request_from_config(cfg), jobs_from_entries(["r2m"]), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failure_mid_run_marks_the_output_failed_and_finishes_its_wandb_run(sweep, tmp_path, monkeypatch):
    import json

    from wandb_reader import read_runs

    from r2m import pipeline
    from r2m.report import WandbSettings

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = []

    def broken_write(out_dir, pool, job, backbone, head):
        calls.append(job.name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return None

    monkeypatch.setattr(pipeline, "_write_merged", broken_write)
    out = tmp_path / "out"
    request = MergeRequest(specialists=[str(_spec(sweep, "fs")), str(_spec(sweep, "fr"))], base_dirs=[sweep / "base"],
                           device="cpu", validate=False, test=False, progress=False, diagnostics=False,
                           wandb=WandbSettings(dir=str(tmp_path / "wb"), group="g"))
    with pytest.raises(OSError, match="disk full"):
        run_merge(request, jobs_from_entries(["average", "task_arithmetic"]), out_dir=out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "disk full" in summary["error"]
    assert "disk full" in (out / "FAILED").read_text()
    assert [j["status"] for j in summary["jobs"]] == ["complete", "failed"]
    runs = read_runs(tmp_path / "wb")
    assert sorted((r.name, r.job_type, r.group, r.exit_code) for r in runs) == [
        ("average", "merge", "g", 0), ("task_arithmetic", "merge", "g", 1)]
