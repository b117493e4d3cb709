"""``BenchmarkDataModule``: the DF40 data module over a generated built-in benchmark.

The benchmark is written in DF40's JSON + PNG format (:mod:`data_modules.benchmark.generate`), so
this is :class:`~data_modules.df40.DF40DataModule` configured from the benchmark's configuration —
one family per training family plus ``joint`` (all), test splits ``in_distribution`` /
``cross_dataset`` / ``unseen`` — with three benchmark-specific parts:

* **the validation carve by source region.** Every real crop lies in one source region of one
  photograph (its *identity*; a forged crop has the identity of the real crop it was made from).
  Whole regions go to validation: the regions of the training band are ranked by
  ``sha256("<carve_seed>/<identity>")`` and the first ``round(val_fraction · n)`` (at least one)
  are validation. The rule never looks at which families are loaded, so every specialist's
  validation set, and the joint model's (their union), are disjoint in source region from the
  training crops of every specialist; test crops come from another band of the photographs.
  :meth:`carve_record` / :meth:`split_identities` report it (scheme ``benchmark-source-v1``).
* **a family not in** ``families_train`` asked for as ``family`` (``tasks=[new]``) becomes a
  training family of this module (its data is generated on first use; nothing else changes).
* :meth:`pretrain_dataloader`: real photo-domain crops only, labelled with their source photograph
  (the supervised pretext of the base θ0, :mod:`r2m.models.pretrain`).

Defaults that differ from DF40's: all frames of every video (``frames_per_video=None``),
``image_size`` = the generated size (no resize), ``num_workers=0`` (the 64 px PNGs decode in
microseconds; worker start-up costs more on a 2-core machine), and a lighter augmentation
(:data:`BENCHMARK_AUGMENT`): DeepfakeBench's Gaussian blur (3–7 px kernels), JPEG (quality 40–100)
and ±10° rotation would erase 1–2 px artefacts at 64 px, so only the horizontal flip and
brightness/contrast remain. Pass ``augment=True`` for the full DeepfakeBench recipe.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from data_modules.benchmark.families import get_family, load_family_modules
from data_modules.benchmark.generate import (
    BenchmarkConfig,
    ensure_benchmark,
    ensure_family,
    read_family,
    read_manifest,
)
from data_modules.dataset import build_frame_table
from data_modules.df40 import DF40DataModule, _plain
from data_modules.index import dedupe_frames

__all__ = ["BENCHMARK_AUGMENT", "CARVE_SCHEME", "BenchmarkDataModule", "benchmark_datamodule", "carve_regions"]

log = logging.getLogger(__name__)

#: Training augmentation of the benchmark: DeepfakeBench recipe without blur, JPEG and rotation.
BENCHMARK_AUGMENT: dict[str, float] = {"rotate_p": 0.0, "blur_p": 0.0, "jpeg_p": 0.0}
CARVE_SCHEME = "benchmark-source-v1"
IDENTITY_RULE = ("source region of the real crop: <domain>/<photograph>/<band>/r<row>c<col> "
                 "(a forged crop has its source crop's identity)")


def carve_regions(identities: Sequence[str], fraction: float, seed: int) -> frozenset[str]:
    """Validation identities: ``identities`` ranked by ``sha256("<seed>/<identity>")``, the first
    ``round(fraction · n)`` (at least one when ``fraction > 0``, never all)."""
    ids = sorted(set(identities))
    if fraction <= 0 or len(ids) < 2:
        return frozenset()
    n_val = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{int(seed)}/{i}".encode("utf-8")).hexdigest())
    return frozenset(ranked[:n_val])


def _key_text(key: tuple[str, str, str]) -> str:
    return "/".join(key)


class BenchmarkDataModule(DF40DataModule):
    """DF40 data module over the generated benchmark in ``bench_dir`` (a folder holding
    ``manifest.json``). ``families_train`` / ``families_unseen`` / ``strength`` pick the family
    folders (generated on first use); ``carve_seed`` seeds the validation carve (``seed``, the
    DF40 data module's, seeds shuffling and augmentation); other ``kwargs`` are
    :class:`~data_modules.df40.DF40DataModule` arguments. ``augment=None`` means
    :data:`BENCHMARK_AUGMENT`."""

    def __init__(self, bench_dir: str | os.PathLike, family: str = "blend", *,
                 families_train: Sequence[str] = ("blend", "warp", "upsample"),
                 families_unseen: Sequence[str] = ("diffusion", "edit", "fingerprint", "resave"),
                 strength: float = 1.0, carve_seed: int = 0,
                 frames_per_video: int | dict | None = None, image_size: int | None = None,
                 augment: bool | dict | None = None, num_workers: int = 0,
                 compression: str | None = None, **kwargs: Any) -> None:
        for key in ("json_dir", "data_root", "families", "test_splits"):
            if key in kwargs:
                raise TypeError(f"BenchmarkDataModule: {key!r} comes from the benchmark manifest, do not pass it")
        self.bench_dir = Path(bench_dir)
        self.manifest: dict[str, Any] = read_manifest(self.bench_dir)
        train = [str(f) for f in _plain(families_train)]
        unseen = [str(f) for f in (_plain(families_unseen) or [])]
        if family != "joint" and family not in train:
            get_family(family)  # ValueError naming the registered families
            if family in unseen:
                raise ValueError(f"family {family!r} is listed in families_unseen; it cannot also be trained on "
                                 f"(remove it from data.families_unseen)")
            log.info("benchmark: family %r is not in families_train %s; training on it as an extra family",
                     family, train)
            train.append(family)
        self.config = BenchmarkConfig.from_dict({**self.manifest["config"], "families_train": tuple(train),
                                                 "families_unseen": tuple(unseen), "strength": strength})
        self.config.validate()
        self.family_dirs: dict[str, Path] = {f: ensure_family(self.bench_dir, self.config, f)
                                             for f in (*train, *unseen)}
        self.family_info: dict[str, dict[str, Any]] = {f: read_family(d) for f, d in self.family_dirs.items()}
        self.carve_seed = int(carve_seed)
        generated = int(self.manifest["config"]["image_size"])
        super().__init__(
            json_dir=os.fspath(self.bench_dir),
            data_root=os.fspath(self.bench_dir),
            family=family,
            families=self.config.families,
            test_splits=self.config.test_splits,
            frames_per_video=frames_per_video,
            image_size=generated if image_size is None else int(image_size),
            augment=dict(BENCHMARK_AUGMENT) if augment is None else _plain(augment),
            num_workers=num_workers,
            compression=compression,
            **kwargs,
        )
        self._carve: dict[str, Any] | None = None

    # ------------------------------------------------------------------ layout
    def json_path(self, name: str) -> Path:
        for fam, folder in self.family_dirs.items():
            if name.startswith(fam + "_"):
                return folder / "json" / f"{name}.json"
        return self.bench_dir / "json" / f"{name}.json"

    def identity_of(self, dataset: str, split: str, video: str, label: int) -> str:
        """Identity (source region) of a video of a benchmark JSON: the real crop's, or for a
        forged video the recorded source crop's."""
        family, domain = dataset.rsplit("_", 1)
        if label == 1:
            return self.family_info[family]["fake_sources"][domain][split][video]["identity"]
        return self.manifest["real_videos"][domain][split][video]["identity"]

    def source_of(self, dataset: str, split: str, video: str) -> dict[str, Any]:
        """The recorded source of a forged video: source real video, frames, photograph, region."""
        family, domain = dataset.rsplit("_", 1)
        return dict(self.family_info[family]["fake_sources"][domain][split][video])

    # ------------------------------------------------------------------ carve
    def _build_train_val(self) -> None:
        if "train" in self._tables:
            return
        self._check_json_files(self.train_sources, "training")
        seen: dict = {}
        records = []
        for name in self.train_sources:
            records += dedupe_frames(self._records(name, self.train_split), self.index_report, seen)
        domain = self.config.train_domain
        pool = [v["identity"] for v in self.manifest["real_videos"][domain][self.train_split].values()]
        val_ids = carve_regions(pool, self.val_fraction, self.carve_seed)
        ident = {r.key: self.identity_of(r.dataset, r.split, r.video, r.label) for r in records}
        train = [r for r in records if ident[r.key] not in val_ids]
        val = [r for r in records if ident[r.key] in val_ids]
        if not train:
            raise ValueError(f"no training frames left for family {self.task_name!r} ({self.train_sources})")
        if self.val_fraction > 0 and {r.label for r in val} != {0, 1}:
            raise ValueError(
                f"benchmark carve (carve_seed={self.carve_seed}, val_fraction={self.val_fraction}): validation of "
                f"family {self.task_name!r} holds labels {sorted({r.label for r in val})}, both real (0) and fake (1) "
                f"are needed; raise data.val_fraction or data.n_train")
        self._tables["train"] = build_frame_table(train, self.frames_per_video["train"], self.frame_sampling)
        self._tables["val"] = build_frame_table(val, self.frames_per_video["val"], self.frame_sampling)
        self._count_used(self._tables["train"], self.train_split)
        self._count_used(self._tables["val"], "val")
        val_keys = sorted({_key_text(r.key) for r in val})
        self._carve = {
            "scheme": CARVE_SCHEME,
            "seed": self.carve_seed,
            "val_fraction": self.val_fraction,
            "identity_rule": IDENTITY_RULE,
            "val_videos_sha256": hashlib.sha256("\n".join(val_keys).encode("utf-8")).hexdigest(),
            "n_train_videos": len({r.key for r in train}),
            "n_val_videos": len(val_keys),
            "n_left_out": 0,  # one identity per video: never split
            "n_identities": len(set(pool)),
            "val_identities": sorted(val_ids),
            "benchmark": self.manifest["config_hash"],
        }
        self._split_ids = {"train": frozenset(ident[r.key] for r in train),
                           "val": frozenset(ident[r.key] for r in val)}

    def carve_record(self) -> dict[str, Any]:
        """The validation carve (JSON-able): scheme, seed, fraction, identity rule, sha256 of the
        sorted validation video keys (``dataset/label group/video``), video counts."""
        self._build_train_val()
        return dict(self._carve)

    def split_identities(self) -> dict[str, frozenset[str]]:
        """Source regions of the training / validation videos actually used."""
        self._build_train_val()
        return dict(self._split_ids)

    # ------------------------------------------------------------------ pretraining
    @property
    def pretrain_frames(self) -> list[str]:
        """Paths (under ``bench_dir``) of the real pretraining crops (the photo domain's training band)."""
        return [os.fspath(self.bench_dir / rel) for rel in self.manifest.get("pretrain_frames", [])]

    @property
    def pretrain_classes(self) -> list[str]:
        """Source photographs of the training domain: the classes of the pretext labels."""
        return list(self.manifest["domains"][self.config.train_domain]["sources"])

    def _real_loader(self, paths: list[str], labels: list[int], batch_size: int | None, augment: bool,
                     shuffle: bool, seed: int) -> DataLoader:
        from data_modules.dataset import FrameDataset, FrameTable, collate_frames
        from data_modules.transforms import build_transform

        keys = [("pretrain", "real", str(i)) for i in range(len(paths))]
        table = FrameTable(paths, labels, list(range(len(paths))), keys)
        transform = build_transform(bool(augment), self.augment if augment else False, self.image_size,
                                    self.mean, self.std, seed=seed if augment else None)
        collate = partial(collate_frames, image_shape=(3, self.image_size, self.image_size))
        return DataLoader(
            FrameDataset(table, transform, self.on_unreadable),
            batch_size=int(batch_size or self.batch_size),
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate,
        )

    def pretrain_dataloader(self, batch_size: int | None = None, augment: bool = True,
                            shuffle: bool = True, seed: int | None = None) -> DataLoader:
        """Real-only crops for pretraining the base θ0: batches ``image`` ``[B,3,S,S]``, ``label``
        = index of the crop's source photograph in :attr:`pretrain_classes`, ``video_id`` (the
        frame's index). ``augment`` applies this module's training augmentation; ``seed`` (default:
        the module's) seeds shuffling and augmentation — pass the pretraining seed so that θ0 does
        not follow the fine-tuning seed."""
        paths = self.pretrain_frames
        if not paths:
            raise ValueError(f"{self.bench_dir}: no real pretraining crops (data.n_pretrain=0)")
        classes = self.pretrain_classes
        labels = [classes.index(s) for s in self.manifest["pretrain_sources"]]
        return self._real_loader(paths, labels, batch_size, augment, shuffle, self.seed if seed is None else int(seed))

    def pretrain_eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """Held-out real crops for the pretext metric: the training domain's *test band* reals
        (never pretrained on), labelled by source photograph; no augmentation, no shuffling."""
        classes = self.pretrain_classes
        videos = self.manifest["real_videos"][self.config.train_domain]["test"]
        paths, labels = [], []
        for rec in videos.values():
            for rel in rec["frames"]:
                paths.append(os.fspath(self.bench_dir / rel))
                labels.append(classes.index(rec["source"]))
        return self._real_loader(paths, labels, batch_size or self.eval_batch_size, False, False, 0)


_REAL_KEYS = ("seed", "image_size", "video_frames", "n_train", "n_test", "n_pretrain", "train_domain",
              "cross_domain")


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
    families_unseen: Sequence[str] = ("diffusion", "edit", "fingerprint", "resave"),
    family_modules: Sequence[str] = (),
    train_domain: str = "photo",
    cross_domain: str = "archive",
    split_seed: int = 1024,
    carve_seed: int = 0,
    **datamodule_kwargs: Any,
) -> BenchmarkDataModule:
    """Generate what is missing (once, cached under ``<root>/<real hash>/``) and open the benchmark.

    Generation: ``seed`` (the data's seed), ``n_train`` / ``n_test`` images per training / test set
    (half real, half fake), ``n_pretrain`` real pretraining crops, ``strength`` (scales every
    family's change; 1 = as calibrated), ``image_size`` (crops are made at the model's input size),
    ``video_frames`` frames per video, the training / unseen family names and the two real domains.
    ``split_seed`` is the data module's ``seed`` (shuffling, augmentation); ``carve_seed`` the
    validation carve's; other keyword arguments go to :class:`BenchmarkDataModule`.

    ``family_modules``: modules (``my_pkg.my_fakes``) or Python files (``my_fakes.py``, relative to
    the working directory) imported first, whose import registers user families; installed
    packages can instead declare an entry point in the group ``r2m.benchmark_families``
    (loaded always). See :func:`~data_modules.benchmark.families.load_family_modules`."""
    load_family_modules(_plain(family_modules) or ())
    config = BenchmarkConfig(
        seed=seed, image_size=image_size, frames_per_video=video_frames, n_train=n_train, n_test=n_test,
        n_pretrain=n_pretrain, strength=strength, families_train=(), families_unseen=(),
        train_domain=train_domain, cross_domain=cross_domain,
    )
    bench = ensure_benchmark(root, config, real_only=True)
    return BenchmarkDataModule(bench, family=family, families_train=families_train,
                               families_unseen=families_unseen, strength=strength, carve_seed=carve_seed,
                               image_size=image_size, seed=split_seed,
                               **{k: _plain(v) for k, v in datamodule_kwargs.items()})


def pretrain_identity(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the pretraining crops of a ``benchmark_datamodule`` config depend on (the base θ0's
    data identity): the real-data keys only — not the families, seeds of fine-tuning or the carve."""
    defaults = {"seed": 0, "image_size": 64, "video_frames": 4, "n_train": 800, "n_test": 320,
                "n_pretrain": 1600, "train_domain": "photo", "cross_domain": "archive"}
    out = {k: _plain(data_cfg.get(k, defaults[k])) for k in _REAL_KEYS}
    out["benchmark"] = BenchmarkConfig(
        seed=out["seed"], image_size=out["image_size"], frames_per_video=out["video_frames"],
        n_train=out["n_train"], n_test=out["n_test"], n_pretrain=out["n_pretrain"], families_train=(),
        train_domain=out["train_domain"], cross_domain=out["cross_domain"]).config_hash()
    for key in ("augment", "mean", "std"):
        if key in data_cfg:
            out[key] = _plain(data_cfg[key])
    return out


benchmark_datamodule.pretrain_identity = pretrain_identity  # type: ignore[attr-defined]
