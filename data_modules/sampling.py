"""Frame sampling per video. (The validation carve is by identity: :mod:`data_modules.identities`.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

__all__ = ["uniform_indices", "select_frames"]

T = TypeVar("T")


def uniform_indices(length: int, n: int) -> list[int]:
    """``n`` evenly spaced indices over ``[0, length-1]``, first and last included:
    ``round(i·(length−1)/(n−1))`` for ``i = 0..n−1`` (``n == 1`` → ``[0]``); all of them when
    ``n >= length``. Distinct and increasing (the step is ≥ 1)."""
    if n <= 0:
        raise ValueError(f"frames_per_video must be positive or None, got {n}")
    if n >= length:
        return list(range(length))
    if n == 1:
        return [0]
    return [int(x) for x in np.floor(np.arange(n) * (length - 1) / (n - 1) + 0.5)]


def select_frames(frames: Sequence[T], n: int | None, mode: str = "uniform") -> list[T]:
    """Keep ``n`` frames of a (sorted) video: ``"uniform"`` over the whole video (default), or
    ``"first"`` = the first ``n`` (what DeepfakeBench's ``frame_num`` effectively does, for
    like-for-like numbers). ``n=None`` keeps all."""
    if mode not in ("uniform", "first"):
        raise ValueError(f"frame_sampling must be 'uniform' or 'first', got {mode!r}")
    if n is None:
        return list(frames)
    if n <= 0:
        raise ValueError(f"frames_per_video must be positive or None, got {n}")
    if mode == "first":
        return list(frames[:n])
    return [frames[i] for i in uniform_indices(len(frames), n)]
