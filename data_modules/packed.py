"""Packed shards: a DF40 data module's frame tables in LitData optimized chunks, and the data module
that trains from them with the same batch contract.

Why LitData (not WebDataset tars): it is Lightning's own streaming library and installed with the
project; its chunks keep a global index, so a packed split is *random access* (``dataset[i]``) as
well as streamable (multi-node, local disk or object storage, resumable). Random access lets the
packed loader keep the folder path's exact semantics — the seeded DataLoader shuffle, the
per-worker augmentation seeding, Lightning's DistributedSampler — so a packed run sees the same
frames, in the same order, with the same augmentation as the PNG-folder run. WebDataset tars are
sequential-only (shuffle buffers), which changes the sample order and the carve-by-index
bookkeeping, and WebDataset is not installed.

Layout written by ``python -m data_modules.packed OUT [hydra overrides]``::

    OUT/train/  OUT/val/  OUT/test/<name>/      LitData chunks (index.json + chunk-*.bin) per split
    OUT/r2m_packed.json                          manifest, written last (atomic)

Each sample: ``image`` (the original file's bytes as a uint8 array, ``encoding="original"``, decoded exactly as
:func:`data_modules.image_io.read_rgb`; or the decoded uint8 ``H×W×3`` array, ``encoding="raw"``:
no decode at training time, larger), ``label``, ``video_id`` (index into the split's
``video_keys``) and ``index`` (the frame's position in the source table). The manifest keeps the
video keys of every split, the family / training sources / test splits, the resolved data config,
the carve record and split identities (when the source data module provides them) and a sha256
of every split's (path, label, video id) list.

The packed data module reads chunks through ``litdata.StreamingDataset`` and builds the same
``FrameDataset`` / transform / collate as ``DF40DataModule`` (uint8 batches; the detector
normalises on the device).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from data_modules.dataset import FrameDataset, FrameTable, collate_frames
from data_modules.image_io import UnreadableImageError, decode_rgb, read_rgb
from data_modules.transforms import build_transform, resolve_mean_std

__all__ = ["PACKED_FORMAT", "MANIFEST", "ENCODINGS", "pack_datamodule", "PackedFrames", "PackedDataModule", "main"]

log = logging.getLogger(__name__)

PACKED_FORMAT = "r2m-packed-litdata/1"
MANIFEST = "r2m_packed.json"
ENCODINGS = ("original", "raw")


def _split_dir(name: str) -> str:
    return name if name in ("train", "val") else f"test/{name}"


def table_digest(table: FrameTable) -> str:
    """sha256 over the table's (path, label, video id) rows, in order."""
    h = hashlib.sha256()
    for i in range(len(table)):
        h.update(f"{table.path(i)}\t{int(table.labels[i])}\t{int(table.video_ids[i])}\n".encode())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (frozenset, set)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _write_split(table: FrameTable, out: Path, encoding: str, chunk_bytes: str, desc: str, progress: bool) -> None:
    from litdata.streaming.writer import BinaryWriter
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(out), chunk_bytes=chunk_bytes)
    for i in tqdm(range(len(table)), desc=desc, unit="frame", leave=False, disable=not progress):
        path = table.path(i)
        if encoding == "raw":
            image: Any = read_rgb(path)
        else:
            try:
                image = Path(path).read_bytes()
            except OSError as exc:
                raise UnreadableImageError(f"unreadable image {path!r}: {exc}") from exc
            decode_rgb(image, path)  # fail at pack time, naming the file, not in a training worker
            # as a uint8 array, not bytes: LitData serialises bytes columns with an Arrow footer whose
            # random access decodes a whole record batch (~10 ms per item); arrays read per item
            image = np.frombuffer(image, dtype=np.uint8)
        writer[i] = {"image": image, "label": int(table.labels[i]), "video_id": int(table.video_ids[i]), "index": i}
    writer.done()
    writer.merge()


def pack_datamodule(dm: Any, out_dir: str | os.PathLike, encoding: str = "original", chunk_bytes: str = "64MB",
                    splits: Sequence[str] | None = None, data_config: Mapping[str, Any] | None = None,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Pack ``dm``'s frame tables (``"train"``, ``"val"`` and every test set, or ``splits``) into
    ``out_dir``. ``dm`` is set up here (a ``DF40DataModule`` or anything with ``table(name)``,
    ``video_keys(name)``, ``test_set_names``). Written into ``<out_dir>.partial`` and renamed when
    complete; an existing ``out_dir`` is an error unless ``overwrite``. Returns ``out_dir``."""
    from r2m.utils import atomic_write_json

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; remove it or pass overwrite=True (--overwrite)")
    dm.setup(None)
    names = list(splits) if splits is not None else ["train", "val", *dm.test_set_names]
    unknown = [n for n in names if n not in ("train", "val") and n not in dm.test_set_names]
    if unknown:
        raise KeyError(f"unknown split(s) {unknown}; known: train, val, {', '.join(dm.test_set_names)}")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest: dict[str, Any] = {
        "format": PACKED_FORMAT,
        "encoding": encoding,
        "family": getattr(dm, "task_name", None),
        "train_sources": list(getattr(dm, "train_sources", []) or []),
        "test_splits": {k: [n for n in v if n in names] for k, v in (getattr(dm, "test_splits", {}) or {}).items()},
        "test_set_names": [n for n in dm.test_set_names if n in names],
        "data_config": _jsonable(dict(data_config)) if data_config is not None else None,
        "carve": _jsonable(dm.carve_record()) if hasattr(dm, "carve_record") and "train" in names else None,
        "identities": (_jsonable(dm.split_identities()) if hasattr(dm, "split_identities") and "train" in names
                       else None),
        "splits": {},
    }
    for name in names:
        table = dm.table(name)
        _write_split(table, tmp / _split_dir(name), encoding, chunk_bytes, f"pack {name}", progress)
        manifest["splits"][name] = {
            "dir": _split_dir(name), "n_frames": len(table),
            "video_keys": [list(k) for k in dm.video_keys(name)], "frames_sha256": table_digest(table),
        }
    atomic_write_json(tmp / MANIFEST, manifest)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("packed %s → %s (%s)", ", ".join(f"{n}: {manifest['splits'][n]['n_frames']}" for n in names), out, encoding)
    return out


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a packed dataset (write one with python -m data_modules.packed)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != PACKED_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {PACKED_FORMAT!r}")
    return manifest


class PackedFrames(FrameDataset):
    """:class:`~data_modules.dataset.FrameDataset` over one packed split (random access into the
    LitData chunks; the ``StreamingDataset`` is opened lazily in each process)."""

    def __init__(self, split_dir: str | os.PathLike, n_frames: int, encoding: str, transform: Any,
                 on_unreadable: str = "error") -> None:
        table = FrameTable([], [], [], [])
        super().__init__(table, transform, on_unreadable)
        self.split_dir, self.n_frames, self.encoding = str(split_dir), int(n_frames), encoding
        self._ds = None

    def __len__(self) -> int:
        return self.n_frames

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = None  # each worker opens its own reader
        return state

    def _dataset(self):
        if self._ds is None:
            from litdata import StreamingDataset

            # batch_decode=0: deserialise only the requested item (the default decodes a window of
            # neighbours, which random access throws away: ~100x slower per item)
            self._ds = StreamingDataset(input_dir=self.split_dir, batch_decode=0)
            if len(self._ds) != self.n_frames:
                raise ValueError(f"{self.split_dir}: {len(self._ds)} samples, manifest says {self.n_frames}")
        return self._ds

    def name(self, i: int) -> str:
        return f"{self.split_dir}[{i}]"

    def read(self, i: int) -> tuple[np.ndarray, int, int]:
        item = self._dataset()[i]
        image = item["image"]
        if self.encoding == "original":
            image = decode_rgb(image, self.name(i))
        return np.ascontiguousarray(image), int(item["label"]), int(item["video_id"])


class PackedDataModule(pl.LightningDataModule):
    """Train / validate / test from a packed dataset (``python -m data_modules.packed``): the same
    batch contract and loader settings as :class:`~data_modules.df40.DF40DataModule` (uint8
    ``image``, ``label``, ``video_id``; seeded shuffle; per-worker augmentation seeding).

    ``family`` (optional) must match the packed family: the carve and the training tables were
    fixed when packing. ``test_splits`` (optional) selects packed test sets by split."""

    def __init__(self, root: str, family: str | None = None, test_splits: Mapping[str, Sequence[str]] | None = None,
                 on_unreadable: str = "error", seed: int = 1024, image_size: int = 224,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: bool | Mapping = True, batch_size: int = 32, eval_batch_size: int = 64,
                 num_workers: int = 4, pin_memory: bool = False, persistent_workers: bool = False) -> None:
        super().__init__()
        from data_modules.df40 import _plain

        self.root = Path(os.fspath(root))
        self.manifest = read_manifest(self.root)
        packed_family = self.manifest.get("family")
        if family is not None and packed_family is not None and family != packed_family:
            raise ValueError(f"{self.root}: packed for family {packed_family!r}, asked for {family!r}; pack "
                             f"that family (python -m data_modules.packed OUT data.family={family})")
        self.task_name = packed_family or family
        self.train_sources = list(self.manifest.get("train_sources") or [])
        splits = _plain(test_splits)
        packed = self.manifest["splits"]
        if splits is None:
            self.test_splits = {k: list(v) for k, v in (self.manifest.get("test_splits") or {}).items()}
        else:
            self.test_splits = {k: list(v or []) for k, v in splits.items()}
        self.test_set_names = list(dict.fromkeys(n for v in self.test_splits.values() for n in v))
        if splits is None:
            self.test_set_names = [n for n in self.manifest.get("test_set_names", []) if n in self.test_set_names]
        missing = [n for n in self.test_set_names if n not in packed]
        if missing:
            raise KeyError(f"{self.root}: test set(s) {missing} not packed; packed: {sorted(packed)}")
        self.on_unreadable = on_unreadable
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.mean, self.std = resolve_mean_std(_plain(mean), _plain(std))
        self.augment = _plain(augment)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory, self.persistent_workers = bool(pin_memory), bool(persistent_workers)

    def _split(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["splits"][name]
        except KeyError:
            raise KeyError(f"{self.root}: split {name!r} not packed; packed: {sorted(self.manifest['splits'])}") from None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            self._split("train"), self._split("val")

    def video_keys(self, name: str) -> list[tuple[str, str, str]]:
        return [tuple(k) for k in self._split(name)["video_keys"]]  # type: ignore[misc]

    def carve_record(self) -> dict[str, Any]:
        if self.manifest.get("carve") is None:
            raise RuntimeError(f"{self.root}: packed without a carve record (the source data module had none)")
        return dict(self.manifest["carve"])

    def split_identities(self) -> dict[str, frozenset[str]]:
        if self.manifest.get("identities") is None:
            raise RuntimeError(f"{self.root}: packed without split identities (the source data module had none)")
        return {k: frozenset(v) for k, v in self.manifest["identities"].items()}

    def dataset(self, name: str, train: bool) -> PackedFrames:
        split = self._split(name)
        transform = build_transform(train, self.augment, self.image_size, self.mean, self.std,
                                    seed=self.seed if train else None, output="uint8")
        return PackedFrames(self.root / split["dir"], split["n_frames"], self.manifest["encoding"], transform,
                            self.on_unreadable)

    def _loader(self, name: str, train: bool) -> DataLoader:
        collate = partial(collate_frames, image_shape=(3, self.image_size, self.image_size),
                          count_skipped=self.on_unreadable == "skip")
        return DataLoader(
            self.dataset(name, train), batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train, generator=torch.Generator().manual_seed(self.seed) if train else None, drop_last=False,
            num_workers=self.num_workers, pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0, collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, train=False) for name in self.test_set_names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_modules.packed",
        description="Pack a data config's frame tables (train, val carve, test sets) into LitData chunks.",
        epilog="Overrides are Hydra overrides of configs/train.yaml, e.g. data=df40 data.family=fs "
               "paths.df40_root=/data/DF40 paths.df40_json_dir=/data/DF40/json. Train from the pack with "
               "python train.py data=packed data.root=OUT",
    )
    parser.add_argument("out_dir")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default data: the config's default)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="original",
                        help="original: the image files' bytes (same size as the folders); raw: decoded uint8 "
                             "(no decode in training, ~3-6x larger)")
    parser.add_argument("--chunk-bytes", default="64MB")
    parser.add_argument("--splits", default=None, help="comma-separated subset of train,val,<test sets>")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config_dir = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(args.overrides))
    if cfg.data.get("_target_") == f"{__name__}.PackedDataModule":
        raise SystemExit("error: data=packed reads a pack; choose the source data config (data=df40 / fixture)")
    dm = instantiate(cfg.data)
    data_config = OmegaConf.to_container(cfg.data, resolve=True)
    splits = args.splits.split(",") if args.splits else None
    out = pack_datamodule(dm, args.out_dir, encoding=args.encoding, chunk_bytes=args.chunk_bytes, splits=splits,
                          data_config=data_config, overwrite=args.overwrite)
    manifest = read_manifest(out)
    for name, split in manifest["splits"].items():
        print(f"{name}: {split['n_frames']} frames, {len(split['video_keys'])} videos → {out / split['dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
