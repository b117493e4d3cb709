"""compute_metrics against the naive references of eval_reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval_reference import (
    ref_all_metrics,
    ref_ap,
    ref_auc_pairs,
    ref_auc_trapezoid,
    ref_eer_interp,
    ref_eer_nearest,
    ref_roc,
)
from r2m.evaluation import METRIC_KEYS, VIDEO_METRIC_KEYS, compute_metrics, roc_curve

TOL = 1e-12


def _random_case(seed: int, n: int = 240, decimals: int | None = None, shift: float = 0.15):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    p = np.clip(rng.normal(0.5 + shift * (2 * y - 1), 0.2), 0.0, 1.0)
    if decimals is not None:  # many ties
        p = np.round(p, decimals)
    return p, y


def _assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        assert math.isclose(got[k], want[k], rel_tol=0, abs_tol=TOL), (k, got[k], want[k])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_frame_metrics_match_reference(seed, decimals):
    p, y = _random_case(seed, decimals=decimals)
    got = compute_metrics(p, y)
    assert tuple(got) == METRIC_KEYS
    _assert_close(got, ref_all_metrics(p, y))
    assert math.isclose(got["auc"], ref_auc_pairs(p, y), abs_tol=TOL)


def test_matches_torchmetrics_auroc_and_ap():
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

    p, y = _random_case(7, n=2000, decimals=3)
    got = compute_metrics(p, y)
    pt, yt = torch.tensor(p, dtype=torch.float64), torch.tensor(y)
    assert math.isclose(got["auc"], BinaryAUROC()(pt, yt).item(), abs_tol=1e-6)  # float32 result
    assert math.isclose(got["ap"], BinaryAveragePrecision()(pt, yt).item(), abs_tol=1e-6)


def test_roc_curve_matches_sklearn_style_reference():
    p, y = _random_case(3, decimals=2)
    for drop in (True, False):
        fpr, tpr, thr = roc_curve(p, y, drop_intermediate=drop)
        rf, rt = ref_roc(p, y, drop_intermediate=drop)
        np.testing.assert_allclose(fpr, rf, atol=TOL)
        np.testing.assert_allclose(tpr, rt, atol=TOL)
        assert thr[0] == np.inf and np.all(np.diff(thr[1:]) < 0)  # distinct, decreasing


def test_auc_below_half_is_not_flipped():
    p, y = _random_case(4, shift=-0.2)  # fakes score lower than reals
    got = compute_metrics(p, y)
    assert got["auc"] < 0.5
    assert math.isclose(got["auc"], ref_auc_trapezoid(p, y), abs_tol=TOL)
    flipped = compute_metrics(1.0 - p, y)
    assert math.isclose(got["auc"] + flipped["auc"], 1.0, abs_tol=1e-12)


def test_eer_uses_deepfakebench_collinear_drop():
    # By hand: sorted by decreasing score the labels are 1 1 0 0 0 0 1 1 (P = N = 4).
    # Full ROC (fp, tp): (0,0) (0,1) (0,2) (1,2) (2,2) (3,2) (4,2) (4,3) (4,4); FNR = FPR at (2,2).
    # sklearn's default ROC keeps only the corners (0,1) (0,2) (4,2) (4,4) + origin:
    # |FNR − FPR| = 1, .75, .5, .5, 1 → the first minimum is (0,2), whose FPR is 0.
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 0, 0, 0, 0, 1, 1])
    got = compute_metrics(p, y)
    assert got["eer"] == pytest.approx(0.0, abs=TOL) == ref_eer_nearest(p, y)
    assert got["eer_interp"] == pytest.approx(0.5, abs=TOL) == ref_eer_interp(p, y)


def test_constant_scores_all_ties():
    y = np.array([0, 1, 1, 0, 1, 0, 0])
    p = np.full(7, 0.3)
    got = compute_metrics(p, y)
    assert got["auc"] == pytest.approx(0.5, abs=TOL)
    assert got["ap"] == pytest.approx(3 / 7, abs=TOL) == ref_ap(p, y)
    assert got["eer"] == ref_eer_nearest(p, y)  # ROC is (0,0)-(1,1): first of two equal gaps
    assert got["eer_interp"] == pytest.approx(0.5, abs=TOL)
    assert got["acc"] == pytest.approx(4 / 7, abs=TOL)  # everything predicted real


def test_accuracy_threshold_is_strict():
    got = compute_metrics([0.5, 0.5, 0.50001, 0.2], [0, 1, 1, 0])
    assert got["acc"] == pytest.approx(3 / 4)  # p = 0.5 counts as real


def test_eer_interp_brackets_and_equals_nearest_on_crossing_point():
    for seed in range(5):
        p, y = _random_case(10 + seed, n=60, decimals=1)
        got = compute_metrics(p, y)
        fpr, tpr = ref_roc(p, y, drop_intermediate=False)
        d = (1 - tpr) - fpr
        k = int(np.argmax(d <= 0))
        assert min(fpr[k - 1], fpr[k]) - TOL <= got["eer_interp"] <= max(fpr[k - 1], fpr[k]) + TOL
        assert min(1 - tpr[k - 1], 1 - tpr[k]) - TOL <= got["eer_interp"] <= max(1 - tpr[k - 1], 1 - tpr[k]) + TOL


@pytest.mark.parametrize("kind", ["numpy", "list", "tensor", "tensor_f16"])
def test_input_types(kind):
    p, y = _random_case(5, n=50, decimals=2)
    want = compute_metrics(p, y)
    if kind == "list":
        got = compute_metrics(p.tolist(), y.tolist())
    elif kind == "tensor":
        got = compute_metrics(torch.tensor(p), torch.tensor(y))
    elif kind == "tensor_f16":  # probabilities exactly representable in float16 → same result
        q = np.round(p * 4) / 4
        got = compute_metrics(torch.tensor(q, dtype=torch.float16), torch.tensor(y))
        want = compute_metrics(q, y)
    else:
        got = compute_metrics(p.astype(np.float32).astype(np.float64), y.astype(np.int32))
    _assert_close(got, want)


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        ([0.1, 0.2, 0.3], [0, 0, 0], "only real"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "only fake"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN"),
        ([0.1, 1.2, 0.3], [0, 1, 1], r"\[0, 1\]"),
        ([-0.1, 0.2, 0.3], [0, 1, 1], r"\[0, 1\]"),
        ([0.1, 0.2, 0.3], [0, 2, 1], "0 \\(real\\) or 1"),
        ([0.1, 0.2, 0.3], [0, 0.5, 1], "0 \\(real\\) or 1"),
        ([0.1, 0.2], [0, 1, 1], "differ in length"),
        ([], [], "no frames"),
        ([[0.1, 0.9]], [1], "1-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(probs, labels)


def test_video_metrics_match_reference_with_colliding_folder_names():
    rng = np.random.default_rng(11)
    keys, probs, labels = [], [], []
    # The same folder name "000_003" exists in two methods and as a real video; keys
    # (test set, label group, folder) keep them apart.
    videos = [("fs", "faceswap_Fake", "000_003", 1), ("fs", "simswap_Fake", "000_003", 1),
              ("fs", "ff_Real", "000_003", 0), ("fs", "ff_Real", "001", 0),
              ("fs", "faceswap_Fake", "002_006", 1), ("fs", "ff_Real", "002", 0)]
    videos += [("fs", "ff_Real", f"r{i}", 0) for i in range(8)]
    videos += [("fs", "simswap_Fake", f"f{i}", 1) for i in range(8)]
    for ds, group, folder, lab in videos:
        m = int(rng.integers(3, 9))
        keys += [(ds, group, folder)] * m
        probs += np.clip(rng.normal(0.45 + 0.1 * lab, 0.25, m), 0, 1).tolist()
        labels += [lab] * m
    order = rng.permutation(len(probs))  # frames of a video need not be contiguous
    probs = [probs[i] for i in order]
    labels = [labels[i] for i in order]
    keys = [keys[i] for i in order]
    got = compute_metrics(probs, labels, video_keys=keys)
    assert tuple(got) == METRIC_KEYS + VIDEO_METRIC_KEYS
    _assert_close(got, ref_all_metrics(probs, labels, keys))
    # Grouping by bare folder name merges real and fake frames: a clear error, not a floor().
    with pytest.raises(ValueError, match="both real and fake"):
        compute_metrics(probs, labels, video_keys=[k[2] for k in keys])


def test_video_keys_as_integer_tensor_and_errors():
    p = [0.1, 0.3, 0.8, 0.6, 0.4, 0.9]
    y = [0, 0, 1, 1, 0, 1]
    ids = torch.tensor([5, 5, 7, 7, 9, 11])
    got = compute_metrics(p, y, ids)
    _assert_close(got, ref_all_metrics(p, y, ids.tolist()))
    with pytest.raises(ValueError, match="entries for 6 frames"):
        compute_metrics(p, y, [1, 2])
    with pytest.raises(TypeError, match="not hashable"):
        compute_metrics(p, y, [[1], [1], [2], [2], [3], [4]])
