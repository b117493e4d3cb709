"""TSV-M: Task Singular Vectors — Merge.

Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025
(arXiv 2412.00081). Per matrix tensor l (every 2-D tensor) of shape m×n, K = min(m, n):

1. each task keeps its top r = max(1, ⌊K/N⌋) singular triplets: τ_i[l] ≈ U_i Σ_i V_iᵀ;
2. stack U = [U_1 … U_N] (m × Nr), V = [V_1 … V_N] (n × Nr), Σ = diag(Σ_1 … Σ_N);
3. decorrelate: U⊥ = polar(U), V⊥ = polar(V) (orthogonal polar factor P Qᵀ of each one's SVD);
4. Δ[l] = U⊥ Σ V⊥ᵀ.

Every other tensor takes Δ[l] = mean_i τ_i[l]. θ* = θ0 + α Δ, α = 1.0 (FusionBench default; the
official code sweeps α on validation data).

Cache: the spectral factors of every τ_i[l] depend on one task only, so they are reused when a
specialist is added (only the new task's are computed); the two polar decompositions per tensor
depend on the ordered task list and are cached under it (α sweeps then compute no decomposition).
"""

from __future__ import annotations

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.decompose import layout_signature, set_signature, spectra
from r2m.merging.linalg import polar_factor, top_triplets
from r2m.merging.spec import MethodSpec, check_number
from r2m.merging.tasks import TaskSet

DEFAULTS = {"alpha": 1.0}  # α: FusionBench TSV-M default


def _cached_polar(ts: TaskSet, cache: DecompositionCache | None, x: Tensor, entry: str | None) -> Tensor:
    s, q, _ = spectra(ts, cache, x.unsqueeze(0), [entry] if entry is not None else None)
    # float32 product for well-conditioned stacks, float64 for ill-conditioned (square) ones
    return polar_factor(x, s[0], q[0], dtype=ts.dtype)


def tsv_merge(ts: TaskSet, cache: DecompositionCache | None, *, alpha: float) -> dict[str, Tensor]:
    """TSV-M (module docstring); returns θ*."""
    n = ts.n
    if cache is not None:
        base, hashes, layout = ts.base_hash(), ts.task_hashes(), layout_signature(ts)
        ordered = set_signature(ts, "tsv-polar", ordered=True)
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="tsv"):
        if not ts.is_matrix(key):  # θ0 + α mean τ, summed in place (bit-identical to the stacked mean)
            out[key] = ts.output(key, ts.task_vector_sum(key).div_(n).mul_(alpha), owned=True)
            continue
        taus = ts.task_vectors(key)
        m, k_dim = ts.shapes[key][0], min(ts.shapes[key])
        rank = max(1, k_dim // n)
        entries = [f"tsv|{base}|{layout}|{h}|{key}|{ts.dtype}" for h in hashes] if cache is not None else None
        s_list, q_list, side = spectra(ts, cache, taus, entries, rank)
        us, ss, vs = zip(*(top_triplets(taus[i], s_list[i], q_list[i], rank, side, ts.dtype) for i in range(n)))
        del taus, s_list, q_list
        u_stack, s_stack, v_stack = torch.cat(us, 1), torch.cat(ss).to(ts.dtype), torch.cat(vs, 1)
        del us, ss, vs
        u_orth = _cached_polar(ts, cache, u_stack, f"tsv-polar-u|{ordered}|{key}" if cache is not None else None)
        v_orth = _cached_polar(ts, cache, v_stack, f"tsv-polar-v|{ordered}|{key}" if cache is not None else None)
        del u_stack, v_stack
        delta = (u_orth * s_stack) @ v_orth.mT
        del u_orth, v_orth
        out[key] = ts.output(key, delta.mul_(alpha), owned=True)
    ts.release_scratch()
    return out


def _check(hp: dict) -> None:
    check_number("tsv", "alpha", hp["alpha"])


def _run(ts: TaskSet, cache: DecompositionCache | None, *, alpha: float) -> dict[str, Tensor]:
    return tsv_merge(ts, cache, alpha=float(alpha))


SPEC = MethodSpec("tsv", _run, DEFAULTS, _check, uses_cache=True, summary="per-task top-K/N triplets, decorrelated")
