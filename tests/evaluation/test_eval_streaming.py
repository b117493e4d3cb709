"""DetectionMetrics (streaming) and SplitEvaluator, including a Lightning test loop."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from eval_reference import ref_all_metrics, ref_roc
from r2m.evaluation import (
    DetectionMetrics,
    EvalResult,
    SplitEvaluator,
    compute_metrics,
    format_summary,
    split_means,
)


def _set(seed: int, n_videos: int = 12, shift: float = 0.1):
    """Frames of ``n_videos`` videos: (probs float32, labels, video ids)."""
    rng = np.random.default_rng(seed)
    p, y, v = [], [], []
    for vid in range(n_videos):
        lab = vid % 2
        m = int(rng.integers(2, 7))
        p += np.clip(rng.normal(0.5 + shift * (2 * lab - 1), 0.2, m), 0, 1).tolist()
        y += [lab] * m
        v += [vid] * m
    order = rng.permutation(len(p))
    return (np.asarray(p, np.float32)[order], np.asarray(y)[order], np.asarray(v)[order])


def test_streaming_equals_one_shot_and_reference():
    p, y, v = _set(0)
    metric = DetectionMetrics()
    for i in range(0, len(p), 7):
        metric.update(torch.from_numpy(p[i:i + 7]), torch.from_numpy(y[i:i + 7]), torch.from_numpy(v[i:i + 7]))
    got = metric.compute()
    assert got == compute_metrics(p, y, v)
    want = ref_all_metrics(p.astype(np.float64), y, v.tolist())
    for k, val in want.items():
        assert math.isclose(got[k], val, abs_tol=1e-12), k
    fpr, tpr = metric.roc()
    rf, rt = ref_roc(p.astype(np.float64), y)
    np.testing.assert_allclose(fpr.numpy(), rf, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), rt, atol=1e-12)
    out = metric.compute_full()
    assert out.n_frames == len(p) and out.n_videos == 12 and out.metrics == got
    metric.reset()
    assert metric.n_frames_local == 0 and metric.compute_full() is None


def test_streaming_without_video_ids_and_shape_checks():
    p, y, _ = _set(1)
    metric = DetectionMetrics()
    metric.update(torch.from_numpy(p[:, None]), torch.from_numpy(y))  # [B, 1] accepted
    assert set(metric.compute()) == {"auc", "ap", "eer", "eer_interp", "acc"}
    with pytest.raises(ValueError, match="every update or in none"):
        metric.update(torch.from_numpy(p), torch.from_numpy(y), torch.zeros(len(p), dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        metric.update(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="labels 3"):
        metric.update(torch.zeros(2), torch.zeros(3))


def test_one_class_in_streaming_metric_raises():
    metric = DetectionMetrics()
    metric.update(torch.tensor([0.2, 0.4]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="only real"):
        metric.compute()


def test_split_means_policy():
    per_set = {
        "a": {"auc": 0.9, "eer": 0.1, "video_auc": 0.95},
        "b": {"auc": 0.7, "eer": 0.3},
        "c.v2": {"auc": 0.4, "eer": 0.6, "video_auc": 0.3},
        "d": {"auc": float("nan"), "eer": 0.2},
    }
    splits = {"in_distribution": ["a"], "cross_dataset": ["b", "c.v2", "missing"],
              "unseen": ["missing"], "with_nan": ["a", "d"], "both_video": ["a", "c.v2"]}
    got = split_means(per_set, splits)
    assert list(got) == ["in_distribution", "cross_dataset", "with_nan", "both_video", "overall"]
    assert got["in_distribution"] == {"auc": 0.9, "eer": 0.1, "video_auc": 0.95}
    assert got["cross_dataset"] == pytest.approx({"auc": (0.7 + 0.4) / 2, "eer": (0.3 + 0.6) / 2})
    assert math.isnan(got["with_nan"]["auc"]) and got["with_nan"]["eer"] == pytest.approx(0.15)
    assert got["both_video"]["video_auc"] == pytest.approx((0.95 + 0.3) / 2)
    assert got["overall"]["eer"] == pytest.approx((0.1 + 0.3 + 0.6 + 0.2) / 4)
    assert "video_auc" not in got["overall"]  # not every set has it
    with pytest.raises(ValueError, match="reserved"):
        split_means(per_set, {"overall": ["a"]})


def test_split_evaluator_matches_per_set_compute_and_means():
    names = ["ff.c23", "cdf", "uniface"]
    splits = {"in_distribution": ["ff.c23"], "cross_dataset": ["cdf"], "unseen": ["uniface", "cdf"]}
    ev = SplitEvaluator(names, splits)
    data = {n: _set(10 + i, shift=0.05 * (i + 1)) for i, n in enumerate(names)}
    for i, n in enumerate(names):
        p, y, v = data[n]
        for j in range(0, len(p), 5):
            ev.update(i, torch.from_numpy(p[j:j + 5]), torch.from_numpy(y[j:j + 5]), torch.from_numpy(v[j:j + 5]))
    res = ev.compute()
    assert isinstance(res, EvalResult)
    for n in names:
        assert res.per_set[n] == compute_metrics(*data[n])
        assert res.n_frames[n] == len(data[n][0]) and res.n_videos[n] == 12
        assert res.roc[n][0][0] == 0.0 and res.roc[n][0][-1] == 1.0
    assert res.per_split["unseen"]["auc"] == pytest.approx(
        (res.per_set["uniface"]["auc"] + res.per_set["cdf"]["auc"]) / 2, abs=1e-15)
    assert res.per_split["overall"]["eer"] == pytest.approx(
        sum(res.per_set[n]["eer"] for n in names) / 3, abs=1e-15)
    assert res.per_split == split_means(res.per_set, splits)
    assert ev["cdf"] is ev.metrics[1]
    text = format_summary(res)
    assert "ff.c23" in text and "unseen mean" in text and "overall mean" in text
    assert f"{res.per_set['cdf']['auc']:.4f}" in text
    ev.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        empty = ev.compute()
    assert empty.per_set == {} and empty.per_split == {}
    assert sum("received no frames" in str(w.message) for w in caught) == 3


def test_split_evaluator_errors():
    with pytest.raises(ValueError, match="unknown test sets"):
        SplitEvaluator(["a"], {"unseen": ["b"]})
    with pytest.raises(ValueError, match="duplicate"):
        SplitEvaluator(["a", "a"], {})
    ev = SplitEvaluator(["a", "b"], {"s": ["a", "b"]})
    with pytest.raises(IndexError, match="out of range"):
        ev.update(2, torch.tensor([0.1]), torch.tensor([0]))
    ev.update(1, torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))
    with pytest.warns(UserWarning, match="'a' received no frames"):
        with pytest.raises(ValueError, match="test set 'b'.*only fake"):
            ev.compute()


def test_evalresult_roundtrip_and_from_per_set():
    per_set = {"x": compute_metrics(*_set(3)), "y": compute_metrics(*_set(4))}
    res = EvalResult.from_per_set(per_set, {"s": ["x", "y"]}, n_frames={"x": 3, "y": 4})
    assert res.per_split["s"] == res.per_split["overall"]
    back = EvalResult.from_dict(res.to_dict(include_roc=True))
    assert back.per_set == res.per_set and back.per_split == res.per_split
    assert back.test_splits == {"s": ["x", "y"]} and back.n_frames == {"x": 3, "y": 4}


def test_lightning_test_loop_feeds_split_evaluator():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    names = ["set_a", "set.b"]
    data = [_set(20), _set(21)]

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.evaluator = SplitEvaluator(names, {"in_distribution": ["set_a"], "unseen": ["set.b"]})
            self.result: EvalResult | None = None

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            probs, labels, vids = batch
            self.evaluator.update(dataloader_idx, probs, labels, vids)

        def on_test_epoch_end(self) -> None:
            self.result = self.evaluator.compute()
            self.evaluator.reset()

    loaders = [DataLoader(TensorDataset(torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(v)),
                          batch_size=8) for p, y, v in data]
    module = Probe()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.test(module, dataloaders=loaders, verbose=False)
    assert module.result is not None
    for name, (p, y, v) in zip(names, data):
        assert module.result.per_set[name] == compute_metrics(p, y, v)
    assert set(module.result.per_split) == {"in_distribution", "unseen", "overall"}
