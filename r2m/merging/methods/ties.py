"""TIES-Merging: trim, elect sign, disjoint merge.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023
(arXiv 2306.01708). With D the number of parameters and τ_i the flattened task vector:

1. Trim (per task, over all tensors flattened together): t_i = the (D − ⌊kD⌋)-th smallest |τ_i|;
   τ̂_i = τ_i ⊙ [|τ_i| ≥ t_i] — the authors' rule, ⌊kD⌋ + 1 entries kept when there are no ties.
   k = 0.2 ("topk20", the paper's default).
2. Elect: s = sign(Σ_i τ̂_i) per entry; an exactly-zero sum takes sign(Σ_entries Σ_i τ̂_i), the
   sign of the whole model's summed mass.
3. Disjoint merge: τ_m = Σ_{i∈A} τ̂_i / |A| over A = {i : τ̂_i ≠ 0, sign(τ̂_i) = s}
   (``merge_func="mean"``, the paper; 0 when A is empty) or Σ_{i∈A} τ̂_i (``"sum"``).
4. θ* = θ0 + λ τ_m, λ = 1.0. (FusionBench's published CLIP numbers use ``"sum"`` with λ = 0.3.)

Streaming: one task at a time for the thresholds (one D-float buffer and an exact two-pass
radix selection), then one pass over tensors for the merge.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.spec import MethodSpec, check_choice, check_number
from r2m.merging.tasks import TaskSet

# k: fraction kept (paper "topk20"); merge_func: disjoint mean (paper); lam: λ = 1 (paper's mean variant)
DEFAULTS = {"k": 0.2, "merge_func": "mean", "lam": 1.0}


def kth_smallest_nonneg(x: Tensor, kth: int, algorithm: str = "radix", chunk: int = 1 << 22) -> Tensor:
    """The ``kth`` smallest value (1-indexed) of a 1-D tensor of non-negative floats, exactly.

    ``"radix"`` (default): IEEE bit patterns of x ≥ 0 are monotone in x, so a chunked histogram
    of the top 15 bits finds the bucket holding the answer, and ``kthvalue`` runs on that bucket
    only. Two passes, temporaries bounded by ``chunk``; avoids ``torch.kthvalue`` on all D values
    (a full copy plus int64 indices: 3× the input on CPU, and one slice on CUDA).
    ``"kthvalue"``: ``torch.kthvalue`` on x (the straightforward route)."""
    if not 1 <= kth <= x.numel():
        raise ValueError(f"kth must lie in [1, {x.numel()}], got {kth}")
    if algorithm == "kthvalue":
        return torch.kthvalue(x, kth).values
    int_dtype, shift = {torch.float32: (torch.int32, 16), torch.float64: (torch.int64, 48)}[x.dtype]
    bits = x.reshape(-1).view(int_dtype)
    n_buckets = 1 << 15
    counts = torch.zeros(n_buckets, dtype=torch.int64, device=x.device)
    for start in range(0, bits.numel(), chunk):
        counts += torch.bincount((bits[start : start + chunk] >> shift).long(), minlength=n_buckets)
    cum = counts.cumsum(0)
    bucket = int(torch.searchsorted(cum, torch.tensor([kth], device=x.device)).item())
    below = int(cum[bucket - 1]) if bucket > 0 else 0
    inside = torch.cat(
        [c[(c >> shift) == bucket] for c in (bits[s : s + chunk] for s in range(0, bits.numel(), chunk))]
    )
    return torch.kthvalue(inside.view(x.dtype), kth - below).values


def ties_merge(ts: TaskSet, *, k: float, merge_func: str, lam: float) -> dict[str, Tensor]:
    """TIES-Merging (module docstring); returns θ*."""
    d = ts.total_numel
    kth = d - int(math.floor(k * d))  # rank (ascending, 1-indexed) of the trim threshold
    thresholds: list[Tensor] = []
    total_mass = torch.zeros((), dtype=torch.float64, device=ts.device)
    for i in range(ts.n):
        flat = torch.empty(d, dtype=ts.dtype, device=ts.device)  # |τ_i| over all tensors (D floats)
        offset = 0
        for key in ts.keys:
            size = ts.numel(key)
            torch.abs(ts.task_vector(i, key).reshape(-1), out=flat[offset : offset + size])
            offset += size
        thr = kth_smallest_nonneg(flat, kth) if kth >= 1 else torch.zeros((), dtype=ts.dtype, device=ts.device)
        del flat
        for key in ts.keys:  # summed mass of the trimmed task vector (for the zero-sum sign rule)
            tau = ts.task_vector(i, key)
            total_mass += torch.where(tau.abs() >= thr, tau, 0).sum(dtype=torch.float64)
        thresholds.append(thr)
    thr_all = torch.stack(thresholds)
    global_sign = torch.sign(total_mass)

    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="ties"):
        taus = ts.task_vectors(key)
        thr = thr_all.reshape(-1, *([1] * (taus.ndim - 1)))
        trimmed = torch.where(taus.abs() >= thr, taus, 0)
        sign = torch.sign(trimmed.sum(0, dtype=torch.float64))
        sign = torch.where(sign == 0, global_sign, sign).to(taus.dtype)
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        merged = torch.where(agree, trimmed, 0).sum(0)
        if merge_func == "mean":
            merged = merged / agree.sum(0).clamp_min(1).to(taus.dtype)
        out[key] = ts.output(key, lam * merged)
    return out


def _check(hp: dict) -> None:
    check_number("ties", "k", hp["k"], lo=0.0, hi=1.0)
    check_choice("ties", "merge_func", hp["merge_func"], ("mean", "sum"))
    check_number("ties", "lam", hp["lam"])


def _run(ts: TaskSet, cache: DecompositionCache | None, *, k: float, merge_func: str, lam: float) -> dict[str, Tensor]:
    return ties_merge(ts, k=float(k), merge_func=merge_func, lam=float(lam))


SPEC = MethodSpec("ties", _run, DEFAULTS, _check, summary="trim top-k, elect sign, disjoint merge")
