"""merge.py / r2m.pipeline end to end on tiny specialists and the generated DF40-format fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline_helpers import make_specialists, run_script
from r2m.checkpoints import load_checkpoint, read_metadata, save_specialist
from r2m.merging import LazySafetensors, merge, merge_heads
from r2m.merging.jobs import jobs_from_entries
from r2m.pipeline import MergeRequest, run_merge, run_merge_outcome


@pytest.fixture(scope="module")
def specialists(tmp_path_factory) -> dict[str, Path]:
    return make_specialists(tmp_path_factory.mktemp("specialists"))


@pytest.fixture(scope="module")
def fixture_dm(tmp_path_factory):
    from data_modules.fixtures import fixture_datamodule

    return fixture_datamodule(str(tmp_path_factory.mktemp("fixture") / "df40"), family="joint", image_size=32,
                              num_workers=0, augment=False)


def _merged_reference(paths, method, **hp):
    base_path = next((paths[0].parent.parent / "base").glob("base-*.safetensors"))
    base = LazySafetensors(str(base_path), prefix="backbone.")
    backbones = [LazySafetensors(str(p), prefix="backbone.") for p in paths]
    heads = [{k: LazySafetensors(str(p), prefix="head.")[k] for k in ("weight", "bias")} for p in paths]
    return merge(method, base, backbones, device="cpu", **hp), merge_heads(heads)


def _request(paths, tmp_path, **kw):
    base_dir = Path(paths[0]).parent.parent / "base"
    kw.setdefault("base_dirs", [base_dir])
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("validate", False)
    kw.setdefault("test", False)
    return MergeRequest(specialists=[str(p) for p in paths], **kw)


def test_jobs_validate_methods_and_hparams():
    jobs = jobs_from_entries(["r2m", {"method": "r2m", "center": True}, {"name": "ta", "method": "task_arithmetic", "lam": 0.5}])
    assert [j.name for j in jobs] == ["r2m", "r2m[center=true]", "ta"]
    with pytest.raises(ValueError, match="unknown merge method"):
        jobs_from_entries(["nope"])
    with pytest.raises(ValueError, match="rank_rato"):
        jobs_from_entries([{"method": "r2m", "rank_rato": 0.1}])
    with pytest.raises(ValueError, match="duplicate"):
        jobs_from_entries(["average", "average"])


def test_pipeline_merges_evaluates_and_writes(specialists, fixture_dm, tmp_path):
    paths = [specialists[t] for t in ("efs", "fr", "fs")]
    out = tmp_path / "out"
    request = _request(paths, tmp_path, cache_dir=tmp_path / "cache", datamodule=fixture_dm, validate=True,
                       test=True, eval_specialists=True, check_carve=False)
    outcome = run_merge_outcome(request, jobs_from_entries(["r2m", "average"]), out_dir=out)
    written = outcome.written
    evals = outcome.report.evals
    names = [e.name for e in evals]
    assert names == ["specialist:efs", "specialist:fr", "specialist:fs", "r2m", "average"]
    assert outcome.val_aucs == {e.name: e.val_auc for e in evals if e.group == "merge"}
    for ev in evals:
        assert ev.val_auc is not None and 0.0 <= ev.val_auc <= 1.0
        assert set(ev.result.per_split) >= {"in_distribution", "cross_dataset", "unseen", "overall"}
    # merged file = the library's merge + averaged head, bit for bit
    ref_backbone, ref_head = _merged_reference(paths, "r2m")
    ck = load_checkpoint(out / "merged" / "r2m" / "merged.safetensors")
    assert set(ck.backbone) == set(ref_backbone)
    assert all(torch.equal(ck.backbone[k], ref_backbone[k]) for k in ref_backbone)
    assert all(torch.equal(ck.head[k], ref_head[k]) for k in ref_head)
    assert ck.meta["method"] == "r2m" and ck.meta["hparams"]["alpha"] == 0.6
    manifest = json.loads((out / "merged" / "r2m" / "manifest.json").read_text())
    assert [s["task"] for s in manifest["specialists"]] == ["efs", "fr", "fs"]
    assert all(len(s["sha256"]) == 64 and int(s["sha256"], 16) >= 0 for s in manifest["specialists"])
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    assert not (out / "FAILED").exists()
    for key in ("table_csv", "table_json", "table_md", "comparison_md", "summary"):
        assert written[key].is_file(), key
    comparison = (out / "comparison.md").read_text()
    for name in names:
        assert name in comparison
    assert list(out.glob("roc*.png"))
    assert {p.name for p in (out / "diagnostics" / "r2m").glob("*.png")} >= {"singular_values.png", "residual_norms.png"}


def test_merge_is_bit_identical_on_rerun(specialists, tmp_path):
    paths = [specialists[t] for t in ("fs", "fr")]
    outs = []
    for i in range(2):
        run_merge(_request(paths, tmp_path, diagnostics=False), jobs_from_entries(["r2m", "ties", "dare"]),
                  out_dir=tmp_path / str(i))
        outs.append({j: load_checkpoint(tmp_path / str(i) / "merged" / j / "merged.safetensors").backbone
                     for j in ("r2m", "ties", "dare")})
    for job in outs[0]:
        assert all(torch.equal(outs[0][job][k], outs[1][job][k]) for k in outs[0][job])


def _corrupt_copy(src: Path, dst: Path, mutate) -> Path:
    ck = load_checkpoint(src)
    backbone, head, meta = dict(ck.backbone), dict(ck.head), dict(ck.meta)
    mutate(backbone, head, meta)
    return save_specialist(dst, backbone, head, meta)


@pytest.mark.parametrize("kind", ["nan", "base_hash", "shape", "missing_key"])
def test_pipeline_refuses_bad_specialists_and_writes_nothing(specialists, tmp_path, kind):
    key = "transformer.resblocks.0.attn.in_proj_weight"

    def mutate(backbone, head, meta):
        if kind == "nan":
            backbone[key] = backbone[key].clone()
            backbone[key][0, 0] = float("nan")
        elif kind == "base_hash":
            meta["base_hash"] = "0" * 16
        elif kind == "shape":
            backbone[key] = backbone[key][:-1]
        else:
            del backbone[key]

    bad = _corrupt_copy(specialists["fr"], tmp_path / "bad" / "specialist.safetensors", mutate)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        run_merge(_request([specialists["fs"], bad], tmp_path, base_dirs=[specialists["fs"].parent.parent / "base"]),
                  jobs_from_entries(["r2m"]), out_dir=out)
    message = str(err.value)
    assert "bad" in message or str(bad) in message
    if kind != "base_hash":
        assert "attn.in_proj_weight" in message
    assert not out.exists() or not any(out.rglob("*.safetensors"))


def test_pipeline_refuses_wrong_base(specialists, tmp_path):
    other = make_specialists(tmp_path / "other", tasks=("fs",), seed=5)
    request = _request([specialists["fs"], specialists["fr"]], tmp_path,
                       base=next((tmp_path / "other" / "base").glob("*.safetensors")))
    with pytest.raises(ValueError, match="base_hash"):
        run_merge(request, jobs_from_entries(["average"]), out_dir=tmp_path / "out")
    assert other["fs"].is_file() and not (tmp_path / "out" / "merged").exists()


def test_add_one_specialist_equals_from_scratch_and_reuses_cache(specialists, tmp_path):
    base_dirs = [specialists["fs"].parent.parent / "base"]
    cache_dir = tmp_path / "warm"
    from r2m.pipeline import shared_cache

    jobs = jobs_from_entries(["r2m", "tsv"])
    run_merge(_request([specialists["fs"], specialists["fr"]], tmp_path, base_dirs=base_dirs, cache_dir=cache_dir,
                       diagnostics=False), jobs, out_dir=tmp_path / "two")
    warm = shared_cache(cache_dir)
    stats_before = dict(warm.stats)
    # composable re-merge: the same set plus one more specialist (+add=)
    run_merge(_request([specialists["fs"], specialists["fr"]], tmp_path, add=[str(specialists["efs"])],
                       base_dirs=base_dirs, cache_dir=cache_dir, diagnostics=False), jobs, out_dir=tmp_path / "grown")
    delta = {k: warm.stats[k] - stats_before.get(k, 0) for k in warm.stats}
    run_merge(_request([specialists["fs"], specialists["fr"], specialists["efs"]], tmp_path, base_dirs=base_dirs,
                       cache_dir=tmp_path / "cold", diagnostics=False), jobs, out_dir=tmp_path / "scratch")
    for job in ("r2m", "tsv"):
        a = load_checkpoint(tmp_path / "grown" / "merged" / job / "merged.safetensors").backbone
        b = load_checkpoint(tmp_path / "scratch" / "merged" / job / "merged.safetensors").backbone
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    cold = shared_cache(tmp_path / "cold").stats
    # only the new specialist's Gram entries (its pairs with the 3 tasks) are computed on the warm cache
    assert 0 < delta["gram_pairs_computed"] < cold["gram_pairs_computed"]
    assert delta["gram_pairs_hits"] > 0
    # TSV's per-task SVDs of the two old specialists are reused
    assert delta["svd_hits"] > 0
    assert delta["svd_computed"] < cold["svd_computed"]


def test_merge_py_end_to_end_and_refusal(specialists, tmp_path):
    root = specialists["fs"].parent.parent
    common = [f"paths.root_dir={tmp_path}", f"paths.base_dir={root / 'base'}", "data=fixture", "data.num_workers=0",
              "eval.check_carve=false"]
    run_dir = tmp_path / "run"
    proc = run_script("merge.py", [f"specialists={root}", f"hydra.run.dir={run_dir}", "eval.specialists=true",
                                   "device=cpu", *common], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "merged" / "r2m" / "merged.safetensors").is_file()
    assert (run_dir / "comparison.md").is_file()
    assert "specialist:fs" in proc.stdout and "r2m" in proc.stdout
    meta = read_metadata(run_dir / "merged" / "r2m" / "merged.safetensors")
    assert meta["format"] == "r2m-merged/1" and len(meta["merged_from"]) == 3

    # unknown config key → clear Hydra error, nothing written
    bad_dir = tmp_path / "bad_run"
    proc = run_script("merge.py", [f"specialists={root}", f"hydra.run.dir={bad_dir}", "merge.rank_rato=0.1", *common],
                      cwd=tmp_path)
    assert proc.returncode != 0 and "rank_rato" in (proc.stdout + proc.stderr)
    assert not (bad_dir / "merged").exists()


def test_merge_py_sweep_reuses_cache_and_chooses_on_validation(specialists, tmp_path):
    root = specialists["fs"].parent.parent
    sweep_dir = tmp_path / "sweep"
    proc = run_script("merge.py", ["-m", "merge=r2m", "merge.rank_ratio=0.1,0.3", "merge.alpha=0.4,0.8",
                                   f"specialists={root}", f"hydra.sweep.dir={sweep_dir}", f"paths.root_dir={tmp_path}",
                                   f"base={next((root / 'base').glob('base-*.safetensors'))}",
                                   "data=fixture", "data.num_workers=0", "device=cpu", "diagnostics=false",
                                   "eval.check_carve=false",
                                   "save_merged=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [json.loads((sweep_dir / str(i) / "summary.json").read_text()) for i in range(4)]
    names = [s["models"][0]["name"] for s in summaries]
    assert len(set(names)) == 4 and all(n.startswith("r2m") for n in names)
    svd_counts = [s["cache_stats"]["svd_computed"] for s in summaries]
    assert svd_counts[0] > 0 and len(set(svd_counts)) == 1  # no SVD after the first job
    best = json.loads((sweep_dir / "best.json").read_text())
    vals = [s["models"][0]["val_auc"] for s in summaries]
    assert best["val_auc"] == max(vals) and best["chosen_on"] == "val_auc"
    comparison = (sweep_dir / "sweep_comparison.md").read_text()
    assert all(n in comparison for n in names)
