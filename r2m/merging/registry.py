"""Method registry and the :func:`merge` entry point.

Adding a method: write ``r2m/merging/methods/<name>.py`` with a pure function holding the math
(equation and citation in its docstring), ``DEFAULTS`` and a :class:`~r2m.merging.spec.MethodSpec`;
list the spec in ``_SPECS`` below; add ``configs/merge/<name>.yaml`` with the same defaults and a
reference-implementation test in ``tests/merging``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.methods import average, cart, dare, iso, r2m, task_arithmetic, ties, tsv
from r2m.merging.spec import MethodSpec
from r2m.merging.tasks import TaskSet

__all__ = ["METHODS", "method_defaults", "method_spec", "merge", "merge_many"]

_SPECS: tuple[MethodSpec, ...] = (
    average.SPEC,
    task_arithmetic.SPEC,
    ties.SPEC,
    dare.SPEC,
    cart.SPEC,
    tsv.SPEC,
    iso.SPEC_C,
    iso.SPEC_CTS,
    r2m.SPEC,
)
_REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}

#: Names of every merge method, in a fixed order.
METHODS: tuple[str, ...] = tuple(_REGISTRY)


def method_spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``method``; ``ValueError`` listing the valid names otherwise."""
    if method not in _REGISTRY:
        raise ValueError(f"unknown merge method {method!r}; valid methods: {', '.join(METHODS)}")
    return _REGISTRY[method]


def method_defaults(method: str) -> dict[str, Any]:
    """A fresh copy of ``method``'s default hyperparameters (the single source of truth)."""
    return copy.deepcopy(dict(method_spec(method).defaults))


def resolve_hparams(method: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``hparams``; ``ValueError`` for unknown names or invalid values."""
    spec = method_spec(method)
    unknown = sorted(set(hparams) - set(spec.defaults))
    if unknown:
        valid = ", ".join(spec.defaults) or "none"
        raise ValueError(f"{method}: unknown hyperparameter(s) {unknown}; valid: {valid}")
    hp = method_defaults(method)
    hp.update(hparams)
    spec.check(hp)
    return hp


def merge(
    method: str,
    base: Mapping[str, Tensor],
    specialists: Sequence[Mapping[str, Tensor]],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache: DecompositionCache | None = None,
    names: Sequence[str] | None = None,
    block_pattern: str | None = None,
    progress: bool = False,
    base_hash: str | None = None,
    task_hashes: Sequence[str] | None = None,
    **hparams: Any,
) -> dict[str, Tensor]:
    """Merge ``specialists`` (fine-tuned from ``base`` = θ0) with ``method``.

    Args:
        method: one of :data:`METHODS`.
        base: θ0, mapping open_clip visual-tower key (no prefix) → tensor; may be lazy
            (:class:`~r2m.merging.lazy.LazySafetensors`).
        specialists: N ≥ 1 mappings with the same keys, shapes and dtypes as ``base``.
        device: where to compute (default: CUDA when available).
        dtype: working dtype (float32 default, or float64); Grams, eigen-decompositions and polar
            factors always use float64.
        cache: optional :class:`DecompositionCache` (used by ``r2m``, ``cart``, ``tsv``).
        names: specialist names for error messages (default ``specialist[i]``).
        block_pattern: regular expression selecting the block matrices (default: the four
            open_clip transformer-block weights; see :mod:`r2m.merging.tasks`).
        progress: progress bars.
        base_hash, task_hashes: content identities for the cache keys (default: computed with
            ``r2m.utils.state_dict_hash``; pass them to avoid re-hashing in sweeps).
        **hparams: the method's hyperparameters (see :func:`method_defaults`).

    Returns:
        θ*: dict with the same keys (in base order), shapes and dtypes as ``base``, CPU tensors.
        Inputs are never modified.

    Raises:
        ValueError: unknown method or hyperparameter, invalid value, N = 0, missing/extra keys,
            shape/dtype mismatch, NaN/Inf — naming the checkpoint and tensor.
    """
    spec = method_spec(method)
    hp = resolve_hparams(method, hparams)
    ts = TaskSet(
        base,
        specialists,
        names=names,
        device=device,
        dtype=dtype,
        block_pattern=block_pattern,
        progress=progress,
        base_hash=base_hash,
        task_hashes=task_hashes,
    )
    with torch.no_grad():
        return spec.fn(ts, cache if spec.uses_cache else None, **hp)


def merge_many(
    method: str,
    base: Mapping[str, Tensor],
    specialists: Sequence[Mapping[str, Tensor]],
    grid: Sequence[Mapping[str, Any]],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache: DecompositionCache | None = None,
    names: Sequence[str] | None = None,
    block_pattern: str | None = None,
    progress: bool = False,
    base_hash: str | None = None,
    task_hashes: Sequence[str] | None = None,
    **common: Any,
) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
    """Hyperparameter sweep: yield ``(hparams, θ*)`` for every point of ``grid``.

    Each point (a mapping) overrides ``common``; all points are validated before the first merge.
    The merges share one validated input set: metadata checks, NaN/Inf checks, content hashes and —
    on CUDA — the device copies of θ0 and the task vectors happen once, and decompositions are
    served from ``cache`` (an in-memory :class:`DecompositionCache` is created when ``None``), so a
    sweep over ``alpha``/``rank_ratio`` computes each SVD once. Methods with a group sweep (R²M:
    consecutive points that differ only in ``alpha``/``eta``) compute their shared work once per
    group (R²M holds one backbone of residual sums meanwhile). Results equal :func:`merge` with a
    cache and the same arguments, bit for bit (without a cache, :func:`merge` may use a partial
    eigensolver and agree to round-off only). Keep the generator's results only as long as needed
    (one θ* per point)."""
    spec = method_spec(method)
    points = [resolve_hparams(method, {**common, **dict(point)}) for point in grid]
    ts = TaskSet(
        base,
        specialists,
        names=names,
        device=device,
        dtype=dtype,
        block_pattern=block_pattern,
        progress=progress,
        base_hash=base_hash,
        task_hashes=task_hashes,
    )
    if spec.uses_cache and cache is None:
        cache = DecompositionCache()
    use = cache if spec.uses_cache else None
    if spec.sweep is None:
        for hp in points:
            with torch.no_grad():
                merged = spec.fn(ts, use, **hp)
            yield hp, merged
        return
    # consecutive points that differ only in the method's free hyperparameters form one group
    groups: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []  # (fixed hyperparameters, points)
    for hp in points:
        fixed = {k: v for k, v in hp.items() if k not in spec.sweep_free}
        if groups and groups[-1][0] == fixed:
            groups[-1][1].append(hp)
        else:
            groups.append((fixed, [hp]))
    for _, group in groups:
        results = spec.sweep(ts, use, group)
        for hp in group:
            with torch.no_grad():
                merged = next(results)
            yield hp, merged
