"""Shared generated media for tests/media (built once per session)."""

from __future__ import annotations

import pytest

from media_helpers import FACES_MISSING, astronaut, synthetic_frames, tiny_specialist, write_png, write_video


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    if FACES_MISSING:
        pytest.skip(f"face extra not installed (missing {FACES_MISSING}): pip install -e '.[faces]'")
    root = tmp_path_factory.mktemp("media")
    frames, boxes = synthetic_frames(40)
    write_video(root / "moving.mp4", frames)
    write_png(root / "astronaut.png", astronaut())
    return {"root": root, "video": root / "moving.mp4", "image": root / "astronaut.png", "boxes": boxes,
            "n_frames": len(frames)}


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory):
    return tiny_specialist(tmp_path_factory.mktemp("detector") / "specialist.safetensors")
