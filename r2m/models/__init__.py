"""open_clip backbones, the ``DeepfakeDetector`` LightningModule, LR schedules, specialist export,
base pretraining.

Names are imported lazily so that ``import r2m.models.backbone`` does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackboneInfo": "r2m.models.backbone",
    "build_backbone": "r2m.models.backbone",
    "build_backbone_from_spec": "r2m.models.backbone",
    "OPENAI_CLIP_MEAN": "r2m.models.backbone",
    "OPENAI_CLIP_STD": "r2m.models.backbone",
    "DeepfakeDetector": "r2m.models.detector",
    "SpecialistExport": "r2m.models.export",
    "warmup_cosine": "r2m.models.schedules",
    "warmup_constant": "r2m.models.schedules",
    "pretrain_base": "r2m.models.pretrain",
    "ensure_pretrained_base": "r2m.models.pretrain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'r2m.models' has no attribute {name!r}")
