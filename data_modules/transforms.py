"""Albumentations 2.x pipelines: the DeepfakeBench training recipe and the evaluation transform.

Both take an RGB uint8 ``H×W×3`` array. ``output="uint8"`` (what the DataModules use) returns the
augmented uint8 ``S×S×3`` array: batches stay uint8 (4× less to collate, pickle and copy to the
device) and the detector normalises on the device (:mod:`r2m.models.preprocess`, in
``DeepfakeDetector.on_after_batch_transfer``). ``output="float"`` (the default of these functions,
for callers that feed a model directly) appends ``Normalize`` + ``ToTensorV2`` and returns the
normalised float tensor ``[3, S, S]``. Both outputs see the same augmentation draws: normalisation
consumes no randomness, so a seeded pipeline gives the same pixels either way. The resize to the
model input (cubic, as DeepfakeBench's loader) comes first, then augmentation. Albumentations 2.x silently ignores renamed arguments (``quality_lower`` …), so only
the 2.x names are used here (``quality_range``, ``blur_limit``, ``limit``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "DEEPFAKEBENCH_AUGMENT",
    "resolve_mean_std",
    "open_clip_mean_std",
    "train_transform",
    "eval_transform",
    "build_transform",
    "seed_transform",
    "OUTPUTS",
]

#: ``"float"``: normalised float tensor ``[3,S,S]``; ``"uint8"``: augmented uint8 ``S×S×3`` array.
OUTPUTS = ("float", "uint8")

#: OpenAI CLIP normalisation (open_clip ``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``).
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: DeepfakeBench default augmentation (``training/config/detector/*.yaml``), in albumentations 2.x terms.
#: DeepfakeBench draws brightness/contrast inside a OneOf with FancyPCA / HueSaturationValue; only the
#: brightness/contrast member is used here (as in the R²M paper's description).
DEEPFAKEBENCH_AUGMENT: dict[str, Any] = {
    "flip_p": 0.5,
    "rotate_limit": 10,
    "rotate_p": 0.5,
    "blur_limit": (3, 7),
    "blur_p": 0.5,
    "brightness_limit": 0.1,
    "contrast_limit": 0.1,
    "brightness_contrast_p": 0.5,
    "jpeg_quality": (40, 100),
    "jpeg_p": 0.5,
}


def _triple(values: Sequence[float] | None, name: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 values (RGB), got {values!r}")
    return vals  # type: ignore[return-value]


def resolve_mean_std(mean: Sequence[float] | None, std: Sequence[float] | None
                     ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``None`` → OpenAI CLIP statistics; otherwise validated 3-tuples (the paper uses 0.5/0.5)."""
    m, s = _triple(mean, "mean"), _triple(std, "std")
    s = s or OPENAI_CLIP_STD
    if any(v <= 0 for v in s):
        raise ValueError(f"std must be positive, got {s}")
    return (m or OPENAI_CLIP_MEAN), s


def open_clip_mean_std(model_name: str, pretrained: str | None = None
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the open_clip backbone was trained with: the pretrained tag's config (e.g.
    ``("ViT-B-16-SigLIP", "webli")`` → 0.5/0.5), else the model config's ``preprocess_cfg``, else
    the OpenAI CLIP constants. Reads configs only (no weights); imports open_clip lazily."""
    import open_clip

    pre: dict = {}
    if pretrained:
        pre = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    if "mean" not in pre:
        pre = (open_clip.get_model_config(model_name) or {}).get("preprocess_cfg", {}) or {}
    return tuple(pre.get("mean", OPENAI_CLIP_MEAN)), tuple(pre.get("std", OPENAI_CLIP_STD))


def seed_transform(pipeline, seed: int | None):
    """Seed an albumentations ``Compose`` with ONE shared numpy/python generator pair.

    Do not use ``Compose(seed=...)`` / ``set_random_seed``: in albumentations 2.0.8 it gives every
    transform its own generator with the *same* seed, so all the p=0.5 coin flips agree (every
    augmentation is applied, or none is). ``seed=None`` draws fresh OS entropy. Returns ``pipeline``."""
    import random

    import numpy as np

    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def _tail(image_size: int, mean, std, output: str = "float") -> list:
    import albumentations as A

    m, s = resolve_mean_std(mean, std)
    if output == "uint8":
        return []
    if output != "float":
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return [A.Normalize(mean=m, std=s, max_pixel_value=255.0), A.ToTensorV2()]


def _compose(steps: list, output: str):
    """``A.Compose``; the uint8 path skips the per-call shape checks (one image, no targets)."""
    import albumentations as A

    if output == "uint8":
        return A.Compose(steps, is_check_shapes=False, strict=False)
    return A.Compose(steps)


def _resize(image_size: int):
    import albumentations as A
    import cv2

    if int(image_size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return A.Resize(int(image_size), int(image_size), interpolation=cv2.INTER_CUBIC)


def eval_transform(image_size: int = 224, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, output: str = "float"):
    """Cubic resize to ``image_size`` → [``output="float"``: normalise → tensor]."""
    return _compose([_resize(image_size), *_tail(image_size, mean, std, output)], output)


def train_transform(image_size: int = 224, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, params: Mapping[str, Any] | None = None,
                    seed: int | None = None, output: str = "float"):
    """DeepfakeBench recipe: resize (cubic) → horizontal flip → rotate ±10° → Gaussian blur 3–7 →
    brightness/contrast ±0.1 → JPEG quality 40–100 → [``output="float"``: normalise → tensor].

    ``params`` overrides keys of :data:`DEEPFAKEBENCH_AUGMENT` (unknown keys raise ``KeyError``).
    ``seed`` seeds the pipeline via :func:`seed_transform` (datasets reseed it per DataLoader worker)."""
    import albumentations as A
    import cv2

    p = dict(DEEPFAKEBENCH_AUGMENT)
    for key, value in (params or {}).items():
        if key not in p:
            raise KeyError(f"unknown augmentation parameter {key!r}; known: {sorted(p)}")
        p[key] = value
    limit = float(p["rotate_limit"])
    steps = [
        _resize(image_size),
        A.HorizontalFlip(p=float(p["flip_p"])),
        A.Rotate(limit=(-limit, limit), interpolation=cv2.INTER_LINEAR,
                 border_mode=cv2.BORDER_REFLECT_101, p=float(p["rotate_p"])),
        A.GaussianBlur(blur_limit=tuple(int(v) for v in p["blur_limit"]), p=float(p["blur_p"])),
        A.RandomBrightnessContrast(brightness_limit=float(p["brightness_limit"]),
                                   contrast_limit=float(p["contrast_limit"]), p=float(p["brightness_contrast_p"])),
        A.ImageCompression(compression_type="jpeg", quality_range=tuple(int(v) for v in p["jpeg_quality"]),
                           p=float(p["jpeg_p"])),
        *_tail(image_size, mean, std, output),
    ]
    return seed_transform(_compose(steps, output), seed)


def build_transform(train: bool, augment: bool | Mapping[str, Any], image_size: int = 224,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    seed: int | None = None, output: str = "float"):
    """Train loaders: ``augment=True`` → recipe, a dict → recipe with overrides, ``False`` → the
    evaluation transform. Val/test loaders always get the evaluation transform. ``output``: see
    :data:`OUTPUTS` (the DataModules pass ``"uint8"``)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if train and augment is not False and augment is not None:
        params = augment if isinstance(augment, Mapping) else None
        return train_transform(image_size, mean, std, params=params, seed=seed, output=output)
    return eval_transform(image_size, mean, std, output=output)
