"""``DF40DataModule``: train a family specialist (or the joint model) on DF40 / DeepfakeBench JSONs,
validate on a carved split of the training videos, test on named test sets grouped into splits.

Pipeline per JSON (parsed once and cached, even when it is both a training and a test set):
parse → remap paths + join ``data_root`` → natural sort → existence check (``on_missing``) → dedupe
frames by path (family JSONs repeat the real videos; the joint set shares them) → [training only:
carve validation videos] → sample ``frames_per_video`` → flat frame table.

DF40 protocols as test splits (defaults): ``in_distribution`` = P1 (FF-domain family test sets),
``cross_dataset`` = P2 (CDF domain), ``unseen`` = P3 (9 unknown sets). Checkpoints are selected on
the carved validation split, never on test data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from data_modules.dataset import FrameDataset, FrameTable, build_frame_table, collate_frames
from data_modules.index import (
    IndexReport,
    PathResolver,
    VideoRecord,
    check_frames,
    dedupe_frames,
    parse_index,
)
from data_modules.labels import LabelMapper
from data_modules.sampling import carve_validation
from data_modules.transforms import build_transform, resolve_mean_std

__all__ = ["DF40DataModule", "DEFAULT_FAMILIES", "DEFAULT_TEST_SPLITS", "parse_frames_per_video"]

log = logging.getLogger(__name__)

DEFAULT_FAMILIES: dict[str, list[str]] = {
    "fs": ["FSAll_ff"],
    "fr": ["FRAll_ff"],
    "efs": ["EFSAll_ff"],
    "joint": ["FSAll_ff", "FRAll_ff", "EFSAll_ff"],
}

DEFAULT_TEST_SPLITS: dict[str, list[str]] = {
    "in_distribution": ["FSAll_ff", "FRAll_ff", "EFSAll_ff"],          # DF40 P1
    "cross_dataset": ["FSAll_cdf", "FRAll_cdf", "EFSAll_cdf"],          # DF40 P2
    "unseen": ["deepfacelab", "heygen", "whichisreal", "MidJourney", "stargan", "starganv2",
               "styleclip", "e4e", "CollabDiff"],                         # DF40 P3
}


def _plain(value: Any) -> Any:
    """OmegaConf containers (as passed by Hydra) → plain Python."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def parse_frames_per_video(value: int | Mapping | None) -> dict[str, int | None]:
    """``n`` / ``None`` → the same for train, val and test; ``{"train": n, "test": m}`` → val = test
    unless given (test defaults to train)."""
    value = _plain(value)
    if value is None or isinstance(value, int):
        if isinstance(value, bool) or (value is not None and value <= 0):
            raise ValueError(f"frames_per_video must be a positive int, a dict or None, got {value!r}")
        return {"train": value, "val": value, "test": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"frames_per_video must be a positive int, a dict or None, got {value!r}")
    unknown = set(value) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"frames_per_video has unknown keys {sorted(unknown)} (allowed: train, val, test)")
    out: dict[str, int | None] = {"train": value.get("train")}
    out["test"] = value.get("test", out["train"])
    out["val"] = value.get("val", out["test"])
    for k, v in out.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"frames_per_video[{k!r}] must be a positive int or None, got {v!r}")
    return out


class DF40DataModule(pl.LightningDataModule):
    """LightningDataModule over DF40 / DeepfakeBench JSON indexes (see module docstring).

    After ``setup()``: ``test_set_names``, ``test_splits``, ``task_name`` (= family),
    ``train_sources``, ``video_keys(name)`` (``name`` = a test set, ``"val"`` or ``"train"``) and
    ``index_report`` (:class:`~data_modules.index.IndexReport`, per dataset/split/method counts).
    Batches: ``image`` uint8 ``[B,3,S,S]`` (augmented, not normalised: the detector normalises on the
    device, :mod:`r2m.models.preprocess`), ``label`` long ``[B]``, ``video_id`` long ``[B]``
    (index into ``video_keys`` of that loader); with ``on_unreadable="skip"`` also ``n_skipped``.
    """

    def __init__(
        self,
        json_dir: str,
        data_root: str = ".",
        family: str = "fs",
        families: dict[str, list[str]] | None = None,
        test_splits: dict[str, list[str]] | None = None,
        path_remap: dict[str, str] | None = None,
        label_map: dict[str, int] | None = None,
        on_missing: str = "error",
        on_unreadable: str = "error",
        frames_per_video: int | dict | None = 8,
        frame_sampling: str = "uniform",
        compression: str | None = "c23",
        train_split: str = "train",
        test_split: str = "test",
        val_fraction: float = 0.1,
        seed: int = 1024,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool | dict = True,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        exist_check_workers: int = 8,
    ) -> None:
        super().__init__()
        self.json_dir = os.fspath(json_dir)
        self.data_root = os.fspath(data_root)
        self.families: dict[str, list[str]] = {k: list(v) for k, v in (_plain(families) or DEFAULT_FAMILIES).items()}
        splits = _plain(test_splits)
        self.test_splits: dict[str, list[str]] = {k: list(v or []) for k, v in (
            DEFAULT_TEST_SPLITS if splits is None else splits).items()}
        self.path_remap = dict(_plain(path_remap) or {})
        self.label_map = dict(_plain(label_map) or {})
        if on_missing not in ("error", "drop"):
            raise ValueError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
        if on_unreadable not in ("error", "skip"):
            raise ValueError(f"on_unreadable must be 'error' or 'skip', got {on_unreadable!r}")
        if frame_sampling not in ("uniform", "first"):
            raise ValueError(f"frame_sampling must be 'uniform' or 'first', got {frame_sampling!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.on_missing = on_missing
        self.on_unreadable = on_unreadable
        self.frames_per_video = parse_frames_per_video(frames_per_video)
        self.frame_sampling = frame_sampling
        self.compression = compression
        self.train_split = train_split
        self.test_split = test_split
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.mean, self.std = resolve_mean_std(_plain(mean), _plain(std))
        self.augment = _plain(augment)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.exist_check_workers = int(exist_check_workers)

        self.task_name = family
        self.train_sources = self._family_sources(family)
        self.test_set_names: list[str] = list(dict.fromkeys(n for names in self.test_splits.values() for n in names))
        self.index_report = IndexReport()
        self._labels = LabelMapper(self.label_map)
        self._resolver = PathResolver(self.data_root, self.path_remap)
        self._parsed: dict[str, dict[str, list[VideoRecord]]] = {}
        self._checked: dict[tuple[str, str], list[VideoRecord]] = {}
        self._tables: dict[str, FrameTable] = {}

    # ------------------------------------------------------------------ index
    def _family_sources(self, family: str) -> list[str]:
        if family in self.families:
            sources = list(self.families[family])
        elif family == "joint":
            sources = list(dict.fromkeys(n for names in self.families.values() for n in names))
        else:
            raise ValueError(f"unknown family {family!r}; known: {sorted(self.families)} (+ 'joint' = union)")
        if not sources:
            raise ValueError(f"family {family!r} has no training datasets")
        return sources

    def json_path(self, name: str) -> Path:
        return Path(self.json_dir) / f"{name}.json"

    def _check_json_files(self, names: Sequence[str], what: str) -> None:
        missing = [n for n in names if not self.json_path(n).is_file()]
        if missing:
            hint = " Remove the split (e.g. `~data.test_splits.unseen`) if you do not have it." if what == "test" else ""
            raise FileNotFoundError(
                f"{what} JSON index file(s) not found in json_dir {self.json_dir!r}: "
                f"{', '.join(f'{n}.json' for n in missing)}.{hint}"
            )

    def _parsed_index(self, name: str) -> dict[str, list[VideoRecord]]:
        if name not in self._parsed:
            self._parsed[name] = parse_index(self.json_path(name), name=name, labels=self._labels,
                                             resolver=self._resolver, compression=self.compression)
        return self._parsed[name]

    def _records(self, name: str, split: str) -> list[VideoRecord]:
        """Existence-checked records of one JSON split (cached)."""
        key = (name, split)
        if key not in self._checked:
            parsed = self._parsed_index(name)
            if split not in parsed:
                raise ValueError(f"{self.json_path(name)}: no {split!r} split (found: {sorted(parsed) or 'none'})")
            self._checked[key] = check_frames(parsed[split], self.index_report, self.on_missing,
                                              workers=self.exist_check_workers)
            self._warn_missing(name, split)
        return self._checked[key]

    def _warn_missing(self, name: str, split: str) -> None:
        for (d, s, m), row in self.index_report.rows.items():
            if d == name and s == split and (row["missing_frames"] or row["dropped_videos"]):
                log.warning("%s/%s/%s: dropped %d missing frame(s), %d video(s) left empty",
                            d, s, m, row["missing_frames"], row["dropped_videos"])

    def _count_used(self, table: FrameTable, split: str) -> None:
        for mid, (dataset, method) in enumerate(table.method_names):
            mask = table.methods == mid
            row = self.index_report.row(dataset, split, method)
            row["used_frames"] += int(mask.sum())
            row["used_videos"] += len(set(table.video_ids[mask].tolist()))
            row["real_frames"] += int((table.labels[mask] == 0).sum())
            row["fake_frames"] += int((table.labels[mask] == 1).sum())

    def _build_train_val(self) -> None:
        if "train" in self._tables:
            return
        self._check_json_files(self.train_sources, "training")
        seen: dict = {}
        records: list[VideoRecord] = []
        for name in self.train_sources:
            records += dedupe_frames(self._records(name, self.train_split), self.index_report, seen)
        train, val = carve_validation(records, self.val_fraction, self.seed)
        if not train:
            raise ValueError(f"no training frames left for family {self.task_name!r} ({self.train_sources})")
        self._tables["train"] = build_frame_table(train, self.frames_per_video["train"], self.frame_sampling)
        self._tables["val"] = build_frame_table(val, self.frames_per_video["val"], self.frame_sampling)
        self._count_used(self._tables["train"], self.train_split)
        self._count_used(self._tables["val"], "val")

    def _build_test(self, name: str) -> FrameTable:
        if name not in self.test_set_names:
            raise KeyError(f"unknown test set {name!r}; test sets: {self.test_set_names}")
        key = f"test:{name}"
        if key not in self._tables:
            records = dedupe_frames(self._records(name, self.test_split), self.index_report)
            self._tables[key] = build_frame_table(records, self.frames_per_video["test"], self.frame_sampling)
            self._count_used(self._tables[key], self.test_split)
        return self._tables[key]

    def setup(self, stage: str | None = None) -> None:
        """Index the training JSONs (``fit``/``validate``/``None``) and the test JSONs
        (``test``/``predict``/``None``). Idempotent; test JSON files are checked to exist in every stage."""
        self._check_json_files(self.test_set_names, "test")
        if stage in (None, "fit", "validate"):
            self._build_train_val()
        if stage in (None, "test", "predict"):
            for name in self.test_set_names:
                self._build_test(name)
        if "train" in self._tables and all(f"test:{n}" in self._tables for n in self.test_set_names):
            self.clear_cache()  # everything built: DataLoader workers need only the frame tables
        log.info("DF40 index (%s):\n%s", self.task_name, self.index_report.format())

    def clear_cache(self) -> None:
        """Free the parsed JSON cache (built frame tables are kept)."""
        self._parsed.clear()
        self._checked.clear()

    def video_keys(self, name: str) -> list[tuple[str, str, str]]:
        """Video keys ``(dataset, label group / method, video folder)`` indexed by ``video_id`` of the loader
        of ``name`` (a test set name, ``"val"`` or ``"train"``)."""
        if name in ("train", "val"):
            self._build_train_val()
            return list(self._tables[name].keys)
        return list(self._build_test(name).keys)

    def table(self, name: str) -> FrameTable:
        """The flat frame table of ``"train"``, ``"val"`` or a test set."""
        if name in ("train", "val"):
            self._build_train_val()
            return self._tables[name]
        return self._build_test(name)

    # ------------------------------------------------------------------ loaders
    def _loader(self, table: FrameTable, train: bool) -> DataLoader:
        transform = build_transform(train, self.augment, self.image_size, self.mean, self.std,
                                    seed=self.seed if train else None, output="uint8")
        dataset = FrameDataset(table, transform, self.on_unreadable)
        collate = partial(collate_frames, image_shape=(3, self.image_size, self.image_size),
                          count_skipped=self.on_unreadable == "skip")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.table("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        table = self.table("val")
        if len(table) == 0:
            log.warning("validation split is empty (val_fraction=%s)", self.val_fraction)
        return self._loader(table, train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.table(name), train=False) for name in self.test_set_names]
