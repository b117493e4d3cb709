"""Spectral helpers shared by the SVD-based merges (float64 Gram + symmetric eigensolver route).

For an m×n matrix X with K = min(m, n), the *small-side Gram* is XᵀX (n×n, when m ≥ n: side
"right") or XXᵀ (m×m, side "left"). Its eigen-decomposition Q diag(s²) Qᵀ, computed in float64,
gives the singular values s and the small-side singular vectors Q; with X it is the thin SVD (the
other side's vectors are X Q / s). Compared with ``torch.linalg.svd`` this is cheaper on CPU (one
m·K² Gram plus one K×K eigensolver), exact in float64 for the leading directions, and the factors
are small enough to cache (K² + K numbers per matrix, fewer for a partial decomposition).

Routes (:func:`spectral_route`):

* ``"cpu-lapack"`` (CPU default): SciPy's LAPACK/BLAS — the Gram with ``dsyrk`` (one triangle, half
  the flops of a matmul), the full spectrum with ``dsyevd``, and, when a caller only needs a
  truncation to rank r ≤ ⌈K/8⌉ (:data:`PARTIAL_FRACTION`), only the leading ⌈K/8⌉ eigenpairs with
  ``dsyevr`` (MRRR on a subset: about 0.65× the cost of ``dsyevd`` at K = 768). BLAS threads follow
  ``torch.get_num_threads()``. Measured per 2304×768 matrix on a 2-core AMD EPYC, 1 thread:
  Gram 0.032 s (torch float64 matmul 0.062 s), ``dsyevr`` top-96 0.062 s, ``dsyevd`` 0.093 s,
  ``torch.linalg.eigh`` 0.114 s (``benchmarks/merge_speed.py --kernels``).
* ``"torch"``: ``torch.linalg.eigh`` and a float64 matmul (CUDA; CPU without SciPy, or when
  :data:`CPU_ROUTE` is set to ``"torch"``); always the full spectrum.

Partial decompositions are used only where nothing can reuse the rest: merges without a
:class:`~r2m.merging.cache.DecompositionCache` (see :func:`r2m.merging.decompose.spectra`). With a
cache the full spectrum is stored, so sweeps over the rank and re-merges need no new decomposition.
The number of eigenpairs computed is a function of (K, rank, route) only (:func:`eig_columns`), so
re-runs give the same bits.

Precision policy: Grams, eigen-decompositions, back-projections and polar factors are computed in
float64 whatever the working dtype; the low-rank products (X Q_r Q_rᵀ) run in the working dtype,
and so does a polar factor's final product when the matrix is well-conditioned
(:data:`POLAR_FP32_MAX_COND`; otherwise float64).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "BATCHED_EIGH",
    "CPU_ROUTE",
    "EIG_REL_TOL",
    "PARTIAL_FRACTION",
    "spectral_route",
    "eig_columns",
    "eig_tag",
    "blas_threads",
    "small_side",
    "rank_for_ratio",
    "gram_eigh",
    "low_rank",
    "weighted_low_rank_sum",
    "low_rank_gram",
    "top_triplets",
    "polar_factor",
    "POLAR_FP32_MAX_COND",
    "sym_eig_desc",
    "pair_inner_products",
    "gram64",
]

#: Eigenvalues of a Gram matrix below ``EIG_REL_TOL × largest`` count as zero (numerical rank).
#: For squared singular values this means σ < 1e-5·σ_max is treated as absent.
EIG_REL_TOL = 1e-10

#: Whether a stack of Grams is decomposed with one batched ``eigh`` call (per device type, torch
#: route). Measured: no faster than one call per matrix on CPU (MKL) nor on an H200 (cuSOLVER,
#: K = 768 and 1024), and one at a time bounds the float64 temporaries, so both are off.
BATCHED_EIGH: dict[str, bool] = {"cpu": False, "cuda": False}

#: CPU route: ``"lapack"`` (SciPy's LAPACK/BLAS when importable) or ``"torch"``.
CPU_ROUTE = "lapack"

#: A truncation to rank r ≤ ⌈PARTIAL_FRACTION·K⌉ computes only that many leading eigenpairs
#: (``dsyevr`` on a subset; CPU LAPACK route, merges without a cache). Above about K/6 a subset
#: costs as much as the full ``dsyevd`` on the measured CPU, hence 1/8: it covers R²M's default rank
#: ratio 0.1, CART's 0.12 and Iso-CTS's per-task ranks. 0 disables partial decompositions.
PARTIAL_FRACTION = 0.125


def _scipy_available() -> bool:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:  # pragma: no cover - scipy ships with the project's dependencies
        return False
    return True


def spectral_route(device: torch.device | str) -> str:
    """``"cpu-lapack"`` or ``"torch"`` for computations on ``device`` (module docstring)."""
    dev = torch.device(device)
    if dev.type == "cpu" and CPU_ROUTE == "lapack" and _scipy_available():
        return "cpu-lapack"
    return "torch"


def eig_columns(k: int, rank: int | None, device: torch.device | str) -> int:
    """How many leading eigenpairs of a K×K Gram are computed for a truncation to ``rank``
    (``None``: every one): ⌈PARTIAL_FRACTION·K⌉ on the CPU LAPACK route when ``rank`` fits in it,
    else K. Depends on (K, rank, route) only, never on what a cache holds."""
    if rank is None or PARTIAL_FRACTION <= 0 or spectral_route(device) != "cpu-lapack":
        return k
    part = max(1, math.ceil(PARTIAL_FRACTION * k))
    return part if rank <= part < k else k


def eig_tag(k: int, rank: int | None, device: torch.device | str) -> str:
    """Cache-key suffix naming the route and the number of eigenpairs, e.g. ``"cpu-lapack:96"``."""
    return f"{spectral_route(device)}:{eig_columns(k, rank, device)}"


_CONTROLLER = None


@contextlib.contextmanager
def blas_threads() -> Iterator[None]:
    """Limit the BLAS libraries SciPy/NumPy loaded (OpenBLAS) to ``torch.get_num_threads()``
    threads for the duration (no-op without ``threadpoolctl``)."""
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a declared dependency
        yield
        return
    if _CONTROLLER is None:
        import scipy.linalg  # noqa: F401  (load SciPy's BLAS before the controller lists libraries)

        _CONTROLLER = ThreadpoolController()
    with _CONTROLLER.limit(limits=torch.get_num_threads(), user_api="blas"):
        yield


def _eigh_np_desc(a, top: int | None, lower: bool) -> tuple[Tensor, Tensor]:
    """Leading ``top`` (all when ``None``) eigenpairs of symmetric float64 ndarray ``a`` (only the
    ``lower``/upper triangle is read; ``a`` may be overwritten), descending, as CPU tensors."""
    import numpy as np
    import scipy.linalg as sla

    k = a.shape[0]
    with blas_threads():
        if top is not None and top < k:
            w, v = sla.eigh(a, lower=lower, driver="evr", subset_by_index=[k - top, k - 1],
                            overwrite_a=True, check_finite=False)
        else:
            w, v = sla.eigh(a, lower=lower, driver="evd", overwrite_a=True, check_finite=False)
    return torch.from_numpy(w[::-1].copy()), torch.from_numpy(v[:, ::-1].copy())


def _eigh_np_batch(arrays: list, lead: tuple[int, ...], top: int | None, lower: bool) -> tuple[Tensor, Tensor]:
    """:func:`_eigh_np_desc` over a batch of K×K ndarrays, stacked to ``(lead…, T)`` and
    ``(lead…, K, T)``."""
    parts = [_eigh_np_desc(a, top, lower) for a in arrays]
    k, cols = parts[0][1].shape
    evals = torch.stack([p[0] for p in parts]).reshape(*lead, cols)
    evecs = torch.stack([p[1] for p in parts]).reshape(*lead, k, cols)
    return evals, evecs


def _gram_np(x: Tensor, side: str):
    """float64 small-side Gram of 2-D CPU ``x`` with ``dsyrk``: ndarray whose upper triangle holds
    XᵀX (side "right") or XXᵀ (side "left")."""
    from scipy.linalg import blas

    a = x.detach().to(torch.float64).numpy()
    with blas_threads():  # a.T is a column-major view of the row-major a: no copy
        return blas.dsyrk(1.0, a.T, trans=0 if side == "right" else 1, lower=0)


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

    Returns ``(evals (…, K), evecs (…, K, K))``; columns of ``evecs`` follow ``evals``. Batches are
    decomposed one by one (LAPACK route) or in one call or one by one according to
    :data:`BATCHED_EIGH` (torch route)."""
    g = g.to(torch.float64)
    if spectral_route(g.device) == "cpu-lapack":
        flat = g.reshape(-1, *g.shape[-2:])
        return _eigh_np_batch([flat[b].numpy().copy(order="F") for b in range(flat.shape[0])],
                              tuple(g.shape[:-2]), None, lower=True)
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


def gram_eigh(x: Tensor, rank: int | None = None) -> tuple[Tensor, Tensor, str]:
    """Small-side spectral factors of ``x`` (…, m, n): ``(s (…, T), q (…, K, T), side)``.

    ``s`` are the leading singular values (descending, float64, ≥ 0); ``q`` the matching right
    (side "right") or left (side "left") singular vectors, float64. T = :func:`eig_columns` (K,
    rank, device): all K unless the caller only needs a truncation to ``rank``."""
    m, n = x.shape[-2], x.shape[-1]
    side = small_side(m, n)
    cols = eig_columns(min(m, n), rank, x.device)
    if spectral_route(x.device) == "cpu-lapack":
        flat = x.reshape(-1, m, n)
        evals, q = _eigh_np_batch([_gram_np(flat[b], side) for b in range(flat.shape[0])],
                                  tuple(x.shape[:-2]), cols, lower=False)
    else:
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


def low_rank_gram(x: Tensor, q: Tensor, rank: int, side: str) -> Tensor:
    """Gram ⟨LR_i, LR_j⟩ (N×N, float64) of the rank-``rank`` approximations LR_i of a stack ``x``
    (N, m, n) with small-side vectors ``q`` (N, K, ≥rank), without forming the LR_i.

    Side "right": LR_i = Y_i V_iᵀ with Y_i = x_i V_i, so ⟨LR_i, LR_j⟩ = Σ (Y_iᵀY_j) ⊙ (V_iᵀV_j);
    side "left": LR_i = U_i Z_i with Z_i = U_iᵀ x_i, so ⟨LR_i, LR_j⟩ = Σ (U_iᵀU_j) ⊙ (Z_i Z_jᵀ).
    The projections run in ``x.dtype``, the r×r products in float64."""
    if rank >= min(x.shape[-2], x.shape[-1]):
        return gram64(x)
    q_r = q[..., :rank].to(x.dtype)
    if side == "right":
        proj = (x @ q_r).to(torch.float64)  # (N, m, r)
        a = torch.einsum("imr,jms->ijrs", proj, proj)
    else:
        proj = (q_r.mT @ x).to(torch.float64)  # (N, r, n)
        a = torch.einsum("irn,jsn->ijrs", proj, proj)
    q64 = q_r.to(torch.float64)
    b = torch.einsum("ikr,jks->ijrs", q64, q64)
    g = (a * b).sum((-2, -1))
    return 0.5 * (g + g.mT)


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
    if side == "right":  # (the product is fresh: divide it in place, the same rounding)
        return (xd @ q_r).div_(safe), s_r, q_r
    return q_r, s_r, (xd.mT @ q_r).div_(safe)


#: Largest condition number σ_max/σ_min of a matrix whose polar factor :func:`polar_factor` forms
#: with a float32 product when asked for float32 (above it, the product runs in float64 and the
#: result is rounded to float32). The float32 product X·(XᵀX)^{-1/2} errs by about
#: ε₃₂·cond(X): TSV-M's stacked singular vectors of a square block matrix (K × N⌊K/N⌋) reach
#: cond ≈ 10³ on ViT-B/16 task vectors, where the float32 product put a 9.8e-4 error into the
#: merged update (FusionBench's float32 SVD route: 8.2e-5); in float64, 8.3e-7
#: (``docs/merge_performance.md``). Well-conditioned stacks (most tall ones) stay in float32.
POLAR_FP32_MAX_COND = 8.0


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
    arbitrary). With ``dtype=float32`` the product runs in float64 anyway when cond(X) exceeds
    :data:`POLAR_FP32_MAX_COND` (the result is then rounded to float32)."""
    side = small_side(*x.shape)
    if s is None or q is None:
        s, q, _ = gram_eigh(x)
    s = s.to(device=x.device, dtype=torch.float64)
    q = q.to(device=x.device, dtype=torch.float64)
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return torch.zeros(x.shape, dtype=dtype, device=x.device)
    keep = s * s > 1e-12 * s[0] * s[0]
    qk, sk = q[:, keep], s[keep]
    work = dtype
    if dtype != torch.float64 and float(sk[0]) > POLAR_FP32_MAX_COND * float(sk[-1]):
        work = torch.float64  # ill-conditioned: a float32 product would lose ε₃₂·cond(X)
    inv_sqrt = ((qk / sk) @ qk.mT).to(work)
    xd = x.to(work)
    out = xd @ inv_sqrt if side == "right" else inv_sqrt @ xd
    return out.to(dtype)


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
