"""Invariants every method must satisfy."""

from __future__ import annotations

import pytest
import torch
from merge_fixtures import make_specialists, tiny_base
from merge_reference import max_rel_diff

from r2m.merging import METHODS, merge


def _clone(sd):
    return {k: v.clone() for k, v in sd.items()}


@pytest.mark.parametrize("method", METHODS)
def test_specialists_equal_to_base_give_base(base, method):
    out = merge(method, base, [_clone(base), _clone(base)], device="cpu")
    for key in base:
        assert torch.equal(out[key], base[key]), key


def test_single_specialist_average_returns_it(base, specs):
    out = merge("average", base, specs[:1], device="cpu")
    for key in base:
        torch.testing.assert_close(out[key], specs[0][key], rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_permutation_invariance(base, specs, method):
    a = merge(method, base, specs, device="cpu")
    b = merge(method, base, [specs[2], specs[0], specs[1]], device="cpu")
    assert max_rel_diff(b, a, base) <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_keys_shapes_dtypes_preserved_and_inputs_untouched(method):
    base = tiny_base(seed=3)
    specs = make_specialists(base, 2, seed=4)
    # half-precision inputs: the result keeps the input dtype
    base = {k: (v.to(torch.bfloat16) if k.endswith("bias") else v) for k, v in base.items()}
    specs = [{k: (v.to(torch.bfloat16) if k.endswith("bias") else v) for k, v in s.items()} for s in specs]
    before = [_clone(base)] + [_clone(s) for s in specs]
    out = merge(method, base, specs, device="cpu")
    assert list(out) == list(base)
    for key in base:
        assert out[key].shape == base[key].shape and out[key].dtype == base[key].dtype
        assert out[key].device.type == "cpu"
        assert bool(torch.isfinite(out[key].float()).all())
    for orig, now in zip(before, [base, *specs]):
        for key in orig:
            assert torch.equal(orig[key], now[key])


@pytest.mark.parametrize("method", METHODS)
def test_two_runs_bit_identical(base, specs, method):
    a = merge(method, base, specs, device="cpu")
    b = merge(method, base, specs, device="cpu")
    for key in base:
        assert torch.equal(a[key], b[key]), key


def test_dare_seed_controls_mask(base, specs):
    a = merge("dare", base, specs, device="cpu", seed=1)
    b = merge("dare", base, specs, device="cpu", seed=1)
    c = merge("dare", base, specs, device="cpu", seed=2)
    assert all(torch.equal(a[k], b[k]) for k in base)
    assert not all(torch.equal(a[k], c[k]) for k in base)


def test_dare_drop_rate(base, specs):
    from r2m.merging.methods.dare import dare_mask

    t = specs[0]["transformer.resblocks.0.mlp.c_fc.weight"]
    keep = dare_mask(t, "x", 0, 0.3)
    assert keep.shape == t.shape and keep.dtype == torch.bool
    assert abs(float(keep.float().mean()) - 0.7) < 0.03
    # a different tensor content gives a different mask, the same content the same mask
    assert torch.equal(keep, dare_mask(t.clone(), "x", 0, 0.3))
    assert not torch.equal(keep, dare_mask(t + 1, "x", 0, 0.3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cpu_and_cuda_agree(base, specs, method):
    a = merge(method, base, specs, device="cpu")
    b = merge(method, base, specs, device="cuda")
    assert max_rel_diff(b, a) <= 1e-5
    assert max_rel_diff(b, a, base) <= 1e-4
