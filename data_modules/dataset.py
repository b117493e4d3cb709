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
    """Items ``{"image": ..., "label": int, "video_id": int}``; ``image`` is what ``transform``
    returns: an augmented uint8 ``S×S×3`` array (``output="uint8"`` transforms, what the DataModules
    use) or a normalised float tensor ``[3,S,S]`` (``output="float"``).

    ``on_unreadable="error"`` raises :class:`UnreadableImageError` naming the file;
    ``"skip"`` logs a warning naming the file, counts it in ``self.skipped`` (per process) and returns
    ``None``, which :func:`collate_frames` drops and counts in the batch key ``n_skipped``.
    The albumentations pipeline is reseeded in each DataLoader worker from the worker's torch seed,
    so workers do not repeat each other's augmentations and runs are reproducible. (OpenCV's thread
    count is left alone in workers: ``cv2.setNumThreads`` in a forked child of a process whose
    OpenCV pool has started hangs.)
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

    def read(self, i: int) -> tuple[np.ndarray, int, int]:
        """``(uint8 RGB image, label, video_id)`` of frame ``i`` (subclasses read other storage)."""
        return read_rgb(self.table.path(i)), int(self.table.labels[i]), int(self.table.video_ids[i])

    def name(self, i: int) -> str:
        return self.table.path(i)

    def __getitem__(self, i: int) -> dict | None:
        self._reseed()
        try:
            img, label, video_id = self.read(i)
        except UnreadableImageError:
            if self.on_unreadable == "error":
                raise
            self.skipped += 1
            log.warning("skipping unreadable image %s (on_unreadable=skip)", self.name(i))
            return None
        image = self.transform(image=img)["image"]
        return {"image": image, "label": label, "video_id": video_id}


def _uint8_batch(images: list[np.ndarray]) -> torch.Tensor:
    """``B`` uint8 ``H×W×3`` arrays → uint8 ``[B,3,H,W]`` (a channels-last view of one ``B×H×W×3``
    block). Inside a DataLoader worker the block is allocated in shared memory, as
    ``default_collate`` does, so handing the batch to the main process copies nothing."""
    first = images[0]
    shape = (len(images), *first.shape)
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != first.shape or img.ndim != 3:
            raise ValueError(f"collate_frames: item {i} is {type(img).__name__} "
                             f"{getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}; every uint8 item must be "
                             f"an H×W×3 uint8 array of shape {first.shape}")
    numel = int(np.prod(shape))
    if torch.utils.data.get_worker_info() is not None:
        out = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(numel)).view(shape)
    else:
        out = torch.empty(shape, dtype=torch.uint8)
    block = out.numpy()
    for i, img in enumerate(images):
        block[i] = img
    return out.permute(0, 3, 1, 2)


def collate_frames(items: list[dict | None], image_shape: tuple[int, int, int] | None = None,
                   count_skipped: bool = False) -> dict[str, torch.Tensor]:
    """Stack items into ``{"image", "label", "video_id"}`` tensors, dropping ``None`` items
    (skipped unreadable images). uint8 ``H×W×3`` array items give a uint8 ``[B,3,H,W]`` image
    batch (channels-last strides; :func:`r2m.models.preprocess.normalize_images` makes the model
    input on the device); float tensor items give the stacked float ``[B,3,H,W]`` batch as before.
    With ``count_skipped`` the batch also has ``n_skipped`` (long scalar); a batch whose items were
    all skipped has ``B = 0`` (shape from ``image_shape``; float, as no item says otherwise)."""
    kept = [it for it in items if it is not None]
    if kept:
        images = [it["image"] for it in kept]
        if isinstance(images[0], np.ndarray):
            image = _uint8_batch(images)
        else:
            image = torch.stack(images).float()
        batch = {
            "image": image,
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
