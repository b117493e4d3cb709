"""ResultsTable (CSV / JSON / Markdown, load, comparison), plot_roc PNGs, log_to_wandb."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from r2m.evaluation import EvalResult, ResultsTable, compute_metrics, log_to_wandb, plot_roc, roc_curve

SPLITS = {"in_distribution": ["ff"], "cross_dataset": ["cdf", "dfdc"], "unseen": ["uniface"]}


def _result(seed: int, with_video: bool = True) -> EvalResult:
    rng = np.random.default_rng(seed)
    per_set, roc, n_frames, n_videos = {}, {}, {}, {}
    for i, name in enumerate(["ff", "cdf", "dfdc", "uniface"]):
        n = 60 + 10 * i
        vids = rng.integers(0, 12, n)
        y = vids % 2
        p = np.clip(rng.normal(0.5 + (0.05 + 0.03 * seed) * (2 * y - 1), 0.2), 0, 1)
        per_set[name] = compute_metrics(p, y, vids if with_video else None)
        fpr, tpr, _ = roc_curve(p, y)
        roc[name] = (fpr, tpr)
        n_frames[name] = n
        n_videos[name] = len(set(vids.tolist()))
    return EvalResult.from_per_set(per_set, SPLITS, roc=roc, n_frames=n_frames,
                                   n_videos=n_videos if with_video else None)


def _table() -> ResultsTable:
    t = ResultsTable()
    t.add("fs_specialist", _result(0), group="specialists", extra={"method": "none"})
    t.add("r2m", _result(1), group="merged", extra={"method": "r2m", "k": 3})
    t.add("task_arithmetic", _result(2, with_video=False), group="merged", extra={"method": "ta"})
    return t


def test_rows_are_tidy_with_split_means():
    t = _table()
    res = _result(0)
    rows = [r for r in t.rows if r["model"] == "fs_specialist"]
    assert [r["test_set"] for r in rows] == ["ff", "cdf", "dfdc", "uniface", "in_distribution mean",
                                              "cross_dataset mean", "unseen mean", "overall mean"]
    cdf = rows[1]
    assert cdf["split"] == "cross_dataset" and cdf["kind"] == "set" and cdf["n_frames"] == 70
    assert cdf["auc"] == res.per_set["cdf"]["auc"] and cdf["method"] == "none"
    cross = rows[5]
    assert cross["kind"] == "mean" and cross["n_sets"] == 2 and cross["n_frames"] == 70 + 80
    assert cross["auc"] == pytest.approx((res.per_set["cdf"]["auc"] + res.per_set["dfdc"]["auc"]) / 2)
    overall = rows[7]
    assert overall["n_sets"] == 4 and overall["eer"] == pytest.approx(
        np.mean([res.per_set[n]["eer"] for n in res.per_set]))
    ta = [r for r in t.rows if r["model"] == "task_arithmetic"]
    assert all(r["video_auc"] is None for r in ta) and all(r["k"] is None for r in ta)
    with pytest.raises(ValueError, match="already in the table"):
        t.add("r2m", res, group="merged")
    with pytest.raises(ValueError, match="clash"):
        t.add("other", res, extra={"auc": 1})


def test_write_and_load_roundtrip(tmp_path):
    t = _table()
    paths = t.write(tmp_path / "out")
    assert set(paths) == {"csv", "json", "md"} and all(p.is_file() for p in paths.values())
    with open(paths["csv"], newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(t.rows) == 3 * 8
    assert float(csv_rows[0]["auc"]) == pytest.approx(t.rows[0]["auc"], abs=1e-15)
    data = json.loads(paths["json"].read_text())  # strict JSON parse of what was written
    assert data["format"] == "r2m.results_table" and len(data["rows"]) == 24
    md = paths["md"].read_text()
    assert md.startswith("| model") and md.count("\n") == 2 + 24 and "overall mean" in md
    back = ResultsTable.load(paths["json"])
    assert back.models == t.models
    for a, b in zip(back.rows, t.rows):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])), k
    assert back.comparison() == t.comparison()
    combined = ResultsTable.load(paths["json"])
    with pytest.raises(ValueError, match="already in the table"):
        combined.extend(back)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not an r2m results table"):
        ResultsTable.load(bad)


def test_nan_metric_survives_json(tmp_path):
    per_set = {"a": {"auc": float("nan"), "eer": 0.2}}
    t = ResultsTable()
    t.add("m", EvalResult.from_per_set(per_set, {"s": ["a"]}))
    path = t.write(tmp_path)["json"]
    assert "NaN" not in path.read_text()
    back = ResultsTable.load(path)
    assert math.isnan(back.rows[0]["auc"]) and back.rows[0]["eer"] == 0.2


def test_extend_combines_separate_runs(tmp_path):
    a, b = ResultsTable(), ResultsTable()
    a.add("ta", _result(0))
    b.add("ties", _result(1), extra={"k": 0.2})
    a.write(tmp_path, stem="run_a")
    b.write(tmp_path, stem="run_b")
    merged = ResultsTable.load(tmp_path / "run_a.json")
    merged.extend(ResultsTable.load(tmp_path / "run_b.json"))
    assert [m for m, _ in merged.models] == ["ta", "ties"]
    assert [r["k"] for r in merged.comparison()] == [None, 0.2]


def test_comparison_columns_and_markdown(tmp_path):
    t = _table()
    comp = t.comparison(("auc", "eer"))
    assert [r["model"] for r in comp] == ["fs_specialist", "r2m", "task_arithmetic"]
    split_cols = [k for k in comp[0] if "/" in k]
    assert split_cols == [f"{s}/{m}" for s in ["in_distribution", "cross_dataset", "unseen", "overall"]
                          for m in ("auc", "eer")]
    res1 = _result(1)
    assert comp[1]["cross_dataset/auc"] == res1.per_split["cross_dataset"]["auc"]
    assert comp[1]["overall/eer"] == res1.per_split["overall"]["eer"]
    assert comp[1]["method"] == "r2m" and comp[1]["k"] == 3 and comp[1]["group"] == "merged"
    md = t.comparison_markdown()
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 3 and "overall AUC" in lines[0] and "overall EER" in lines[0]
    assert lines[2].startswith("| fs_specialist") and lines[4].startswith("| task_arithmetic")
    assert f"{res1.per_split['overall']['auc']:.3f}" in lines[3]
    best_auc = max(r["overall/auc"] for r in comp)
    best_eer = min(r["overall/eer"] for r in comp)
    assert f"**{best_auc:.3f}**" in md and f"**{best_eer:.3f}**" in md
    paths = t.write_comparison(tmp_path)
    assert set(paths) == {"md", "csv", "json"} and paths["md"].read_text() == md
    assert json.loads(paths["json"].read_text())["rows"][0]["model"] == "fs_specialist"


def test_plot_roc_writes_png_per_split(tmp_path):
    results = {"fs_specialist": _result(0), "r2m": _result(1)}
    paths = plot_roc(results, SPLITS, tmp_path, stem="roc", per_set=True)
    assert [p.name for p in paths] == ["roc_in_distribution.png", "roc_cross_dataset.png",
                                       "roc_unseen.png", "roc_overall.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # a split with no evaluated set yields no file
    assert plot_roc(results, {"empty": ["nope"]}, tmp_path / "b")[-1].name == "roc_overall.png"
    assert len(plot_roc(results, {"empty": ["nope"]}, tmp_path / "c")) == 1


def test_mean_roc_area_matches_mean_auc():
    from r2m.evaluation.plots import _GRID, mean_roc

    res = _result(3)
    sets = ["cdf", "dfdc"]
    curve = mean_roc([res.roc[n] for n in sets])
    area = float(np.sum(np.diff(_GRID) * (curve[1:] + curve[:-1]) / 2))
    assert area == pytest.approx(res.per_split["cross_dataset"]["auc"], abs=5e-3)


class _FakeRun:
    """Records what log_to_wandb sends (duck-typed like a wandb run)."""

    def __init__(self) -> None:
        self.logged: list[dict] = []
        self.summary: dict = {}

    def log(self, payload: dict) -> None:
        self.logged.append(payload)


class _FakeWandbLogger:  # like Lightning's WandbLogger: the run is `.experiment`
    def __init__(self, run) -> None:
        self.experiment = run


def test_log_to_wandb_payload(tmp_path):
    t = _table()
    images = plot_roc({"r2m": _result(1)}, SPLITS, tmp_path)
    run = _FakeRun()
    log_to_wandb([object(), _FakeWandbLogger(run)], t, images, prefix="test")
    (payload,) = run.logged
    assert {"test/results", "test/comparison", "test/roc_unseen", "test/roc_overall"} <= set(payload)
    assert payload["test/results"].columns[:3] == ["model", "group", "test_set"]
    assert len(payload["test/results"].data) == 24
    res1 = _result(1)
    assert run.summary["test/r2m/unseen/auc"] == res1.per_split["unseen"]["auc"]
    assert "test/task_arithmetic/overall/video_auc" not in run.summary
    log_to_wandb(None, t, images)  # no-op
    log_to_wandb(object(), t, images)  # not a W&B logger: no-op


def test_log_to_wandb_disabled_mode(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    t = _table()
    images = plot_roc({"r2m": _result(1)}, SPLITS, tmp_path)
    run = wandb.init(project="r2m-test", mode="disabled", dir=str(tmp_path))
    try:
        log_to_wandb(run, t, images)
    finally:
        run.finish()


def test_extend_skip_existing_keeps_shared_models_once():
    """A sweep's jobs all evaluate the same specialists: the combined table holds each model once."""
    a, b = ResultsTable(), ResultsTable()
    a.add("specialist:fs", _result(0), group="specialist")
    a.add("r2m[alpha=0.4]", _result(1), group="merge")
    b.add("specialist:fs", _result(0), group="specialist")
    b.add("r2m[alpha=0.8]", _result(2), group="merge")
    c = ResultsTable()
    c.extend(a)
    with pytest.raises(ValueError, match="already in the table"):
        c.extend(b)
    c = ResultsTable()
    c.extend(a, skip_existing=True)
    c.extend(b, skip_existing=True)
    assert [m for m, _ in c.models] == ["specialist:fs", "r2m[alpha=0.4]", "r2m[alpha=0.8]"]
    assert sum(r["model"] == "specialist:fs" for r in c.rows) == sum(r["model"] == "specialist:fs" for r in a.rows)


def test_roc_styles_stay_distinct_with_many_curves(tmp_path):
    from matplotlib.image import imread

    from r2m.evaluation.plots import curve_style

    styles = [curve_style(i) for i in range(80)]
    assert len(set(styles)) == 80
    assert len({c for c, _ in styles[:20]}) == 20
    # the merge callback's default comparison: 3 specialists, joint, 4 R²M variants, 8 baselines
    models = ["specialist:a", "specialist:b", "specialist:c", "joint", "r2m", "r2m[center]", "r2m[minus_core]",
              "r2m[center,minus_core]", "average", "task_arithmetic", "ties", "dare", "cart", "tsv", "iso_c", "iso_cts"]
    colour = dict(zip(models, (curve_style(i)[0] for i in range(len(models)))))
    assert colour["joint"] != colour["tsv"]
    paths = plot_roc({m: _result(i % 3) for i, m in enumerate(models)}, SPLITS, tmp_path)
    few = plot_roc({m: _result(i % 3) for i, m in enumerate(models[:3])}, SPLITS, tmp_path / "few")
    # 16 curves: legend beside the axes on a wider figure
    assert imread(paths[0]).shape[1] > imread(few[0]).shape[1]
