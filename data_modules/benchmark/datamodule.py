"""``BenchmarkDataModule``: the DF40 data module over a generated built-in benchmark.

The benchmark is written in DF40's JSON + PNG format (:mod:`data_modules.benchmark.generate`), so
this is :class:`~data_modules.df40.DF40DataModule` configured from the benchmark's manifest —
families ``blend`` / ``warp`` / ``upsample`` / ``joint`` (the training families), test splits
``in_distribution`` / ``cross_dataset`` / ``unseen`` — plus :meth:`pretrain_dataloader` (real
photo-domain crops only, for the self-supervised base θ0).

Defaults that differ from DF40's: all frames of every video (``frames_per_video=None``),
``image_size`` = the generated size (no resize), ``num_workers=0`` (the 64 px PNGs decode in
microseconds; worker start-up costs more on a 2-core machine), and a lighter augmentation
(:data:`BENCHMARK_AUGMENT`): DeepfakeBench's Gaussian blur (3–7 px kernels), JPEG (quality 40–100)
and ±10° rotation would erase 1–2 px artefacts at 64 px, so only the horizontal flip and
brightness/contrast remain. Pass ``augment=True`` for the full DeepfakeBench recipe.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from data_modules.df40 import DF40DataModule, _plain
from data_modules.benchmark.generate import BenchmarkConfig, ensure_benchmark, read_manifest

__all__ = ["BENCHMARK_AUGMENT", "BenchmarkDataModule", "benchmark_datamodule"]

#: Training augmentation of the benchmark: DeepfakeBench recipe without blur, JPEG and rotation.
BENCHMARK_AUGMENT: dict[str, float] = {"rotate_p": 0.0, "blur_p": 0.0, "jpeg_p": 0.0}


class BenchmarkDataModule(DF40DataModule):
    """DF40 data module over the generated benchmark in ``bench_dir`` (a folder holding
    ``manifest.json``). ``kwargs`` are :class:`~data_modules.df40.DF40DataModule` arguments;
    ``json_dir``, ``data_root``, ``families`` and ``test_splits`` come from the manifest;
    ``augment=None`` means :data:`BENCHMARK_AUGMENT`."""

    def __init__(self, bench_dir: str | os.PathLike, family: str = "blend", *,
                 frames_per_video: int | dict | None = None, image_size: int | None = None,
                 augment: bool | dict | None = None, num_workers: int = 0,
                 compression: str | None = None, **kwargs: Any) -> None:
        for key in ("json_dir", "data_root", "families", "test_splits"):
            if key in kwargs:
                raise TypeError(f"BenchmarkDataModule: {key!r} comes from the benchmark manifest, do not pass it")
        self.bench_dir = Path(bench_dir)
        self.manifest: dict[str, Any] = read_manifest(self.bench_dir)
        generated = int(self.manifest["config"]["image_size"])
        super().__init__(
            json_dir=os.fspath(self.bench_dir / self.manifest["json_dir"]),
            data_root=os.fspath(self.bench_dir / self.manifest["data_root"]),
            family=family,
            families=self.manifest["families"],
            test_splits=self.manifest["test_splits"],
            frames_per_video=frames_per_video,
            image_size=generated if image_size is None else int(image_size),
            augment=dict(BENCHMARK_AUGMENT) if augment is None else _plain(augment),
            num_workers=num_workers,
            compression=compression,
            **kwargs,
        )

    @property
    def pretrain_frames(self) -> list[str]:
        """Paths (under ``bench_dir``) of the real pretraining crops (the photo domain's training band)."""
        return [os.fspath(self.bench_dir / rel) for rel in self.manifest.get("pretrain_frames", [])]

    def pretrain_dataloader(self, batch_size: int | None = None, augment: bool = True,
                            shuffle: bool = True) -> DataLoader:
        """Real-only crops for self-supervised pretraining of the base θ0: batches ``image``
        ``[B,3,S,S]``, ``label`` (all 0), ``video_id`` (the frame's index). Uses the manifest's
        ``pretrain_frames``; without any (``n_pretrain=0``) the real training videos of the
        current family. ``augment`` applies this module's training augmentation."""
        from data_modules.dataset import FrameDataset, FrameTable, collate_frames
        from data_modules.transforms import build_transform

        paths = self.pretrain_frames
        if not paths:
            table = self.table("train")
            paths = [table.path(i) for i in range(len(table)) if table.labels[i] == 0]
        if not paths:
            raise ValueError(f"{self.bench_dir}: no real images to pretrain on")
        keys = [("pretrain", "real", str(i)) for i in range(len(paths))]
        table = FrameTable(paths, [0] * len(paths), list(range(len(paths))), keys)
        transform = build_transform(bool(augment), self.augment if augment else False, self.image_size,
                                    self.mean, self.std, seed=self.seed if augment else None)
        collate = partial(collate_frames, image_shape=(3, self.image_size, self.image_size))
        return DataLoader(
            FrameDataset(table, transform, self.on_unreadable),
            batch_size=int(batch_size or self.batch_size),
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate,
        )


def benchmark_datamodule(
    root: str | os.PathLike,
    family: str = "blend",
    seed: int = 0,
    n_train: int = 800,
    n_test: int = 320,
    n_pretrain: int = 1600,
    strength: float = 1.0,
    image_size: int = 64,
    video_frames: int = 4,
    families_train: Sequence[str] = ("blend", "warp", "upsample"),
    families_unseen: Sequence[str] = ("diffusion", "edit"),
    family_modules: Sequence[str] = (),
    train_domain: str = "photo",
    cross_domain: str = "archive",
    split_seed: int = 1024,
    **datamodule_kwargs: Any,
) -> BenchmarkDataModule:
    """Generate (once, cached under ``<root>/<config hash>/``) and open the built-in benchmark.

    Generation: ``seed`` (the data's seed), ``n_train`` / ``n_test`` images per training / test set
    (half real, half fake), ``n_pretrain`` real pretraining crops, ``strength`` (scales every
    family's change; 1 = as calibrated), ``image_size`` (crops are made at
    the model's input size), ``video_frames`` frames per video, the training / unseen family names
    (registered with :func:`~data_modules.benchmark.families.register_family`) and the two real
    domains. ``split_seed`` is the data module's ``seed`` (validation carve, shuffling,
    augmentation); other keyword arguments go to :class:`BenchmarkDataModule`.

    ``family_modules``: modules to import first (e.g. ``["my_pkg.my_fakes"]``), whose import
    registers user families, so that a config file can name them in ``families_train/unseen``."""
    for module in _plain(family_modules) or ():
        importlib.import_module(str(module))
    config = BenchmarkConfig(
        seed=seed, image_size=image_size, frames_per_video=video_frames, n_train=n_train, n_test=n_test,
        n_pretrain=n_pretrain, strength=strength, families_train=tuple(_plain(families_train)),
        families_unseen=tuple(_plain(families_unseen) or ()), train_domain=train_domain, cross_domain=cross_domain,
    )
    bench = ensure_benchmark(root, config)
    return BenchmarkDataModule(bench, family=family, image_size=image_size, seed=split_seed,
                               **{k: _plain(v) for k, v in datamodule_kwargs.items()})
