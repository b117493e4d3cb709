"""r2m.checkpoints: file format round trips, atomicity, clear errors, verification, base lookup."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from r2m import checkpoints as ck
from r2m.utils import state_dict_hash

SPEC = {"model_name": "tiny", "model_cfg": {"embed_dim": 8, "vision_cfg": {"width": 4}}, "image_size": 32, "feature": "pooled"}


def _backbone(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv1.weight": torch.randn(4, 3, 2, 2, generator=g),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(12, 4, generator=g),
        "ln_post.bias": torch.randn(4, generator=g),
    }


def _head(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    return {"weight": torch.randn(2, 4, generator=g), "bias": torch.randn(2, generator=g)}


def _meta(base_hash: str, task: str = "fs", **extra) -> dict:
    meta = {"model_name": "tiny", "model_spec": SPEC, "base_hash": base_hash, "task": task,
            "train_sources": ["FSAll_ff"], "val_auc": 0.75, "config": {"a": {"b": [1, 2]}}, "base_source": None}
    meta.update(extra)
    return meta


@pytest.fixture
def trio(tmp_path):
    """A base and two specialists fine-tuned from it."""
    base = _backbone(0)
    h = state_dict_hash(base)
    paths = []
    for i, task in enumerate(["fs", "fr"]):
        state = {k: v + 0.01 * (i + 1) for k, v in base.items()}
        paths.append(ck.save_specialist(tmp_path / f"{task}.safetensors", state, _head(i), _meta(h, task)))
    base_path = ck.save_base(tmp_path / ck.base_filename(h), base, {"model_name": "tiny", "model_spec": SPEC})
    return base, base_path, paths


def test_specialist_roundtrip(tmp_path):
    bb, hd = _backbone(1), _head(1)
    path = ck.save_specialist(tmp_path / "s.safetensors", bb, hd, _meta("abc"))
    loaded = ck.load_checkpoint(path)
    assert loaded.meta["format"] == ck.SPECIALIST_FORMAT
    assert loaded.meta["model_spec"] == SPEC and loaded.meta["config"] == {"a": {"b": [1, 2]}}
    assert loaded.meta["train_sources"] == ["FSAll_ff"] and loaded.meta["val_auc"] == 0.75
    assert loaded.meta["base_source"] is None and "created" in loaded.meta and "code_version" in loaded.meta
    assert sorted(loaded.backbone) == sorted(bb) and all(torch.equal(loaded.backbone[k], bb[k]) for k in bb)
    assert all(torch.equal(loaded.head[k], hd[k]) for k in hd)
    assert ck.read_metadata(path) == loaded.meta
    # raw metadata values are JSON strings; tensor keys carry the prefixes
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
        keys = set(f.keys())
    assert json.loads(raw["task"]) == "fs" and raw["format"] == json.dumps(ck.SPECIALIST_FORMAT)
    assert "backbone.conv1.weight" in keys and "head.weight" in keys


def test_base_hash_is_computed_and_checked(tmp_path):
    bb = _backbone(2)
    path = ck.save_base(tmp_path / "b.safetensors", bb, {"model_name": "tiny", "model_spec": SPEC})
    loaded = ck.load_checkpoint(path)
    assert loaded.meta["base_hash"] == state_dict_hash(bb) and loaded.head is None
    with pytest.raises(ValueError, match="differs from the hash"):
        ck.save_base(tmp_path / "c.safetensors", bb, {"model_name": "tiny", "model_spec": SPEC, "base_hash": "0" * 16})


def test_missing_required_metadata_on_write(tmp_path):
    with pytest.raises(ValueError, match="task"):
        ck.save_specialist(tmp_path / "x.safetensors", _backbone(0), _head(0),
                           {"model_name": "tiny", "model_spec": SPEC, "base_hash": "h"})
    assert not (tmp_path / "x.safetensors").exists()


def test_atomic_write_leaves_nothing_on_error(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    ck.save_specialist(path, _backbone(0), _head(0), _meta("old"))
    before = path.read_bytes()

    import safetensors.torch

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_specialist(path, _backbone(1), _head(1), _meta("new"))
    assert path.read_bytes() == before  # old file untouched
    with pytest.raises(OSError):
        ck.save_specialist(tmp_path / "fresh.safetensors", _backbone(1), _head(1), _meta("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]  # no temp files, no new file


def test_corrupt_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        ck.read_metadata(garbage)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        ck.load_checkpoint(garbage)

    good = ck.save_specialist(tmp_path / "good.safetensors", _backbone(0), _head(0), _meta("h"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        ck.load_checkpoint(truncated)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not an r2m model file"):
        ck.load_checkpoint(foreign)

    with pytest.raises(FileNotFoundError, match="nothere"):
        ck.load_checkpoint(tmp_path / "nothere.safetensors")


def test_wrong_format_and_missing_keys_on_read(tmp_path, trio):
    _, base_path, _ = trio
    with pytest.raises(ValueError, match="wrong format"):
        ck.load_checkpoint(base_path, formats=(ck.SPECIALIST_FORMAT,))
    odd = tmp_path / "odd.safetensors"
    save_file({"backbone.w": torch.zeros(2), "head.weight": torch.zeros(2, 2)}, str(odd),
              metadata={"format": json.dumps(ck.SPECIALIST_FORMAT), "model_name": json.dumps("tiny")})
    with pytest.raises(ValueError, match=r"odd\.safetensors.*missing.*model_spec"):
        ck.load_checkpoint(odd)


def test_torch_checkpoint_with_r2m_meta(tmp_path):
    bb, hd = _backbone(0), _head(0)
    state = {**{f"backbone.{k}": v for k, v in bb.items()}, **{f"head.{k}": v for k, v in hd.items()}}
    meta = _meta("h")
    meta["format"] = ck.SPECIALIST_FORMAT
    torch.save({"state_dict": state, "r2m_meta": meta, "epoch": 3}, tmp_path / "last.ckpt")
    loaded = ck.load_checkpoint(tmp_path / "last.ckpt")
    assert loaded.meta["task"] == "fs" and torch.equal(loaded.head["bias"], hd["bias"])
    torch.save({"state_dict": state}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="no r2m metadata"):
        ck.load_checkpoint(tmp_path / "plain.ckpt")


def test_verify_specialists_accepts_consistent_set(trio):
    base, base_path, paths = trio
    loaded = ck.verify_specialists(paths, base=base_path)
    assert [c.meta["task"] for c in loaded] == ["fs", "fr"]
    ck.verify_specialists(loaded, base=base)  # loaded objects and a plain state dict work too


def test_verify_specialists_errors(tmp_path, trio):
    base, base_path, paths = trio
    h = state_dict_hash(base)

    other_base = ck.save_specialist(tmp_path / "ob.safetensors", _backbone(0), _head(0), _meta("ffff", "efs"))
    with pytest.raises(ValueError, match=r"ob\.safetensors.*base_hash"):
        ck.verify_specialists([paths[0], other_base])

    spec2 = dict(SPEC, image_size=64)
    other_spec = ck.save_specialist(tmp_path / "os.safetensors", _backbone(0), _head(0), _meta(h, "efs", model_spec=spec2))
    with pytest.raises(ValueError, match=r"os\.safetensors.*model_spec"):
        ck.verify_specialists([paths[0], other_spec])

    nan_state = _backbone(0)
    nan_state["ln_post.bias"][1] = float("nan")
    nan_file = ck.save_specialist(tmp_path / "nan.safetensors", nan_state, _head(0), _meta(h, "efs"))
    with pytest.raises(ValueError, match=r"nan\.safetensors.*backbone\.ln_post\.bias.*non-finite"):
        ck.verify_specialists([paths[0], nan_file])

    missing = _backbone(0)
    del missing["conv1.weight"]
    missing_file = ck.save_specialist(tmp_path / "mk.safetensors", missing, _head(0), _meta(h, "efs"))
    with pytest.raises(ValueError, match=r"mk\.safetensors.*conv1\.weight"):
        ck.verify_specialists([paths[0], missing_file])

    shaped = _backbone(0)
    shaped["ln_post.bias"] = torch.zeros(5)
    shaped_file = ck.save_specialist(tmp_path / "sh.safetensors", shaped, _head(0), _meta(h, "efs"))
    with pytest.raises(ValueError, match=r"sh\.safetensors.*ln_post\.bias"):
        ck.verify_specialists([paths[0], shaped_file])

    halfed = {k: v.half() for k, v in _backbone(0).items()}
    half_file = ck.save_specialist(tmp_path / "hf.safetensors", halfed, _head(0), _meta(h, "efs"))
    with pytest.raises(ValueError, match=r"hf\.safetensors.*float16"):
        ck.verify_specialists([paths[0], half_file])

    wrong_base = {k: v + 1 for k, v in base.items()}
    with pytest.raises(ValueError, match="hashes to"):
        ck.verify_specialists(paths, base=wrong_base)
    with pytest.raises(ValueError, match="no specialists"):
        ck.verify_specialists([])


def test_find_base(tmp_path, trio):
    base, base_path, paths = trio
    meta = ck.read_metadata(paths[0])
    assert ck.find_base(meta, [tmp_path / "elsewhere", tmp_path]) == base_path
    assert ck.find_base(meta, [tmp_path / "elsewhere"]) is None
    moved = tmp_path / "sub" / "theta0.safetensors"
    moved.parent.mkdir()
    base_path.rename(moved)
    meta["base_source"] = str(moved)  # an r2m base file named by base_source is accepted when its hash matches
    assert ck.find_base(meta, [tmp_path]) == moved
    meta["base_hash"] = "0" * 16
    assert ck.find_base(meta, [tmp_path]) is None
