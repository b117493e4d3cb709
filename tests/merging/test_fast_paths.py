"""The in-place / chunked fast paths equal the straightforward formulations bit for bit, and the
fused NaN/Inf check still raises naming the checkpoint and the tensor."""

from __future__ import annotations

import math

import pytest
import torch

from r2m.merging import merge
from r2m.merging.methods import ties
from r2m.merging.methods.ties import kth_smallest_nonneg
from r2m.merging.tasks import TaskSet

KEY = "transformer.resblocks.0.mlp.c_fc.weight"


def _copy(sd):
    return {k: v.clone() for k, v in sd.items()}


def _bits_equal(a: dict, b: dict) -> bool:
    """Same keys and the same bit patterns (so −0 ≠ +0 and NaN payloads count)."""
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        iview = {torch.float32: torch.int32, torch.float64: torch.int64}[x.dtype]
        if not torch.equal(x.contiguous().view(iview), y.contiguous().view(iview)):
            return False
    return True


# --------------------------------------------------------------------------- straightforward forms
def _stack_average(ts: TaskSet) -> dict:
    return {k: ts.output(k, ts.task_vectors(k).mean(0)) for k in ts.keys}


def _stack_task_arithmetic(ts: TaskSet, lam: float) -> dict:
    return {k: ts.output(k, lam * ts.task_vectors(k).sum(0)) for k in ts.keys}


def _straightforward_ties(ts: TaskSet, k: float, merge_func: str, lam: float) -> dict:
    """TIES as written before the chunked pass: full-tensor where() masks, float64 sums."""
    d = ts.total_numel
    kth = d - int(math.floor(k * d))
    thresholds, total_mass = [], torch.zeros((), dtype=torch.float64)
    for i in range(ts.n):
        flat = torch.cat([ts.task_vector(i, key).reshape(-1).abs() for key in ts.keys])
        thr = torch.kthvalue(flat, kth).values if kth >= 1 else torch.zeros((), dtype=ts.dtype)
        for key in ts.keys:
            tau = ts.task_vector(i, key)
            total_mass += torch.where(tau.abs() >= thr, tau, 0).sum(dtype=torch.float64)
        thresholds.append(thr)
    thr_all, global_sign = torch.stack(thresholds), torch.sign(total_mass)
    out = {}
    for key in ts.keys:
        taus = ts.task_vectors(key)
        thr = thr_all.reshape(-1, *([1] * (taus.ndim - 1)))
        trimmed = torch.where(taus.abs() >= thr, taus, 0)
        sign = torch.sign(trimmed.sum(0, dtype=torch.float64))
        sign = torch.where(sign == 0, global_sign, sign).to(taus.dtype)
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        merged = torch.where(agree, trimmed, 0).sum(0)
        if merge_func == "mean":
            merged = merged / agree.sum(0).clamp_min(1).to(taus.dtype)
        out[key] = ts.output(key, lam * merged)
    return out


def _awkward_specs(base, specs):
    """Specialists with exact cancellations (Σ_i τ̂_i = 0 → the global sign decides), entries equal
    to θ0 (τ = 0), repeated |τ| values (ties at the threshold), and entries where θ0 = −0 and every
    τ_i is a tiny negative (trimmed to −0 by a 0/1 multiplier: θ* must still read +0 there)."""
    base, specs = _copy(base), [_copy(s) for s in specs]
    b = base[KEY].view(-1)
    s0, s1, s2 = (s[KEY].view(-1) for s in specs)
    s1[:200] = 2 * b[:200] - s0[:200]  # τ_1 = −τ_0 (exactly, up to the subtraction's rounding)
    s2[:200] = b[:200]  # τ_2 = 0
    s2[200:400] = s0[200:400]  # τ_2 = τ_0: repeated magnitudes
    base["ln_post.bias"][0] = -0.0
    for s in specs:
        s["ln_post.bias"][0] = 0.0
    b[500:510] = -0.0
    for s in (s0, s1, s2):
        s[500:510] = -1e-30
    return base, specs


# --------------------------------------------------------------------------- average / task arithmetic
@pytest.mark.parametrize("n", [1, 2, 3])
def test_average_and_task_arithmetic_equal_the_stacked_form_bit_for_bit(base, specs, n):
    b, ss = _awkward_specs(base, specs)
    ss = ss[:n]
    assert _bits_equal(merge("average", b, ss, device="cpu"), _stack_average(TaskSet(b, ss, device="cpu")))
    for lam in (0.3, -1.7):
        assert _bits_equal(
            merge("task_arithmetic", b, ss, device="cpu", lam=lam),
            _stack_task_arithmetic(TaskSet(b, ss, device="cpu"), lam),
        )


@pytest.mark.parametrize("method", ["average", "task_arithmetic"])
def test_fused_finite_check_names_checkpoint_and_tensor(base, specs, method):
    # +Inf in one specialist, −Inf in another at the same entry: the sum is NaN, the first offender named
    a, c = _copy(specs[0]), _copy(specs[2])
    a[KEY][5, 1], c[KEY][5, 1] = float("inf"), float("-inf")
    with pytest.raises(ValueError, match=rf"specialist 'fs' \(#0\): tensor '{KEY}' contains NaN or Inf"):
        merge(method, base, [a, specs[1], c], device="cpu", names=["fs", "fr", "efs"])
    # a NaN in the last specialist only, on the last tensor
    c = _copy(specs[2])
    c["ln_post.bias"][-1] = float("nan")
    with pytest.raises(ValueError, match=r"specialist\[2\]: tensor 'ln_post.bias' contains NaN or Inf"):
        merge(method, base, [specs[0], specs[1], c], device="cpu")
    # the base first, as the per-input check orders it
    bb = _copy(base)
    bb[KEY][0, 0] = float("inf")
    with pytest.raises(ValueError, match=rf"base: tensor '{KEY}' contains NaN or Inf"):
        merge(method, bb, [specs[0], c], device="cpu")


def test_finite_inputs_whose_sum_overflows_are_not_rejected(base, specs):
    # finite inputs, τ_0 + τ_1 overflows: no error (nothing is NaN/Inf in the inputs), same result as before
    b, a, c = _copy(base), _copy(specs[0]), _copy(specs[1])
    b[KEY][0, 0] = -3e38
    a[KEY][0, 0] = c[KEY][0, 0] = 3e38
    got = merge("task_arithmetic", b, [a, c], device="cpu", lam=1.0)
    assert _bits_equal(got, _stack_task_arithmetic(TaskSet(b, [a, c], device="cpu"), 1.0))
    assert math.isinf(float(got[KEY][0, 0]))


# --------------------------------------------------------------------------- TIES
@pytest.mark.parametrize(
    "hp", [{}, {"k": 0.5, "merge_func": "sum", "lam": 0.3}, {"k": 1.0}, {"k": 0.0}, {"k": 0.05, "lam": -0.5}]
)
@pytest.mark.parametrize("small_chunks", [False, True])
def test_ties_equals_the_straightforward_form_bit_for_bit(base, specs, hp, small_chunks, monkeypatch):
    if small_chunks:  # many chunks per tensor, ragged tails, a radix pass of many chunks
        monkeypatch.setattr(ties, "CHUNK_CPU", 37)
        monkeypatch.setattr(ties, "RADIX_CHUNK", 101)
    b, ss = _awkward_specs(base, specs)
    full = {**ties.DEFAULTS, **hp}
    for n in (1, 2, 3):
        got = merge("ties", b, ss[:n], device="cpu", **hp)
        want = _straightforward_ties(TaskSet(b, ss[:n], device="cpu"), **full)
        assert _bits_equal(got, want), (hp, n)


def test_ties_float64_equals_the_straightforward_form(base64, specs64):
    got = merge("ties", base64, specs64, device="cpu", dtype=torch.float64)
    want = _straightforward_ties(TaskSet(base64, specs64, device="cpu", dtype=torch.float64), **ties.DEFAULTS)
    assert _bits_equal(got, want)


def test_ties_with_overflowed_task_vectors(base, specs):
    # |θ_i − θ0| beyond float32: τ = ±Inf from finite inputs (the 0/1 multipliers must never meet an
    # Inf); +Inf on one entry and −Inf on another make the summed mass NaN
    b, ss = _copy(base), [_copy(s) for s in specs]
    b[KEY][0, :3] = -3e38
    ss[0][KEY][0, :3] = 3e38  # τ_0 = +Inf
    ss[1][KEY][0, 1] = -3.3e38  # τ_1 finite and negative there
    b[KEY][1, 0] = 3e38
    ss[2][KEY][1, 0] = -3e38  # τ_2 = −Inf
    got = merge("ties", b, ss, device="cpu")
    want = _straightforward_ties(TaskSet(b, ss, device="cpu"), **ties.DEFAULTS)
    assert _bits_equal(got, want)


def test_ties_nan_named_in_the_threshold_pass(base, specs):
    bad = _copy(specs[1])
    bad[KEY][2, 3] = float("nan")
    with pytest.raises(ValueError, match=rf"specialist\[1\]: tensor '{KEY}' contains NaN or Inf"):
        merge("ties", base, [specs[0], bad], device="cpu")


def test_kth_smallest_radix_over_chunks():
    x = torch.rand(10_001).abs()
    x[::7] = x[3]  # many ties
    for kth in (1, 17, 5000, 10_001):
        want = torch.kthvalue(x, kth).values
        assert float(kth_smallest_nonneg(x, kth, chunk=97)) == float(want)
