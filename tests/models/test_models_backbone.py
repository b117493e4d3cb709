"""build_backbone: architecture, pooled vs projected feature, weight loading from files, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from models_helpers import TINY_CFG, TINY_TEXT_CFG
from r2m.checkpoints import save_base
from r2m.models.backbone import OPENAI_CLIP_MEAN, build_backbone, build_backbone_from_spec
from r2m.utils import state_dict_hash


def _full_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of a whole tiny open_clip CLIP (visual.* + text tower keys)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**copy.deepcopy(TINY_CFG), text_cfg=TINY_TEXT_CFG)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pooled_and_projected_features(tiny_cfg):
    torch.manual_seed(0)
    pooled, info_p = build_backbone("tiny", tiny_cfg, feature="pooled")
    torch.manual_seed(0)
    projected, info_j = build_backbone("tiny", tiny_cfg, feature="projected")
    assert "proj" not in pooled.state_dict() and "proj" in projected.state_dict()
    assert info_p.out_dim == 64 and info_j.out_dim == 48
    assert len(projected.state_dict()) == len(pooled.state_dict()) + 1
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fp, fj = pooled(x), projected(x)
    assert fp.shape == (3, 64) and fj.shape == (3, 48)
    # same init → the projected feature is the pooled one times proj (float64 reference)
    ref = fp.double() @ projected.proj.detach().double()
    torch.testing.assert_close(fj.double(), ref, rtol=1e-5, atol=1e-5)


def test_pooled_feature_is_ln_post_of_cls(tiny_cfg):
    visual, _ = build_backbone("tiny", tiny_cfg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = visual.transformer(visual._embeds(x))
        ref = torch.nn.functional.layer_norm(
            tokens[:, 0].double(), (64,), visual.ln_post.weight.double(), visual.ln_post.bias.double(), visual.ln_post.eps
        )
        torch.testing.assert_close(visual(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_info_spec_rebuilds_same_architecture(tiny_cfg):
    visual, info = build_backbone("tiny", tiny_cfg, image_size=64)
    assert info.spec["image_size"] == 64 and info.spec["feature"] == "pooled"
    assert info.mean == OPENAI_CLIP_MEAN and info.base_source is None
    assert visual.positional_embedding.shape == (8 * 8 + 1, 64)
    rebuilt, info2 = build_backbone_from_spec(info.spec)
    a, b = visual.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert info2.spec == info.spec
    import json

    json.dumps(info.to_dict())  # JSON-able


def test_builtin_model_name_config():
    visual, info = build_backbone("ViT-B-16", image_size=32)
    assert info.out_dim == 768 and info.spec["model_cfg"]["vision_cfg"]["width"] == 768
    assert visual.positional_embedding.shape == (2 * 2 + 1, 768)


@pytest.mark.parametrize("fmt", ["safetensors", "pt_full", "pt_visual_wrapped"])
def test_local_weights_load_bit_identical(tmp_path, tiny_cfg, fmt):
    full = _full_clip_state(seed=3)
    visual_ref = {k[len("visual."):]: v for k, v in full.items() if k.startswith("visual.")}
    if fmt == "safetensors":
        path = tmp_path / "clip.safetensors"
        save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    elif fmt == "pt_full":
        path = tmp_path / "clip.pt"
        torch.save(full, path)
    else:  # visual-only, DDP-prefixed, inside a {"state_dict": ...} wrapper
        path = tmp_path / "visual.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in visual_ref.items()}}, path)
    torch.manual_seed(123)  # a different random init that loading must overwrite
    for feature in ("pooled", "projected"):
        visual, info = build_backbone("tiny", tiny_cfg, pretrained=str(path), feature=feature)
        state = visual.state_dict()
        expected = {k: v for k, v in visual_ref.items() if feature == "projected" or k != "proj"}
        assert sorted(state) == sorted(expected)
        for key, value in expected.items():
            assert torch.equal(state[key], value), key
        assert info.base_source == str(path)


def test_r2m_base_file_loads(tmp_path, tiny_cfg):
    torch.manual_seed(5)
    visual, info = build_backbone("tiny", tiny_cfg)
    state = visual.state_dict()
    path = save_base(tmp_path / "base.safetensors", state,
                     {"model_name": "tiny", "model_spec": info.spec, "mean": [0.5] * 3, "std": [0.5] * 3})
    torch.manual_seed(6)
    loaded, info2 = build_backbone("tiny", tiny_cfg, pretrained=str(path))
    assert state_dict_hash(loaded.state_dict()) == state_dict_hash(state)
    assert info2.mean == (0.5, 0.5, 0.5)  # statistics recorded in the r2m file win


def test_position_embeddings_are_resized(tmp_path, tiny_cfg):
    full = _full_clip_state(seed=1)
    path = tmp_path / "clip32.safetensors"
    save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    visual, _ = build_backbone("tiny", tiny_cfg, pretrained=str(path), image_size=64)
    state = visual.state_dict()
    assert state["positional_embedding"].shape == (65, 64)
    assert torch.equal(state["positional_embedding"][0], full["visual.positional_embedding"][0])  # class token kept
    assert torch.equal(state["transformer.resblocks.1.mlp.c_fc.weight"], full["visual.transformer.resblocks.1.mlp.c_fc.weight"])


def test_strict_loading_error_lists_keys(tmp_path, tiny_cfg):
    full = _full_clip_state()
    del full["visual.transformer.resblocks.0.ln_1.weight"]
    full["visual.extra_tensor"] = torch.zeros(2)
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    with pytest.raises(ValueError) as err:
        build_backbone("tiny", tiny_cfg, pretrained=str(path))
    msg = str(err.value)
    assert "transformer.resblocks.0.ln_1.weight" in msg and "extra_tensor" in msg and "broken.safetensors" in msg


def test_shape_mismatch_error(tmp_path, tiny_cfg):
    other = copy.deepcopy(tiny_cfg)
    other["vision_cfg"]["width"] = 32
    visual, _ = build_backbone("tiny", other)
    path = tmp_path / "narrow.pt"
    torch.save(visual.state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatches"):
        build_backbone("tiny", tiny_cfg, pretrained=str(path))


def test_bad_pretrained_values(tmp_path, tiny_cfg):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_backbone("tiny", tiny_cfg, pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="neither an existing file nor an open_clip tag"):
        build_backbone("ViT-B-16", pretrained="no_such_tag", image_size=32)
    with pytest.raises(ValueError, match="unknown open_clip model name"):
        build_backbone("ViT-Nope-99")
    with pytest.raises(ValueError, match="feature must be one of"):
        build_backbone("tiny", tiny_cfg, feature="tokens")
