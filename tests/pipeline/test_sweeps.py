"""Grouped merge sweeps (r2m/sweeps.py, hydra/launcher=r2m_grouped): grouping of real composed job
configs, merges served from one merge_many pass bit-identical to merge(), and `merge.py -m` end to
end with per-job Hydra folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline_helpers import REPO, make_specialists, run_script
from r2m.merging import DecompositionCache, LazySafetensors, merge
from r2m.sweeps import GroupPlan, plan_groups, planned, planned_merge


@pytest.fixture(scope="module")
def specialists(tmp_path_factory) -> dict[str, Path]:
    return make_specialists(tmp_path_factory.mktemp("specialists"))


def _job_configs(sweep_overrides: list[list[str]], common: list[str]):
    """Compose every job's config as the launcher does (Hydra's sweep expansion of the overrides)."""
    import itertools

    from hydra import compose, initialize_config_dir

    choices = [[f"{o.split('=')[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in sweep_overrides]
    jobs = [list(c) for c in itertools.product(*choices)]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return jobs, [compose("merge", overrides=[*common, *job]) for job in jobs]


def test_plan_groups_on_composed_configs():
    common = ["specialists=some/folder", "data=fixture"]
    # alpha varies slowest here: the plan reorders so each rank ratio's alpha points are consecutive
    jobs, cfgs = _job_configs(["merge.alpha=0.4,0.8", "merge.rank_ratio=0.1,0.3"], common)
    groups = plan_groups(cfgs)
    assert len(groups) == 1 and groups[0].plan is not None
    order = groups[0].order
    assert sorted(order) == [0, 1, 2, 3]
    ratios = [cfgs[i].merge.rank_ratio for i in order]
    assert ratios == [0.1, 0.1, 0.3, 0.3]
    assert [p["rank_ratio"] for p in groups[0].plan.points] == ratios
    assert [p["alpha"] for p in groups[0].plan.points] == [cfgs[i].merge.alpha for i in order]

    # different methods or different non-merge settings never share a group
    _, cfgs = _job_configs(["merge=r2m,ties", "data.family=fs,joint"], common)
    groups = plan_groups(cfgs)
    assert len(groups) == 4 and all(len(g.order) == 1 and g.plan is None for g in groups)
    _, cfgs = _job_configs(["merge.alpha=0.4,0.8", "data.family=fs,joint"], common)
    groups = plan_groups(cfgs)
    assert sorted(len(g.order) for g in groups) == [2, 2]
    for g in groups:
        assert len({cfgs[i].data.family for i in g.order}) == 1
    # a job whose merge settings do not validate is left alone (it reports its own error)
    _, cfgs = _job_configs(["merge.alpha=0.4,inf"], common)
    assert sorted(len(g.order) for g in plan_groups(cfgs)) == [1, 1]


def _inputs(paths):
    base_path = next((paths[0].parent.parent / "base").glob("base-*.safetensors"))
    base = LazySafetensors(str(base_path), prefix="backbone.")
    return base, [LazySafetensors(str(p), prefix="backbone.") for p in paths]


def test_planned_merges_equal_merge_bit_for_bit(specialists):
    paths = sorted(specialists.values())
    points = [{"rank_ratio": r, "alpha": a} for r in (0.1, 0.3) for a in (0.4, 0.8)]
    full = [dict(merge("r2m", *_inputs(paths), device="cpu", cache=DecompositionCache(), **p)) for p in points]
    from r2m.merging.registry import resolve_hparams

    plan = GroupPlan("r2m", [resolve_hparams("r2m", p) for p in points])
    cache = DecompositionCache()
    with planned(plan):
        got = []
        for p in points:  # a fresh set of lazy readers per job, as each Hydra job opens its own
            base, backbones = _inputs(paths)
            got.append(planned_merge("r2m", base, backbones, device="cpu", cache=cache, **p))
        # another method inside the group's jobs (extra_methods) is merged separately
        avg = planned_merge("average", *_inputs(paths), device="cpu")
    assert plan.served == 4 and plan.fallbacks == 0
    for ref, out in zip(full, got):
        assert ref.keys() == out.keys()
        assert all(torch.equal(ref[k], out[k]) for k in ref)
    assert all(torch.equal(avg[k], merge("average", *_inputs(paths), device="cpu")[k]) for k in avg)

    # out of order: the unplanned point falls back to merge (same result), the plan is not consumed
    plan = GroupPlan("r2m", [resolve_hparams("r2m", p) for p in points])
    with planned(plan):
        out = planned_merge("r2m", *_inputs(paths), device="cpu", cache=cache, **points[2])
    assert plan.served == 0 and plan.fallbacks == 1
    assert all(torch.equal(full[2][k], out[k]) for k in out)


def test_merge_py_grouped_sweep_end_to_end(specialists, tmp_path):
    """`merge.py -m merge=r2m merge.alpha=... merge.rank_ratio=...`: 4 jobs, each with its own folder,
    .hydra files and outputs; all merges from one merge_many pass; the merged files equal merge()."""
    from r2m.checkpoints import load_checkpoint

    root = specialists["fs"].parent.parent
    sweep = tmp_path / "sweep"
    proc = run_script("merge.py", ["-m", "merge=r2m", "merge.alpha=0.4,0.8", "merge.rank_ratio=0.1,0.3",
                                   f"specialists={root}", f"hydra.sweep.dir={sweep}", f"paths.root_dir={tmp_path}",
                                   f"paths.base_dir={root / 'base'}", "data=fixture", "data.num_workers=0",
                                   "eval.check_carve=false", "device=cpu", "diagnostics=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "merge group of 4 job(s) (r2m): 4 merge(s) from one merge_many pass, 0 separately" in log
    paths = sorted(specialists.values())
    vals = []
    for i in range(4):
        job = sweep / str(i)
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        alpha = float(overrides.split("merge.alpha=")[1].split()[0])
        ratio = float(overrides.split("merge.rank_ratio=")[1].split()[0])
        summary = json.loads((job / "summary.json").read_text())
        model = summary["models"][0]
        assert model["hp/alpha"] == alpha and model["hp/rank_ratio"] == ratio
        vals.append(model["val_auc"])
        merged_file = next((job / "merged").glob("*/merged.safetensors"))
        state = load_checkpoint(merged_file).backbone
        ref = merge("r2m", *_inputs(paths), device="cpu", cache=DecompositionCache(), alpha=alpha, rank_ratio=ratio)
        assert all(torch.equal(state[k], ref[k]) for k in ref), (alpha, ratio)
    best = json.loads((sweep / "best.json").read_text())
    assert best["val_auc"] == max(vals)
