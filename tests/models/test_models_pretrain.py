"""Base pretraining on a Lightning Trainer: rotation batches, the source pretext learns above chance,
determinism, on-disk cache, linear probe."""

from __future__ import annotations

import pytest
import torch

from models_helpers import TINY_CFG
from r2m.checkpoints import BASE_FORMAT, load_checkpoint
from r2m.models import DeepfakeDetector
from r2m.models.pretrain import _pretrain, ensure_pretrained_base, pretrain_base, pretrain_key, rotation_batch
from r2m.utils import state_dict_hash

MODEL = {"model_name": "tiny", "model_cfg": TINY_CFG, "image_size": 32, "feature": "pooled"}


def _loader(n: int = 32, batch: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Images with a vertical brightness ramp: their rotation is visible."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 32, 1).expand(1, 3, 32, 32)
    images = ramp + 0.3 * torch.randn(n, 3, 32, 32, generator=g)
    return [{"image": images[i:i + batch]} for i in range(0, n, batch)]


def test_rotation_batch():
    x = torch.randn(3, 3, 8, 8)
    rotated, labels = rotation_batch(x)
    assert rotated.shape == (12, 3, 8, 8)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for k in range(4):
        block = rotated[3 * k:3 * (k + 1)]
        assert torch.equal(torch.rot90(block, -k, dims=(2, 3)), x)
    # 90° counter-clockwise: the top row becomes the left column, read bottom-up
    assert torch.equal(rotated[3, :, :, 0], x[0, :, 0, :].flip(-1))
    with pytest.raises(ValueError, match="square"):
        rotation_batch(torch.randn(1, 3, 8, 4))


def test_pretraining_learns_rotations():
    _, _, history, _ = _pretrain(MODEL, _loader(), 3, 3e-3, 0.0, 0, "rotation", "cpu", None, progress_bar=False)
    assert len(history) == 3
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["acc"] > 0.5  # chance is 0.25


def _source_loaders(n_per: int = 24, seed: int = 0):
    """Three "photographs" (different colour statistics and textures), labelled by source; crops
    of the test loader are other draws."""
    def draw(g):
        images, labels = [], []
        for k in range(3):
            base = torch.tensor([[0.8, -0.2, -0.6], [-0.5, 0.6, 0.1], [0.0, 0.0, 0.9]][k]).view(3, 1, 1)
            freq = 2.0 + 3 * k
            grid = torch.linspace(0, 6.28, 32)
            stripes = torch.sin(freq * grid).view(1, 1, 32).expand(3, 32, 32)
            for _ in range(n_per):
                images.append(base + 0.4 * stripes + 0.5 * torch.randn(3, 32, 32, generator=g))
                labels.append(k)
        return torch.stack(images), torch.tensor(labels)

    g = torch.Generator().manual_seed(seed)
    x, y = draw(g)
    xt, yt = draw(g)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    train = [{"image": x[i:i + 16], "label": y[i:i + 16]} for i in range(0, len(y), 16)]
    test = [{"image": xt[i:i + 32], "label": yt[i:i + 32]} for i in range(0, len(yt), 32)]
    return train, test


def test_source_pretext_learns_above_chance_on_held_out_crops():
    """The benchmark's pretext (which source a crop comes from) on a short CPU run: held-out
    accuracy well above the 1/3 chance."""
    train, test = _source_loaders()
    _, _, history, acc = _pretrain(MODEL, train, 4, 3e-3, 0.0, 0, "source", "cpu", None, n_classes=3,
                                   eval_loader=test, progress_bar=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert acc is not None and acc > 1 / 3 + 0.3


def test_source_pretext_needs_labels_and_uint8_batches_are_normalised():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    from r2m.models.pretrain import _as_float

    x = _as_float(images, [0.5] * 3, [0.25] * 3)
    assert x.dtype == torch.float32 and torch.allclose(x, (images.float() / 255 - 0.5) / 0.25)
    assert torch.equal(_as_float(images.permute(0, 2, 3, 1), None, None), images.float() / 255)  # NHWC
    with pytest.raises(ValueError, match="labelled"):
        _pretrain(MODEL, [{"image": images.float()}], 1, 1e-3, 0.0, 0, "source", "cpu", None, n_classes=3,
                  progress_bar=False)


def test_linear_probe_separates_separable_features():
    from r2m.models.pretrain import linear_probe

    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 8, generator=g)
    y = torch.arange(4).repeat_interleave(20)
    x = centres[y] + torch.randn(80, 8, generator=g)
    xt = centres[y] + torch.randn(80, 8, generator=g)
    assert linear_probe((x, y), (xt, y)) > 0.9
    noise = torch.randn(80, 8, generator=g)
    assert linear_probe((noise, y), (torch.randn(80, 8, generator=g), y)) < 0.6


def test_pretrain_base_is_deterministic():
    a = pretrain_base(MODEL, _loader(), epochs=1, lr=1e-3, seed=3, max_steps=2)
    b = pretrain_base(MODEL, _loader(), epochs=1, lr=1e-3, seed=3, max_steps=2)
    c = pretrain_base(MODEL, _loader(), epochs=1, lr=1e-3, seed=4, max_steps=2)
    assert "proj" not in a
    assert state_dict_hash(a) == state_dict_hash(b)
    assert state_dict_hash(a) != state_dict_hash(c)
    torch.manual_seed(3)
    from r2m.models.backbone import build_backbone

    init, _ = build_backbone("tiny", TINY_CFG, image_size=32)
    assert state_dict_hash(init.state_dict()) != state_dict_hash(a)  # it trained


def test_ensure_pretrained_base_caches(tmp_path):
    calls = []

    def make_loader():
        calls.append(1)
        return _loader()

    kw = dict(cache_dir=tmp_path, data_identity={"root": "fixture", "n": 32}, epochs=1, lr=1e-3, seed=0, max_steps=2)
    path = ensure_pretrained_base(MODEL, make_loader, **kw)
    assert calls == [1] and path.parent == tmp_path and path.name.startswith("pretrained-")
    base = load_checkpoint(path)
    assert base.meta["format"] == BASE_FORMAT and base.meta["base_hash"] == state_dict_hash(base.backbone)
    assert base.meta["pretrain"]["pretext"] == "rotation" and base.meta["data_identity"] == {"root": "fixture", "n": 32}
    assert len(base.meta["pretrain_history"]) == 1 and base.meta["pretext_eval"] is None

    def must_not_load():
        raise AssertionError("cache miss: the loader was requested again")

    mtime = path.stat().st_mtime_ns
    assert ensure_pretrained_base(MODEL, must_not_load, **kw) == path and path.stat().st_mtime_ns == mtime

    # another data identity or setting → another file
    other = pretrain_key(MODEL, {"pretext": "rotation", "epochs": 2}, {"root": "fixture", "n": 32})
    assert other != pretrain_key(MODEL, {"pretext": "rotation", "epochs": 1}, {"root": "fixture", "n": 32})
    assert pretrain_key(MODEL, {"epochs": 1}, "a") != pretrain_key(MODEL, {"epochs": 1}, "b")

    # specialists built on the cached base share its identity
    det = DeepfakeDetector(model_name="tiny", model_cfg=TINY_CFG, image_size=32, pretrained=str(path))
    assert det.base_hash == base.meta["base_hash"]
    assert not list(tmp_path.glob("*.tmp"))


def test_real_only_view_keeps_real_images():
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    loader = [{"image": images[:3], "label": torch.tensor([0, 1, 0])},
              {"image": images[3:5], "label": torch.tensor([1, 1])},
              {"image": images[5:], "label": torch.tensor([0])}]
    from r2m.models.pretrain import RealOnly

    view = RealOnly(loader)
    for _ in range(2):  # re-iterable
        kept = [b["image"][:, 0, 0, 0].tolist() for b in view]
        assert kept == [[0.0, 2.0], [5.0]]


def test_pretext_none_is_the_seeded_initialisation():
    from r2m.models.backbone import build_backbone

    a, _, history, acc = _pretrain(MODEL, _loader(), 1, 1e-3, 0.0, 5, "none", "cpu", None)
    assert history == [] and acc is None
    torch.manual_seed(5)
    init, _ = build_backbone("tiny", TINY_CFG, image_size=32)
    assert state_dict_hash(init.state_dict()) == state_dict_hash(a)
    b, *_ = _pretrain(MODEL, _loader(), 1, 1e-3, 0.0, 6, "none", "cpu", None)
    assert state_dict_hash(a) != state_dict_hash(b)
