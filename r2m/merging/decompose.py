"""Cached decompositions shared by the SVD-based methods: per-tensor task Grams and matrix spectra.

* :func:`tensor_grams` — G_l[i, j] = ⟨τ_i[l], τ_j[l]⟩ for every tensor l (float64), one pass over the
  inputs; with a cache, each unordered pair of specialists is looked up by (base hash, the two task
  hashes), and only the missing pairs are computed (adding one specialist to N cached ones: N + 1
  pairs). Pairs are computed one by one so cached and fresh values agree bit for bit.
* :func:`spectra` — small-side spectral factors (s, Q) of a stack of matrices, each looked up under
  a caller-chosen entry key plus the spectral route (:func:`~r2m.merging.linalg.eig_tag`). With a
  cache the full spectrum is computed and stored, so any later truncation rank is served from it;
  without a cache only the eigenpairs the merge reads are computed (the leading ⌈K/8⌉ on the CPU
  LAPACK route when the rank fits). Q is rounded to the working dtype both when stored and when
  freshly computed, so a merge from a warm cache equals a merge from an empty one bit for bit. A
  merge without a cache agrees with them to float32 round-off, not bit for bit (partial vs full
  eigensolver).
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.linalg import BATCHED_EIGH, eig_tag, gram_eigh, pair_inner_products, small_side, spectral_route
from r2m.merging.tasks import TaskSet

__all__ = ["layout_signature", "set_signature", "tensor_grams", "spectra"]


def _sha(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


def layout_signature(ts: TaskSet) -> str:
    """Hash of the tensor layout (keys in order, shapes)."""
    return _sha(*[f"{k}:{ts.shapes[k]}" for k in ts.keys])


def set_signature(ts: TaskSet, *extra: object, ordered: bool = False) -> str:
    """Hash identifying the task set (base, task hashes sorted — or in order when ``ordered`` —,
    layout, working dtype) plus ``extra`` configuration values."""
    hashes = ts.task_hashes() if ordered else sorted(ts.task_hashes())
    return _sha(ts.base_hash(), *hashes, layout_signature(ts), ts.dtype, *extra)


def tensor_grams(ts: TaskSet, cache: DecompositionCache | None) -> Tensor:
    """Per-tensor task Grams, shape (L, N, N), float64 on the device; L follows ``ts.keys``."""
    n = ts.n
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    values: dict[tuple[int, int], Tensor] = {}
    entry_of: dict[tuple[int, int], str] = {}
    todo: list[tuple[int, int]] = []
    if cache is not None:
        base, hashes, layout = ts.base_hash(), ts.task_hashes(), layout_signature(ts)
        seen: dict[str, tuple[int, int]] = {}
        for i, j in pairs:
            a, b = sorted((hashes[i], hashes[j]))
            entry = f"gram|{base}|{layout}|{a}|{b}"
            entry_of[(i, j)] = entry
            if entry in seen:  # identical specialists share the pair entry
                continue
            seen[entry] = (i, j)
            hit = cache.get("gram_pairs", entry)
            if hit is None:
                todo.append((i, j))
            else:
                values[(i, j)] = hit["ip"].to(ts.device)
    else:
        todo = pairs
    if todo:
        cols = []
        for key in ts.keys_loop(desc="gram"):
            cols.append(pair_inner_products(ts.task_vectors(key, scratch=True), todo))
        per_pair = torch.stack(cols, dim=1)  # (len(todo), L)
        for idx, pair in enumerate(todo):
            values[pair] = per_pair[idx]
            if cache is not None:
                cache.put("gram_pairs", entry_of[pair], {"ip": per_pair[idx]})
    if cache is not None:  # fill pairs that shared an entry
        first = {}
        for pair in pairs:
            first.setdefault(entry_of[pair], pair)
        for pair in pairs:
            values.setdefault(pair, values[first[entry_of[pair]]])
    g = torch.zeros(len(ts.keys), n, n, dtype=torch.float64, device=ts.device)
    for (i, j), v in values.items():
        g[:, i, j] = v
        g[:, j, i] = v
    return g


def spectra(
    ts: TaskSet,
    cache: DecompositionCache | None,
    xs: Tensor,
    entries: list[str] | None,
    rank: int | None = None,
) -> tuple[list[Tensor], list[Tensor], str]:
    """Spectral factors of each matrix in ``xs`` (B, m, n): lists of s (T,) float64 and
    Q (K, T) in the working dtype, plus the side; ``entries[b]`` is the cache key of ``xs[b]``.

    ``rank``: the largest truncation rank the caller will read (``None``: the full spectrum is
    needed). With a cache, the full spectrum is always computed (T = K), so that every later
    rank — a sweep, a re-merge — is served without a new decomposition; without one, only what
    this merge reads: T = :func:`~r2m.merging.linalg.eig_columns` (K, rank, device)."""
    b_count, m, n = xs.shape
    side = small_side(m, n)
    if cache is not None:
        rank = None
    tag = eig_tag(min(m, n), rank, xs.device)
    keys = [f"{e}|{tag}" for e in entries] if (cache is not None and entries is not None) else None
    s_list: list[Tensor | None] = [None] * b_count
    q_list: list[Tensor | None] = [None] * b_count
    missing: list[int] = []
    for b in range(b_count):
        hit = cache.get("svd", keys[b]) if keys is not None else None
        if hit is None:
            missing.append(b)
        else:
            s_list[b] = hit["s"].to(ts.device)
            q_list[b] = hit["q"].to(ts.device)
    if missing:
        batched = spectral_route(xs.device) == "torch" and BATCHED_EIGH.get(xs.device.type, False)
        if batched and len(missing) > 1:
            s, q, _ = gram_eigh(xs[missing], rank)
            fresh = [(s[j], q[j].to(ts.dtype).contiguous()) for j in range(len(missing))]
        else:  # one at a time: bounds the float64 temporaries to one matrix
            fresh = []
            for b in missing:
                s, q, _ = gram_eigh(xs[b], rank)
                fresh.append((s, q.to(ts.dtype).contiguous()))
        for (s, q), b in zip(fresh, missing):
            s_list[b], q_list[b] = s, q
            if keys is not None:
                cache.put("svd", keys[b], {"s": s, "q": q})
    return s_list, q_list, side  # type: ignore[return-value]
