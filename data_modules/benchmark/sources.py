"""Real photographs shipped with scikit-image, cut into seeded crops, in two acquisition domains.

Nothing here downloads: every source is a file inside the installed ``scikit-image`` wheel
(``skimage.data`` images that need ``pooch`` are not used).

Two *real* domains play the roles of DF40's FF++ and Celeb-DF domains (train domain and
cross-dataset domain). They differ both in content and in acquisition pipeline:

``photo`` (domain A, the training domain)
    Colour photographs: ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, the left view of
    ``stereo_motorcycle`` and ``immunohistochemistry`` (the right stereo view is not used: it shows
    the same scene shifted by the disparity, so its training band would hold content of the left
    view's test band). Pipeline: square crop of 64–144 source
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

Source regions (the benchmark's *identities*): each band of each photograph is cut into a grid
of disjoint regions of at least ``REGION_MIN`` source pixels a side (:func:`regions`); every frame
of a video lies inside one region, so two videos of different regions share no pixel. A video's
identity is ``"<domain>/<source>/<band>/r<row>c<col>"`` (faces: ``"<domain>/lfw_faces/face<k>"``);
its forged copies carry the same identity, and the validation carve assigns whole identities
(regions) to validation, so no validation crop shares a pixel with a training crop.

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
    "REGION_MIN",
    "regions",
    "sample_video_info",
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
#: Minimum side (source pixels) of a source region; crops are at most this large.
REGION_MIN = 128


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
        ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry"),
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


def regions(height: int, width: int, band: str) -> list[tuple[int, int, int, int, str]]:
    """Disjoint source regions of one band of a ``height × width`` photograph: a grid of cells of
    at least :data:`REGION_MIN` pixels a side, as ``(y0, y1, x0, x1, "r<row>c<col>")``."""
    x0, x1 = _band(width, band)
    rows, cols = max(1, height // REGION_MIN), max(1, (x1 - x0) // REGION_MIN)
    ys = [int(round(i * height / rows)) for i in range(rows + 1)]
    xs = [x0 + int(round(j * (x1 - x0) / cols)) for j in range(cols + 1)]
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1], f"r{i}c{j}") for i in range(rows) for j in range(cols)]


def _photo_frames(src: np.ndarray, band: str, rng: np.random.Generator,
                  n_frames: int) -> tuple[list[np.ndarray], str]:
    """Crops (not yet resized) of one video from a photograph (``H×W`` or ``H×W×3``), all inside
    one source region, and that region's name."""
    height, width = src.shape[:2]
    cells = regions(height, width, band)
    for _ in range(_MAX_TRIES):
        y0, y1, x0, x1, region = cells[int(rng.integers(0, len(cells)))]
        max_side = min(_CROP_RANGE[1], y1 - y0, x1 - x0)
        if max_side < _CROP_RANGE[0]:
            raise ValueError(f"source region {region} of band {band!r} too small: {src.shape}")
        side = int(rng.integers(_CROP_RANGE[0], max_side + 1))
        y, x = _crop_box(rng, y1 - y0, x0, x1, side)
        y += y0
        if _texture(src[y : y + side, x : x + side]) >= _MIN_TEXTURE:
            break
    flip = bool(rng.integers(0, 2))
    frames = []
    for _ in range(n_frames):
        s = int(round(side * (1.0 + rng.uniform(-_JITTER_SCALE, _JITTER_SCALE))))
        s = int(np.clip(s, 16, max_side))
        fy = int(np.clip(y + rng.integers(-_JITTER_PX, _JITTER_PX + 1), y0, y1 - s))
        fx = int(np.clip(x + rng.integers(-_JITTER_PX, _JITTER_PX + 1), x0, x1 - s))
        crop = src[fy : fy + s, fx : fx + s]
        frames.append(crop[:, ::-1] if flip else crop)
    return frames, region


def _face_frames(faces: np.ndarray, band: str, rng: np.random.Generator,
                 n_frames: int) -> tuple[list[np.ndarray], str]:
    """Crops of one video from one LFW face (25×25): 21–25 px squares with ±1 px jitter; and
    ``"face<k>"``."""
    if band not in SPLIT_BANDS:
        raise ValueError(f"unknown band {band!r} for benchmark crops; known: {sorted(SPLIT_BANDS)}")
    if band == "train":
        lo, hi = 0, _LFW_TRAIN_FACES
    elif band == "test":
        lo, hi = _LFW_TRAIN_FACES, len(faces)
    else:
        lo, hi = 0, len(faces)
    k = int(rng.integers(lo, hi))
    face = faces[k]
    side = int(rng.integers(21, 26))
    flip = bool(rng.integers(0, 2))
    frames = []
    for _ in range(n_frames):
        fy = int(rng.integers(0, 25 - side + 1))
        fx = int(rng.integers(0, 25 - side + 1))
        crop = face[fy : fy + side, fx : fx + side]
        frames.append(crop[:, ::-1] if flip else crop)
    return frames, f"face{k}"


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


def sample_video_info(
    domain: str, split: str, index: int, *, seed: int = 0, n_frames: int = 4, size: int = 64,
    band: str | None = None,
) -> tuple[list[np.ndarray], dict[str, str]]:
    """Frames (``size×size×3`` uint8 RGB) of real video ``index`` of ``domain``/``split`` and where
    they come from: ``{"source": photograph, "band": band, "region": region, "identity": ...}``.

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
        crops, region = _face_frames(src, band, rng, n_frames)
        identity = f"{domain}/{source}/{region}"
    else:
        crops, region = _photo_frames(src, band, rng, n_frames)
        identity = f"{domain}/{source}/{band}/{region}"
    info = {"source": source, "band": band, "region": region, "identity": identity}
    if dom.pipeline == "archive":
        params = _archive_params(rng)
        return [_to_rgb_archive(c, size, params, rng) for c in crops], info
    return [_to_rgb_clean(c, size) for c in crops], info


def sample_video(
    domain: str, split: str, index: int, *, seed: int = 0, n_frames: int = 4, size: int = 64,
    band: str | None = None,
) -> list[np.ndarray]:
    """The frames of :func:`sample_video_info`."""
    return sample_video_info(domain, split, index, seed=seed, n_frames=n_frames, size=size, band=band)[0]


def sample_videos(
    domain: str, split: str, indices: Sequence[int], *, seed: int = 0, n_frames: int = 4, size: int = 64,
    band: str | None = None,
) -> np.ndarray:
    """Stack of videos: ``[len(indices), n_frames, size, size, 3]`` uint8."""
    return np.stack([
        np.stack(sample_video(domain, split, i, seed=seed, n_frames=n_frames, size=size, band=band))
        for i in indices
    ])
