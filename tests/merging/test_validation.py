"""Bad input → a clear ValueError naming the checkpoint and tensor."""

from __future__ import annotations

import pytest
import torch

from r2m.merging import METHODS, merge, method_defaults

KEY = "transformer.resblocks.0.attn.in_proj_weight"


def _copy(sd):
    return {k: v.clone() for k, v in sd.items()}


def test_no_specialists(base):
    with pytest.raises(ValueError, match="at least one specialist"):
        merge("average", base, [], device="cpu")


def test_unknown_method_lists_valid(base, specs):
    with pytest.raises(ValueError, match="unknown merge method 'magic'.*r2m"):
        merge("magic", base, specs, device="cpu")


def test_unknown_hyperparameter_lists_valid(base, specs):
    with pytest.raises(ValueError, match=r"r2m: unknown hyperparameter\(s\) \['lambda'\].*rank_ratio"):
        merge("r2m", base, specs, device="cpu", **{"lambda": 1.0})
    with pytest.raises(ValueError, match="average: unknown hyperparameter.*valid: none"):
        merge("average", base, specs, device="cpu", lam=1.0)


@pytest.mark.parametrize(
    "method,hp,pattern",
    [
        ("ties", {"k": 1.5}, "ties: k must lie in"),
        ("ties", {"merge_func": "max"}, "merge_func must be one of"),
        ("dare", {"p": 1.0}, "dare: p must lie in"),
        ("dare", {"seed": 1.5}, "seed must be an integer"),
        ("cart", {"rank_ratio": 0.0}, "rank_ratio must lie in"),
        ("r2m", {"k": 0}, "k must lie in"),
        ("r2m", {"center": "yes"}, "center must be true or false"),
        ("r2m", {"eta": "weird"}, "eta must be one of"),
        ("r2m", {"residual": "x"}, "residual must be one of"),
        ("r2m", {"block_weighting": "x"}, "block_weighting must be one of"),
        ("r2m", {"alpha": float("nan")}, "alpha must be a finite number"),
        ("iso_cts", {"common_fraction": 2}, "common_fraction must lie in"),
    ],
)
def test_invalid_values(base, specs, method, hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        merge(method, base, specs, device="cpu", **hp)


def test_missing_and_extra_keys_name_specialist(base, specs):
    bad = _copy(specs[1])
    del bad[KEY]
    with pytest.raises(ValueError, match=rf"specialist 'fr' \(#1\): missing tensors.*{KEY}"):
        merge("average", base, [specs[0], bad], device="cpu", names=["fs", "fr"])
    bad = _copy(specs[0])
    bad["extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"specialist\[0\]: extra tensors not in base: 'extra.weight'"):
        merge("average", base, [bad], device="cpu")


def test_shape_and_dtype_mismatch(base, specs):
    bad = _copy(specs[0])
    bad[KEY] = bad[KEY][:-1]
    with pytest.raises(ValueError, match=rf"specialist\[0\]: tensor '{KEY}' has shape \(95, 32\), base has \(96, 32\)"):
        merge("r2m", base, [bad], device="cpu")
    bad = _copy(specs[0])
    bad[KEY] = bad[KEY].double()
    with pytest.raises(ValueError, match=rf"tensor '{KEY}' has dtype torch.float64, base has torch.float32"):
        merge("r2m", base, [bad], device="cpu")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", METHODS)
def test_nan_inf_named(base, specs, method, value):
    bad = _copy(specs[2])
    bad[KEY][3, 4] = value
    with pytest.raises(ValueError, match=rf"specialist 'efs' \(#2\): tensor '{KEY}' contains NaN or Inf"):
        merge(method, base, [specs[0], specs[1], bad], device="cpu", names=["fs", "fr", "efs"])
    bad_base = _copy(base)
    bad_base["ln_post.bias"][0] = value
    with pytest.raises(ValueError, match="base: tensor 'ln_post.bias' contains NaN or Inf"):
        merge(method, bad_base, specs, device="cpu")


def test_non_float_and_wrong_types(base, specs):
    bad_base = _copy(base)
    bad_base["step"] = torch.tensor(3)
    with pytest.raises(ValueError, match="non-floating dtype"):
        merge("average", bad_base, specs, device="cpu")
    with pytest.raises(ValueError, match="sequence of mappings"):
        merge("average", base, specs[0], device="cpu")
    with pytest.raises(ValueError, match="names must list one name per specialist"):
        merge("average", base, specs, device="cpu", names=["a"])
    with pytest.raises(ValueError, match="dtype must be"):
        merge("average", base, specs, device="cpu", dtype=torch.float16)


def test_block_pattern_errors(base, specs):
    with pytest.raises(ValueError, match="selects non-matrix tensors"):
        merge("r2m", base, specs, device="cpu", block_pattern=r"bias$")
    with pytest.raises(ValueError, match="matches no 2-D tensor"):
        merge("cart", base, specs, device="cpu", block_pattern=r"^nothing$")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        merge("cart", base, specs, device="cpu", block_pattern=r"(")


def test_block_pattern_override_changes_selection(base, specs):
    a = merge("cart", base, specs, device="cpu")
    b = merge("cart", base, specs, device="cpu", block_pattern=r"mlp\.c_fc\.weight$")
    assert torch.equal(a["transformer.resblocks.0.mlp.c_fc.weight"], b["transformer.resblocks.0.mlp.c_fc.weight"])
    assert not torch.equal(a[KEY], b[KEY])


def test_method_defaults_are_copies():
    d = method_defaults("r2m")
    d["alpha"] = 99
    assert method_defaults("r2m")["alpha"] == 0.6
