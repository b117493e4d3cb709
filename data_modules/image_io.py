"""Image reading: OpenCV decode → 3-channel uint8 RGB, with clear errors naming the file."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["UnreadableImageError", "read_rgb", "image_size"]


class UnreadableImageError(OSError):
    """An image file that is missing, empty or cannot be decoded."""


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img // 257).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        return np.clip(img * 255.0, 0, 255).round().astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as an ``H×W×3`` uint8 RGB array.

    Uses ``cv2.imread(IMREAD_UNCHANGED)``: gray → replicated to 3 channels, BGR → RGB,
    BGRA → RGB (alpha dropped), 16-bit → 8-bit. Raises :class:`UnreadableImageError` naming the
    file when OpenCV cannot decode it (cv2 returns ``None`` instead of raising).
    """
    import cv2

    path = os.fspath(path)
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        reason = "file does not exist" if not os.path.exists(path) else "OpenCV could not decode it"
        raise UnreadableImageError(f"unreadable image {path!r}: {reason}")
    img = _to_uint8(img)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim != 3:
        raise UnreadableImageError(f"unreadable image {path!r}: unexpected array shape {img.shape}")
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise UnreadableImageError(f"unreadable image {path!r}: unsupported channel count {channels}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the image header only (PIL, no full decode).

    Raises :class:`UnreadableImageError` naming the file on failure."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return tuple(im.size)  # type: ignore[return-value]
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UnreadableImageError(f"unreadable image {os.fspath(path)!r}: {exc}") from exc
