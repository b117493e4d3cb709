"""Head merging: the R²M paper's shared head is the average of the specialists' linear heads.

R²M code kit ``scripts/merge_head.py`` ("Head-(c)"): W = (1/N) Σ_i W_i, b = (1/N) Σ_i b_i, attached
to the merged encoder without retraining.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["merge_heads"]

_HEAD_KEYS = ("weight", "bias")


def merge_heads(heads: Sequence[Mapping[str, Tensor]], names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Average ``{"weight": W_i, "bias": b_i}`` over the specialists (mean computed in float64,
    returned as CPU tensors in the heads' dtype). Raises ``ValueError`` naming the head and key for
    missing/extra keys, shape or dtype mismatches and NaN/Inf values."""
    if isinstance(heads, Mapping) or not isinstance(heads, Sequence) or len(heads) == 0:
        raise ValueError("merge_heads needs a non-empty sequence of head state dicts")
    labels = list(names) if names is not None else [f"head[{i}]" for i in range(len(heads))]
    if len(labels) != len(heads):
        raise ValueError(f"names must list one name per head ({len(heads)})")
    ref: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for i, head in enumerate(heads):
        if not isinstance(head, Mapping):
            raise ValueError(f"{labels[i]} is a {type(head).__name__}, not a mapping")
        keys = set(head.keys())
        if keys != set(_HEAD_KEYS):
            raise ValueError(
                f"{labels[i]}: expected keys {list(_HEAD_KEYS)}, got {sorted(keys)} "
                f"(missing {sorted(set(_HEAD_KEYS) - keys)}, extra {sorted(keys - set(_HEAD_KEYS))})"
            )
        for key in _HEAD_KEYS:
            t = head[key]
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise ValueError(f"{labels[i]}: {key!r} must be a floating-point tensor")
            info = (tuple(t.shape), t.dtype)
            if key not in ref:
                ref[key] = info
            elif info != ref[key]:
                raise ValueError(f"{labels[i]}: {key!r} has shape/dtype {info}, {labels[0]} has {ref[key]}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{labels[i]}: {key!r} contains NaN or Inf")
    if ref["weight"][0][:1] != ref["bias"][0]:
        raise ValueError(f"head weight {ref['weight'][0]} and bias {ref['bias'][0]} shapes disagree")
    return {
        key: torch.stack([h[key].detach().to("cpu", torch.float64) for h in heads]).mean(0).to(ref[key][1])
        for key in _HEAD_KEYS
    }
