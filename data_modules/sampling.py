"""Frame sampling per video and the deterministic validation carve (DF40 has no val split)."""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from data_modules.index import VideoRecord

__all__ = ["uniform_indices", "select_frames", "carve_validation"]

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


def carve_validation(
    records: Sequence[VideoRecord], fraction: float = 0.1, seed: int = 1024
) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Split training videos into (train, val), by video, deterministically.

    Stratified by (dataset, label): within each stratum the unique video keys are sorted, permuted
    with ``numpy.random.default_rng([seed, crc32(dataset), label])`` and the first
    ``max(1, round(fraction·n))`` keys go to validation (none when ``fraction == 0`` or the stratum
    has a single video). So each class of each training JSON is represented, the carve of a JSON
    does not depend on which other JSONs are trained with it, and all frames of a video stay on one
    side. Input order is preserved within each output list.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    strata: dict[tuple[str, int], set[tuple[str, str, str]]] = defaultdict(set)
    for r in records:
        strata[(r.dataset, r.label)].add(r.key)
    val_keys: set[tuple[str, str, str]] = set()
    for (dataset, label), keys in sorted(strata.items()):
        n = len(keys)
        if fraction == 0 or n < 2:
            continue
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        rng = np.random.default_rng([seed, zlib.crc32(dataset.encode()), label + 1])
        ordered = sorted(keys)
        perm = rng.permutation(n)
        val_keys.update(ordered[i] for i in perm[:n_val])
    train = [r for r in records if r.key not in val_keys]
    val = [r for r in records if r.key in val_keys]
    return train, val
