"""DecompositionCache: sweeps reuse every decomposition; adding a specialist computes only what
depends on it; results equal merging from scratch, bit for bit."""

from __future__ import annotations

import pytest
import torch
from merge_fixtures import make_specialists

from r2m.merging import DecompositionCache, merge

N_BLOCKS = 8  # tiny ViT: 2 blocks × 4 block matrices


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _fresh(*args, **kw):
    """A merge from scratch with an empty cache (with a cache the full spectrum is computed; a merge
    without one may compute only the leading eigenpairs and then agrees to round-off, not bitwise)."""
    return merge(*args, cache=DecompositionCache(), **kw)


def test_r2m_sweep_recomputes_no_decomposition(base, specs):
    cache = DecompositionCache()
    first = merge("r2m", base, specs, device="cpu", cache=cache)
    assert cache.stats["svd_computed"] == len(specs) * N_BLOCKS
    assert cache.stats["gram_pairs_computed"] == 6  # 3·4/2 unordered pairs incl. diagonal
    assert _equal(first, _fresh("r2m", base, specs, device="cpu"))  # cache changes nothing
    cache.reset_stats()
    for rank_ratio in (0.05, 0.1, 0.3):
        for alpha in (0.4, 0.6, 0.8):
            for eta in ("relative", "literal"):
                hp = dict(rank_ratio=rank_ratio, alpha=alpha, eta=eta, norm_match=alpha != 0.8)
                warm = merge("r2m", base, specs, device="cpu", cache=cache, **hp)
                cold = _fresh("r2m", base, specs, device="cpu", **hp)
                assert _equal(warm, cold), hp
    assert cache.stats["svd_computed"] == 0
    assert cache.stats["gram_pairs_computed"] == 0
    assert cache.stats["svd_hits"] > 0 and cache.stats["gram_pairs_hits"] > 0
    assert cache.stats["residual_gram_computed"] == 2  # 0.05 and 0.3 (0.1 was cached by the first merge)


def test_r2m_config_change_recomputes_residual_decompositions_only(base, specs):
    cache = DecompositionCache()
    merge("r2m", base, specs, device="cpu", cache=cache)
    cache.reset_stats()
    out = merge("r2m", base, specs, device="cpu", cache=cache, center=True)
    assert cache.stats["gram_pairs_computed"] == 0  # the Gram does not depend on the flags
    assert cache.stats["svd_computed"] == len(specs) * N_BLOCKS  # residuals do
    assert _equal(out, _fresh("r2m", base, specs, device="cpu", center=True))


def test_adding_a_specialist_computes_only_new_gram_pairs(base, specs):
    extra = make_specialists(base, 1, seed=77)[0]
    cache = DecompositionCache()
    merge("r2m", base, specs, device="cpu", cache=cache)
    cache.reset_stats()
    grown = [*specs, extra]
    warm = merge("r2m", base, grown, device="cpu", cache=cache)
    assert cache.stats["gram_pairs_computed"] == len(specs) + 1  # N cross pairs + the new diagonal
    assert cache.stats["gram_pairs_hits"] == 6
    # R²M residuals depend on V_k (all tasks): every residual decomposition is recomputed
    assert cache.stats["svd_computed"] == len(grown) * N_BLOCKS
    assert _equal(warm, _fresh("r2m", base, grown, device="cpu"))
    assert _equal(warm, merge("r2m", base, grown, device="cpu", cache=DecompositionCache()))


def test_tsv_reuses_per_task_decompositions_when_a_specialist_is_added(base, specs):
    extra = make_specialists(base, 1, seed=78)[0]
    n_matrix = sum(1 for v in base.values() if v.ndim == 2)
    cache = DecompositionCache()
    merge("tsv", base, specs, device="cpu", cache=cache)
    assert cache.stats["svd_computed"] == (len(specs) + 2) * n_matrix  # per task + 2 polar
    cache.reset_stats()
    a = merge("tsv", base, specs, device="cpu", cache=cache, alpha=0.5)  # α sweep: nothing new
    assert cache.stats["svd_computed"] == 0
    assert _equal(a, merge("tsv", base, specs, device="cpu", alpha=0.5))
    cache.reset_stats()
    grown = [*specs, extra]
    b = merge("tsv", base, grown, device="cpu", cache=cache)
    assert cache.stats["svd_computed"] == (1 + 2) * n_matrix  # new task + the two polar factors
    assert _equal(b, merge("tsv", base, grown, device="cpu"))


def test_cart_sweep_and_growth(base, specs):
    cache = DecompositionCache()
    merge("cart", base, specs, device="cpu", cache=cache)
    cache.reset_stats()
    a = merge("cart", base, specs, device="cpu", cache=cache, rank_ratio=0.3, lam=1.0)
    assert cache.stats["svd_computed"] == 0
    assert _equal(a, _fresh("cart", base, specs, device="cpu", rank_ratio=0.3, lam=1.0))
    extra = make_specialists(base, 1, seed=79)[0]
    cache.reset_stats()
    merge("cart", base, [*specs, extra], device="cpu", cache=cache)
    assert cache.stats["svd_computed"] == (len(specs) + 1) * N_BLOCKS  # centring depends on all


def test_permuted_order_hits_the_cache(base, specs):
    cache = DecompositionCache()
    merge("r2m", base, specs, device="cpu", cache=cache)
    cache.reset_stats()
    merge("r2m", base, specs[::-1], device="cpu", cache=cache)
    assert cache.stats["svd_computed"] == 0 and cache.stats["gram_pairs_computed"] == 0


def test_disk_cache_survives_a_new_process_object(tmp_path, base, specs):
    first = DecompositionCache(tmp_path / "cache")
    a = merge("r2m", base, specs, device="cpu", cache=first)
    assert first.stats["disk_writes"] > 0
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == first.stats["disk_writes"]
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporaries
    second = DecompositionCache(tmp_path / "cache", in_memory=False)
    b = merge("r2m", base, specs, device="cpu", cache=second)
    assert second.stats["svd_computed"] == 0 and second.stats["gram_pairs_computed"] == 0
    assert second.stats["disk_reads"] > 0
    assert len(second) == 0
    assert _equal(a, b)


def test_corrupt_disk_entry_is_recomputed(tmp_path, base, specs):
    cache = DecompositionCache(tmp_path)
    a = merge("r2m", base, specs, device="cpu", cache=cache)
    victim = sorted((tmp_path / "svd").glob("*.safetensors"))[0]
    victim.write_bytes(b"garbage")
    fresh = DecompositionCache(tmp_path)
    b = merge("r2m", base, specs, device="cpu", cache=fresh)
    assert fresh.stats["svd_computed"] == 1
    assert _equal(a, b)


def test_cache_keys_follow_content_not_position(base, specs):
    """A changed specialist under the same position must not hit stale entries."""
    cache = DecompositionCache()
    merge("r2m", base, specs, device="cpu", cache=cache)
    changed = [specs[0], specs[1], make_specialists(base, 1, seed=80)[0]]
    cache.reset_stats()
    out = merge("r2m", base, changed, device="cpu", cache=cache)
    assert cache.stats["gram_pairs_computed"] == 3
    assert _equal(out, _fresh("r2m", base, changed, device="cpu"))


def test_caller_provided_hashes_are_used(base, specs):
    cache = DecompositionCache()
    merge("r2m", base, specs, device="cpu", cache=cache, base_hash="b", task_hashes=["x", "y", "z"])
    cache.reset_stats()
    merge("r2m", base, specs, device="cpu", cache=cache, base_hash="b", task_hashes=["x", "y", "z"])
    assert cache.stats["gram_pairs_computed"] == 0
    with pytest.raises(ValueError, match="one hash per specialist"):
        merge("r2m", base, specs, device="cpu", cache=cache, task_hashes=["x"])


def test_cache_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="needs a directory"):
        DecompositionCache(in_memory=False)
    cache = DecompositionCache(tmp_path)
    with pytest.raises(ValueError, match="unknown entry kind"):
        cache.get("nope", "k")


def test_merge_many_equals_merge_and_computes_each_svd_once(base, specs):
    from r2m.merging import merge_many

    grid = [{"rank_ratio": r, "alpha": a} for r in (0.05, 0.1, 0.3) for a in (0.4, 0.8)]
    cache = DecompositionCache()
    seen = []
    for hp, merged in merge_many("r2m", base, specs, grid, device="cpu", cache=cache, eta="literal"):
        assert hp["eta"] == "literal"
        assert _equal(merged, _fresh("r2m", base, specs, device="cpu", **{k: hp[k] for k in ("rank_ratio", "alpha", "eta")}))
        seen.append((hp["rank_ratio"], hp["alpha"]))
    assert seen == [(g["rank_ratio"], g["alpha"]) for g in grid]
    assert cache.stats["svd_computed"] == len(specs) * N_BLOCKS
    assert cache.stats["gram_pairs_computed"] == 6
    # every point is validated before the first merge
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        next(merge_many("r2m", base, specs, [{"alpha": 0.5}, {"alpha": "x"}], device="cpu"))
    # methods without a cache work too
    (hp, out), = list(merge_many("task_arithmetic", base, specs, [{"lam": 0.5}], device="cpu"))
    assert _equal(out, merge("task_arithmetic", base, specs, device="cpu", lam=0.5))


@pytest.mark.parametrize("method", ["r2m", "cart"])
def test_merge_without_cache_agrees_with_cached_merge(method, base, specs, monkeypatch):
    from r2m.merging import linalg

    tops = []
    real = linalg._eigh_np_desc

    def spy(a, top, lower):
        tops.append(top)
        return real(a, top, lower)

    monkeypatch.setattr(linalg, "_eigh_np_desc", spy)
    k = base["transformer.resblocks.0.attn.out_proj.weight"].shape[0]  # every block matrix has K = width
    plain = merge(method, base, specs, device="cpu")
    if linalg.spectral_route("cpu") == "cpu-lapack":  # only the leading ⌈K/8⌉ eigenpairs without a cache
        assert tops and all(t == -(-k // 8) for t in tops if t is not None)
    tops.clear()
    cached = merge(method, base, specs, device="cpu", cache=DecompositionCache())
    assert all(t in (None, k) for t in tops)  # the full spectrum with a cache
    for key in base:
        upd = float((cached[key] - base[key]).double().norm())
        diff = float((plain[key] - cached[key]).double().norm())
        assert diff <= 1e-5 * max(upd, 1e-12), key


def test_merge_many_groups_alpha_and_eta_points(base, specs, monkeypatch):
    from r2m.merging import merge_many
    from r2m.merging.methods import r2m as r2m_module

    calls = []
    real = r2m_module._residual_sum

    def counting(prep, key, taus):
        calls.append(key)
        return real(prep, key, taus)

    monkeypatch.setattr(r2m_module, "_residual_sum", counting)
    grid = [
        {"rank_ratio": 0.05, "alpha": 0.4, "eta": "relative"},
        {"rank_ratio": 0.05, "alpha": 0.0, "eta": "literal"},  # η = 0: no residual term
        {"rank_ratio": 0.05, "alpha": 0.8, "eta": "literal"},
        {"rank_ratio": 0.3, "alpha": 0.6},
        {"rank_ratio": 0.05, "alpha": 0.6, "norm_match": False},  # another group, not merged with the first
    ]
    cache = DecompositionCache()
    outs = list(merge_many("r2m", base, specs, grid, device="cpu", cache=cache))
    assert [hp["alpha"] for hp, _ in outs] == [g["alpha"] for g in grid]
    # residual sums: once per group with a non-zero η (3 groups × N_BLOCKS truncated matrices)
    assert len(calls) == 3 * N_BLOCKS
    monkeypatch.setattr(r2m_module, "_residual_sum", real)
    for (hp, merged), point in zip(outs, grid):
        assert _equal(merged, _fresh("r2m", base, specs, device="cpu", **point)), point
    alpha0 = outs[1][1]
    no_res = _fresh("r2m", base, specs, device="cpu", rank_ratio=0.05, alpha=0.0)
    assert _equal(alpha0, no_res)


def test_plan_cache_policies(tmp_path, base, specs):
    from r2m.merging import plan_cache

    d = tmp_path / "cache"
    assert plan_cache("off", 5, d) is None
    assert plan_cache("auto", 1, d) is None  # a single merge, nothing to reuse: no cache at all
    assert plan_cache("auto", 1, None) is None
    mem = plan_cache("auto", 4, None)
    assert isinstance(mem, DecompositionCache) and mem.directory is None
    assert plan_cache("memory", 1, d).directory is None
    sweep = plan_cache("auto", 4, d)  # a sweep: disk, so that a later re-merge reuses it too
    assert sweep.directory == d
    merge("r2m", base, specs, device="cpu", cache=sweep)
    assert sweep.stats["disk_writes"] > 0
    again = plan_cache("auto", 1, d)  # a re-merge over a filled folder: served from disk
    assert isinstance(again, DecompositionCache) and again.directory == d
    a = merge("r2m", base, specs, device="cpu", cache=again, alpha=0.3)
    assert again.stats["svd_computed"] == 0 and again.stats["disk_reads"] > 0
    b = merge("r2m", base, specs, device="cpu", cache=DecompositionCache(), alpha=0.3)
    assert all(torch.equal(a[k], b[k]) for k in base)
    assert plan_cache("disk", 1, d).directory == d
    with pytest.raises(ValueError, match="needs a cache_dir"):
        plan_cache("disk", 1, None)
    with pytest.raises(ValueError, match="cache policy"):
        plan_cache("sometimes", 1, d)
    with pytest.raises(ValueError, match="n_jobs"):
        plan_cache("auto", -1, d)
