"""Albumentations 2.x pipelines and image reading."""

import warnings

import cv2
import numpy as np
import pytest
import torch

from data_modules.image_io import UnreadableImageError, image_size, read_rgb
from data_modules.transforms import (
    DEEPFAKEBENCH_AUGMENT,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    build_transform,
    eval_transform,
    resolve_mean_std,
    train_transform,
)

NO_AUG = {k: 0.0 for k in DEEPFAKEBENCH_AUGMENT if k.endswith("_p")}


def _image(h=40, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _reference(img, size, mean, std):
    resized = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    out = (resized / 255.0 - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return torch.from_numpy(out.transpose(2, 0, 1))


def test_eval_transform_matches_reference():
    img = _image()
    for mean, std in ((None, None), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
        out = eval_transform(24, mean, std)(image=img)["image"]
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
        m, s = resolve_mean_std(mean, std)
        torch.testing.assert_close(out.double(), _reference(img, 24, m, s), atol=1e-4, rtol=0)
    assert resolve_mean_std(None, None) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def test_train_transform_without_augmentation_equals_eval():
    img = _image(seed=1)
    a = train_transform(24, params=NO_AUG, seed=0)(image=img)["image"]
    b = eval_transform(24)(image=img)["image"]
    torch.testing.assert_close(a, b)


def test_train_recipe_uses_v2_argument_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations warns (not errors) on invalid v1 names
        pipe = train_transform(32)
    by_name = {type(t).__name__: t for t in pipe.transforms}
    assert list(by_name) == ["Resize", "HorizontalFlip", "Rotate", "GaussianBlur", "RandomBrightnessContrast",
                             "ImageCompression", "Normalize", "ToTensorV2"]
    assert tuple(by_name["ImageCompression"].quality_range) == (40, 100)
    assert tuple(by_name["Rotate"].limit) == (-10, 10)
    assert tuple(by_name["GaussianBlur"].blur_limit) == (3, 7)
    assert tuple(by_name["RandomBrightnessContrast"].brightness_limit) == (-0.1, 0.1)
    assert by_name["Resize"].interpolation == cv2.INTER_CUBIC
    custom = train_transform(32, params={"jpeg_quality": (70, 90), "jpeg_p": 1.0})
    jpeg = [t for t in custom.transforms if type(t).__name__ == "ImageCompression"][0]
    assert tuple(jpeg.quality_range) == (70, 90) and jpeg.p == 1.0
    with pytest.raises(KeyError, match="quality_lower"):
        train_transform(32, params={"quality_lower": 40})


def test_train_transform_seeded_and_augments():
    img = _image(seed=2)
    p1, p2 = train_transform(32, seed=5), train_transform(32, seed=5)
    outs1 = [p1(image=img)["image"] for _ in range(4)]
    outs2 = [p2(image=img)["image"] for _ in range(4)]
    for a, b in zip(outs1, outs2):
        torch.testing.assert_close(a, b)
    plain = eval_transform(32)(image=img)["image"]
    assert any(not torch.allclose(o, plain) for o in outs1)


def test_build_transform_selection():
    assert len(build_transform(True, True, 16).transforms) == 8
    assert len(build_transform(True, False, 16).transforms) == 3
    assert len(build_transform(False, True, 16).transforms) == 3
    flipped = build_transform(True, {"flip_p": 1.0, **{k: 0.0 for k in NO_AUG if k != "flip_p"}}, 16)
    img = _image(16, 16, seed=3)
    out = flipped(image=img)["image"]
    torch.testing.assert_close(out, eval_transform(16)(image=img[:, ::-1].copy())["image"])
    with pytest.raises(ValueError, match="3 values"):
        resolve_mean_std((0.5, 0.5), None)


def test_read_rgb_channel_handling(tmp_path):
    rgb = _image(8, 10, seed=4)
    cv2.imwrite(str(tmp_path / "c.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_rgb(tmp_path / "c.png"), rgb)
    gray = rgb[:, :, 0]
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (8, 10, 3) and all((out[:, :, c] == gray).all() for c in range(3))
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full((8, 10), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgb)
    bgr16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257  # 16-bit PNG
    cv2.imwrite(str(tmp_path / "w.png"), bgr16)
    np.testing.assert_array_equal(read_rgb(tmp_path / "w.png"), rgb)
    assert image_size(tmp_path / "c.png") == (10, 8)


def test_unreadable_png_error_names_file(tmp_path):
    bad = tmp_path / "frame_007.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UnreadableImageError, match="frame_007.png.*could not decode"):
        read_rgb(bad)
    with pytest.raises(UnreadableImageError, match="nothere.png.*does not exist"):
        read_rgb(tmp_path / "nothere.png")
    with pytest.raises(UnreadableImageError, match="frame_007.png"):
        image_size(bad)


def test_seeded_recipe_flips_independent_coins():
    """Each p=0.5 step must be drawn on its own (albumentations' Compose(seed=) correlates them)."""
    img = _image(seed=5)
    pipe = train_transform(32, seed=11)
    pipe.save_applied_params = True
    counts = []
    for _ in range(200):
        applied = [name for name, _ in pipe(image=img)["applied_transforms"]]
        counts.append(len(applied) - 3)  # minus Resize, Normalize, ToTensorV2
    counts = np.asarray(counts)
    # 5 independent Bernoulli(0.5) steps: mean 2.5, and 1..4 steps applied most of the time
    assert 2.2 < counts.mean() < 2.8
    assert ((counts > 0) & (counts < 5)).mean() > 0.85


def test_clip_constants_match_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from data_modules.transforms import open_clip_mean_std

    assert OPENAI_CLIP_MEAN == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert OPENAI_CLIP_STD == tuple(open_clip.OPENAI_DATASET_STD)
    assert open_clip_mean_std("ViT-B-16", "openai") == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert open_clip_mean_std("ViT-B-16-SigLIP", "webli") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
