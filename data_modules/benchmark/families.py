"""Synthetic forgery families of the built-in benchmark, and their registry.

A family is a function ``fn(img, rng) -> img``: ``img`` an ``H×W×3`` uint8 RGB real crop, ``rng``
a ``numpy.random.Generator`` owned by that one image; it returns a manipulated uint8 image of the
same shape. Each built-in is a real image operation modelled on the artefacts of one DF40 family
(DF40, Yan et al., NeurIPS 2024):

========== ====================== ==================================================================
name       DF40 family imitated   artefact
========== ====================== ==================================================================
blend      FS (face swapping)     self-blended image: a colour-shifted, slightly misaligned copy
                                  rendered at 30–50 % resolution, pasted back through a soft
                                  ellipse → blending boundary, colour and resolution mismatch
                                  (SBI, Shiohara & Yamasaki, CVPR 2022; Face X-ray, Li et al.,
                                  CVPR 2020)
warp       FR (face reenactment)  smooth local motion field applied with bilinear resampling, moving
                                  parts re-rendered smoother → local geometric distortion and
                                  smoothing (FOMM, Siarohin et al., NeurIPS 2019; LIA, Wang et al.,
                                  ICLR 2022)
upsample   EFS, GAN generators    ×2 down-sampling then a stride-2 transposed convolution with an
                                  imperfect "learned" 4-tap kernel → checkerboard, spectral peaks at
                                  Nyquist (Odena et al., Distill 2016; Durall et al., CVPR 2020;
                                  Frank et al., ICML 2020)
diffusion  EFS, diffusion models  Gaussian noise then non-local-means denoising → smooth images
                                  that lack high frequencies (DDPM, Ho et al., NeurIPS 2020; Corvi
                                  et al., ICASSP 2023; Ricker et al., 2022)
edit       FE (face editing)      attribute change (hue, saturation/brightness, or smoothing) inside
                                  soft Gaussian blobs, no hard boundary, then a global re-rendering
                                  at lower resolution (GAN inversion) (StarGAN, Choi et al., CVPR
                                  2018; e4e, Tov et al., 2021; StyleCLIP, Patashnik et al., ICCV 2021)
fingerprint generator fingerprint  a fixed periodic residual (period 8 px, energy at 1/8, 1/4, 3/8
           (GAN / latent         cycles/px, none at DC or Nyquist) *added* to the image, content
           diffusion decoders)    untouched: the spectral peaks of GAN and latent-diffusion decoders
                                  (Marra et al., MIPR 2019; Yu et al., ICCV 2019; Corvi et al.,
                                  ICASSP 2023)
resave     splice + JPEG          a region replaced by a JPEG-compressed copy (quality 50–75, 8×8 grid
           (another pipeline)     shifted by 1–7 px): local quantisation / blocking inconsistency,
                                  no resampling, no blur, no colour change (non-aligned double JPEG,
                                  Bianchi & Piva, TIFS 2012; JPEG ghosts, Farid, TIFS 2009)
========== ====================== ==================================================================

The default unseen split (``diffusion``, ``edit``, ``fingerprint``, ``resave``) holds two families
that share the training families' main trait (they remove high-frequency content) and two of a
different kind: ``fingerprint`` *adds* energy at frequencies no training family changes, and
``resave`` comes from a compression pipeline no training family uses.

Strengths: each training family is separated from reals well above chance by a small network
trained for a few hundred steps on CPU, and none is trivial for a small ViT. Measured while choosing
them (in-distribution frame AUC, 600 training crops, batch 32): an open_clip ViT of width 64 with
2 blocks trained from scratch for 300 steps (AdamW, lr 1e-3) ≈ 0.8 (blend), 0.8 (warp), 0.9
(upsample); the CNN probe of the tests after 200 steps ≈ 0.84, 0.88, 1.0. Larger or lower-lr models
need more steps (or ``strength`` > 1); ``blend`` and ``warp`` are the slow ones to learn.
They were not tuned to favour any merge method. The families
overlap as DF40's do (``blend``, ``warp``, ``edit`` all lower local resolution; ``upsample``,
``diffusion``, ``edit`` lose high frequencies), so specialists partly transfer across families.

A benchmark-wide ``strength`` (:func:`apply_family`) scales every family's change linearly (1 =
as calibrated here) for models that need a stronger or fainter signal.

Register a new family with :func:`register_family` (as a call or a decorator). Its ``version``
(default: a hash of the function's source) enters the benchmark's configuration hash, so editing a
family's code regenerates the cached data.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Family",
    "FamilyFn",
    "FAMILIES",
    "register_family",
    "unregister_family",
    "get_family",
    "apply_family",
    "blend",
    "warp",
    "upsample",
    "diffusion",
    "edit",
    "fingerprint",
    "resave",
    "ENTRY_POINT_GROUP",
    "load_family_modules",
]

FamilyFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_RESERVED = {"real", "joint", "json", "frames"}


@dataclass(frozen=True)
class Family:
    """A registered forgery family."""

    name: str
    fn: FamilyFn
    imitates: str
    description: str
    version: str


#: Registered families by name (built-ins first).
FAMILIES: dict[str, Family] = {}


def _source_version(fn: Callable) -> str:
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        text = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def register_family(
    name: str,
    fn: FamilyFn | None = None,
    *,
    imitates: str = "",
    description: str = "",
    version: str | None = None,
    overwrite: bool = False,
):
    """Register forgery family ``name`` → ``fn(img, rng) -> img``.

    Use as ``register_family("x", fn, imitates=...)`` or as a decorator
    ``@register_family("x", imitates=...)``. ``name``: letters, digits and ``-`` (it becomes a
    folder, a JSON name ``<name>_<domain>`` and label strings ``<name>_Real``/``<name>_Fake``).
    ``version`` (default: hash of ``fn``'s source) invalidates cached benchmark data when changed.
    A taken name raises ``ValueError`` unless ``overwrite=True``. Returns ``fn``.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name.lower() in _RESERVED:
        raise ValueError(
            f"invalid family name {name!r}: use letters, digits and '-', starting with a letter, "
            f"and none of {sorted(_RESERVED)}"
        )

    def _register(func: FamilyFn) -> FamilyFn:
        if not callable(func):
            raise TypeError(f"family {name!r}: fn must be callable, got {func!r}")
        if name in FAMILIES and not overwrite:
            raise ValueError(f"forgery family {name!r} is already registered (pass overwrite=True to replace it)")
        doc = (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")
        FAMILIES[name] = Family(
            name=name,
            fn=func,
            imitates=imitates,
            description=description or doc,
            version=str(version) if version is not None else _source_version(func),
        )
        return func

    return _register if fn is None else _register(fn)


def unregister_family(name: str) -> None:
    """Remove a registered family (for tests and interactive use)."""
    get_family(name)
    del FAMILIES[name]


def get_family(name: str) -> Family:
    """The registered family ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown forgery family {name!r}; registered: {sorted(FAMILIES)}") from None


def apply_family(name: str, img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Apply family ``name`` to ``img`` and check the result (same shape, uint8).

    ``strength`` scales the change the family makes, for any family:
    ``fake = clip(round(img + strength · (fn(img) − img)), 0, 255)``; 1 (default) is the family
    as designed (bit-exact), below 1 fainter, above 1 exaggerated."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"family {name!r}: input must be H×W×3 uint8, got {img.dtype} {img.shape}")
    if not np.isfinite(strength) or strength <= 0:
        raise ValueError(f"family {name!r}: strength must be a positive number, got {strength!r}")
    out = get_family(name).fn(img.copy(), rng)
    out = np.asarray(out)
    if out.shape != img.shape or out.dtype != np.uint8:
        raise ValueError(
            f"family {name!r} returned {out.dtype} {out.shape}; it must return uint8 {img.shape}"
        )
    if strength != 1.0:
        base = img.astype(np.float32)
        out = _to_u8(base + np.float32(strength) * (out.astype(np.float32) - base))
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# helpers


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys, xs


def _gaussian_blob(h: int, w: int, rng: np.random.Generator, sigma_frac: tuple[float, float]) -> np.ndarray:
    """A rotated anisotropic Gaussian bump with peak 1, centred in the middle 60 % of the image."""
    ys, xs = _grid(h, w)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    sy, sx = rng.uniform(*sigma_frac) * h, rng.uniform(*sigma_frac) * w
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u = (xs - cx) * c + (ys - cy) * s
    v = -(xs - cx) * s + (ys - cy) * c
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# built-in families


def blend(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Self-blended image (FS-like): a re-rendered copy blended back through a soft ellipse.

    Source copy: per-channel gain ±20 % and offset ±15 grey levels (skin-tone mismatch), scale
    1.00–1.05, shift ±1.5 px, rotation ±3° (alignment error), rendered at 30–50 % resolution and
    resized back (a swapped face is generated at a lower resolution than the frame). Mask: an
    ellipse with half-axes 35–48 % of the side near the centre, softened with a Gaussian
    (σ 0.5–1.2 px), times a blend ratio in [0.85, 1] (Shiohara & Yamasaki, CVPR 2022)."""
    import cv2

    h, w = img.shape[:2]
    src = img.astype(np.float32)
    gain = 1.0 + rng.uniform(-0.20, 0.20, size=3)
    bias = rng.uniform(-15.0, 15.0, size=3)
    src = src * gain[None, None, :] + bias[None, None, :]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), rng.uniform(-3.0, 3.0), rng.uniform(1.0, 1.05))
    m[:, 2] += rng.uniform(-1.5, 1.5, size=2)
    src = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    factor = rng.uniform(0.3, 0.5)
    low = cv2.resize(src, (max(2, int(w * factor)), max(2, int(h * factor))), interpolation=cv2.INTER_AREA)
    src = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)

    mask = np.zeros((h, w), np.float32)
    centre = (int(round(w * rng.uniform(0.35, 0.65))), int(round(h * rng.uniform(0.35, 0.65))))
    axes = (int(round(w * rng.uniform(0.35, 0.48))), int(round(h * rng.uniform(0.35, 0.48))))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.5, 1.2)) * rng.uniform(0.85, 1.0)
    out = mask[:, :, None] * src + (1.0 - mask[:, :, None]) * img.astype(np.float32)
    return _to_u8(out)


def warp(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reenactment-like motion (FR-like): a smooth motion field of 2–4 Gaussian bumps, bilinear
    resampling, and a smoother re-rendering of the moving region.

    Each bump moves pixels by 3–6 px in a random direction within a radius σ of 15–30 % of the
    side; ``cv2.remap`` (bilinear) resamples the image, as motion-transfer generators warp source
    features with a dense flow (FOMM, Siarohin et al., NeurIPS 2019; LIA, Wang et al., ICLR 2022);
    where the motion exceeds ~1.5 px the result is blended with a Gaussian-blurred copy
    (σ 1.0–1.5 px), the decoder's over-smooth rendering of moving parts."""
    import cv2

    h, w = img.shape[:2]
    ys, xs = _grid(h, w)
    dx = np.zeros((h, w), np.float32)
    dy = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        bump = _gaussian_blob(h, w, rng, (0.15, 0.30))
        amp = rng.uniform(3.0, 6.0)
        phi = rng.uniform(0, 2 * np.pi)
        dx += amp * np.cos(phi) * bump
        dy += amp * np.sin(phi) * bump
    moved = cv2.remap(img, xs + dx, ys + dy, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    weight = np.clip(np.sqrt(dx**2 + dy**2) / 1.5, 0.0, 1.0)[:, :, None]
    smooth = cv2.GaussianBlur(moved, (0, 0), rng.uniform(1.0, 1.5)).astype(np.float32)
    out = weight * smooth + (1.0 - weight) * moved.astype(np.float32)
    return _to_u8(out)


def upsample(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GAN-like up-convolution (EFS-like): ×2 area down-sampling, zero insertion, 4-tap kernel.

    The kernel is the bilinear transposed-convolution kernel ``[1, 3, 3, 1] / 4`` plus learned-like
    noise (σ 0.02–0.04 per tap, per axis); unequal sums of its even and odd taps modulate
    alternate rows/columns → checkerboard and spectral peaks at Nyquist (Odena et al., Distill
    2016; Durall et al., CVPR 2020)."""
    import cv2

    h, w = img.shape[:2]
    sh, sw = (h + 1) // 2, (w + 1) // 2  # odd sizes: generate one extra row/column, then crop
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32)
    up = np.zeros((2 * sh, 2 * sw, 3), np.float32)
    up[::2, ::2] = small
    base = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    sigma = rng.uniform(0.02, 0.04)
    kx = base + rng.normal(0.0, sigma, 4).astype(np.float32)
    ky = base + rng.normal(0.0, sigma, 4).astype(np.float32)
    kx *= 2.0 / kx.sum()  # keep the mean brightness: the two phases sum to 2 together
    ky *= 2.0 / ky.sum()
    out = cv2.sepFilter2D(up, -1, kx, ky, anchor=(2, 2), borderType=cv2.BORDER_REFLECT101)
    return _to_u8(out[:h, :w])


def diffusion(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Diffusion-like noise-then-denoise (EFS diffusion-like): Gaussian noise σ 8–18 grey levels,
    then non-local-means denoising (``h`` = 1.1–1.4 σ, 5 px patches, 13 px search window) →
    smooth, patch-wise flattened texture with missing high frequencies, as a denoiser's output
    (DDPM, Ho et al., NeurIPS 2020; Corvi et al., ICASSP 2023; Ricker et al., 2022)."""
    import cv2

    sigma = rng.uniform(8.0, 18.0)
    noisy = _to_u8(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape))
    h = float(sigma * rng.uniform(1.1, 1.4))
    out = cv2.fastNlMeansDenoisingColored(noisy, None, h, h, 5, 13)
    return np.ascontiguousarray(out)


def edit(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Attribute editing through GAN inversion (FE-like): an attribute change (hue, saturation /
    brightness, or smoothing) inside 1–2 soft Gaussian blobs, then the whole image is
    re-rendered at 50–70 % resolution.

    Editors such as StarGAN (Choi et al., CVPR 2018), e4e (Tov et al., SIGGRAPH 2021) and StyleCLIP
    (Patashnik et al., ICCV 2021) change one property of a region without a hard boundary, and
    regenerate the whole image through a generator, which loses fine detail everywhere."""
    import cv2

    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        mask = np.maximum(mask, _gaussian_blob(h, w, rng, (0.18, 0.32)))
    kind = int(rng.integers(0, 3))
    if kind == 0:  # hue shift (hair / skin colour change)
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        hsv[:, :, 0] = np.mod(hsv[:, :, 0] + rng.choice([-1, 1]) * rng.uniform(12, 30), 256)
        edited = cv2.cvtColor(_to_u8(hsv), cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    elif kind == 1:  # saturation and brightness (make-up / lighting attribute)
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        hsv[:, :, 1] *= rng.choice([rng.uniform(0.5, 0.75), rng.uniform(1.3, 1.6)])
        hsv[:, :, 2] = hsv[:, :, 2] * rng.uniform(0.85, 1.15) + rng.choice([-1, 1]) * rng.uniform(6, 14)
        edited = cv2.cvtColor(_to_u8(hsv), cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    else:  # smoothing (age / skin-retouching attribute)
        edited = cv2.bilateralFilter(img, 7, float(rng.uniform(40, 70)), 7).astype(np.float32)
    mask *= rng.uniform(0.8, 1.0)
    out = _to_u8(mask[:, :, None] * edited + (1.0 - mask[:, :, None]) * img.astype(np.float32))
    factor = rng.uniform(0.5, 0.7)
    low = cv2.resize(out, (max(2, int(w * factor)), max(2, int(h * factor))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC))


_FINGERPRINT_PERIOD = 8
_FINGERPRINT_SEED = 0x5EED_F1  # the "generator": one fixed pattern for every image, as a real model's


def _fingerprint_tile() -> np.ndarray:
    """The fixed ``8×8×3`` residual tile: Gaussian noise with its DC and Nyquist (±4) frequencies
    removed, unit standard deviation per channel."""
    tile = np.random.default_rng(_FINGERPRINT_SEED).normal(size=(_FINGERPRINT_PERIOD, _FINGERPRINT_PERIOD, 3))
    spec = np.fft.fft2(tile, axes=(0, 1))
    half = _FINGERPRINT_PERIOD // 2
    spec[0, 0] = 0
    spec[half, :] = 0
    spec[:, half] = 0
    tile = np.real(np.fft.ifft2(spec, axes=(0, 1)))
    return (tile / tile.std(axis=(0, 1), keepdims=True)).astype(np.float32)


def fingerprint(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generator fingerprint (GAN / latent-diffusion decoder): a fixed periodic residual pattern
    added to the image, which is otherwise untouched.

    One fixed ``8×8`` tile (every image of this "generator" carries the same one, aligned with
    the image grid as a decoder's output is) with energy at 1/8, 1/4 and 3/8 cycles/px only — no
    DC, no Nyquist, so none of the frequencies the training families change — tiled over the
    image at an amplitude of 3–5 grey levels (standard deviation), scaled by 0.6–1.0 where the
    image is dark to bright (fingerprints are weaker in shadows). Imitates the periodic spectral
    peaks of GAN and latent-diffusion images (Marra et al., "Do GANs leave artificial
    fingerprints?", MIPR 2019; Yu et al., ICCV 2019; Corvi et al., ICASSP 2023)."""
    h, w = img.shape[:2]
    tile = _fingerprint_tile()
    reps = (-(-h // _FINGERPRINT_PERIOD), -(-w // _FINGERPRINT_PERIOD), 1)
    pattern = np.tile(tile, reps)[:h, :w]
    base = img.astype(np.float32)
    lum = base.mean(axis=2, keepdims=True) / 255.0
    amp = np.float32(rng.uniform(3.0, 5.0))
    return _to_u8(base + amp * (0.6 + 0.4 * lum) * pattern)


def resave(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Splice from another pipeline: a region replaced by a JPEG-compressed copy of the image.

    The copy is JPEG-encoded at quality 50–75 on an ``8×8`` grid shifted by 1–7 px (it was
    compressed as part of another frame), decoded, and pasted through an ellipse (half-axes 30–45 %
    of the side, edge σ 0.5–1 px): quantisation and blocking inside the region, none outside — no
    resampling, blur or colour change. Imitates the inconsistent (non-aligned double) JPEG
    compression of spliced regions (Bianchi & Piva, TIFS 2012; Farid, "Exposing digital forgeries
    from JPEG ghosts", TIFS 2009)."""
    import cv2

    h, w = img.shape[:2]
    dy, dx = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    shifted = np.roll(img, (dy, dx), axis=(0, 1))
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(shifted[:, :, ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 76))])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    copy = np.roll(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1], (-dy, -dx), axis=(0, 1)).astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    centre = (int(round(w * rng.uniform(0.35, 0.65))), int(round(h * rng.uniform(0.35, 0.65))))
    axes = (int(round(w * rng.uniform(0.30, 0.45))), int(round(h * rng.uniform(0.30, 0.45))))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.5, 1.0))[:, :, None]
    return _to_u8(mask * copy + (1.0 - mask) * img.astype(np.float32))


register_family("blend", blend, imitates="FS: face swapping (self-blended images, SBI)")
register_family("warp", warp, imitates="FR: face reenactment (motion-field warping, FOMM/LIA)")
register_family("upsample", upsample, imitates="EFS: GAN up-convolution (checkerboard / spectral peaks)")
register_family("diffusion", diffusion, imitates="EFS: diffusion models (missing high frequencies)")
register_family("edit", edit, imitates="FE: face attribute editing (StarGAN / StyleCLIP)")
register_family("fingerprint", fingerprint,
                imitates="GAN / latent-diffusion decoder fingerprint: periodic spectral peaks (Marra et al. 2019; "
                         "Corvi et al. 2023)")
register_family("resave", resave,
                imitates="splice with inconsistent JPEG compression (non-aligned double JPEG, Bianchi & Piva 2012)")


# --------------------------------------------------------------------------------------------
# user families: modules, files and entry points

#: Entry-point group of installed packages that register benchmark families on import, e.g. in a
#: ``pyproject.toml``: ``[project.entry-points."r2m.benchmark_families"] my_fakes = "my_pkg.fakes"``.
ENTRY_POINT_GROUP = "r2m.benchmark_families"
_LOADED: set[str] = set()


def load_family_modules(modules: "list[str] | tuple[str, ...]" = (), entry_points: bool = True) -> None:
    """Import the modules that register user families (once per process each).

    ``modules``: module names (``my_pkg.fakes``, importable from the working directory too) or
    Python files (``my_fakes.py`` / ``path/to/fakes.py``, relative to the working directory);
    ``entry_points``: also load every entry point of :data:`ENTRY_POINT_GROUP`. An import that
    fails raises ``ValueError`` naming the module."""
    import importlib
    import importlib.util
    import os
    import sys
    from pathlib import Path

    targets: list[tuple[str, object]] = []
    if entry_points:
        from importlib.metadata import entry_points as _eps

        targets += [(f"entry point {ep.name} = {ep.value}", ep) for ep in _eps(group=ENTRY_POINT_GROUP)]
    targets += [(str(m), str(m)) for m in modules]
    for label, target in targets:
        if label in _LOADED:
            continue
        try:
            if not isinstance(target, str):
                target.load()  # type: ignore[attr-defined]
            elif target.endswith(".py") or os.sep in target or "/" in target:
                path = Path(target).expanduser().resolve()
                if not path.is_file():
                    raise FileNotFoundError(f"no such file: {path}")
                key = f"{path}"
                if key in _LOADED:
                    continue
                name = f"_r2m_user_families_{hashlib.sha256(key.encode()).hexdigest()[:10]}"
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                sys.modules[name] = module
                spec.loader.exec_module(module)  # type: ignore[union-attr]
                _LOADED.add(key)
            else:
                if os.getcwd() not in sys.path and "" not in sys.path:
                    sys.path.append(os.getcwd())  # `python train.py` puts the script's folder first, not the cwd
                importlib.import_module(target)
        except Exception as exc:
            raise ValueError(f"data.family_modules: could not import {label!r} to register benchmark families: "
                             f"{type(exc).__name__}: {exc}") from exc
        _LOADED.add(label)
