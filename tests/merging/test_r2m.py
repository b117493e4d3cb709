"""R²M: its defining properties, edge cases and the centring behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from merge_fixtures import make_specialists
from merge_reference import BLOCK_RE, max_rel_diff, r2m_parts

from r2m.merging import merge
from r2m.merging.methods.r2m import real_subspace


def _flat(sd, keys):
    return torch.cat([sd[k].double().reshape(-1) for k in keys])


def _update_norm(out, base):
    return math.sqrt(sum(float((out[k].double() - base[k].double()).pow(2).sum()) for k in base))


def test_core_lies_in_span_of_vk(base64, specs64):
    parts = r2m_parts(base64, specs64, k=1)
    core, v = parts["core"], parts["v"]
    assert v.shape[0] == 1
    # τ_core = (v·τ̄) v: its component orthogonal to V_k vanishes
    assert float((core - v.T @ (v @ core)).norm()) <= 1e-10 * float(core.norm())
    # the library's τ_core (α = 0, float64 inputs) is that same vector, in the span of V_k
    ours = merge("r2m", base64, specs64, device="cpu", dtype=torch.float64, alpha=0.0)
    keys = list(base64)
    ours_core = _flat(ours, keys) - _flat(base64, keys)
    assert float((ours_core - core).norm()) <= 1e-9 * float(core.norm())
    assert float((ours_core - v.T @ (v @ ours_core)).norm()) <= 1e-9 * float(ours_core.norm())


def test_real_subspace_coefficients_project_onto_row_space():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 50, generator=g, dtype=torch.float64)  # one "tensor", N = 4
    grams = (t @ t.T).unsqueeze(0)
    sub = real_subspace(grams, torch.tensor([50.0], dtype=torch.float64), k=2, center=True,
                        residual="orthogonal", block_weighting="none")
    tc = t - t.mean(0)
    _, _, vh = torch.linalg.svd(tc, full_matrices=False)
    v = vh[:2]
    assert sub.k_eff == 2
    torch.testing.assert_close(t.T @ sub.core, v.T @ (v @ t.mean(0)))
    torch.testing.assert_close(sub.residual @ t, t - (t @ v.T) @ v)


def test_norm_matching_equalises_residual_norms(base, specs):
    parts = r2m_parts(base, specs, norm_match=True)
    norms = torch.stack([_flat(r, parts["keys"]).norm() for r in parts["rho"]])
    assert float(norms.max() - norms.min()) > 1e-3 * float(norms.mean())  # they differed before
    # the library: η τ_res with norm_match equals the mean of equal-norm residuals (reference match)
    ours = merge("r2m", base, specs, device="cpu", dtype=torch.float64)
    assert max_rel_diff(ours, parts["merged"], base) <= 1e-6
    # direct check with the same math: rescaled residuals share the mean norm
    m = norms.mean()
    rescaled = [float((_flat(r, parts["keys"]) * (m / n)).norm()) for r, n in zip(parts["rho"], norms)]
    assert max(rescaled) - min(rescaled) <= 1e-9 * float(m)


def test_relative_eta_gives_residual_norm_alpha_times_core(base64, specs64):
    keys = list(base64)
    core_only = merge("r2m", base64, specs64, device="cpu", dtype=torch.float64, alpha=0.0)
    full = merge("r2m", base64, specs64, device="cpu", dtype=torch.float64, alpha=0.6)
    core = _flat(core_only, keys) - _flat(base64, keys)
    resid = _flat(full, keys) - _flat(core_only, keys)
    assert abs(float(resid.norm()) - 0.6 * float(core.norm())) <= 1e-9 * float(core.norm())


def _numerical_rank(x, rtol=1e-5):
    s = torch.linalg.svdvals(x.double())
    return int((s > rtol * s[0]).sum())


@pytest.mark.parametrize("ratio", [0.1, 0.25])
def test_truncated_residual_blocks_have_requested_rank(base, specs, ratio):
    from r2m.merging.linalg import gram_eigh, low_rank

    parts = r2m_parts(base, specs, rank_ratio=ratio)
    for key in base:
        if not BLOCK_RE.search(key):
            continue
        r = max(1, math.floor(ratio * min(base[key].shape)))
        for rho in parts["rho"]:  # reference residuals
            assert _numerical_rank(rho[key], 1e-9) == r
        x = specs[0][key] - base[key]  # the library's truncation helper, float32
        _, q, side = gram_eigh(x)
        assert _numerical_rank(low_rank(x, q, r, side)) == r
    # the merged residual term of a block sums N rank-r matrices: rank ≤ N·r (float64 run)
    core_only = merge("r2m", base, specs, device="cpu", dtype=torch.float64, alpha=0.0, rank_ratio=ratio)
    full = merge("r2m", base, specs, device="cpu", dtype=torch.float64, alpha=0.6, rank_ratio=ratio)
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    r = max(1, math.floor(ratio * 32))
    assert _numerical_rank(full[key].double() - core_only[key].double(), 1e-4) <= len(specs) * r


def test_single_specialist_uncentred_returns_it(base, specs):
    out = merge("r2m", base, specs[:1], device="cpu")
    assert max_rel_diff(out, specs[0], base) <= 1e-5


def test_single_specialist_centred_returns_base(base, specs):
    out = merge("r2m", base, specs[:1], device="cpu", center=True)
    for key in base:
        assert torch.equal(out[key], base[key])


def test_k_at_least_n_uncentred_is_the_average(base, specs):
    avg = merge("average", base, specs, device="cpu", dtype=torch.float64)
    out = merge("r2m", base, specs, device="cpu", dtype=torch.float64, k=5)
    assert max_rel_diff(out, avg, base) <= 1e-6


def test_k_beyond_centred_rank_is_clipped(base, specs):
    """Centred rank ≤ N − 1 = 2: k = 2 and k = 7 give the same merge, and match the reference."""
    a = merge("r2m", base, specs, device="cpu", dtype=torch.float64, center=True, k=2)
    b = merge("r2m", base, specs, device="cpu", dtype=torch.float64, center=True, k=7)
    assert max_rel_diff(b, a, base) <= 1e-9
    ref = r2m_parts(base, specs, center=True, k=7)
    assert ref["v"].shape[0] == 2
    assert max_rel_diff(b, ref["merged"], base) <= 1e-6


def test_zero_residual_gives_core_only(base, specs):
    """Identical specialists: uncentred τ_core = τ, residuals vanish (‖τ_res‖ = 0) → θ* = θ_1."""
    same = [specs[0], {k: v.clone() for k, v in specs[0].items()}]
    out = merge("r2m", base, same, device="cpu")
    assert max_rel_diff(out, specs[0], base) <= 1e-5
    ref = r2m_parts(base, same)
    assert ref["eta"] == 0.0


def test_centring_removes_the_shared_component(base):
    """With a common part in every task vector, the centred τ_core nearly vanishes while the
    uncentred one keeps it (documented in the r2m docstring)."""
    specs = make_specialists(base, 3, seed=9, scale=0.02, shared=10.0)
    avg = _update_norm(merge("average", base, specs, device="cpu", dtype=torch.float64), base)
    unc = _update_norm(merge("r2m", base, specs, device="cpu", dtype=torch.float64, alpha=0.0), base)
    cen = _update_norm(merge("r2m", base, specs, device="cpu", dtype=torch.float64, alpha=0.0, center=True), base)
    assert unc > 0.9 * avg
    assert cen < 0.05 * unc


def test_minus_core_and_orthogonal_agree_for_one_specialist_direction(base, specs):
    """For k = 1 uncentred both residual rules differ in general (sanity: they are not aliases)."""
    a = merge("r2m", base, specs, device="cpu", residual="orthogonal")
    b = merge("r2m", base, specs, device="cpu", residual="minus_core")
    assert max_rel_diff(a, b, base) > 1e-4


def test_two_specialists_default_residuals_cancel(base):
    """N = 2, defaults: the orthogonal residuals are opposite multiples of one vector when
    ⟨τ_1, τ_2⟩ > 0, so after norm matching τ_res = 0 and θ* = θ0 + τ_core (documented edge case)."""
    pair = make_specialists(base, 2, seed=21, shared=1.0)
    ref = r2m_parts(base, pair)
    assert ref["eta"] == 0.0 and float(ref["tau_res"].norm()) <= 1e-12 * float(ref["core"].norm())
    out = merge("r2m", base, pair, device="cpu")
    core_only = merge("r2m", base, pair, device="cpu", alpha=0.0)
    assert all(torch.equal(out[k], core_only[k]) for k in base)
    assert max_rel_diff(out, ref["merged"], base) <= 1e-5


def _count_decompositions(monkeypatch):
    from r2m.merging.methods import r2m as r2m_mod

    calls = []
    real = r2m_mod.spectra

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(r2m_mod, "spectra", counting)
    return calls


@pytest.mark.parametrize("block_weighting", ["none", "fro_sqrtP"])
@pytest.mark.parametrize("eta", ["relative", "literal"])
def test_two_specialists_skip_the_cancelling_residual_pass(base, monkeypatch, block_weighting, eta):
    """N = 2, uncentred, orthogonal, norm matching: the residual pass is skipped (no decomposition)
    and θ* is bit-identical to the full computation, which finds τ_res = 0 by round-off."""
    from r2m.merging import DecompositionCache
    from r2m.merging.methods import r2m as r2m_mod

    pair = make_specialists(base, 2, seed=21, shared=1.0)
    hp = dict(block_weighting=block_weighting, eta=eta)
    calls = _count_decompositions(monkeypatch)
    fast = merge("r2m", base, pair, device="cpu", **hp)
    assert calls == []  # no residual decomposition at all
    cache = DecompositionCache()
    fast_cached = merge("r2m", base, pair, device="cpu", cache=cache, **hp)
    assert calls == [] and cache.stats["svd_computed"] == 0
    monkeypatch.setattr(r2m_mod, "SKIP_CANCELLING", False)
    full = merge("r2m", base, pair, device="cpu", **hp)
    assert len(calls) > 0
    assert all(torch.equal(fast[k], full[k]) for k in base)
    assert all(torch.equal(fast[k], fast_cached[k]) for k in base)
    ref = r2m_parts({k: v.double() for k, v in base.items()}, [{k: v.double() for k, v in s.items()} for s in pair], **hp)
    assert ref["eta"] == 0.0
    assert max_rel_diff(fast, ref["merged"], base) <= 1e-5


@pytest.mark.parametrize("hp", [dict(center=True), dict(residual="minus_core"), dict(norm_match=False), dict(k=2)])
def test_two_specialists_other_configurations_keep_the_residual_pass(base, monkeypatch, hp):
    """The skip applies only where the proof does: every other N = 2 configuration decomposes the
    residuals (and still equals the float64 reference)."""
    pair = make_specialists(base, 2, seed=21, shared=1.0)
    calls = _count_decompositions(monkeypatch)
    out = merge("r2m", base, pair, device="cpu", **hp)
    if hp != dict(k=2):  # k ≥ N: the orthogonal residuals vanish, nothing is truncated
        assert len(calls) > 0
    ref = r2m_parts({k: v.double() for k, v in base.items()}, [{k: v.double() for k, v in s.items()} for s in pair], **hp)
    assert max_rel_diff(out, ref["merged"], base) <= 1e-4


def test_two_specialists_with_opposing_tasks_add_their_residuals(base, monkeypatch):
    """⟨ρ_1, ρ_2⟩ > 0 (residuals of the same sign): no skip, τ_res ≠ 0, equal to the reference."""
    pair = make_specialists(base, 2, seed=23, shared=0.0)
    pair[1] = {k: 2 * base[k] - v for k, v in pair[1].items()}  # τ_2 → −τ_2: ⟨τ_1, τ_2⟩ flips sign
    ref = r2m_parts({k: v.double() for k, v in base.items()}, [{k: v.double() for k, v in s.items()} for s in pair])
    calls = _count_decompositions(monkeypatch)
    out = merge("r2m", base, pair, device="cpu")
    assert len(calls) > 0
    if ref["eta"] != 0.0:
        assert max_rel_diff(out, ref["merged"], base) <= 1e-4
