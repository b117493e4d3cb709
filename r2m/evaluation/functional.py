"""Exact, sort-based binary detection metrics (frame and video level), in float64 / int64.

Conventions (DeepfakeBench, ``training/metrics/utils.py::get_test_metrics``): a score is the
*fake* probability of a frame, label 1 = fake, 0 = real.

One stable sort of the scores gives, at every *distinct* score value taken as a threshold
(predict fake when ``p >= t``; ties are never split, exactly like sklearn's ``roc_curve``), the
cumulative counts ``TP_k`` and ``FP_k``. Everything else is read off these integer counts:

* ``auc``  — trapezoid under the ROC with the origin prepended,
  ``AUC = Σ_k (FP_k − FP_{k−1})(TP_k + TP_{k−1}) / (2 P N)``, summed in integers (exact up to
  the final division). Equals sklearn ``roc_auc_score`` / torchmetrics ``BinaryAUROC``.
  A value below 0.5 is returned as it is (never flipped).
* ``ap``   — step-wise average precision ``AP = Σ_k (R_k − R_{k−1}) · Prec_k`` with
  ``R_k = TP_k / P``, ``Prec_k = TP_k / (TP_k + FP_k)`` (sklearn ``average_precision_score``,
  torchmetrics ``BinaryAveragePrecision``; not the trapezoid).
* ``eer``  — DeepfakeBench's nearest-point rule: on sklearn's *default* ROC
  (``drop_intermediate=True``: collinear points removed, origin prepended) take the first point
  minimising ``|FNR − FPR|`` and report its FPR. The collinear-point removal is part of the rule:
  DeepfakeBench calls ``roc_curve`` with default arguments, and on small sets it can move the EER
  (see ``tests/evaluation``).
* ``eer_interp`` — the interpolated EER: the full ROC is a polyline, ``d = FNR − FPR`` decreases
  from 1 to −1 along it, and the EER is the FPR (= FNR) where ``d`` crosses 0, by linear
  interpolation between the two bracketing ROC points (exact integer bracketing).
* ``acc``  — ``mean((p > 0.5) == y)``: a fake probability of exactly 0.5 counts as *real*
  (DeepfakeBench's strict ``>``).

Video level: frames are grouped by a collision-free video key; a video's score is the mean of its
frame probabilities and its label the (common) label of its frames — a video whose frames carry
both labels is an error (DeepfakeBench would floor the mean label). ``video_auc``, ``video_eer``,
``video_eer_interp`` and ``video_acc`` are the frame rules applied to videos.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "METRIC_KEYS",
    "VIDEO_METRIC_KEYS",
    "ALL_METRIC_KEYS",
    "HIGHER_IS_BETTER",
    "BinaryCounts",
    "binary_counts",
    "roc_curve",
    "roc_from_counts",
    "auc_score",
    "average_precision",
    "eer_nearest",
    "eer_interpolated",
    "accuracy",
    "video_scores",
    "metrics_from_arrays",
    "compute_metrics",
    "check_probs_labels",
]

METRIC_KEYS: tuple[str, ...] = ("auc", "ap", "eer", "eer_interp", "acc")
"""Frame-level metric keys, in table order."""
VIDEO_METRIC_KEYS: tuple[str, ...] = ("video_auc", "video_eer", "video_eer_interp", "video_acc")
"""Video-level metric keys (present when video keys / ids are given)."""
ALL_METRIC_KEYS: tuple[str, ...] = METRIC_KEYS + VIDEO_METRIC_KEYS
HIGHER_IS_BETTER: dict[str, bool] = {
    k: not k.endswith(("eer", "eer_interp")) for k in ALL_METRIC_KEYS
}
"""``True`` for AUC / AP / ACC, ``False`` for the EERs."""

ACC_THRESHOLD = 0.5


# --------------------------------------------------------------------------- input checks
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to an array ({exc})") from exc


def check_probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to ``(float64 probs, int64 labels)`` 1-D arrays.

    Raises ``ValueError`` for: non-1-D input, length mismatch, no frames, NaN or values outside
    [0, 1] in ``probs`` (they must be fake *probabilities*, not logits), labels other than 0/1,
    and a missing class (AUC, AP and EER need real and fake frames)."""
    p = _to_numpy(probs, "probs")
    y = _to_numpy(labels, "labels")
    if p.ndim != 1:
        raise ValueError(f"probs must be 1-D (one fake-probability per frame), got shape {p.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (one 0/1 label per frame), got shape {y.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"probs and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.shape[0] == 0:
        raise ValueError("no frames: probs and labels are empty")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)
            or p.dtype == np.bool_):
        raise ValueError(f"probs must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    nan = np.isnan(p)
    if nan.any():
        first = int(np.flatnonzero(nan)[0])
        raise ValueError(f"probs contain {int(nan.sum())} NaN value(s) (first at index {first})")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"probs must be fake-probabilities in [0, 1] (softmax[:, 1]), got range "
            f"[{p.min():.6g}, {p.max():.6g}] — logits passed by mistake?"
        )
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if np.isnan(y).any() or not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0 (real) or 1 (fake); got non-binary float values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers 0 (real) / 1 (fake), got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    bad = (y != 0) & (y != 1)
    if bad.any():
        vals = np.unique(y[bad])[:5].tolist()
        raise ValueError(f"labels must be 0 (real) or 1 (fake); found other values {vals}")
    n_fake = int(y.sum())
    if n_fake == 0 or n_fake == y.shape[0]:
        only = "real (0)" if n_fake == 0 else "fake (1)"
        raise ValueError(
            f"labels contain only {only} samples ({y.shape[0]} in total): AUC, AP and EER need "
            "both real and fake samples"
        )
    return p, y


# --------------------------------------------------------------------------- counts and curves
@dataclass(frozen=True)
class BinaryCounts:
    """Cumulative counts at each distinct threshold, thresholds in decreasing order.

    ``tps[k]`` / ``fps[k]``: fakes / reals with ``p >= thresholds[k]``; ``n_pos`` = P fakes,
    ``n_neg`` = N reals (``tps[-1] == P``, ``fps[-1] == N``)."""

    tps: np.ndarray
    fps: np.ndarray
    thresholds: np.ndarray
    n_pos: int
    n_neg: int


def binary_counts(probs: np.ndarray, labels: np.ndarray) -> BinaryCounts:
    """One descending sort; thresholds at distinct score values. Ties are kept together, so
    their order inside the sort does not matter (no stable sort needed)."""
    order = np.argsort(probs)[::-1]
    s = probs[order]
    y = labels[order]
    last_of_run = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.shape[0] - 1]
    tps = np.cumsum(y, dtype=np.int64)[last_of_run]
    fps = (last_of_run + 1).astype(np.int64) - tps
    return BinaryCounts(tps=tps, fps=fps, thresholds=s[last_of_run],
                        n_pos=int(tps[-1]), n_neg=int(fps[-1]))


def _drop_collinear(fps: np.ndarray, tps: np.ndarray) -> np.ndarray:
    """sklearn's ``drop_intermediate``: keep the ends and every point where the second difference
    of FP or TP counts is non-zero (a corner). Returns the kept indices."""
    if fps.shape[0] <= 2:
        return np.arange(fps.shape[0])
    corner = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
    return np.flatnonzero(np.r_[True, corner, True])


def _rates(c: BinaryCounts, drop_intermediate: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = _drop_collinear(c.fps, c.tps) if drop_intermediate else np.arange(c.fps.shape[0])
    fps = np.r_[0, c.fps[idx]]
    tps = np.r_[0, c.tps[idx]]
    thr = np.r_[np.inf, c.thresholds[idx]]
    return fps / fps[-1], tps / tps[-1], thr


def roc_from_counts(c: BinaryCounts, drop_intermediate: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from counts (see ``roc_curve``)."""
    return _rates(c, drop_intermediate)


def roc_curve(probs: Any, labels: Any, drop_intermediate: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` like sklearn's ``roc_curve(y, p, pos_label=1)``: origin
    prepended (threshold ``inf``), collinear points dropped when ``drop_intermediate``."""
    p, y = check_probs_labels(probs, labels)
    return _rates(binary_counts(p, y), drop_intermediate)


def auc_score(c: BinaryCounts) -> float:
    """ROC AUC, trapezoid summed exactly in integers: ``Σ ΔFP·(TP_k + TP_{k−1}) / (2PN)``."""
    fps = np.r_[0, c.fps]
    tps = np.r_[0, c.tps]
    twice_area = int(np.sum(np.diff(fps) * (tps[1:] + tps[:-1]), dtype=np.int64))
    return twice_area / (2 * c.n_pos * c.n_neg)


def average_precision(c: BinaryCounts) -> float:
    """Step-wise AP: ``Σ_k (TP_k − TP_{k−1})/P · TP_k/(TP_k + FP_k)``."""
    d_tp = np.diff(np.r_[0, c.tps])
    precision = c.tps / (c.tps + c.fps)
    return float(np.sum(d_tp * precision) / c.n_pos)


def eer_nearest(c: BinaryCounts, drop_intermediate: bool = True) -> float:
    """DeepfakeBench EER: FPR of the first ROC point minimising ``|FNR − FPR|`` (no
    interpolation), on sklearn's default (``drop_intermediate=True``) ROC."""
    fpr, tpr, _ = _rates(c, drop_intermediate)
    fnr = 1.0 - tpr
    return float(fpr[int(np.argmin(np.abs(fnr - fpr)))])


def eer_interpolated(c: BinaryCounts) -> float:
    """Interpolated EER: with ``D_k = PN − N·TP_k − P·FP_k`` (= PN·(FNR − FPR), exact integers,
    origin prepended), find the first ``k`` with ``D_k ≤ 0`` and interpolate linearly between
    ROC points ``k−1`` and ``k`` to the crossing ``FNR = FPR``."""
    fps = np.r_[0, c.fps].astype(np.int64)
    tps = np.r_[0, c.tps].astype(np.int64)
    p, n = c.n_pos, c.n_neg
    d = p * n - n * tps - p * fps
    k = int(np.argmax(d <= 0))  # d[0] = PN > 0 and d[-1] = −PN < 0, so 1 <= k
    if d[k] == 0:
        return float(fps[k] / n)
    t = float(d[k - 1]) / float(d[k - 1] - d[k])
    return float((fps[k - 1] + t * (fps[k] - fps[k - 1])) / n)


def accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = ACC_THRESHOLD) -> float:
    """``mean((p > threshold) == y)`` — strict ``>``: p = 0.5 is predicted real."""
    return float(np.mean((probs > threshold).astype(np.int64) == labels))


def _binary_metrics(p: np.ndarray, y: np.ndarray, prefix: str = "") -> dict[str, float]:
    c = binary_counts(p, y)
    out = {
        "auc": auc_score(c),
        "ap": average_precision(c),
        "eer": eer_nearest(c),
        "eer_interp": eer_interpolated(c),
        "acc": accuracy(p, y),
    }
    if prefix:
        out = {f"{prefix}{k}": v for k, v in out.items() if f"{prefix}{k}" in VIDEO_METRIC_KEYS}
    return out


# --------------------------------------------------------------------------- videos
def video_scores(probs: np.ndarray, labels: np.ndarray, video_ids: np.ndarray,
                 key_names: Sequence[Hashable] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group frames by integer ``video_ids``: ``(ids, mean probability, label)`` per video.

    The mean is taken over the video's frames sorted by probability, so the result does not
    depend on frame order (identical for any sharding across processes). Raises ``ValueError``
    when a video's frames carry both labels (``key_names[id]`` names it when given)."""
    ids, inv = np.unique(video_ids, return_inverse=True)
    inv = inv.reshape(-1)
    by_prob = np.argsort(probs)
    order = by_prob[np.argsort(inv[by_prob], kind="stable")]  # by video, then by probability
    inv_s = inv[order]
    starts = np.r_[0, np.flatnonzero(np.diff(inv_s)) + 1]
    counts = np.diff(np.r_[starts, inv_s.shape[0]])
    mean_p = np.add.reduceat(probs[order], starts) / counts
    n_fake = np.add.reduceat(labels[order], starts)
    mixed = np.flatnonzero((n_fake != 0) & (n_fake != counts))
    if mixed.size:
        j = int(mixed[0])
        vid = ids[j]
        name = key_names[int(vid)] if key_names is not None else int(vid)
        raise ValueError(
            f"video {name!r} has both real and fake frames ({counts[j] - n_fake[j]} real, "
            f"{n_fake[j]} fake); {mixed.size} such video(s) — video keys must separate real and "
            "fake videos (key = (test set, label/method, video folder))"
        )
    return ids, mean_p, (n_fake > 0).astype(np.int64)


def _video_ids_from_keys(video_keys: Any, n: int) -> tuple[np.ndarray, list[Hashable] | None]:
    if isinstance(video_keys, (torch.Tensor, np.ndarray)):
        arr = _to_numpy(video_keys, "video_keys")
        if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
            if arr.shape[0] != n:
                raise ValueError(f"video_keys has {arr.shape[0]} entries for {n} frames")
            return arr.astype(np.int64, copy=False), None
        video_keys = arr.tolist() if arr.ndim == 1 else [tuple(r) for r in arr.tolist()]
    keys = list(video_keys)
    if len(keys) != n:
        raise ValueError(f"video_keys has {len(keys)} entries for {n} frames (one key per frame)")
    index: dict[Hashable, int] = {}
    ids = np.empty(n, dtype=np.int64)
    for i, k in enumerate(keys):
        try:
            ids[i] = index.setdefault(k, len(index))
        except TypeError as exc:
            raise TypeError(
                f"video_keys[{i}] = {k!r} is not hashable; use a tuple such as "
                "(test set, label/method, video folder)"
            ) from exc
    return ids, list(index)


# --------------------------------------------------------------------------- public entry points
def metrics_from_arrays(p: np.ndarray, y: np.ndarray, video_ids: np.ndarray | None = None,
                        key_names: Sequence[Hashable] | None = None) -> dict[str, float]:
    """Metrics of already-validated arrays (see ``check_probs_labels``)."""
    out = _binary_metrics(p, y)
    if video_ids is not None:
        _, vp, vy = video_scores(p, y, video_ids, key_names)
        out.update(_binary_metrics(vp, vy, prefix="video_"))
    return out


def compute_metrics(probs: Any, labels: Any, video_keys: Any = None) -> dict[str, float]:
    """Frame (and video) metrics of one test set.

    Args:
        probs: fake-probabilities, one per frame (tensor, numpy array or list), in [0, 1].
        labels: 0 = real, 1 = fake, one per frame.
        video_keys: optional, one hashable key per frame (e.g. ``(test_set, method, folder)``),
            or an integer array/tensor of video ids.

    Returns:
        ``{"auc", "ap", "eer", "eer_interp", "acc"}`` and, with ``video_keys``,
        ``{"video_auc", "video_eer", "video_eer_interp", "video_acc"}`` as Python floats.

    Raises:
        ValueError: one class missing, NaN / out-of-range probabilities, labels not 0/1,
            length mismatch, or a video with both real and fake frames.
    """
    p, y = check_probs_labels(probs, labels)
    if video_keys is None:
        return metrics_from_arrays(p, y)
    ids, names = _video_ids_from_keys(video_keys, p.shape[0])
    return metrics_from_arrays(p, y, ids, names)
