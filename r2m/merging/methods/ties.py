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

Streaming: one task at a time for the thresholds (an exact two-pass radix selection over |τ_i|
recomputed in chunks, no D-float buffer), then one pass over tensors, in chunks of entries, for the
merge (see :func:`ties_merge`).
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
    flat = x.reshape(-1)
    return _radix_select(lambda: ((flat[s : s + chunk], None) for s in range(0, flat.numel(), chunk)), kth, x.dtype, x.device)


_RADIX_BITS = 15


def _radix_select(chunks, kth: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``kth`` smallest (1-indexed) of the non-negative values that ``chunks()`` yields, exactly.

    ``chunks()`` is called twice (histogram pass, gather pass) and must yield the same values in
    the same order each time, as ``(values, work)``: ``values`` a 1-D float tensor ≥ 0 (consumed
    before the next is requested), ``work`` ``None`` or an int buffer of the same length to use."""
    int_dtype, shift = {torch.float32: (torch.int32, 16), torch.float64: (torch.int64, 48)}[dtype]
    n_buckets = 1 << _RADIX_BITS
    counts = torch.zeros(n_buckets, dtype=torch.int64, device=device)
    for values, work in chunks():
        top = torch.bitwise_right_shift(values.view(int_dtype), shift, out=work) if work is not None else (
            values.view(int_dtype) >> shift)
        counts += torch.bincount(top, minlength=n_buckets)
    cum = counts.cumsum(0)
    bucket = int(torch.searchsorted(cum, torch.tensor([kth], device=device)).item())
    below = int(cum[bucket - 1]) if bucket > 0 else 0
    inside = []
    for values, work in chunks():
        top = torch.bitwise_right_shift(values.view(int_dtype), shift, out=work) if work is not None else (
            values.view(int_dtype) >> shift)
        inside.append(values[top == bucket])
    return torch.kthvalue(torch.cat(inside), kth - below).values


#: entries per chunk of the TIES passes (per task row): small enough that a chunk's N rows and
#: their temporaries stay in cache on CPU; large on CUDA, where each op is a kernel launch
CHUNK_CPU = 1 << 16
CHUNK_CUDA = 1 << 22
#: entries per chunk of the threshold passes (each chunk costs one ``bincount`` and its output)
RADIX_CHUNK = 1 << 20


def _abs_task_chunks(ts: TaskSet, i: int, chunk: int):
    """|τ_i| over all tensors (key order), in chunks, for :func:`_radix_select`; no D-float buffer
    (τ_i is recomputed from the inputs in each pass)."""
    mag = ts.scratch("ties.chunk", chunk)
    work = ts.scratch("ties.bits", chunk, torch.int32 if ts.dtype == torch.float32 else torch.int64)

    def gen():
        for key in ts.keys:
            theta = ts.specialist_tensor(i, key).reshape(-1)
            base = ts.base_tensor(key).reshape(-1)
            resident = ts._resident_tasks.get(key)
            for s in range(0, theta.numel(), chunk):
                e = min(s + chunk, theta.numel())
                m = mag[: e - s]
                if resident is not None:
                    torch.abs(resident[i].reshape(-1)[s:e], out=m)
                else:
                    torch.sub(theta[s:e], base[s:e], out=m).abs_()
                yield m, work[: e - s]

    return gen


def ties_merge(ts: TaskSet, *, k: float, merge_func: str, lam: float) -> dict[str, Tensor]:
    """TIES-Merging (module docstring); returns θ*.

    Pass 1, per task i: the trim threshold t_i by an exact radix selection over |τ_i| streamed in
    chunks (τ_i recomputed from the inputs, no D-float buffer), then the summed mass of the trimmed
    τ_i per tensor in float64 (its sign decides zero-sum entries). Pass 2, per tensor, in chunks of
    entries (every step is per entry given t_i and the global sign): trim, elect the sign from the
    float64 sum over tasks, disjoint mean. Every buffer is reused (:meth:`TaskSet.scratch`); the
    arithmetic is that of the straightforward per-tensor formulation (the same float32/float64
    operations in the same order, so the same bits on CPU)."""
    d = ts.total_numel
    n = ts.n
    chunk = CHUNK_CUDA if ts.device.type == "cuda" else CHUNK_CPU
    kth = d - int(math.floor(k * d))  # rank (ascending, 1-indexed) of the trim threshold
    thresholds: list[Tensor] = []
    total_mass = torch.zeros((), dtype=torch.float64, device=ts.device)
    for i in range(n):
        if kth >= 1:
            thr = _radix_select(_abs_task_chunks(ts, i, max(chunk, RADIX_CHUNK)), kth, ts.dtype, ts.device)
        else:
            thr = torch.zeros((), dtype=ts.dtype, device=ts.device)
        for key in ts.keys:  # summed mass of the trimmed task vector (for the zero-sum sign rule)
            size = ts.numel(key)
            tau = ts.task_vector_into(i, key, ts.scratch("ties.tau", size))
            keep = torch.ge(torch.abs(tau, out=ts.scratch("ties.keep", size)), thr, out=ts.scratch("ties.keep", size))
            wide = ts.scratch("ties.wide", size, torch.float64).copy_(tau.mul_(keep))
            total_mass += wide.sum()  # = where(|τ| ≥ t, τ, 0).sum(dtype=float64): the same bits
        thresholds.append(thr)
    ts.release_scratch()
    thr_col = torch.stack(thresholds).reshape(n, 1)  # (N, 1): broadcasts over a chunk's entries
    global_sign = torch.sign(total_mass)

    g = float(global_sign)  # ±1, or 0 (zero or NaN mass, as torch.sign gives)
    t_buf = ts.scratch("ties.t", n * chunk).view(n, chunk)
    a_buf = ts.scratch("ties.a", n * chunk).view(n, chunk)
    s64_buf = ts.scratch("ties.s64", chunk, torch.float64)
    z64_buf = ts.scratch("ties.z64", chunk, torch.float64)
    s_buf = ts.scratch("ties.s", chunk)
    c_buf = ts.scratch("ties.c", chunk)
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="ties"):
        size = ts.numel(key)
        base = ts.base_tensor(key).reshape(-1)
        resident = ts._resident_tasks.get(key)
        thetas = None if resident is not None else [ts.specialist_tensor(i, key).reshape(-1) for i in range(n)]
        merged_all = torch.empty(size, dtype=ts.dtype, device=ts.device)  # becomes θ*[key]
        for s in range(0, size, chunk):
            e = min(s + chunk, size)
            m = e - s
            t, a = t_buf[:, :m], a_buf[:, :m]
            for i in range(n):
                if resident is not None:
                    t[i].copy_(resident[i].reshape(-1)[s:e])
                else:
                    torch.sub(thetas[i][s:e], base[s:e], out=t[i])
            # trim: τ̂_i = τ_i · [|τ_i| ≥ t_i] (0/1 masks as floats: exact, and far faster than
            # masked_fill; a trimmed entry may read −0 — no zero's sign reaches θ*, see below)
            t.mul_(torch.ge(torch.abs(t, out=a), thr_col, out=a))
            # elect: s = sign(Σ_i τ̂_i) (float64 sum, in order), an exactly-zero sum takes the
            # global sign g: s + [s = 0] · g
            s64 = s64_buf[:m].copy_(t[0])
            for i in range(1, n):
                s64.add_(t[i])
            s64.sign_()
            s64.add_(torch.eq(s64, 0, out=z64_buf[:m]).mul_(g))
            sgn = s_buf[:m].copy_(s64)
            # disjoint merge over A = {i : τ̂_i ≠ 0, sign(τ̂_i) = s} ⇔ τ̂_i · s > 0. No Inf · 0 arises
            # when some τ_i overflowed: the τ_i of one entry share θ0, so its infinities share a
            # sign, are kept by the trim and agree with s (torch.sign(NaN) = 0 for a NaN mass)
            agree = torch.gt(torch.mul(t, sgn, out=a), 0, out=a)
            if merge_func == "mean":
                count = torch.sum(agree, 0, out=c_buf[:m]).clamp_min_(1)
            # (an empty A sums ±0 · τ̂: torch's sum starts from +0, so that is +0, as in the masked form)
            merged = torch.sum(t.mul_(agree), 0, out=merged_all[s:e])
            if merge_func == "mean":
                merged.div_(count)
            merged.mul_(lam)
        out[key] = ts.output(key, merged_all.view(ts.shapes[key]), owned=True)
    ts.release_scratch()
    return out


def _check(hp: dict) -> None:
    check_number("ties", "k", hp["k"], lo=0.0, hi=1.0)
    check_choice("ties", "merge_func", hp["merge_func"], ("mean", "sum"))
    check_number("ties", "lam", hp["lam"])


def _run(ts: TaskSet, cache: DecompositionCache | None, *, k: float, merge_func: str, lam: float) -> dict[str, Tensor]:
    return ties_merge(ts, k=float(k), merge_func=merge_func, lam=float(lam))


SPEC = MethodSpec("ties", _run, DEFAULTS, _check, summary="trim top-k, elect sign, disjoint merge")
