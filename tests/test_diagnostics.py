"""Merge diagnostics against a brute-force float64 computation on flattened task vectors."""

import math

import pytest
import torch

from r2m.diagnostics import compute_diagnostics, plot_diagnostics


def _state(gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "conv1.weight": torch.randn(8, 3, 4, 4, generator=gen) * scale,
        "ln_pre.weight": torch.randn(8, generator=gen) * scale,
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8, generator=gen) * scale,
        "transformer.resblocks.0.attn.out_proj.weight": torch.randn(8, 8, generator=gen) * scale,
        "transformer.resblocks.0.mlp.c_fc.weight": torch.randn(16, 8, generator=gen) * scale,
        "transformer.resblocks.0.mlp.c_proj.weight": torch.randn(8, 16, generator=gen) * scale,
        "transformer.resblocks.0.mlp.c_fc.bias": torch.randn(16, generator=gen) * scale,
    }


BLOCKS = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _reference(base, specs, center, residual, k, rank_ratio):
    keys = list(base)
    taus = [{kk: (s[kk] - base[kk]).double() for kk in keys} for s in specs]
    flat = torch.stack([torch.cat([t[kk].reshape(-1) for kk in keys]) for t in taus])
    m = flat - flat.mean(0, keepdim=True) if center else flat
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    v = vh[:k].T
    mean = flat.mean(0)
    core = v @ (v.T @ mean)
    rhos = [(f - v @ (v.T @ f)) if residual == "orthogonal" else f - core for f in flat]
    before = [float(r.norm()) for r in rhos]
    after = []
    for r in rhos:
        off, total = 0, 0.0
        for kk in keys:
            numel = base[kk].numel()
            part = r[off:off + numel].reshape(base[kk].shape)
            off += numel
            if kk.endswith(BLOCKS):
                u, s, vv = torch.linalg.svd(part, full_matrices=False)
                rank = max(1, int(rank_ratio * min(part.shape)))
                part = u[:, :rank] @ torch.diag(s[:rank]) @ vv[:rank]
            total += float((part ** 2).sum())
        after.append(math.sqrt(total))
    sv = torch.linalg.svdvals(flat)
    svc = torch.linalg.svdvals(flat - flat.mean(0, keepdim=True))
    return before, after, sv, svc


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("residual", ["orthogonal", "minus_core"])
def test_diagnostics_match_bruteforce(center, residual):
    gen = torch.Generator().manual_seed(0)
    base = _state(gen)
    shared = _state(gen, 0.05)
    specs = []
    for _ in range(3):
        own = _state(gen, 0.02)
        specs.append({kk: base[kk] + shared[kk] + own[kk] for kk in base})
    diag = compute_diagnostics(base, specs, ["a", "b", "c"], center=center, residual=residual, k=1, rank_ratio=0.25)
    before, after, sv, svc = _reference(base, specs, center, residual, 1, 0.25)
    rn = diag["residual_norms"]
    torch.testing.assert_close(torch.tensor(rn["before_truncation"], dtype=torch.float64), torch.tensor(before, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.tensor(rn["after_truncation"], dtype=torch.float64), torch.tensor(after, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert rn["after_norm_matching"] == pytest.approx([sum(after) / 3] * 3)
    torch.testing.assert_close(torch.tensor(diag["singular_values"], dtype=torch.float64), sv, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.tensor(diag["singular_values_centered"][:2], dtype=torch.float64), svc[:2], rtol=1e-6, atol=1e-9)
    assert diag["singular_values_centered"][2] < 1e-6  # centred matrix has rank ≤ N − 1
    assert diag["top_singular_share"] == pytest.approx(float(sv[0] ** 2 / (sv ** 2).sum()), rel=1e-6)
    assert 1 / 3 < diag["top_singular_share"] < 1  # a shared component (σ₁ dominates), not parallel
    cos = torch.tensor(diag["cosines"], dtype=torch.float64)
    torch.testing.assert_close(torch.diagonal(cos), torch.ones(3, dtype=torch.float64))
    assert set(diag["energy_kept"]) == {kk for kk in base if kk.endswith(BLOCKS)}
    for fractions in diag["energy_kept"].values():
        assert all(0.0 < f <= 1.0 + 1e-12 for f in fractions)


def test_plot_diagnostics_writes_pngs(tmp_path):
    gen = torch.Generator().manual_seed(1)
    base = _state(gen)
    specs = [{kk: v + 0.01 * torch.randn(v.shape, generator=gen) for kk, v in base.items()} for _ in range(2)]
    diag = compute_diagnostics(base, specs, ["x", "y"], rank_ratio=0.5)
    paths = plot_diagnostics(diag, tmp_path / "diag")
    assert {p.name for p in paths} == {"singular_values.png", "residual_norms.png", "cosines.png", "energy_kept.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "diag" / "diagnostics.json").is_file()
