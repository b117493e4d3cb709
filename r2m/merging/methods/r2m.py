"""R²M: Real-aware Residual Model Merging.

Park, Kim, Cho, Kwon, "Real-Aware Residual Model Merging for Deepfake Detection" (arXiv 2509.24367)
and the authors' public code kit (``jinnnnnnnnn/R2M``: ``scripts/merge_r2m.py``,
``configs/merged_clip.yaml``). One generalised method; its flags give the ablations.

Notation: T ∈ R^{N×D} stacks the task vectors τ_i = θ_i − θ0 over *all* backbone tensors (rows),
τ̄ = (1/N) Σ_i τ_i, A_l ∈ R^{N×P_l} the rows restricted to tensor l.

1. Real subspace V_k: the top-k right singular vectors (k = 1, paper) of T (``center=False``, the
   default, as in the code kit) or of the centred T − 1τ̄ᵀ (``center=True``, as one paper summary
   writes it). Computed from the N×N Gram G = Σ_l γ_l A_l A_lᵀ accumulated in float64 tensor by
   tensor and an ``eigh`` — the N×D matrix is never formed. Centring: G_c = H G H, H = I − 11ᵀ/N.
   ``block_weighting="fro_sqrtP"`` (the kit) uses γ_l = √P_l / ‖A_l‖_F (A_l centred when
   ``center``); ``"none"`` (default) γ_l = 1. With weights, projections are orthogonal in the
   γ-weighted inner product.

   Centring removes exactly the component the specialists share: when the task vectors have a
   common part, the centred V_k is the main direction of *disagreement* and τ_core = V_k V_kᵀ τ̄
   nearly vanishes (a float64 check with a shared component gave ‖θ*−θ0‖ = 0.005 centred vs 1.62
   uncentred, against 1.39 for averaging). Uncentred with k = 1, τ_core ≈ the shared direction.
2. τ_core = V_k V_kᵀ τ̄ (paper, step 3).
3. Fake residuals: ``residual="orthogonal"`` (default, the paper's wording) ρ_i = (I − V_k V_kᵀ) τ_i;
   ``residual="minus_core"`` (the kit) ρ_i = τ_i − τ_core.
4. Layerwise rank truncation (paper abstract; the kit names ``initial_rank_ratio`` but never
   truncates): every block matrix of ρ_i becomes its best rank-⌊r·min(m, n)⌋ (≥ 1) approximation,
   r = ``rank_ratio`` = 0.1 (kit config default); other tensors are kept. ``rank_ratio=None``
   (or 1.0) disables truncation.
5. Norm matching (``norm_match=True``, paper + kit): ρ̃_i = ρ_i · m / ‖ρ_i‖ with ‖·‖ the L2 norm over
   all tensors and m = mean_i ‖ρ_i‖.
6. τ_res = (1/N) Σ_i ρ̃_i.
7. θ* = θ0 + τ_core + η τ_res, α = 0.6 (kit ``eta_norm_alpha``). ``eta="relative"`` (default):
   η = α ‖τ_core‖ / ‖τ_res‖, so the residual term has norm α‖τ_core‖; ``eta="literal"`` (the kit's
   formula): η = α ‖τ_core‖.

Coefficient form used here: with U_k, Λ_k the top-k eigenpairs of G_c (weighted),
C = H U_k Λ_k⁻¹ U_kᵀ H G_w (N×N), V_k V_kᵀ τ_i = Tᵀ C e_i and τ_core = Tᵀ C 1/N; every ρ_i[l] is
a combination of the rows of A_l, so ‖τ_core‖ and the untruncated residual norms come from the
Gram alone, and only the block matrices of ρ_i need a decomposition.

Edge cases (defined and tested):

* N = 2, defaults (uncentred, orthogonal, norm matching): both residuals lie on the one direction
  of span{τ_1, τ_2} orthogonal to V_1. When ⟨τ_1, τ_2⟩ > 0 (the usual case for fine-tunes of one
  base) they have opposite signs, norm matching makes them cancel exactly (truncation is linear in
  that scalar), so τ_res = 0 and θ* = θ0 + τ_core; when ⟨τ_1, τ_2⟩ < 0 they add. The residual
  pass is then skipped (no decomposition at all; proof in :func:`residuals_cancel`).
* N = 1: uncentred, V_1 = τ_1/‖τ_1‖, τ_core = τ_1, ρ_1 = 0 → θ* = θ_1. Centred, the centred
  matrix is 0 (rank 0) → τ_core = 0, η = 0 → θ* = θ0.
* k ≥ rank (the centred rank is ≤ N − 1; eigenvalues below 1e-10 × the largest count as 0): k is
  clipped to the numerical rank. Uncentred with k ≥ N (full row rank), τ_core = τ̄, orthogonal
  residuals vanish → θ* = the average.
* A residual with ‖ρ_i‖ ≤ 1e-5 · max_j ‖τ_j‖ counts as 0 (float32 round-off, not signal): it gets
  weight 0 in norm matching. ‖τ_res‖ below the same bound → the residual term is 0 (η = 0).

Cache (:class:`~r2m.merging.cache.DecompositionCache`): Gram pairs per (base, task, task); the
spectral factors of every residual block matrix under the configuration that determines the
residual (task set, k, center, residual, block_weighting) — reused across ``alpha``, ``eta``,
``norm_match`` and ``rank_ratio``; the truncated-residual Gram per ``rank_ratio``. Because ρ_i
depends on V_k, i.e. on every task, adding a specialist recomputes all residual decompositions
(only the new Gram pairs are computed, though).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.decompose import set_signature, spectra, tensor_grams
from r2m.merging.linalg import (
    EIG_REL_TOL,
    low_rank_gram,
    rank_for_ratio,
    sym_eig_desc,
    weighted_low_rank_sum,
)
from r2m.merging.spec import MethodSpec, check_bool, check_choice, check_number
from r2m.merging.tasks import TaskSet

# k=1 (paper: "k = 1 in all experiments"); center=False and residual="minus_core"-vs-"orthogonal"
# see module docstring; rank_ratio=0.1 (kit config initial_rank_ratio); norm_match (paper/kit);
# alpha=0.6 (kit eta_norm_alpha); eta="relative" (norm-consistent reading of the kit formula);
# block_weighting="none" (plain T as in the paper; the kit's "fro_sqrtP" is optional).
DEFAULTS = {
    "k": 1,
    "center": False,
    "residual": "orthogonal",
    "rank_ratio": 0.1,
    "norm_match": True,
    "alpha": 0.6,
    "eta": "relative",
    "block_weighting": "none",
}

#: Hyperparameters that only scale the residual term: a sweep over them shares everything else.
SWEEP_FREE = ("alpha", "eta")

#: Relative size (to max_i ‖τ_i‖) under which a residual norm counts as zero.
ZERO_TOL = 1e-5


@dataclass(frozen=True)
class RealSubspace:
    """Coefficients of R²M's projections over the rows of T (all float64)."""

    proj: Tensor  # C (N×N): V_k V_kᵀ τ_i = Tᵀ C[:, i]
    core: Tensor  # a (N,): τ_core = Tᵀ a
    residual: Tensor  # M (N×N): ρ_i = Σ_j M[i, j] τ_j (before truncation)
    k_eff: int  # numerical rank used (≤ k)
    evals: Tensor  # eigenvalues of the (centred, weighted) Gram, descending


def real_subspace(
    grams: Tensor, numels: Tensor, *, k: int, center: bool, residual: str, block_weighting: str
) -> RealSubspace:
    """Steps 1–3 in coefficient form from per-tensor Grams ``grams`` (L, N, N) (module docstring)."""
    n = grams.shape[-1]
    dev = grams.device
    eye = torch.eye(n, dtype=torch.float64, device=dev)
    h = eye - 1.0 / n if center else eye
    if block_weighting == "fro_sqrtP":
        fro2 = torch.einsum("ij,ljk,ki->l", h, grams, h)  # ‖H A_l‖_F² = tr(H G_l H)
        gamma = torch.where(fro2 > 0, numels.sqrt() / fro2.clamp_min(1e-300).sqrt(), torch.zeros_like(fro2))
    else:
        gamma = torch.ones(grams.shape[0], dtype=torch.float64, device=dev)
    g_w = torch.einsum("l,lij->ij", gamma, grams)
    g_c = h @ g_w @ h
    g_c = 0.5 * (g_c + g_c.mT)
    evals, vecs = sym_eig_desc(g_c)
    top = float(evals[0]) if evals.numel() else 0.0
    k_eff = 0 if top <= 0.0 else min(k, int((evals > EIG_REL_TOL * top).sum()))
    u = vecs[:, :k_eff]
    proj = h @ (u / evals[:k_eff]) @ u.mT @ h @ g_w
    core = proj @ torch.full((n,), 1.0 / n, dtype=torch.float64, device=dev)
    if residual == "orthogonal":
        res = eye - proj.mT
    else:  # minus_core
        res = eye - core.unsqueeze(0).expand(n, n)
    return RealSubspace(proj, core, res, k_eff, evals)


def _combine(coeffs: Tensor, taus: Tensor) -> Tensor:
    """Σ_j coeffs[..., j] τ_j in the working dtype of ``taus``; coeffs (R, N) or (N,), float64."""
    flat = taus.reshape(taus.shape[0], -1)
    out = coeffs.to(taus.dtype) @ flat
    return out.reshape(*coeffs.shape[:-1], *taus.shape[1:])


@dataclass
class _Prepared:
    """Everything of one R²M configuration that does not depend on ``alpha`` or ``eta``."""

    sub: RealSubspace
    core_norm: float
    zero: float
    ranks: dict[str, int]
    truncated: list[str]
    weights: Tensor  # per-task residual weights (norm matching and 1/N), float64
    res_norm: float  # ‖Σ_i w_i ρ_i‖ (ρ_i truncated on block matrices)
    factors: Callable[[str, Tensor], tuple[Tensor, str]]


def _prepare(
    ts: TaskSet,
    cache: DecompositionCache | None,
    *,
    k: int,
    center: bool,
    residual: str,
    rank_ratio: float | None,
    norm_match: bool,
    block_weighting: str,
) -> _Prepared:
    """Passes 1–2: Real subspace, residual decompositions, truncated residual Gram, weights."""
    n, dev = ts.n, ts.device
    # ---- pass 1: per-tensor task Grams (cached per pair)
    grams = tensor_grams(ts, cache)
    numels = torch.tensor([float(ts.numel(key)) for key in ts.keys], dtype=torch.float64, device=dev)
    sub = real_subspace(grams, numels, k=k, center=center, residual=residual, block_weighting=block_weighting)
    g_raw = grams.sum(0)
    scale = math.sqrt(max(float(g_raw.diagonal().max()), 0.0))  # max_i ‖τ_i‖
    zero = ZERO_TOL * scale
    core_norm = math.sqrt(max(float(sub.core @ g_raw @ sub.core), 0.0))

    ranks = {key: rank_for_ratio(rank_ratio, *ts.shapes[key]) for key in ts.block_keys}
    truncated = [key for key in ts.block_keys if ranks[key] < min(ts.shapes[key])]
    if rank_ratio is not None and rank_ratio < 1.0:
        ts.require_blocks("r2m")
    if SKIP_CANCELLING and residuals_cancel(sub, g_raw, ts, ranks, truncated, zero,
                                            center=center, residual=residual, norm_match=norm_match):
        # τ_res = 0 by construction: no residual decomposition is needed (η = 0, θ* = θ0 + τ_core)
        weights = torch.zeros(n, dtype=torch.float64, device=dev)
        return _Prepared(sub, core_norm, zero, ranks, truncated, weights, 0.0, _no_factors)
    idx = {key: l for l, key in enumerate(ts.keys)}
    config = set_signature(ts, "r2m", k, center, residual, block_weighting) if cache is not None else ""
    hashes = ts.task_hashes() if cache is not None else []
    local_q: dict[str, Tensor] = {}  # truncated factors kept between passes when there is no cache

    def residual_factors(key: str, rho: Tensor) -> tuple[Tensor, str]:
        if key in local_q:
            return local_q[key], ("right" if rho.shape[-2] >= rho.shape[-1] else "left")
        entries = [f"r2m|{config}|{h}|{key}" for h in hashes] if cache is not None else None
        _, qs, side = spectra(ts, cache, rho, entries, ranks[key])
        q = torch.stack(qs)
        if cache is None:
            local_q[key] = q[..., : ranks[key]].clone()
        return q, side

    # ---- pass 2: truncated residual Gram R (N×N); untruncated tensors come from G alone
    res_m = sub.residual
    kept = torch.ones(len(ts.keys), dtype=torch.float64, device=dev)
    for key in truncated:
        kept[idx[key]] = 0.0
    r_gram = torch.einsum("l,ij,ljk,mk->im", kept, res_m, grams, res_m)
    if truncated:
        rg_entry = f"r2mR|{config}|{rank_ratio}|{ts.block_pattern}"
        hit = cache.get("residual_gram", rg_entry) if cache is not None else None
        if hit is not None:
            r_gram = hit["R"].to(dev)
        else:
            for key in ts.keys_loop(truncated, desc="r2m residuals"):
                rho = _combine(res_m, ts.task_vectors(key, scratch=True))
                q, side = residual_factors(key, rho)
                r_gram = r_gram + low_rank_gram(rho, q, ranks[key], side)
            if cache is not None:
                cache.put("residual_gram", rg_entry, {"R": r_gram})

    # ---- norm matching
    norms = r_gram.diagonal().clamp_min(0).sqrt()
    alive = norms > zero
    if norm_match:
        m = norms.mean()
        weights = torch.where(alive, m / norms.clamp_min(1e-300), torch.zeros_like(norms)) / n
    else:
        weights = torch.full_like(norms, 1.0 / n)
    res_norm = math.sqrt(max(float(weights @ r_gram @ weights), 0.0))
    return _Prepared(sub, core_norm, zero, ranks, truncated, weights, res_norm, residual_factors)


def residuals_cancel(
    sub: RealSubspace,
    g_raw: Tensor,
    ts: TaskSet,
    ranks: dict[str, int],
    truncated: list[str],
    zero: float,
    *,
    center: bool,
    residual: str,
    norm_match: bool,
) -> bool:
    """Whether τ_res = (1/N) Σ_i ρ̃_i vanishes by construction, so that the residual pass (one
    decomposition per task and block matrix) can be skipped. True exactly in the case proved here:

    **Claim.** N = 2, ``center=False``, ``residual="orthogonal"``, ``norm_match=True``, a Real
    subspace of dimension k_eff = 1, and untruncated residuals with ⟨ρ_1, ρ_2⟩ < 0 whose norms
    satisfy √f‖ρ_i‖ > 2·zero (f = min over truncated block matrices of r_l / min(m_l, n_l), 1 when
    none is truncated). Then τ_res = 0, η = 0 and θ* = θ0 + τ_core.

    **Proof.** (1) *Collinear.* ρ_i = (I − P) τ_i with P the projector (orthogonal in the γ-weighted
    inner product) onto V_1 = span{Tᵀu} ⊂ span{τ_1, τ_2}. Both ρ_i lie in span{τ_1, τ_2} and are
    (weighted-)orthogonal to V_1, a subspace of dimension ≤ 2 − 1 = 1, so ρ_i = c_i w for one vector
    w and scalars c_i; ⟨ρ_1, ρ_2⟩ = c_1 c_2 ‖w‖² < 0 gives c_1 c_2 < 0. (2) *Truncation is
    positively homogeneous and odd.* For a block matrix X and c ∈ R, the best rank-r approximation
    satisfies LR(cX) = c LR(X) (the singular vectors of cX are those of X, the sign goes to one
    side), so LR(ρ_i[l]) = c_i LR(w[l]) on every truncated tensor and ρ_i[l] = c_i w[l] elsewhere:
    the truncated residual is ρ'_i = c_i w' with one w'. (3) *Both alive.* A best rank-r
    approximation keeps at least r / min(m, n) of a matrix's energy (the top r of min(m, n)
    squared singular values), so ‖ρ'_i‖ ≥ √f ‖ρ_i‖ > 2·zero: neither residual gets the zero weight,
    also not after float round-off of ‖ρ'_i‖ (margin 2). (4) *Norm matching cancels.* ρ̃_i =
    ρ'_i · m/‖ρ'_i‖ = sign(c_i) m w'/‖w'‖, hence ρ̃_1 + ρ̃_2 = (sign c_1 + sign c_2) m w'/‖w'‖ = 0,
    τ_res = 0, and R²M sets η = 0 (``‖τ_res‖ ≤ zero``): θ* = θ0 + τ_core. ∎

    The merge without the skip reaches the same θ* whenever its float ‖τ_res‖ (round-off of an exact
    0) is below ``zero`` — the same operations then give the same bits (tested). ⟨ρ_1, ρ_2⟩ and ‖ρ_i‖
    come from the N×N Gram alone (ρ_i = Σ_j M[i, j] τ_j); the sign test requires cos < −1/2 so that
    round-off cannot flip it (in exact arithmetic cos = ±1 by (1))."""
    if ts.n != 2 or center or residual != "orthogonal" or not norm_match or sub.k_eff != 1:
        return False
    res = sub.residual
    r_full = res @ g_raw @ res.mT  # ⟨ρ_i, ρ_j⟩, untruncated
    norms = r_full.diagonal().clamp_min(0).sqrt()
    frac = min((ranks[key] / min(ts.shapes[key]) for key in truncated), default=1.0)
    if not bool((math.sqrt(frac) * norms > 2.0 * zero).all()):
        return False
    cos = float(r_full[0, 1]) / float(norms[0] * norms[1])
    return cos < -0.5


def _no_factors(key: str, rho: Tensor) -> tuple[Tensor, str]:  # pragma: no cover - never called
    raise RuntimeError(f"r2m: residual factors of {key!r} requested although the residuals cancel")


#: Skip the residual pass when :func:`residuals_cancel` proves τ_res = 0 (tests switch it off to
#: compare with the full computation).
SKIP_CANCELLING = True


def _eta_value(prep: _Prepared, alpha: float, eta: str) -> float:
    """η (step 7): 0 when τ_res vanishes; α‖τ_core‖/‖τ_res‖ (relative) or α‖τ_core‖ (literal)."""
    if prep.res_norm <= prep.zero:
        return 0.0
    if eta == "relative":
        return alpha * prep.core_norm / prep.res_norm
    return alpha * prep.core_norm


def _residual_sum(prep: _Prepared, key: str, taus: Tensor) -> Tensor:
    """Σ_i w_i LR(ρ_i[key]) for a truncated block matrix (ρ_i computed exactly as in pass 2)."""
    rho = _combine(prep.sub.residual, taus)
    q, side = prep.factors(key, rho)
    return weighted_low_rank_sum(rho, q, prep.ranks[key], side, prep.weights)


def _output(
    ts: TaskSet, prep: _Prepared, eta_value: float, key: str, taus: Tensor, res_sum: Tensor | None
) -> Tensor:
    """θ*[key] = θ0 + τ_core + η Σ_i w_i ρ_i, the residual sum of a truncated key given (or computed)."""
    sub = prep.sub
    if key in prep.truncated and eta_value != 0.0:
        if res_sum is None:
            res_sum = _residual_sum(prep, key, taus)
        delta = _combine(sub.core, taus)  # τ_core + η S, in place (the same two roundings)
        delta.add_(torch.mul(res_sum, eta_value, out=ts.scratch("r2m.eta", res_sum.numel()).view(res_sum.shape)))
    else:
        flat_coeffs = sub.core + eta_value * (sub.residual.mT @ prep.weights) if eta_value != 0.0 else sub.core
        delta = _combine(flat_coeffs, taus)
    return ts.output(key, delta, owned=True)


def r2m_merge(
    ts: TaskSet,
    cache: DecompositionCache | None,
    *,
    k: int,
    center: bool,
    residual: str,
    rank_ratio: float | None,
    norm_match: bool,
    alpha: float,
    eta: str,
    block_weighting: str,
) -> dict[str, Tensor]:
    """R²M (module docstring); returns θ*."""
    prep = _prepare(ts, cache, k=k, center=center, residual=residual, rank_ratio=rank_ratio,
                    norm_match=norm_match, block_weighting=block_weighting)
    eta_value = _eta_value(prep, alpha, eta)
    # ---- pass 3: θ* = θ0 + τ_core + η Σ_i w_i ρ_i (ρ_i truncated on block matrices)
    out = {key: _output(ts, prep, eta_value, key, ts.task_vectors(key, scratch=True), None)
           for key in ts.keys_loop(desc="r2m output")}
    ts.release_scratch()
    return out


def r2m_sweep(
    ts: TaskSet, cache: DecompositionCache | None, points: list[dict]
) -> Iterator[dict[str, Tensor]]:
    """θ* for several points that differ only in ``alpha`` / ``eta`` (one group of a sweep).

    α and η only scale the residual term, so the residual sum S[l] = Σ_i w_i LR(ρ_i[l]) of every
    truncated block matrix is computed once for the group (one backbone held) and each point is
    θ0 + τ_core + η S — the same operations as :func:`r2m_merge`, so each result equals a separate
    merge bit for bit. Yields in the order of ``points``."""
    shared = {name: v for name, v in _hp(points[0]).items() if name not in SWEEP_FREE}
    prep = _prepare(ts, cache, **shared)
    etas = [_eta_value(prep, float(p["alpha"]), p["eta"]) for p in points]
    sums: dict[str, Tensor] = {}
    if any(e != 0.0 for e in etas):
        for key in ts.keys_loop(prep.truncated, desc="r2m residual sums"):
            sums[key] = _residual_sum(prep, key, ts.task_vectors(key, scratch=True))
    for eta_value in etas:
        out = {key: _output(ts, prep, eta_value, key, ts.task_vectors(key, scratch=True), sums.get(key))
               for key in ts.keys_loop(desc="r2m output")}
        ts.release_scratch()
        yield out


def _check(hp: dict) -> None:
    check_number("r2m", "k", hp["k"], lo=1, integer=True)
    check_bool("r2m", "center", hp["center"])
    check_choice("r2m", "residual", hp["residual"], ("orthogonal", "minus_core"))
    if hp["rank_ratio"] is not None:
        check_number("r2m", "rank_ratio", hp["rank_ratio"], lo=0.0, hi=1.0, lo_open=True)
    check_bool("r2m", "norm_match", hp["norm_match"])
    check_number("r2m", "alpha", hp["alpha"])
    check_choice("r2m", "eta", hp["eta"], ("relative", "literal"))
    check_choice("r2m", "block_weighting", hp["block_weighting"], ("none", "fro_sqrtP"))


def _hp(hp: dict) -> dict:
    """Typed hyperparameters (the checked values as ``r2m_merge`` takes them)."""
    rr = hp["rank_ratio"]
    return dict(
        k=int(hp["k"]),
        center=hp["center"],
        residual=hp["residual"],
        rank_ratio=None if rr is None else float(rr),
        norm_match=hp["norm_match"],
        alpha=float(hp["alpha"]),
        eta=hp["eta"],
        block_weighting=hp["block_weighting"],
    )


def _run(ts: TaskSet, cache: DecompositionCache | None, **hp) -> dict[str, Tensor]:
    return r2m_merge(ts, cache, **_hp(hp))


SPEC = MethodSpec("r2m", _run, DEFAULTS, _check, uses_cache=True, summary="real core + truncated, norm-matched residuals",
                  sweep=r2m_sweep, sweep_free=SWEEP_FREE)
