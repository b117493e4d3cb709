"""The CPU spectral routes: SciPy LAPACK (dsyrk + dsyevd / partial dsyevr) against torch and SVD."""

from __future__ import annotations

import math

import pytest
import torch

from r2m.merging import DecompositionCache, linalg, merge
from r2m.merging.linalg import eig_columns, eig_tag, gram_eigh, low_rank, low_rank_gram, gram64, spectral_route

pytestmark = pytest.mark.skipif(spectral_route("cpu") != "cpu-lapack", reason="needs SciPy")


@pytest.fixture
def torch_route(monkeypatch):
    monkeypatch.setattr(linalg, "CPU_ROUTE", "torch")


def test_eig_columns_rule():
    assert eig_columns(768, 76, "cpu") == 96  # ⌈768/8⌉: R²M's default rank 0.1·768 fits
    assert eig_columns(768, 96, "cpu") == 96
    assert eig_columns(768, 97, "cpu") == 768
    assert eig_columns(768, None, "cpu") == 768
    assert eig_columns(5, 1, "cpu") == 1  # ⌈5/8⌉ = 1
    assert eig_columns(1, 1, "cpu") == 1  # a subset as large as K is the full problem
    assert eig_tag(768, 76, "cpu") == "cpu-lapack:96" and eig_tag(768, None, "cpu") == "cpu-lapack:768"


def test_eig_columns_torch_route_is_always_full(torch_route):
    assert spectral_route("cpu") == "torch"
    assert eig_columns(768, 76, "cpu") == 768
    assert eig_columns(768, 76, "meta") == 768  # non-CPU devices use torch


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (24, 24)])
def test_partial_and_full_factors_match_the_svd(shape):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(shape)
    s_full, q_full, side = gram_eigh(x)
    assert s_full.shape == (k,) and q_full.shape == (k, k)
    torch.testing.assert_close(s_full, s, rtol=1e-10, atol=1e-12)
    rank = 2
    s_part, q_part, side_p = gram_eigh(x, rank)
    cols = math.ceil(k / 8)
    assert side_p == side and s_part.shape == (cols,) and q_part.shape == (k, cols)
    torch.testing.assert_close(s_part, s[:cols], rtol=1e-10, atol=1e-12)
    expected = (u[:, :rank] * s[:rank]) @ vh[:rank]
    torch.testing.assert_close(low_rank(x, q_part, rank, side), expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(low_rank(x, q_full, rank, side), expected, rtol=1e-9, atol=1e-11)
    # same factors up to the sign of each vector
    dots = (q_part * q_full[:, :cols]).sum(0).abs()
    torch.testing.assert_close(dots, torch.ones_like(dots), rtol=0, atol=1e-9)


def test_routes_agree(torch_route):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 24, generator=g, dtype=torch.float64)
    s_t, q_t, _ = gram_eigh(x)
    linalg.CPU_ROUTE = "lapack"
    s_l, q_l, _ = gram_eigh(x)
    torch.testing.assert_close(s_l, s_t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q_l @ torch.diag(s_l**2) @ q_l.mT, q_t @ torch.diag(s_t**2) @ q_t.mT)


def test_low_rank_gram_equals_the_gram_of_the_truncations():
    g = torch.Generator().manual_seed(6)
    for shape in ((3, 40, 24), (3, 24, 40)):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        _, q, side = gram_eigh(x)
        for rank in (1, 5, 24):
            torch.testing.assert_close(low_rank_gram(x, q, rank, side), gram64(low_rank(x, q, rank, side)))


def test_blas_threads_follow_torch():
    from threadpoolctl import threadpool_info

    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with linalg.blas_threads():
            blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
            assert blas and all(lib["num_threads"] == 1 for lib in blas)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["r2m", "cart", "tsv", "iso_cts"])
def test_merges_agree_across_routes(method, base, specs, monkeypatch):
    lapack = merge(method, base, specs, device="cpu")
    monkeypatch.setattr(linalg, "CPU_ROUTE", "torch")
    torch_out = merge(method, base, specs, device="cpu")
    for key in base:
        upd = (torch_out[key] - base[key]).double()
        diff = float((lapack[key].double() - torch_out[key].double()).norm())
        assert diff <= 1e-5 * max(float(upd.norm()), 1e-12), key


def test_cache_entries_are_per_route(base, specs, monkeypatch):
    cache = DecompositionCache()
    merge("r2m", base, specs, device="cpu", cache=cache)
    monkeypatch.setattr(linalg, "CPU_ROUTE", "torch")
    cache.reset_stats()
    out = merge("r2m", base, specs, device="cpu", cache=cache)
    assert cache.stats["svd_computed"] > 0  # the LAPACK route's partial factors are not reused
    assert all(torch.equal(out[k], v) for k, v in merge("r2m", base, specs, device="cpu").items())


def test_float32_polar_factor_of_an_ill_conditioned_stack_keeps_float64_accuracy():
    """TSV-M / Iso-CTS stack orthonormal blocks into a square matrix whose condition number reaches
    10³: its float32 polar factor must stay at float32 round-off of the exact one (the float32
    product alone lost ε₃₂·cond ≈ 1e-4 here)."""
    from r2m.merging.linalg import POLAR_FP32_MAX_COND, polar_factor

    g = torch.Generator().manual_seed(0)
    k = 192
    u = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    s = torch.logspace(0, -3, k, dtype=torch.float64)  # cond 1e3
    x32 = ((u * s) @ v.T).float()
    exact = polar_factor(x32.double())  # float64 throughout, on the same (rounded) input
    got = polar_factor(x32, dtype=torch.float32)
    assert got.dtype == torch.float32
    err = float((got.double() - exact).norm() / exact.norm())
    assert err < 2e-6, err
    # a well-conditioned matrix stays on the float32 product (and is as accurate)
    w32 = torch.linalg.qr(torch.randn(3 * k, k, generator=g))[0] * (1 + 0.1 * torch.rand(k, generator=g))
    assert POLAR_FP32_MAX_COND > 1.25
    err_w = float((polar_factor(w32, dtype=torch.float32).double() - polar_factor(w32.double())).norm())
    assert err_w / k**0.5 < 2e-6
