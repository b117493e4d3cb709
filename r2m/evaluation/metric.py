"""``DetectionMetrics``: a streaming, DDP-synced torchmetrics ``Metric`` for one test set.

It keeps exactly one fake-probability (float32), one label (int64) and, optionally, one video id
(int64) per frame as ``cat`` states; torchmetrics gathers them across processes at ``compute``.
The metric math is ``r2m.evaluation.functional`` (exact float64 / int64 on the CPU).

Probabilities are stored as float32 (what a softmax head produces; a float64 input is rounded).
Validation (NaN, range, labels, one class missing) happens once at ``compute`` so that ``update``
never forces a device synchronisation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from r2m.evaluation.functional import (
    binary_counts,
    check_probs_labels,
    metrics_from_arrays,
    roc_curve,
    roc_from_counts,
)

__all__ = ["DetectionMetrics", "DetectionOutput"]


class DetectionOutput(NamedTuple):
    """Everything one test set yields: metrics, ROC points (sklearn default curve), counts."""

    metrics: dict[str, float]
    fpr: np.ndarray
    tpr: np.ndarray
    n_frames: int
    n_videos: int | None


def _as_1d(x: Any, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"DetectionMetrics.update: {name} must be 1-D [B], got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


class DetectionMetrics(Metric):
    """Frame and video detection metrics of one test set (AUC, AP, EER, EER-interp, ACC@0.5).

    ``update(probs, labels, video_ids=None)`` with fake-probabilities ``[B]``, labels ``[B]``
    (0 real / 1 fake) and optional integer video ids ``[B]`` (unique per video within the test
    set, identical across processes); ``compute()`` returns the dict of ``compute_metrics``.
    Either every update passes video ids or none does.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    _STATE_DTYPES = {"probs": torch.float32, "labels": torch.long, "video_ids": torch.long}

    probs: list[Tensor] | Tensor
    labels: list[Tensor] | Tensor
    video_ids: list[Tensor] | Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._STATE_DTYPES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    # ------------------------------------------------------------------ streaming
    def update(self, probs: Tensor, labels: Tensor, video_ids: Tensor | None = None) -> None:
        """Append one batch (no validation of values here: that happens at ``compute``)."""
        p = _as_1d(probs, "probs", torch.float32, self.device)
        y = _as_1d(labels, "labels", torch.long, self.device)
        if p.shape[0] != y.shape[0]:
            raise ValueError(f"DetectionMetrics.update: probs has {p.shape[0]} entries, labels {y.shape[0]}")
        had_frames = len(self.probs) > 0
        had_videos = len(self.video_ids) > 0
        if had_frames and had_videos != (video_ids is not None):
            raise ValueError(
                "DetectionMetrics.update: pass video_ids in every update or in none "
                f"(earlier updates {'had' if had_videos else 'had no'} video ids)"
            )
        self.probs.append(p)
        self.labels.append(y)
        if video_ids is not None:
            v = _as_1d(video_ids, "video_ids", torch.long, self.device)
            if v.shape[0] != p.shape[0]:
                raise ValueError(f"DetectionMetrics.update: video_ids has {v.shape[0]} entries, probs {p.shape[0]}")
            self.video_ids.append(v)

    def _sync_dist(self, dist_sync_fn: Any = gather_all_tensors, process_group: Any | None = None) -> None:
        # A rank that saw no data has empty list states; torchmetrics would stand in a tensor of
        # the metric's float dtype for each of them, which breaks the gather of the int64 states.
        # Give each empty state its own dtype first (the pre-sync state is cached and restored).
        for name, dtype in self._STATE_DTYPES.items():
            value = getattr(self, name)
            if isinstance(value, list) and len(value) == 0:
                setattr(self, name, [torch.empty(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def _local_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Current (synced, inside a sync context) states as CPU numpy arrays."""

        def cat(state: list[Tensor] | Tensor, dtype: torch.dtype) -> np.ndarray:
            if isinstance(state, list):
                state = dim_zero_cat(state) if state else torch.empty(0, dtype=dtype)
            return state.detach().to("cpu", dtype).numpy()

        p = cat(self.probs, torch.float32)
        y = cat(self.labels, torch.long)
        v = cat(self.video_ids, torch.long)
        if v.shape[0] == 0:
            return p, y, None
        if v.shape[0] != p.shape[0]:
            raise ValueError(
                f"DetectionMetrics: {v.shape[0]} video ids for {p.shape[0]} frames — some processes "
                "or updates passed video_ids and others did not"
            )
        return p, y, v

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """States of all processes, without leaving the metric synced on return or error."""
        self.sync(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync)
        try:
            return self._local_arrays()
        finally:
            self.unsync(should_unsync=self._is_synced and self._should_unsync)

    # ------------------------------------------------------------------ results
    def compute(self) -> dict[str, float]:
        """The ``compute_metrics`` dict of all frames seen (by all processes)."""
        p, y, v = self._local_arrays()  # torchmetrics has already synced the states
        p64, y64 = check_probs_labels(p, y)
        return metrics_from_arrays(p64, y64, v)

    def roc(self) -> tuple[Tensor, Tensor]:
        """``(fpr, tpr)`` float64 tensors of sklearn's default ROC over all processes' frames."""
        p, y, _ = self._gathered()
        fpr, tpr, _ = roc_curve(p, y)  # validates
        return torch.from_numpy(fpr), torch.from_numpy(tpr)

    def compute_full(self) -> DetectionOutput | None:
        """Metrics, ROC and counts with one synchronisation; ``None`` when no frame was seen."""
        p, y, v = self._gathered()
        if p.shape[0] == 0:
            return None
        p64, y64 = check_probs_labels(p, y)
        fpr, tpr, _ = roc_from_counts(binary_counts(p64, y64))
        n_videos = None if v is None else int(np.unique(v).shape[0])
        return DetectionOutput(metrics_from_arrays(p64, y64, v), fpr, tpr, int(p.shape[0]), n_videos)

    @property
    def n_frames_local(self) -> int:
        """Frames seen by this process (no synchronisation)."""
        state = self.probs
        return sum(t.shape[0] for t in state) if isinstance(state, list) else int(state.shape[0])
