"""Iso-C and Iso-CTS: isotropic merging in common and task-specific subspaces.

Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
Subspaces", ICML 2025 (arXiv 2502.04959). Per matrix tensor l (every 2-D tensor), m×n, K = min(m, n),
M = Σ_i τ_i[l]:

* Iso-C: M = U Σ Vᵀ → Δ[l] = σ̄ U Vᵀ with σ̄ = (1/K) Σ_j σ_j (the spectrum flattened to its mean).
* Iso-CTS (``common_fraction`` f = 0.8, the paper's default):
  c0 = ⌊K f⌋, d = round((K − c0)/N) (Python's round: half to even), c = K − N d
  (if that is negative: d = ⌊K/N⌋, c = K − N d).
  Common subspace: the top-c triplets (U_c, Σ_c, V_c) of M. Task i: R_i = τ_i − U_c U_cᵀ τ_i (the
  common *left* subspace removed), keep its top-d triplets (U_i, Σ_i, V_i).
  Stack U = [U_c U_1 … U_N], V likewise (K columns each) and the K values; Δ[l] = σ̄ polar(U)
  polar(V)ᵀ with σ̄ the mean of the K stacked values. d = 0 gives Iso-C for that tensor.

Every other tensor takes Δ[l] = mean_i τ_i[l]. θ* = θ0 + α Δ, α = 1.0 (FusionBench config default;
the paper picks α on validation data). No cache: each tensor needs one decomposition of M and,
for Iso-CTS, one per task of R_i, all depending on the whole task set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.linalg import gram_eigh, polar_factor, top_triplets
from r2m.merging.spec import MethodSpec, check_number
from r2m.merging.tasks import TaskSet

ISO_C_DEFAULTS = {"alpha": 1.0}  # α: FusionBench isotropic_merging config default
ISO_CTS_DEFAULTS = {"common_fraction": 0.8, "alpha": 1.0}  # f = 0.8: paper/official code


def iso_cts_ranks(k_dim: int, n_tasks: int, common_fraction: float) -> tuple[int, int]:
    """``(c, d)``: common rank and per-task rank for a K-dimensional spectrum (module docstring)."""
    c0 = int(k_dim * common_fraction)
    d = round((k_dim - c0) / n_tasks)
    c = k_dim - n_tasks * d
    if c < 0:
        d = k_dim // n_tasks
        c = k_dim - n_tasks * d
    return c, d


def _sum64(ts: TaskSet, key: str) -> Tensor:
    """Σ_i τ_i[key] in float64, summed in order (the same bits as ``stack(τ).to(float64).sum(0)``)
    with one τ_i alive at a time instead of the float32 and float64 N-stacks."""
    ts.base_tensor(key)  # the base first, as task_vectors() checks it
    total = ts.task_vector(0, key).to(torch.float64)
    for i in range(1, ts.n):
        total.add_(ts.task_vector(i, key))
    return total


def _mean_output(ts: TaskSet, key: str, alpha: float) -> Tensor:
    """θ0 + α · mean_i τ_i for a non-matrix tensor (in place; bit-identical to the stacked mean)."""
    return ts.output(key, ts.task_vector_sum(key).div_(ts.n).mul_(alpha), owned=True)


def iso_c_merge(ts: TaskSet, *, alpha: float) -> dict[str, Tensor]:
    """Iso-C (module docstring); returns θ*."""
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="iso_c"):
        if not ts.is_matrix(key):
            out[key] = _mean_output(ts, key, alpha)
            continue
        total = _sum64(ts, key)
        s, q, _ = gram_eigh(total)
        delta = polar_factor(total, s, q)
        del total
        delta = delta.mul_(s.mean()).to(ts.dtype)  # σ̄ · polar(M), in place
        out[key] = ts.output(key, delta.mul_(alpha), owned=True)
    ts.release_scratch()
    return out


def iso_cts_merge(ts: TaskSet, *, common_fraction: float, alpha: float) -> dict[str, Tensor]:
    """Iso-CTS (module docstring); returns θ*. Per matrix, one float64 τ_i at a time (recomputed
    from the inputs for the residual pass) instead of float32 and float64 N-stacks."""
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="iso_cts"):
        if not ts.is_matrix(key):
            out[key] = _mean_output(ts, key, alpha)
            continue
        c, d = iso_cts_ranks(min(ts.shapes[key]), ts.n, common_fraction)
        total = _sum64(ts, key)
        s, q, side = gram_eigh(total, c)
        u_c, s_c, v_c = top_triplets(total, s, q, c, side)
        del total, s, q
        us, ss, vs = [u_c], [s_c], [v_c]
        if d > 0:
            for i in range(ts.n):
                resid = ts.task_vector(i, key).to(torch.float64)
                resid.sub_(u_c @ (u_c.mT @ resid))  # R_i = τ_i − U_c U_cᵀ τ_i
                s_i, q_i, side_i = gram_eigh(resid, d)
                u_i, sv_i, v_i = top_triplets(resid, s_i, q_i, d, side_i)
                del resid
                us.append(u_i)
                ss.append(sv_i)
                vs.append(v_i)
        u_all, s_all, v_all = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
        del us, ss, vs, u_c, v_c
        # stacks of orthonormal singular vectors: the working dtype unless ill-conditioned (linalg.POLAR_FP32_MAX_COND)
        u_orth = polar_factor(u_all, dtype=ts.dtype)
        del u_all
        v_orth = polar_factor(v_all, dtype=ts.dtype)
        del v_all
        delta = (u_orth @ v_orth.mT).mul_(s_all.mean().to(ts.dtype))  # σ̄ · polar(U) polar(V)ᵀ
        del u_orth, v_orth
        out[key] = ts.output(key, delta.mul_(alpha), owned=True)
    ts.release_scratch()
    return out


def _check_c(hp: dict) -> None:
    check_number("iso_c", "alpha", hp["alpha"])


def _check_cts(hp: dict) -> None:
    check_number("iso_cts", "common_fraction", hp["common_fraction"], lo=0.0, hi=1.0)
    check_number("iso_cts", "alpha", hp["alpha"])


def _run_c(ts: TaskSet, cache: DecompositionCache | None, *, alpha: float) -> dict[str, Tensor]:
    return iso_c_merge(ts, alpha=float(alpha))


def _run_cts(
    ts: TaskSet, cache: DecompositionCache | None, *, common_fraction: float, alpha: float
) -> dict[str, Tensor]:
    return iso_cts_merge(ts, common_fraction=float(common_fraction), alpha=float(alpha))


SPEC_C = MethodSpec("iso_c", _run_c, ISO_C_DEFAULTS, _check_c, summary="isotropic spectrum of Σ τ")
SPEC_CTS = MethodSpec("iso_cts", _run_cts, ISO_CTS_DEFAULTS, _check_cts, summary="common + task subspaces, isotropic")
