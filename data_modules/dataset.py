"""Frame-level torch ``Dataset`` over an index, and its collate function."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.image_io import UnreadableImageError, read_rgb
from data_modules.index import VideoRecord
from data_modules.sampling import select_frames
from data_modules.transforms import seed_transform

__all__ = ["FrameTable", "build_frame_table", "FrameDataset", "collate_frames"]

log = logging.getLogger(__name__)


class FrameTable:
    """Flat frame arrays of one loader: ``paths`` (utf-8 bytes, compact and fork-friendly),
    ``labels``, ``video_ids`` (index into ``keys``) and per-frame ``methods`` (index into
    ``method_names``)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], video_ids: Sequence[int],
                 keys: list[tuple[str, str, str]], methods: Sequence[int] | None = None,
                 method_names: list[tuple[str, str]] | None = None) -> None:
        self.paths = np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_) if len(paths) else np.array([], dtype="S1")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.video_ids = np.asarray(video_ids, dtype=np.int64)
        self.keys = keys
        self.methods = np.asarray(methods if methods is not None else np.zeros(len(paths)), dtype=np.int64)
        self.method_names = method_names or []

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return self.paths[i].decode("utf-8")


def build_frame_table(records: Sequence[VideoRecord], frames_per_video: int | None,
                      sampling: str = "uniform") -> FrameTable:
    """Sample each video's frames and flatten. Video ids follow first appearance of each key
    (records sharing a key share the id)."""
    key_ids: dict[tuple[str, str, str], int] = {}
    method_ids: dict[tuple[str, str], int] = {}
    paths: list[str] = []
    labels: list[int] = []
    vids: list[int] = []
    methods: list[int] = []
    for rec in records:
        vid = key_ids.setdefault(rec.key, len(key_ids))
        mid = method_ids.setdefault((rec.dataset, rec.method), len(method_ids))
        for f in select_frames(rec.frames, frames_per_video, sampling):
            paths.append(f)
            labels.append(rec.label)
            vids.append(vid)
            methods.append(mid)
    return FrameTable(paths, labels, vids, list(key_ids), methods, list(method_ids))


class FrameDataset(Dataset):
    """Items ``{"image": float[3,S,S], "label": int, "video_id": int}``.

    ``on_unreadable="error"`` raises :class:`UnreadableImageError` naming the file;
    ``"skip"`` logs a warning naming the file, counts it in ``self.skipped`` (per process) and returns
    ``None``, which :func:`collate_frames` drops and counts in the batch key ``n_skipped``.
    The albumentations pipeline is reseeded in each DataLoader worker from the worker's torch seed,
    so workers do not repeat each other's augmentations and runs are reproducible.
    """

    def __init__(self, table: FrameTable, transform: Callable, on_unreadable: str = "error") -> None:
        if on_unreadable not in ("error", "skip"):
            raise ValueError(f"on_unreadable must be 'error' or 'skip', got {on_unreadable!r}")
        self.table = table
        self.transform = transform
        self.on_unreadable = on_unreadable
        self.skipped = 0
        self._seeded_worker: int | None = None

    def __len__(self) -> int:
        return len(self.table)

    def _reseed(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None or self._seeded_worker == info.id:
            return
        self._seeded_worker = info.id
        if hasattr(self.transform, "set_random_state"):
            seed_transform(self.transform, int(info.seed % (2**32)))

    def __getitem__(self, i: int) -> dict | None:
        self._reseed()
        path = self.table.path(i)
        try:
            img = read_rgb(path)
        except UnreadableImageError:
            if self.on_unreadable == "error":
                raise
            self.skipped += 1
            log.warning("skipping unreadable image %s (on_unreadable=skip)", path)
            return None
        image = self.transform(image=img)["image"]
        return {"image": image, "label": int(self.table.labels[i]), "video_id": int(self.table.video_ids[i])}


def collate_frames(items: list[dict | None], image_shape: tuple[int, int, int] | None = None,
                   count_skipped: bool = False) -> dict[str, torch.Tensor]:
    """Stack items into ``{"image", "label", "video_id"}`` tensors, dropping ``None`` items
    (skipped unreadable images). With ``count_skipped`` the batch also has ``n_skipped`` (long
    scalar); a batch whose items were all skipped has ``B = 0`` (shape from ``image_shape``)."""
    kept = [it for it in items if it is not None]
    if kept:
        batch = {
            "image": torch.stack([it["image"] for it in kept]).float(),
            "label": torch.tensor([it["label"] for it in kept], dtype=torch.long),
            "video_id": torch.tensor([it["video_id"] for it in kept], dtype=torch.long),
        }
    else:
        shape = image_shape or (3, 1, 1)
        batch = {"image": torch.zeros((0, *shape)), "label": torch.zeros(0, dtype=torch.long),
                 "video_id": torch.zeros(0, dtype=torch.long)}
    if count_skipped:
        batch["n_skipped"] = torch.tensor(len(items) - len(kept), dtype=torch.long)
    return batch
