"""Image reading: OpenCV decode → 3-channel uint8 RGB, with clear errors naming the file."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["UnreadableImageError", "read_rgb", "decode_rgb", "read_rgb_pil", "image_size"]


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


def _rgb(img: np.ndarray | None, name: str, missing: bool = False) -> np.ndarray:
    if img is None:
        reason = "file does not exist" if missing else "OpenCV could not decode it"
        raise UnreadableImageError(f"unreadable image {name!r}: {reason}")
    import cv2

    img = _to_uint8(img)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim != 3:
        raise UnreadableImageError(f"unreadable image {name!r}: unexpected array shape {img.shape}")
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise UnreadableImageError(f"unreadable image {name!r}: unsupported channel count {channels}")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as an ``H×W×3`` uint8 RGB array.

    Uses ``cv2.imread(IMREAD_UNCHANGED)``: gray → replicated to 3 channels, BGR → RGB,
    BGRA → RGB (alpha dropped), 16-bit → 8-bit. Raises :class:`UnreadableImageError` naming the
    file when OpenCV cannot decode it (cv2 returns ``None`` instead of raising).
    """
    import cv2

    path = os.fspath(path)
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return _rgb(img, path, missing=img is None and not os.path.exists(path))


def decode_rgb(data: bytes | memoryview | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image file held in memory (``cv2.imdecode``) exactly as :func:`read_rgb`
    reads it from disk (same pixels, same channel handling); errors name ``name``."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    return _rgb(img, name)


def read_rgb_pil(path: str | os.PathLike) -> np.ndarray:
    """PIL route (``Image.open(...).convert("RGB")``), for decode-speed comparisons; 8-bit RGB/RGBA/gray
    PNGs give the same pixels as :func:`read_rgb`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UnreadableImageError(f"unreadable image {os.fspath(path)!r}: {exc}") from exc


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the image header only (PIL, no full decode).

    Raises :class:`UnreadableImageError` naming the file on failure."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return tuple(im.size)  # type: ignore[return-value]
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UnreadableImageError(f"unreadable image {os.fspath(path)!r}: {exc}") from exc
