"""Spectral helpers shared by the SVD-based merges (float64 Gram + ``eigh`` route).

For an m×n matrix X with K = min(m, n), the *small-side Gram* is XᵀX (n×n, when m ≥ n: side
"right") or XXᵀ (m×m, side "left"). Its eigen-decomposition Q diag(s²) Qᵀ, computed in float64,
gives all K singular values s and the small-side singular vectors Q; with X it is the full thin
SVD (the other side's vectors are X Q / s). Compared with ``torch.linalg.svd`` this is cheaper on
CPU (one m·K² Gram plus one K×K ``eigh``), exact in float64 for the leading directions, and the
factors are small enough to cache (K² + K numbers per matrix).

Precision policy: Grams, eigen-decompositions, back-projections and polar factors are computed in
float64 whatever the working dtype; the low-rank products (X Q_r Q_rᵀ) run in the working dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "BATCHED_EIGH",
    "EIG_REL_TOL",
    "small_side",
    "rank_for_ratio",
    "gram_eigh",
    "low_rank",
    "weighted_low_rank_sum",
    "top_triplets",
    "polar_factor",
    "sym_eig_desc",
    "pair_inner_products",
    "gram64",
]

#: Eigenvalues of a Gram matrix below ``EIG_REL_TOL × largest`` count as zero (numerical rank).
#: For squared singular values this means σ < 1e-5·σ_max is treated as absent.
EIG_REL_TOL = 1e-10

#: Whether a stack of Grams is decomposed with one batched ``eigh`` call (per device type).
#: Measured: no faster than one call per matrix on CPU (MKL) nor on an H200 (cuSOLVER, K = 768 and
#: 1024), and one at a time bounds the float64 temporaries, so both are off. Overridable.
BATCHED_EIGH: dict[str, bool] = {"cpu": False, "cuda": False}


def small_side(m: int, n: int) -> str:
    """``"right"`` (Gram XᵀX, n×n) when m ≥ n, else ``"left"`` (Gram XXᵀ, m×m)."""
    return "right" if m >= n else "left"


def rank_for_ratio(ratio: float | None, m: int, n: int) -> int:
    """Truncation rank ``max(1, ⌊ratio·min(m, n)⌋)`` (CART/R²M rule); ``None`` → full rank."""
    k = min(m, n)
    if ratio is None:
        return k
    return min(k, max(1, int(math.floor(ratio * k))))


def sym_eig_desc(g: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of symmetric ``g`` (…, K, K) in float64, eigenvalues descending.

    Returns ``(evals (…, K), evecs (…, K, K))``; columns of ``evecs`` follow ``evals``.
    Batches are decomposed in one call or one by one according to :data:`BATCHED_EIGH`."""
    g = g.to(torch.float64)
    if g.ndim > 2 and not BATCHED_EIGH.get(g.device.type, False):
        flat = g.reshape(-1, *g.shape[-2:])
        parts = [torch.linalg.eigh(flat[b]) for b in range(flat.shape[0])]
        evals = torch.stack([p[0] for p in parts]).reshape(*g.shape[:-1])
        evecs = torch.stack([p[1] for p in parts]).reshape(g.shape)
    else:
        evals, evecs = torch.linalg.eigh(g)
    # row-major copies: LAPACK returns column-major eigenvectors, and a matmul's rounding depends
    # on the operand layout — cached (row-major) and fresh factors must give identical results
    return evals.flip(-1).contiguous(), evecs.flip(-1).contiguous()


def gram_eigh(x: Tensor) -> tuple[Tensor, Tensor, str]:
    """Small-side spectral factors of ``x`` (…, m, n): ``(s (…, K), q (…, K, K), side)``.

    ``s`` are the singular values (descending, float64, ≥ 0); ``q`` the matching right (side
    "right") or left (side "left") singular vectors, float64."""
    m, n = x.shape[-2], x.shape[-1]
    side = small_side(m, n)
    x64 = x.to(torch.float64)
    g = x64.mT @ x64 if side == "right" else x64 @ x64.mT
    evals, q = sym_eig_desc(g)
    return evals.clamp_min(0).sqrt(), q, side


def low_rank(x: Tensor, q: Tensor, rank: int, side: str) -> Tensor:
    """Best rank-``rank`` approximation of ``x`` from its small-side singular vectors ``q``
    (at least ``rank`` leading columns): X V_r V_rᵀ (side "right") or U_r U_rᵀ X (side "left"), in
    ``x.dtype``. Batched over leading dims."""
    if rank >= min(x.shape[-2], x.shape[-1]):
        return x.clone()
    q_r = q[..., :rank].to(x.dtype)
    if side == "right":
        return (x @ q_r) @ q_r.mT
    return q_r @ (q_r.mT @ x)


def weighted_low_rank_sum(x: Tensor, q: Tensor, rank: int, side: str, weights: Tensor) -> Tensor:
    """Σ_i w_i LR_rank(x_i) for a stack ``x`` (N, m, n) with small-side vectors ``q`` (N, K, ≥rank),
    as one (m × N·rank) @ (N·rank × n) product: the N low-rank matrices are never materialised."""
    n_stack, m, n = x.shape
    q_r = q[..., :rank].to(x.dtype)
    w = weights.to(x.dtype).reshape(n_stack, 1, 1)
    if side == "right":  # LR_i = (x_i V_i) V_iᵀ
        y = (x @ q_r) * w  # (N, m, r)
        return y.permute(1, 0, 2).reshape(m, -1) @ q_r.permute(1, 0, 2).reshape(n, -1).mT
    z = (q_r.mT @ x) * w  # (N, r, n); LR_i = U_i (U_iᵀ x_i)
    return q_r.permute(1, 0, 2).reshape(m, -1) @ z.reshape(-1, n)


def top_triplets(
    x: Tensor, s: Tensor, q: Tensor, rank: int, side: str, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``rank`` singular triplets ``(U (m×r), s (r), V (n×r))`` of 2-D ``x``, rebuilt from the
    small-side factors (U = X V / s or V = Xᵀ U / s) with the product in ``dtype`` (float64
    default; the working dtype where the rebuilt vectors feed a well-conditioned step). ``s`` is
    returned in float64. Directions with a zero singular value (σ ≤ 1e-5·σ_max) get a zero vector
    on the rebuilt side."""
    s_r = s[:rank].to(torch.float64)
    q_r = q[:, :rank].to(device=x.device, dtype=dtype)
    smax = float(s[0]) if s.numel() else 0.0
    safe = torch.where(s_r > math.sqrt(EIG_REL_TOL) * smax, s_r, torch.full_like(s_r, math.inf)).to(dtype)
    xd = x.to(dtype)
    if side == "right":
        return (xd @ q_r) / safe, s_r, q_r
    return q_r, s_r, (xd.mT @ q_r) / safe


def polar_factor(
    x: Tensor, s: Tensor | None = None, q: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Orthogonal polar factor P Qᵀ of the thin SVD X = P Σ Qᵀ of 2-D ``x``.

    Computed as X (XᵀX)^{-1/2} (or (XXᵀ)^{-1/2} X for wide X) from the small-side spectral factors
    ``(s, q)`` of ``x`` (computed by :func:`gram_eigh` — float64 — when not given, e.g. from a
    cache), with the inverse square root taken over the non-zero spectrum (s² above
    ``1e-12 × s_max²``). The final product runs in ``dtype`` (float64 default, needed when X is
    ill-conditioned, e.g. Iso-C's Σ τ; the working dtype suffices for stacks of orthonormal
    singular vectors, as in TSV and Iso-CTS). For full-rank X this equals the SVD-based factor; for
    rank-deficient X it is the canonical partial isometry (an SVD's completion of the null space is
    arbitrary)."""
    side = small_side(*x.shape)
    if s is None or q is None:
        s, q, _ = gram_eigh(x)
    s = s.to(device=x.device, dtype=torch.float64)
    q = q.to(device=x.device, dtype=torch.float64)
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return torch.zeros(x.shape, dtype=dtype, device=x.device)
    keep = s * s > 1e-12 * s[0] * s[0]
    qk = q[:, keep]
    inv_sqrt = ((qk / s[keep]) @ qk.mT).to(dtype)
    xd = x.to(dtype)
    return xd @ inv_sqrt if side == "right" else inv_sqrt @ xd


#: Columns per float64 chunk in :func:`pair_inner_products` / :func:`gram64` (bounds the
#: temporary float64 copy to N × 2^18 numbers; fixed, so results do not depend on the batch).
GRAM_CHUNK = 1 << 18


def pair_inner_products(rows: Tensor, pairs: list[tuple[int, int]]) -> Tensor:
    """⟨rows[i], rows[j]⟩ for each pair, accumulated in float64 over fixed column chunks.

    Each pair's value depends only on its two rows (one ``torch.dot`` per chunk, fixed chunking),
    not on which other pairs are computed, so cached and fresh Grams agree bit for bit.
    ``rows``: (N, …) any float dtype."""
    flat = rows.reshape(rows.shape[0], -1)
    out = torch.zeros(len(pairs), dtype=torch.float64, device=rows.device)
    if not pairs:
        return out
    for start in range(0, flat.shape[1], GRAM_CHUNK):
        c = flat[:, start : start + GRAM_CHUNK].to(torch.float64)
        out += torch.stack([torch.dot(c[i], c[j]) for i, j in pairs])
    return out


def gram64(rows: Tensor) -> Tensor:
    """Gram matrix rows·rowsᵀ (N×N) accumulated in float64 over fixed column chunks."""
    flat = rows.reshape(rows.shape[0], -1)
    g = torch.zeros(flat.shape[0], flat.shape[0], dtype=torch.float64, device=rows.device)
    for start in range(0, flat.shape[1], GRAM_CHUNK):
        c = flat[:, start : start + GRAM_CHUNK].to(torch.float64)
        g += c @ c.mT
    return g
