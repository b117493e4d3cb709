"""Real photographs shipped with scikit-image, cut into seeded crops, in two acquisition domains.

Nothing here downloads: every source is a file inside the installed ``scikit-image`` wheel
(``skimage.data`` images that need ``pooch`` are not used).

Two *real* domains play the roles of DF40's FF++ and Celeb-DF domains (train domain and
cross-dataset domain). They differ both in content and in acquisition pipeline:

``photo`` (domain A, the training domain)
    Colour photographs: ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, the two views of
    ``stereo_motorcycle`` and ``immunohistochemistry``. Pipeline: square crop of 64–144 source
    pixels → area resampling (``cv2.INTER_AREA`` when shrinking) → lossless.
``archive`` (domain B, cross-dataset only)
    Different photographs — the grey-level ``camera``, ``coins``, ``moon``, ``brick``, ``grass``,
    ``gravel`` and the 100 real faces of ``lfw_subset()`` (25×25) — through a different
    pipeline: bicubic resampling, a random duotone tint per video, Gaussian sensor noise
    (σ 2–5 grey levels) and JPEG compression (quality 60–90).

Train/test separation (no pixel shared between splits): each source image is cut into two
disjoint column bands, the left 70 % for ``train`` and the right 30 % for ``test``; every crop of a
split lies entirely inside its band (``SPLIT_BANDS``). The faces of ``lfw_subset`` are split by
index instead (faces 0–69 train, 70–99 test). A domain used only for testing may use ``"all"``.

A *video* is a small bucket of frames cut from one place of one photograph: a base crop
(position, size, horizontal flip) plus a small per-frame jitter of position (±6 px) and scale
(±6 %), like consecutive frames of a steady shot. Nearly flat base crops (sky, blur, background:
mean absolute high-pass response below 2 grey levels at 64 px) are redrawn, up to 30 times, so that
the forgeries have texture to act on and the train and test bands have similar texture statistics.

Randomness: every video draws from its own ``numpy`` generator seeded by
``(seed, domain, split, video index)`` (:func:`item_rng`), so a video does not depend on how many
other videos or families are generated.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DOMAINS",
    "SPLIT_BANDS",
    "Domain",
    "item_rng",
    "stable_int",
    "load_source",
    "sample_video",
    "sample_videos",
]

#: Column band (start, end) as fractions of the image width used by each split.
SPLIT_BANDS: dict[str, tuple[float, float]] = {"train": (0.0, 0.7), "test": (0.7, 1.0), "all": (0.0, 1.0)}

_LFW_TRAIN_FACES = 70  # lfw_subset faces [0, 70) → train, [70, 100) → test
_CROP_RANGE = (64, 144)  # square crop side in source pixels, before resizing
_JITTER_PX = 6
_JITTER_SCALE = 0.06
_MIN_TEXTURE = 2.0  # mean |gray − Gaussian(σ=1)| of the crop at 64 px, in grey levels
_MAX_TRIES = 30


@dataclass(frozen=True)
class Domain:
    """A real-image domain: its source names and its acquisition pipeline (``"clean"`` or
    ``"archive"``)."""

    name: str
    sources: tuple[str, ...]
    pipeline: str
    description: str


DOMAINS: dict[str, Domain] = {
    "photo": Domain(
        "photo",
        ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
         "immunohistochemistry"),
        "clean",
        "colour photographs, area resampling, lossless",
    ),
    "archive": Domain(
        "archive",
        ("camera", "coins", "moon", "brick", "grass", "gravel", "lfw_faces"),
        "archive",
        "grey-level photographs and LFW faces, bicubic resampling, duotone tint, sensor noise, JPEG",
    ),
}


def stable_int(text: str) -> int:
    """A process-independent 32-bit integer for ``text`` (CRC-32; Python's ``hash`` is salted)."""
    return zlib.crc32(text.encode("utf-8"))


def item_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator for one item, from ``seed`` and a tuple of string/int keys."""
    entropy = [int(seed) & 0xFFFFFFFF] + [k if isinstance(k, int) else stable_int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> np.ndarray:
    """A source image from ``skimage.data`` as uint8: ``H×W×3`` (photo sources), ``H×W`` (grey
    sources) or ``N×25×25`` (``lfw_faces``, the 100 real faces of ``lfw_subset``).

    The returned array is read-only (it is cached)."""
    import skimage.data as data

    loaders = {
        "astronaut": data.astronaut,
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "rocket": data.rocket,
        "immunohistochemistry": data.immunohistochemistry,
        "motorcycle_left": lambda: data.stereo_motorcycle()[0],
        "motorcycle_right": lambda: data.stereo_motorcycle()[1],
        "camera": data.camera,
        "coins": data.coins,
        "moon": data.moon,
        "brick": data.brick,
        "grass": data.grass,
        "gravel": data.gravel,
        "lfw_faces": lambda: np.clip(data.lfw_subset()[:100] * 255.0, 0, 255).round(),
    }
    if name not in loaders:
        raise ValueError(f"unknown benchmark source image {name!r}; known: {sorted(loaders)}")
    img = np.ascontiguousarray(np.asarray(loaders[name]()).astype(np.uint8))
    img.setflags(write=False)
    return img


def _band(width: int, band: str) -> tuple[int, int]:
    if band not in SPLIT_BANDS:
        raise ValueError(f"unknown band {band!r} for benchmark crops; known: {sorted(SPLIT_BANDS)}")
    lo, hi = SPLIT_BANDS[band]
    return int(round(lo * width)), int(round(hi * width))


def _resize(img: np.ndarray, size: int, pipeline: str) -> np.ndarray:
    import cv2

    if pipeline == "archive":
        interp = cv2.INTER_CUBIC
    else:
        interp = cv2.INTER_AREA if img.shape[0] >= size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def _crop_box(rng: np.random.Generator, height: int, x0: int, x1: int, side: int) -> tuple[int, int]:
    """Top-left corner of a ``side``-pixel square inside rows [0, height) and columns [x0, x1)."""
    y = int(rng.integers(0, height - side + 1))
    x = int(rng.integers(x0, x1 - side + 1))
    return y, x


def _texture(crop: np.ndarray) -> float:
    """High-frequency content of a crop: mean absolute difference between its grey level at 64 px
    and a Gaussian blur (σ = 1 px) of it."""
    import cv2

    gray = crop.astype(np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    gray = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    return float(np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 1.0)).mean())


def _photo_frames(src: np.ndarray, band: str, rng: np.random.Generator, n_frames: int) -> list[np.ndarray]:
    """Crops (not yet resized) of one video from a photograph (``H×W`` or ``H×W×3``)."""
    height, width = src.shape[:2]
    x0, x1 = _band(width, band)
    max_side = min(_CROP_RANGE[1], height, x1 - x0)
    if max_side < _CROP_RANGE[0]:
        raise ValueError(f"source image too small for band {band!r}: {src.shape}")
    for _ in range(_MAX_TRIES):
        side = int(rng.integers(_CROP_RANGE[0], max_side + 1))
        y, x = _crop_box(rng, height, x0, x1, side)
        if _texture(src[y : y + side, x : x + side]) >= _MIN_TEXTURE:
            break
    flip = bool(rng.integers(0, 2))
    frames = []
    for _ in range(n_frames):
        s = int(round(side * (1.0 + rng.uniform(-_JITTER_SCALE, _JITTER_SCALE))))
        s = int(np.clip(s, 16, max_side))
        fy = int(np.clip(y + rng.integers(-_JITTER_PX, _JITTER_PX + 1), 0, height - s))
        fx = int(np.clip(x + rng.integers(-_JITTER_PX, _JITTER_PX + 1), x0, x1 - s))
        crop = src[fy : fy + s, fx : fx + s]
        frames.append(crop[:, ::-1] if flip else crop)
    return frames


def _face_frames(faces: np.ndarray, band: str, rng: np.random.Generator, n_frames: int) -> list[np.ndarray]:
    """Crops of one video from one LFW face (25×25): 21–25 px squares with ±1 px jitter."""
    if band not in SPLIT_BANDS:
        raise ValueError(f"unknown band {band!r} for benchmark crops; known: {sorted(SPLIT_BANDS)}")
    if band == "train":
        lo, hi = 0, _LFW_TRAIN_FACES
    elif band == "test":
        lo, hi = _LFW_TRAIN_FACES, len(faces)
    else:
        lo, hi = 0, len(faces)
    face = faces[int(rng.integers(lo, hi))]
    side = int(rng.integers(21, 26))
    flip = bool(rng.integers(0, 2))
    frames = []
    for _ in range(n_frames):
        fy = int(rng.integers(0, 25 - side + 1))
        fx = int(rng.integers(0, 25 - side + 1))
        crop = face[fy : fy + side, fx : fx + side]
        frames.append(crop[:, ::-1] if flip else crop)
    return frames


def _to_rgb_clean(crop: np.ndarray, size: int) -> np.ndarray:
    img = _resize(np.ascontiguousarray(crop), size, "clean")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.uint8)


def _archive_params(rng: np.random.Generator) -> dict:
    """Per-video acquisition parameters of the archive pipeline."""
    tint = np.array([1.0, rng.uniform(0.82, 0.97), rng.uniform(0.62, 0.88)])
    if rng.integers(0, 2):  # cold (blue-ish) instead of warm (sepia-ish) tone
        tint = tint[::-1]
    return {
        "tint": tint,
        "lift": rng.uniform(0.0, 18.0),  # black level of old prints
        "noise": rng.uniform(2.0, 5.0),
        "quality": int(rng.integers(60, 91)),
    }


def _to_rgb_archive(crop: np.ndarray, size: int, params: dict, rng: np.random.Generator) -> np.ndarray:
    import cv2

    gray = _resize(np.ascontiguousarray(crop), size, "archive").astype(np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    rgb = params["lift"] + gray[:, :, None] * (1.0 - params["lift"] / 255.0) * params["tint"][None, None, :]
    rgb = rgb + rng.normal(0.0, params["noise"], size=rgb.shape)
    rgb = np.clip(rgb, 0, 255).round().astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, params["quality"]])
    if not ok:  # pragma: no cover - cv2 always encodes uint8 images
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def sample_video(
    domain: str, split: str, index: int, *, seed: int = 0, n_frames: int = 4, size: int = 64,
    band: str | None = None,
) -> list[np.ndarray]:
    """Frames (``size×size×3`` uint8 RGB) of real video ``index`` of ``domain``/``split``.

    Deterministic in ``(seed, domain, split, index)``. ``band`` (default: ``split``) picks the
    region of the source images: ``"train"``, ``"test"`` or ``"all"`` (whole images; only for a
    domain that is never trained on). A split with another name (e.g. ``"pretrain"``) draws
    independent videos from the given band."""
    band = split if band is None else band
    if domain not in DOMAINS:
        raise ValueError(f"unknown benchmark domain {domain!r}; known: {sorted(DOMAINS)}")
    if n_frames < 1 or size < 8:
        raise ValueError(f"need n_frames >= 1 and size >= 8, got n_frames={n_frames}, size={size}")
    dom = DOMAINS[domain]
    rng = item_rng(seed, "real", domain, split, int(index))
    source = dom.sources[int(rng.integers(0, len(dom.sources)))]
    src = load_source(source)
    if source == "lfw_faces":
        crops = _face_frames(src, band, rng, n_frames)
    else:
        crops = _photo_frames(src, band, rng, n_frames)
    if dom.pipeline == "archive":
        params = _archive_params(rng)
        return [_to_rgb_archive(c, size, params, rng) for c in crops]
    return [_to_rgb_clean(c, size) for c in crops]


def sample_videos(
    domain: str, split: str, indices: Sequence[int], *, seed: int = 0, n_frames: int = 4, size: int = 64,
    band: str | None = None,
) -> np.ndarray:
    """Stack of videos: ``[len(indices), n_frames, size, size, 3]`` uint8."""
    return np.stack([
        np.stack(sample_video(domain, split, i, seed=seed, n_frames=n_frames, size=size, band=band))
        for i in indices
    ])
