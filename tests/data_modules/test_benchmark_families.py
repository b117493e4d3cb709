"""Built-in benchmark: real crops (sources) and forgery families (registry, invariants, artefacts)."""

from __future__ import annotations

import numpy as np
import pytest

from data_modules.benchmark import FAMILIES, apply_family, get_family, register_family
from data_modules.benchmark import sources as src_mod
from data_modules.benchmark.families import unregister_family
from data_modules.benchmark.sources import DOMAINS, item_rng, sample_video

BUILTINS = ["blend", "warp", "upsample", "diffusion", "edit", "fingerprint", "resave"]


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return [sample_video("photo", "test", i, seed=3, n_frames=1, size=64)[0] for i in range(24)]


@pytest.fixture
def temp_family():
    """Names registered inside a test are removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        if name in FAMILIES:
            unregister_family(name)


# ------------------------------------------------------------------------------ sources


@pytest.mark.parametrize("domain,band", [("photo", "train"), ("photo", "test"), ("archive", "all")])
def test_real_videos_shape_dtype_determinism(domain: str, band: str) -> None:
    a = sample_video(domain, "test", 5, seed=1, n_frames=3, size=40, band=band)
    b = sample_video(domain, "test", 5, seed=1, n_frames=3, size=40, band=band)
    c = sample_video(domain, "test", 5, seed=2, n_frames=3, size=40, band=band)
    assert len(a) == 3
    for x, y in zip(a, b):
        assert x.shape == (40, 40, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))
    # frames of one video are near-identical views, not copies
    assert not np.array_equal(a[0], a[1])


def test_domains_differ_in_content_and_pipeline() -> None:
    photo = np.stack([sample_video("photo", "test", i, n_frames=1)[0] for i in range(30)]).astype(np.float64)
    archive = np.stack([sample_video("archive", "test", i, n_frames=1, band="all")[0] for i in range(30)])
    archive = archive.astype(np.float64)
    # archive images are tinted grey (channels nearly proportional), photos are colourful
    def saturation(x: np.ndarray) -> float:
        return float((x.max(axis=3) - x.min(axis=3)).mean())

    assert saturation(photo) > 1.5 * saturation(archive)
    assert set(DOMAINS["photo"].sources).isdisjoint(DOMAINS["archive"].sources)


def test_train_and_test_crops_come_from_disjoint_bands(monkeypatch) -> None:
    """A synthetic source whose red channel encodes the column: train crops must stay left of 70 %,
    test crops right of it (no pixel shared between splits)."""
    width = 400
    cols = np.round(np.linspace(0, 255, width)).astype(np.uint8)
    rng = np.random.default_rng(0)
    img = np.zeros((300, width, 3), np.uint8)
    img[:, :, 0] = cols[None, :]
    img[:, :, 1] = rng.integers(0, 256, size=(300, width))  # texture, so crops are accepted
    monkeypatch.setattr(src_mod, "load_source", lambda name: img)
    limit = 0.7 * 255
    for i in range(40):
        for frame in sample_video("photo", "train", i, n_frames=4, size=32):
            assert frame[:, :, 0].max() <= limit + 1.0
        for frame in sample_video("photo", "test", i, n_frames=4, size=32):
            assert frame[:, :, 0].min() >= limit - 1.0


def test_every_video_lies_in_one_source_region(monkeypatch) -> None:
    """A synthetic source whose red / green channels encode the column / row: every frame of a video
    stays inside the region its identity names, and regions of a band do not overlap."""
    h, w = 300, 400
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.round(np.linspace(0, 255, w)).astype(np.uint8)[None, :]
    img[:, :, 1] = np.round(np.linspace(0, 255, h)).astype(np.uint8)[:, None]
    img[:, :, 2] = np.random.default_rng(0).integers(0, 256, size=(h, w))  # texture
    monkeypatch.setattr(src_mod, "load_source", lambda name: img)
    cells = {r[4]: r for r in src_mod.regions(h, w, "train")}
    assert len(cells) >= 4
    covered = np.zeros((h, w), int)
    for y0, y1, x0, x1, _ in cells.values():
        assert min(y1 - y0, x1 - x0) >= src_mod.REGION_MIN
        covered[y0:y1, x0:x1] += 1
    assert covered.max() == 1  # disjoint
    seen = set()
    for i in range(30):
        frames, info = src_mod.sample_video_info("photo", "train", i, n_frames=4, size=32)
        y0, y1, x0, x1, _ = cells[info["region"]]
        assert info["identity"] == f"photo/{info['source']}/train/{info['region']}"
        seen.add(info["region"])
        for frame in frames:
            assert 255 * x0 / (w - 1) - 1 <= frame[:, :, 0].min() and frame[:, :, 0].max() <= 255 * (x1 - 1) / (w - 1) + 1
            assert 255 * y0 / (h - 1) - 1 <= frame[:, :, 1].min() and frame[:, :, 1].max() <= 255 * (y1 - 1) / (h - 1) + 1
    assert len(seen) > 1


def test_unknown_domain_and_band_raise() -> None:
    with pytest.raises(ValueError, match="domain"):
        sample_video("nowhere", "test", 0)
    with pytest.raises(ValueError, match="band"):
        sample_video("photo", "test", 0, band="middle")


# ------------------------------------------------------------------------------ families


@pytest.mark.parametrize("name", BUILTINS)
def test_family_changes_image_keeps_shape_and_is_deterministic(name: str, crops: list[np.ndarray]) -> None:
    diffs = []
    for i, img in enumerate(crops[:12]):
        before = img.copy()
        out = apply_family(name, img, item_rng(0, name, i))
        assert out.shape == img.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(img, before)  # input untouched
        np.testing.assert_array_equal(out, apply_family(name, img, item_rng(0, name, i)))
        diffs.append(np.abs(out.astype(np.float64) - img.astype(np.float64)).mean())
    assert min(diffs) > 0.2, f"{name} leaves some image (almost) unchanged: {min(diffs):.3f}"
    assert np.mean(diffs) > 1.5, f"{name} changes images too little on average: {np.mean(diffs):.3f}"
    other = apply_family(name, crops[0], item_rng(1, name, 0))
    assert not np.array_equal(other, apply_family(name, crops[0], item_rng(0, name, 0)))


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("size", [24, 33])
def test_family_handles_other_sizes(name: str, size: int) -> None:
    img = sample_video("photo", "train", 1, n_frames=1, size=size)[0]
    out = apply_family(name, img, item_rng(0, name))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


def _gray(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float64).mean(axis=2)
    return x - x.mean()


def _nyquist_share(img: np.ndarray) -> float:
    """Share of spectral power on the Nyquist row and column (checkerboard energy)."""
    power = np.abs(np.fft.fft2(_gray(img))) ** 2
    h, w = power.shape
    return float((power[h // 2, :].sum() + power[:, w // 2].sum()) / power.sum())


def _high_share(img: np.ndarray) -> float:
    """Share of spectral power above half the Nyquist radius."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(_gray(img)))) ** 2
    h, w = power.shape
    yy, xx = np.mgrid[-(h // 2) : h - h // 2, -(w // 2) : w - w // 2]
    radius = np.sqrt((yy / (h / 2)) ** 2 + (xx / (w / 2)) ** 2)
    return float(power[radius > 0.5].sum() / power.sum())


def test_upsample_adds_checkerboard_energy(crops: list[np.ndarray]) -> None:
    ratios = [_nyquist_share(apply_family("upsample", img, item_rng(0, "u", i))) / max(_nyquist_share(img), 1e-12)
              for i, img in enumerate(crops)]
    assert np.mean(np.array(ratios) > 1.0) >= 0.75
    assert np.median(ratios) > 2.0


def test_diffusion_removes_high_frequencies(crops: list[np.ndarray]) -> None:
    ratios = [_high_share(apply_family("diffusion", img, item_rng(0, "d", i))) / _high_share(img)
              for i, img in enumerate(crops)]
    assert np.mean(np.array(ratios) < 1.0) >= 0.7
    assert np.median(ratios) < 0.95


def _period8_share(img: np.ndarray) -> float:
    """Share of spectral power on the period-8 grid frequencies of 1/4 and 3/8 cycles/px (not DC,
    not Nyquist, not the lowest 1/8 where natural images hold most of their power)."""
    power = np.abs(np.fft.fft2(_gray(img))) ** 2
    h, w = power.shape
    fy, fx = np.abs(np.fft.fftfreq(h))[:, None], np.abs(np.fft.fftfreq(w))[None, :]
    on_grid = (np.isclose((fy * 8) % 1, 0) | np.isclose((fy * 8) % 1, 1)) & \
        (np.isclose((fx * 8) % 1, 0) | np.isclose((fx * 8) % 1, 1))
    grid = on_grid & (np.maximum(fy, fx) >= 0.25 - 1e-9) & (fy < 0.5 - 1e-9) & (fx < 0.5 - 1e-9)
    return float(power[grid].sum() / power.sum())


def test_fingerprint_adds_energy_where_training_families_do_not(crops: list[np.ndarray]) -> None:
    """The fingerprint adds power at the period-8 frequencies and not at Nyquist (upsample's) nor
    does it remove high frequencies (blend / warp / upsample / diffusion / edit do)."""
    fp = [apply_family("fingerprint", img, item_rng(0, "f", i)) for i, img in enumerate(crops)]
    ratios = [_period8_share(f) / max(_period8_share(img), 1e-12) for f, img in zip(fp, crops)]
    assert np.median(ratios) > 2.0
    assert np.median([_high_share(f) / _high_share(img) for f, img in zip(fp, crops)]) >= 1.0
    for fam in ("blend", "warp", "upsample"):
        other = [_period8_share(apply_family(fam, img, item_rng(0, fam, i))) / max(_period8_share(img), 1e-12)
                 for i, img in enumerate(crops)]
        assert np.median(other) < np.median(ratios) / 2, fam
    # one fixed pattern: the residuals of two images correlate
    r = [f.astype(np.float64) - img for f, img in zip(fp[:2], crops[:2])]
    assert np.corrcoef(r[0].ravel(), r[1].ravel())[0, 1] > 0.5


def test_resave_is_a_local_compression_splice(crops: list[np.ndarray]) -> None:
    unchanged = [np.all(apply_family("resave", img, item_rng(0, "r", i)) == img, axis=2).mean()
                 for i, img in enumerate(crops)]
    assert 0.05 < np.mean(unchanged) < 0.8


def test_blend_is_local(crops: list[np.ndarray]) -> None:
    """The pasted region is an ellipse: part of every image is untouched, part is changed."""
    unchanged = [np.all(apply_family("blend", img, item_rng(0, "b", i)) == img, axis=2).mean()
                 for i, img in enumerate(crops)]
    assert 0.05 < np.mean(unchanged) < 0.8


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_strength_scales_the_change(strength: float, crops: list[np.ndarray]) -> None:
    img = crops[2]
    full = apply_family("warp", img, item_rng(0, "s")).astype(np.float64)
    scaled = apply_family("warp", img, item_rng(0, "s"), strength=strength)
    reference = np.clip(np.round(img + strength * (full - img)), 0, 255)
    assert np.abs(scaled - reference).max() <= 1.0  # float32 rounding only
    np.testing.assert_array_equal(apply_family("warp", img, item_rng(0, "s"), strength=1.0), full.astype(np.uint8))
    with pytest.raises(ValueError, match="strength"):
        apply_family("warp", img, item_rng(0, "s"), strength=0.0)


# ------------------------------------------------------------------------------ registry


def test_builtins_registered_with_citation() -> None:
    for name in BUILTINS:
        fam = get_family(name)
        assert fam.name == name and fam.imitates and fam.description and len(fam.version) == 12


def test_register_decorator_duplicate_overwrite(temp_family: list[str]) -> None:
    temp_family.append("h4-test")

    @register_family("h4-test", imitates="nothing in particular", version="1")
    def invert(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return 255 - img

    assert get_family("h4-test").fn is invert and get_family("h4-test").version == "1"
    img = np.zeros((8, 8, 3), np.uint8)
    assert apply_family("h4-test", img, np.random.default_rng(0)).min() == 255
    with pytest.raises(ValueError, match="already registered"):
        register_family("h4-test", invert)
    register_family("h4-test", lambda img, rng: img, version="2", overwrite=True)
    assert get_family("h4-test").version == "2"


def test_default_version_follows_source(temp_family: list[str]) -> None:
    temp_family += ["h4-a", "h4-b"]

    def one(img, rng):
        return img

    def two(img, rng):
        return 255 - img

    register_family("h4-a", one)
    register_family("h4-b", two)
    assert get_family("h4-a").version != get_family("h4-b").version


@pytest.mark.parametrize("bad", ["", "real", "joint", "1abc", "with space", "under_score", "a/b"])
def test_invalid_family_names(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid family name"):
        register_family(bad, lambda img, rng: img)


def test_unknown_family_lists_known() -> None:
    with pytest.raises(ValueError, match="blend"):
        get_family("no-such-family")


def test_apply_family_checks_output(temp_family: list[str]) -> None:
    temp_family += ["h4-bad-shape", "h4-bad-dtype"]
    register_family("h4-bad-shape", lambda img, rng: img[:-1])
    register_family("h4-bad-dtype", lambda img, rng: img.astype(np.float32))
    img = np.zeros((8, 8, 3), np.uint8)
    for name in ("h4-bad-shape", "h4-bad-dtype"):
        with pytest.raises(ValueError, match=name):
            apply_family(name, img, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        apply_family("blend", img.astype(np.float32), np.random.default_rng(0))
