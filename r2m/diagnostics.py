"""Merge diagnostics: what R²M sees in a set of specialists, as numbers and plots.

All quantities are computed from per-tensor N×N Gram matrices of the task vectors
τ_i = θ_i − θ0 (accumulated in float64, tensor by tensor, never materialising N×D) and from the
singular values of the residual block matrices:

- ``singular_values`` / ``singular_values_centered``: spectrum of the task matrix T (N×D) and of
  the centred T − 1τ̄ᵀ. A dominant first value of T with a flat centred spectrum means the
  specialists share a large common ("Real") component. ``top_singular_share`` = σ₁² / Σσ² of T
  (1/N when the task vectors are orthogonal and of equal norm; 1 when they are all parallel).
- ``cosines``: pairwise cosine similarity of the task vectors.
- ``residual_norms``: ‖ρ_i‖ before truncation, after layerwise rank truncation and after norm
  matching (all equal to the mean by construction), where ρ_i is R²M's Fake residual
  (``residual="orthogonal"``: (I − V_kV_kᵀ)τ_i; ``"minus_core"``: τ_i − τ_core).
- ``energy_kept``: per task and block matrix, the fraction of ‖ρ_i[l]‖² kept by the
  rank-⌊r·min(m,n)⌋ truncation (Eckart–Young: Σ_{j≤r} σ_j² / Σ_j σ_j²).

The Real projector uses the plain Gram (``block_weighting="none"``, R²M's default).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from r2m.merging.tasks import DEFAULT_BLOCK_PATTERN

__all__ = ["compute_diagnostics", "plot_diagnostics", "BLOCK_PATTERN"]

#: open_clip attention / MLP weights of the transformer blocks (the merge library's selection).
BLOCK_PATTERN = DEFAULT_BLOCK_PATTERN


def _residual_coefficients(gram: torch.Tensor, *, center: bool, residual: str, k: int) -> torch.Tensor:
    """Rows r_i with ρ_i = Σ_j r_ij τ_j (float64, N×N).

    With M = T (or H·T, H = I − 11ᵀ/N when centring), the top-k right singular vectors are
    V_k = Mᵀ U_k Λ_k^{-1/2} from the eigenpairs (Λ, U) of M Mᵀ; hence
    V_kV_kᵀ τ_i = Tᵀ c_i with c_i = Hᵀ U_k Λ_k⁻¹ U_kᵀ H G e_i (H = I without centring)."""
    n = gram.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    h = eye - torch.full((n, n), 1.0 / n, dtype=torch.float64) if center else eye
    mm = h @ gram @ h
    evals, evecs = torch.linalg.eigh(mm)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order], evecs[:, order]
    tol = evals.max().clamp_min(0) * n * torch.finfo(torch.float64).eps
    keep = [j for j in range(min(k, n)) if evals[j] > tol]
    if keep:
        u = evecs[:, keep]
        proj = h @ u @ torch.diag(1.0 / evals[keep]) @ u.T @ h @ gram  # column i = c_i
    else:
        proj = torch.zeros(n, n, dtype=torch.float64)
    c = proj.T  # row i = c_i
    if residual == "orthogonal":
        return eye - c
    if residual == "minus_core":
        return eye - c.mean(dim=0, keepdim=True).expand(n, n)
    raise ValueError(f"unknown residual {residual!r}: use 'orthogonal' or 'minus_core'")


@torch.no_grad()
def compute_diagnostics(
    base: Mapping[str, torch.Tensor],
    specialists: Sequence[Mapping[str, torch.Tensor]],
    names: Sequence[str],
    *,
    center: bool = False,
    residual: str = "orthogonal",
    k: int = 1,
    rank_ratio: float | None = 0.1,
    block_pattern: str = BLOCK_PATTERN,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Compute the diagnostics of one R²M configuration (see the module docstring)."""
    n = len(specialists)
    keys = list(base.keys())
    block_re = re.compile(block_pattern)
    grams: dict[str, torch.Tensor] = {}
    for key in keys:
        b = base[key].to(device=device, dtype=torch.float64)
        rows = torch.stack([s[key].to(device=device, dtype=torch.float64).reshape(-1) - b.reshape(-1) for s in specialists])
        grams[key] = (rows @ rows.T).cpu()
    gram = torch.stack(list(grams.values())).sum(0)
    coeffs = _residual_coefficients(gram, center=center, residual=residual, k=k)

    norms_before = torch.sqrt(torch.clamp(torch.einsum("ij,jk,ik->i", coeffs, gram, coeffs), min=0))
    kept_sq = torch.zeros(n, dtype=torch.float64)
    energy_kept: dict[str, list[float]] = {}
    spectra: dict[str, list[list[float]]] = {}
    for key in keys:
        g = grams[key]
        layer_sq = torch.clamp(torch.einsum("ij,jk,ik->i", coeffs, g, coeffs), min=0)
        t = base[key]
        if rank_ratio is None or t.ndim != 2 or not block_re.search(key):
            kept_sq += layer_sq
            continue
        b = t.to(device=device, dtype=torch.float64)
        taus = [s[key].to(device=device, dtype=torch.float64) - b for s in specialists]
        rank = max(1, int(rank_ratio * min(t.shape)))
        fractions, layer_spectra = [], []
        for i in range(n):
            rho = sum(float(coeffs[i, j]) * taus[j] for j in range(n))
            sv = torch.linalg.svdvals(rho).cpu()
            total = float((sv**2).sum())
            kept = float((sv[:rank] ** 2).sum())
            kept_sq[i] += kept
            fractions.append(kept / total if total > 0 else 1.0)
            layer_spectra.append(sv.tolist())
        energy_kept[key] = fractions
        spectra[key] = layer_spectra
    norms_trunc = torch.sqrt(kept_sq)
    mean_norm = float(norms_trunc.mean())

    evals = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
    hc = torch.eye(n, dtype=torch.float64) - 1.0 / n
    evals_c = torch.linalg.eigvalsh(hc @ gram @ hc).flip(0).clamp_min(0)
    diag = torch.sqrt(torch.clamp(torch.diagonal(gram), min=1e-300))
    cosines = gram / diag[:, None] / diag[None, :]
    return {
        "names": list(names),
        "config": {"center": center, "residual": residual, "k": k, "rank_ratio": rank_ratio},
        "task_norms": diag.tolist(),
        "singular_values": evals.sqrt().tolist(),
        "singular_values_centered": evals_c.sqrt().tolist(),
        "top_singular_share": float(evals[0] / evals.sum()) if float(evals.sum()) > 0 else 0.0,
        "cosines": cosines.tolist(),
        "residual_norms": {
            "before_truncation": norms_before.tolist(),
            "after_truncation": norms_trunc.tolist(),
            "after_norm_matching": [mean_norm] * n,
        },
        "energy_kept": energy_kept,
        "spectra": spectra,
        "rank_ratio": rank_ratio,
    }


def plot_diagnostics(diag: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the diagnostics as PNGs (and ``diagnostics.json``) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from r2m.utils import atomic_write, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = diag["names"]
    n = len(names)
    paths: list[Path] = []

    def save(fig, stem: str) -> None:
        path = out / f"{stem}.png"
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    idx = np.arange(1, n + 1)
    ax.bar(idx - 0.18, diag["singular_values"], width=0.36, label="task matrix T")
    ax.bar(idx + 0.18, diag["singular_values_centered"], width=0.36, label="centred T − 1τ̄ᵀ")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("σ")
    ax.set_title("Spectrum of the task matrix (how much is shared / 'Real')")
    ax.set_xticks(idx)
    ax.legend(fontsize=8)
    save(fig, "singular_values")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    rn = diag["residual_norms"]
    width = 0.27
    ax.bar(idx - width, rn["before_truncation"], width, label="residual ρ_i")
    ax.bar(idx, rn["after_truncation"], width, label="after rank truncation")
    ax.bar(idx + width, rn["after_norm_matching"], width, label="after norm matching")
    ax.set_xticks(idx)
    ax.set_xticklabels(names, rotation=20, fontsize=8)
    ax.set_ylabel("‖ρ_i‖₂")
    ax.set_title("Per-task Fake-residual norms")
    ax.legend(fontsize=8)
    save(fig, "residual_norms")

    fig, ax = plt.subplots(figsize=(3.8 + 0.3 * n, 3.2 + 0.3 * n))
    cos = np.array(diag["cosines"])
    im = ax.imshow(cos, vmin=-1, vmax=1, cmap="coolwarm")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cos[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=30, fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_title("Task-vector cosine similarity")
    fig.colorbar(im, ax=ax, fraction=0.046)
    save(fig, "cosines")

    if diag["energy_kept"]:
        layers = list(diag["energy_kept"])
        mat = np.array([diag["energy_kept"][k] for k in layers]).T  # tasks × layers
        fig, ax = plt.subplots(figsize=(max(5, 0.18 * len(layers) + 2), 1.2 + 0.45 * n))
        im = ax.imshow(mat, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(n))
        ax.set_yticklabels(names, fontsize=8)
        step = max(1, len(layers) // 16)
        ax.set_xticks(range(0, len(layers), step))
        ax.set_xticklabels([layers[i].replace("transformer.resblocks.", "") for i in range(0, len(layers), step)],
                           rotation=60, ha="right", fontsize=6)
        ax.set_title(f"Energy of ρ_i kept by rank truncation (rank ratio {diag['rank_ratio']})")
        fig.colorbar(im, ax=ax, fraction=0.03)
        save(fig, "energy_kept")

    atomic_write_json(out / "diagnostics.json", {k: v for k, v in diag.items() if k != "spectra"})
    return paths
