"""LazySafetensors, merge_heads, the per-method YAMLs and the spectral helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from r2m.merging import METHODS, LazySafetensors, merge, merge_heads, method_defaults
from r2m.merging.linalg import gram_eigh, low_rank, polar_factor, top_triplets, weighted_low_rank_sum
from r2m.merging.methods.iso import iso_cts_ranks
from r2m.merging.methods.ties import kth_smallest_nonneg

ROOT = Path(__file__).resolve().parents[2]


def _write_specialist(path, backbone, head=None):
    tensors = {f"backbone.{k}": v.contiguous() for k, v in backbone.items()}
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in head.items()})
    save_file(tensors, str(path), metadata={"format": "specialist"})
    return path


# ---------------------------------------------------------------- LazySafetensors
def test_lazy_mapping_strips_prefix_and_reads_metadata(tmp_path, base):
    head = {"weight": torch.randn(2, 16), "bias": torch.randn(2)}
    path = _write_specialist(tmp_path / "s.safetensors", base, head)
    lazy = LazySafetensors(path, prefix="backbone.")
    assert list(lazy) == list(base) or sorted(lazy) == sorted(base)
    assert len(lazy) == len(base) and "head.weight" not in lazy and "proj" in lazy
    key = "transformer.resblocks.1.mlp.c_proj.weight"
    assert lazy.tensor_info(key) == (tuple(base[key].shape), torch.float32)
    assert torch.equal(lazy[key], base[key])
    with pytest.raises(KeyError):
        lazy["missing"]
    heads = LazySafetensors(path, prefix="head.")
    assert sorted(heads) == ["bias", "weight"]
    assert lazy.metadata["format"] == "specialist"


def test_lazy_content_hash_matches_state_dict_hash(tmp_path, base):
    from r2m.utils import state_dict_hash

    path = _write_specialist(tmp_path / "b.safetensors", base)
    lazy = LazySafetensors(path, prefix="backbone.")
    assert lazy.content_hash() == state_dict_hash(base)
    assert LazySafetensors(path, prefix="backbone.").content_hash() == lazy.content_hash()  # memo


def test_lazy_inputs_give_identical_merges(tmp_path, base, specs):
    lb = LazySafetensors(_write_specialist(tmp_path / "base.safetensors", base), prefix="backbone.")
    ls = [LazySafetensors(_write_specialist(tmp_path / f"s{i}.safetensors", s), prefix="backbone.")
          for i, s in enumerate(specs)]
    for method in ("r2m", "ties", "tsv"):
        a = merge(method, base, specs, device="cpu")
        b = merge(method, lb, ls, device="cpu")
        assert all(torch.equal(a[k], b[k]) for k in base), method


def test_lazy_validation_uses_headers_before_loading(tmp_path, base, specs, monkeypatch):
    bad = {k: v.clone() for k, v in specs[0].items()}
    bad["proj"] = bad["proj"][:, :-1]
    lb = LazySafetensors(_write_specialist(tmp_path / "base.safetensors", base), prefix="backbone.")
    ls = LazySafetensors(_write_specialist(tmp_path / "bad.safetensors", bad), prefix="backbone.")
    loads = []
    monkeypatch.setattr(LazySafetensors, "__getitem__", lambda self, k: loads.append(k))
    with pytest.raises(ValueError, match=r"specialist 'fs' \(#0\): tensor 'proj' has shape \(32, 15\)"):
        merge("r2m", lb, [ls], device="cpu", names=["fs"])
    assert loads == []


def test_lazy_bad_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        LazySafetensors(tmp_path / "nope.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        LazySafetensors(broken)


# ---------------------------------------------------------------- heads
def test_merge_heads_averages():
    heads = [{"weight": torch.randn(2, 8), "bias": torch.randn(2)} for _ in range(3)]
    out = merge_heads(heads)
    torch.testing.assert_close(out["weight"], sum(h["weight"] for h in heads) / 3)
    torch.testing.assert_close(out["bias"], sum(h["bias"] for h in heads) / 3)
    assert out["weight"].dtype == torch.float32


def test_merge_heads_validation():
    good = {"weight": torch.randn(2, 8), "bias": torch.randn(2)}
    with pytest.raises(ValueError, match="non-empty"):
        merge_heads([])
    with pytest.raises(ValueError, match=r"head\[1\]: 'weight' has shape/dtype"):
        merge_heads([good, {"weight": torch.randn(2, 9), "bias": torch.randn(2)}])
    with pytest.raises(ValueError, match=r"fr: 'bias' contains NaN"):
        merge_heads([good, {"weight": torch.randn(2, 8), "bias": torch.tensor([0.0, float("nan")])}], names=["fs", "fr"])
    with pytest.raises(ValueError, match=r"expected keys \['weight', 'bias'\].*missing \['bias'\]"):
        merge_heads([{"weight": torch.randn(2, 8)}])


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("method", METHODS)
def test_yaml_defaults_equal_method_defaults(method):
    path = ROOT / "configs" / "merge" / f"{method}.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("method") == method
    assert cfg.pop("name") == method
    assert cfg == method_defaults(method)


def test_every_yaml_is_a_method():
    names = {p.stem for p in (ROOT / "configs" / "merge").glob("*.yaml")}
    assert names == set(METHODS)


def test_yaml_loads_with_omegaconf():
    OmegaConf = pytest.importorskip("omegaconf").OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "merge" / "r2m.yaml")
    hp = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("name", "method")}
    assert hp == method_defaults("r2m")


# ---------------------------------------------------------------- helpers
def test_layout_matches_open_clip():
    from merge_fixtures import open_clip_layout

    transformer = pytest.importorskip("open_clip.transformer")
    vit = transformer.VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2,
                                        mlp_ratio=4.0, output_dim=16)
    assert {k: tuple(v.shape) for k, v in vit.state_dict().items()} == open_clip_layout(32, 2)
    assert list(vit.state_dict()) == list(open_clip_layout(32, 2))



def test_kth_smallest_radix_matches_kthvalue():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g).abs()
    x[:50] = 0.0
    x[50:60] = x[100]  # ties
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        for kth in (1, 50, 51, 55, 5000, 10_000):
            expected = torch.kthvalue(xd, kth).values
            for chunk in (1 << 22, 777):
                got = kth_smallest_nonneg(xd, kth, chunk=chunk)
                assert float(got) == float(expected) and got.dtype == dtype
    same = torch.full((1000,), 0.25)
    assert float(kth_smallest_nonneg(same, 500)) == 0.25
    with pytest.raises(ValueError, match="kth must lie in"):
        kth_smallest_nonneg(x, 0)


def test_spectral_helpers_against_svd():
    g = torch.Generator().manual_seed(1)
    for shape in ((40, 12), (12, 40), (20, 20)):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        s2, q, side = gram_eigh(x)
        torch.testing.assert_close(s2, s)
        torch.testing.assert_close(low_rank(x, q, 3, side), (u[:, :3] * s[:3]) @ vh[:3])
        uu, ss, vv = top_triplets(x, s2, q, 4, side)
        torch.testing.assert_close((uu * ss) @ vv.T, (u[:, :4] * s[:4]) @ vh[:4])
        torch.testing.assert_close(polar_factor(x), u @ vh)


def test_weighted_low_rank_sum():
    g = torch.Generator().manual_seed(3)
    for shape in ((3, 30, 12), (3, 12, 30)):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        _, q, side = gram_eigh(x)
        expected = sum(w[i] * low_rank(x[i], q[i], 4, side) for i in range(3))
        torch.testing.assert_close(weighted_low_rank_sum(x, q, 4, side, w), expected)


def test_polar_of_rank_deficient_matrix_is_partial_isometry():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 6, generator=g, dtype=torch.float64)
    p = polar_factor(x)
    torch.testing.assert_close(p @ p.T @ p, p)
    assert int(torch.linalg.matrix_rank(p)) == 2
    assert torch.equal(polar_factor(torch.zeros(4, 3)), torch.zeros(4, 3, dtype=torch.float64))


def test_iso_cts_rank_rule():
    assert iso_cts_ranks(768, 8, 0.8) == (768 - 8 * 19, 19)  # c0 = 614, d = round(154/8) = 19
    assert iso_cts_ranks(32, 3, 0.8) == (32 - 3 * 2, 2)  # c0 = 25, d = round(7/3) = 2
    assert iso_cts_ranks(17, 8, 0.8) == (17, 0)  # d = round(0.5) = 0 (half to even) → Iso-C
    c, d = iso_cts_ranks(5, 3, 0.0)  # round(5/3) = 2 would give c = -1: fall back to ⌊K/N⌋
    assert (c, d) == (2, 1)


def test_benchmark_shapes_are_open_clip_layout():
    import importlib.util

    from merge_fixtures import open_clip_layout

    spec = importlib.util.spec_from_file_location("merge_speed", ROOT / "benchmarks" / "merge_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.vit_shapes(width=32, layers=2, patch=8, image=32, out_dim=16) == open_clip_layout(32, 2)
    b16 = bench.vit_shapes(**bench.MODELS["ViT-B-16"])
    assert sum(torch.Size(s).numel() for s in b16.values()) == 86_192_640  # open_clip ViT-B-16 visual tower
