"""Generated media for the face / preprocess / predict / demo tests (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

FACES_MISSING = [m for m in ("dlib", "av", "face_recognition_models") if importlib.util.find_spec(m) is None]
needs_faces = pytest.mark.skipif(
    bool(FACES_MISSING),
    reason=f"face extra not installed (missing {FACES_MISSING}): pip install -e '.[faces]'",
)

#: dlib's HOG box of the astronaut's face in skimage's astronaut() (x0, y0, x1, y1; exclusive ends)
ASTRONAUT_BOX = (175, 76, 266, 167)
#: the patch of astronaut() used for the synthetic video, and the face box inside it
PATCH = (slice(0, 256), slice(96, 352))
PATCH_BOX = (ASTRONAUT_BOX[0] - 96, ASTRONAUT_BOX[1], ASTRONAUT_BOX[2] - 96, ASTRONAUT_BOX[3])
CANVAS = (360, 400)  # H, W (even: yuv420p)


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def motion(n: int) -> list[tuple[float, int, int]]:
    """(scale, dx, dy) of frame i: the face grows from 0.8× to 1.0× and moves right/down."""
    return [(0.8 + 0.2 * i / (n - 1), round(110 * i / (n - 1)), round(60 * i / (n - 1))) for i in range(n)]


def synthetic_frames(n: int = 40) -> tuple[list[np.ndarray], list[tuple[float, float, float, float]]]:
    """Frames of the astronaut patch scaled / translated on a grey canvas, and the expected face box
    per frame (the patch box mapped by the same scale and shift)."""
    import cv2

    patch = astronaut()[PATCH]
    frames, boxes = [], []
    for s, dx, dy in motion(n):
        size = round(256 * s)
        scaled = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        canvas = np.full((*CANVAS, 3), 128, np.uint8)
        canvas[dy:dy + size, dx:dx + size] = scaled
        frames.append(canvas)
        f = size / 256
        boxes.append(tuple(v * f + o for v, o in zip(PATCH_BOX, (dx, dy, dx, dy))))
    return frames, boxes


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """H.264 mp4 via PyAV (the library the face module decodes with)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": "18"}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def two_faces() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The astronaut patch twice (full size and 0.75×) side by side, and the expected face boxes."""
    import cv2

    patch = astronaut()[PATCH]
    small = cv2.resize(patch, (192, 192), interpolation=cv2.INTER_AREA)
    canvas = np.full((256, 480, 3), 128, np.uint8)
    canvas[:, :256] = patch
    canvas[32:224, 272:464] = small
    big_box = PATCH_BOX
    small_box = tuple(round(v * 0.75) + o for v, o in zip(PATCH_BOX, (272, 32, 272, 32)))
    return canvas, [big_box, small_box]


def no_face_image() -> np.ndarray:
    """A textured image without a face (smooth noise)."""
    rng = np.random.default_rng(0)
    import cv2

    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return cv2.resize(noise, (320, 240), interpolation=cv2.INTER_CUBIC)


def tiny_specialist(path: Path, seed: int = 0) -> Path:
    """A specialist file of a tiny random-init open_clip ViT (configs/model/tiny.yaml style)."""
    import torch

    from r2m.models import DeepfakeDetector

    torch.manual_seed(seed)
    model = DeepfakeDetector(model_name="tiny-vit", pretrained=None, image_size=32,
                             model_cfg={"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                                        "head_width": 32, "patch_size": 8}})
    with torch.no_grad():  # a head that separates inputs a bit, so probabilities differ per face
        model.head.weight.normal_(0, 1.0)
    return model.export_specialist(path, task="fs", train_sources=["tiny"])
