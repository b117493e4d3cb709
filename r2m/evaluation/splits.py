"""Per-test-set metrics → per-split means: ``EvalResult``, ``split_means``, ``SplitEvaluator``.

A *split* (``in_distribution``, ``cross_dataset``, ``unseen`` …, from the data config) names a
list of test sets; its score is the plain mean of its test sets' metrics (DeepfakeBench's
``avg``: every test JSON is its own pool, nothing is pooled across sets). ``overall`` is the
mean over all evaluated test sets, each counted once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from r2m.evaluation.functional import ALL_METRIC_KEYS, METRIC_KEYS, VIDEO_METRIC_KEYS
from r2m.evaluation.metric import DetectionMetrics

__all__ = ["OVERALL", "EvalResult", "split_means", "SplitEvaluator", "format_summary"]

OVERALL = "overall"
"""Name of the mean over all test sets in ``EvalResult.per_split``."""


def _ordered_keys(dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys present in *every* dict: known metric keys first (table order), then the rest."""
    common = set(dicts[0]).intersection(*dicts[1:])
    known = [k for k in ALL_METRIC_KEYS if k in common]
    rest = [k for k in dicts[0] if k in common and k not in ALL_METRIC_KEYS]
    return known + rest


def _mean(per_set: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    rows = [per_set[n] for n in names]
    return {k: math.fsum(float(r[k]) for r in rows) / len(rows) for k in _ordered_keys(rows)}


def split_means(per_set: Mapping[str, Mapping[str, float]],
                test_splits: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """Mean of each metric over the test sets of each split, plus ``"overall"``.

    Policy (documented, NaN-safe in the sense of never hiding a problem):

    * a test set listed in a split but absent from ``per_set`` (not evaluated) is skipped; a
      split whose sets are all absent is omitted;
    * a metric is averaged only if every present set of the split has it (video metrics appear
      only when all sets had video ids), so all means of a split cover the same sets;
    * a NaN value propagates: the mean is NaN (``math.fsum`` semantics), never silently dropped;
    * ``"overall"`` is the mean over all sets in ``per_set`` (each once, even if it is listed in
      several splits); a split may not itself be called ``"overall"``.
    """
    if OVERALL in test_splits:
        raise ValueError(f"split name {OVERALL!r} is reserved for the mean over all test sets")
    out: dict[str, dict[str, float]] = {}
    for split, names in test_splits.items():
        present = [n for n in dict.fromkeys(names) if n in per_set]
        if present:
            out[split] = _mean(per_set, present)
    if per_set:
        out[OVERALL] = _mean(per_set, list(per_set))
    return out


@dataclass
class EvalResult:
    """Evaluation of one model on several test sets.

    ``per_set``: test set → metrics; ``per_split``: split → mean metrics, including
    ``"overall"``; ``roc``: test set → ``(fpr, tpr)`` (sklearn's default ROC points);
    ``n_frames`` / ``n_videos``: counts per test set; ``test_splits``: split → test set names
    used for the means (as configured)."""

    per_set: dict[str, dict[str, float]]
    per_split: dict[str, dict[str, float]]
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    n_frames: dict[str, int] = field(default_factory=dict)
    n_videos: dict[str, int] = field(default_factory=dict)
    test_splits: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_per_set(cls, per_set: Mapping[str, Mapping[str, float]],
                     test_splits: Mapping[str, Sequence[str]] | None = None,
                     roc: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                     n_frames: Mapping[str, int] | None = None,
                     n_videos: Mapping[str, int] | None = None) -> EvalResult:
        """Build a result from per-set metric dicts (e.g. ``compute_metrics`` outputs)."""
        splits = {k: list(v) for k, v in (test_splits or {}).items()}
        per = {k: dict(v) for k, v in per_set.items()}
        return cls(per_set=per, per_split=split_means(per, splits), roc=dict(roc or {}),
                   n_frames=dict(n_frames or {}), n_videos=dict(n_videos or {}), test_splits=splits)

    def splits_of(self, test_set: str) -> list[str]:
        """Splits that list ``test_set``."""
        return [s for s, names in self.test_splits.items() if test_set in names]

    def sets_in(self, split: str) -> list[str]:
        """Evaluated test sets averaged into ``split`` (``"overall"``: all of them)."""
        if split == OVERALL:
            return list(self.per_set)
        return [n for n in dict.fromkeys(self.test_splits.get(split, [])) if n in self.per_set]

    def to_dict(self, include_roc: bool = False) -> dict[str, Any]:
        """JSON-ready dict (ROC points only when ``include_roc``)."""
        d: dict[str, Any] = {
            "per_set": self.per_set, "per_split": self.per_split, "n_frames": self.n_frames,
            "n_videos": self.n_videos, "test_splits": self.test_splits,
        }
        if include_roc:
            d["roc"] = {k: {"fpr": np.asarray(f).tolist(), "tpr": np.asarray(t).tolist()}
                        for k, (f, t) in self.roc.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """Inverse of ``to_dict``."""
        roc = {k: (np.asarray(v["fpr"], dtype=np.float64), np.asarray(v["tpr"], dtype=np.float64))
               for k, v in d.get("roc", {}).items()}
        return cls(per_set={k: dict(v) for k, v in d["per_set"].items()},
                   per_split={k: dict(v) for k, v in d["per_split"].items()}, roc=roc,
                   n_frames=dict(d.get("n_frames", {})), n_videos=dict(d.get("n_videos", {})),
                   test_splits={k: list(v) for k, v in d.get("test_splits", {}).items()})


class SplitEvaluator(nn.Module):
    """One ``DetectionMetrics`` per test set (an ``nn.ModuleList`` indexed like the test
    dataloaders, so names with dots are fine), aggregated into an ``EvalResult``.

    Use it as a submodule of a LightningModule so it follows the device and syncs under DDP::

        self.evaluator = SplitEvaluator(dm.test_set_names, dm.test_splits)
        # test_step(batch, batch_idx, dataloader_idx=0):
        probs = logits.float().softmax(-1)[:, 1]
        self.evaluator.update(dataloader_idx, probs, batch["label"], batch.get("video_id"))
        # on_test_epoch_end (on every rank — compute is a collective under DDP):
        self.test_results = self.evaluator.compute(); self.evaluator.reset()

    Test sets that received no frame on any process are left out (with a warning); a test set
    with one class only raises ``ValueError`` naming it.

    Under DDP the metrics see exactly the frames the test loaders deliver: a sampler that pads
    shards with repeated samples (``DistributedSampler``) counts those frames twice, so test
    loaders should shard without padding for exact numbers.
    """

    def __init__(self, test_set_names: Sequence[str],
                 test_splits: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__()
        names = list(test_set_names)
        if not names:
            raise ValueError("SplitEvaluator needs at least one test set name")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate test set names: {dup}")
        splits = {str(k): list(v) for k, v in (test_splits or {}).items()}
        if OVERALL in splits:
            raise ValueError(f"split name {OVERALL!r} is reserved for the mean over all test sets")
        for split, members in splits.items():
            unknown = [m for m in members if m not in names]
            if unknown:
                raise ValueError(f"split {split!r} lists unknown test sets {unknown}; known: {names}")
        self.test_set_names = names
        self.test_splits = splits
        self.metrics = nn.ModuleList(DetectionMetrics() for _ in names)

    def __getitem__(self, name: str) -> DetectionMetrics:
        return self.metrics[self.test_set_names.index(name)]  # type: ignore[return-value]

    def update(self, dataloader_idx: int, probs: Tensor, labels: Tensor,
               video_ids: Tensor | None = None) -> None:
        """Add a batch of test set number ``dataloader_idx`` (order of ``test_set_names``)."""
        if not 0 <= int(dataloader_idx) < len(self.metrics):
            raise IndexError(
                f"dataloader_idx {dataloader_idx} out of range for {len(self.metrics)} test sets "
                f"{self.test_set_names}"
            )
        self.metrics[int(dataloader_idx)].update(probs, labels, video_ids)

    def compute(self) -> EvalResult:
        """Sync, compute every test set, and average per split (collective under DDP)."""
        per_set: dict[str, dict[str, float]] = {}
        roc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        n_frames: dict[str, int] = {}
        n_videos: dict[str, int] = {}
        for name, metric in zip(self.test_set_names, self.metrics):
            try:
                out = metric.compute_full()  # type: ignore[operator]
            except ValueError as exc:
                raise ValueError(f"test set {name!r}: {exc}") from exc
            if out is None:
                warnings.warn(f"SplitEvaluator: test set {name!r} received no frames; left out",
                              stacklevel=2)
                continue
            per_set[name] = out.metrics
            roc[name] = (out.fpr, out.tpr)
            n_frames[name] = out.n_frames
            if out.n_videos is not None:
                n_videos[name] = out.n_videos
        return EvalResult(per_set=per_set, per_split=split_means(per_set, self.test_splits),
                          roc=roc, n_frames=n_frames, n_videos=n_videos,
                          test_splits={k: list(v) for k, v in self.test_splits.items()})

    def reset(self) -> None:
        """Clear all states (call after ``compute``, before the next evaluation)."""
        for metric in self.metrics:
            metric.reset()  # type: ignore[operator]


_SHORT = {"auc": "AUC", "ap": "AP", "eer": "EER", "eer_interp": "EERi", "acc": "ACC",
          "video_auc": "vAUC", "video_eer": "vEER", "video_eer_interp": "vEERi", "video_acc": "vACC"}


def format_summary(result: EvalResult, digits: int = 4) -> str:
    """Plain-text table of a result for logs: one line per test set, then split means."""
    keys = [k for k in METRIC_KEYS + VIDEO_METRIC_KEYS
            if any(k in m for m in list(result.per_set.values()) + list(result.per_split.values()))]
    rows: list[list[str]] = []

    def fmt(metrics: Mapping[str, float]) -> list[str]:
        return [f"{metrics[k]:.{digits}f}" if k in metrics else "-" for k in keys]

    for name, metrics in result.per_set.items():
        frames = result.n_frames.get(name)
        rows.append([name, "+".join(result.splits_of(name)) or "-",
                     "-" if frames is None else str(frames)] + fmt(metrics))
    sep_at = len(rows)
    for split, metrics in result.per_split.items():
        sets = result.sets_in(split)
        frames = sum(result.n_frames.get(n, 0) for n in sets)
        rows.append([f"{split} mean", f"{len(sets)} set{'' if len(sets) == 1 else 's'}", str(frames)] + fmt(metrics))
    header = ["test set", "split", "frames"] + [_SHORT.get(k, k) for k in keys]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * len(line(header))
    out = [line(header), rule] + [line(r) for r in rows[:sep_at]]
    if sep_at < len(rows):
        out += [rule] + [line(r) for r in rows[sep_at:]]
    return "\n".join(out)
