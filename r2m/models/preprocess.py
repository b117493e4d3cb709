"""Model input on the device: uint8 image batches → normalised float32.

The DataModules yield uint8 ``[B,3,H,W]`` batches (augmented, not normalised); the detector turns
them into the model input in ``DeepfakeDetector.on_after_batch_transfer``, i.e. after the
host→device copy (4× fewer bytes to collate, pickle between processes, pin and copy than float32).

:func:`normalize_images` computes exactly what albumentations' ``Normalize(mean, std,
max_pixel_value=255)`` computes for uint8 input: ``(x - float32(mean)·255) · float32(1 / (float32(std)·255))``
in float32, one IEEE rounding per operation, so evaluation tensors equal the former
loader-side normalisation bit for bit (the tests check this against albumentations itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["normalization_constants", "normalize_images"]


def normalization_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(mean·255, 1/(std·255))`` as float32 ``[3]`` arrays, computed as albumentations does."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    if m.shape != (3,) or s.shape != (3,):
        raise ValueError(f"mean and std must have 3 values (RGB), got mean={list(mean)} std={list(std)}")
    if np.any(s <= 0):
        raise ValueError(f"std must be positive, got {list(std)}")
    return m * np.float32(255.0), np.reciprocal(s * np.float32(255.0))


def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` (any strides) → contiguous float32 ``(x - 255·mean) / (255·std)`` on the
    same device. A floating-point tensor is returned unchanged: it is already a model input (a
    loader built with ``output="float"`` transforms normalises on the host). Other dtypes or
    shapes raise ``ValueError``."""
    if images.is_floating_point():
        return images
    if images.dtype != torch.uint8:
        raise ValueError(f"image batch must be uint8 (or an already normalised float tensor), got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"uint8 image batch must be [B,3,H,W], got shape {tuple(images.shape)}")
    m, d = normalization_constants(mean, std)
    m_t = torch.from_numpy(m).to(images.device, non_blocking=True).view(1, 3, 1, 1)
    d_t = torch.from_numpy(d).to(images.device, non_blocking=True).view(1, 3, 1, 1)
    out = images.to(torch.float32, memory_format=torch.contiguous_format)
    out.sub_(m_t)
    out.mul_(d_t)
    return out
