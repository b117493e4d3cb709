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
    DEFAULT_PATH_REMAP,
    IndexReport,
    PathResolver,
    VideoRecord,
    check_frames,
    dedupe_frames,
    parse_index,
)
from data_modules.identities import (
    CARVE_SCHEME,
    Carve,
    IdentityResolver,
    auto_groups,
    carve_by_identity,
    keys_sha256,
)
from data_modules.labels import LabelMapper
from data_modules.transforms import build_transform, resolve_mean_std

__all__ = ["DF40DataModule", "DEFAULT_FAMILIES", "DEFAULT_TEST_SPLITS", "DEFAULT_PATH_REMAP",
           "parse_frames_per_video", "eval_sampler"]

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
    """OmegaConf containers → plain Python. Kept for callers outside this module; the data configs use
    Hydra's ``_convert_: all`` so the data modules receive plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _count_used(report: IndexReport, table: FrameTable, split: str) -> None:
    for mid, (dataset, method) in enumerate(table.method_names):
        mask = table.methods == mid
        row = report.row(dataset, split, method)
        row["used_frames"] += int(mask.sum())
        row["used_videos"] += len(set(table.video_ids[mask].tolist()))
        row["real_frames"] += int((table.labels[mask] == 0).sum())
        row["fake_frames"] += int((table.labels[mask] == 1).sum())


#: index-report rows already logged by this process (the table is logged once per process; later data
#: modules log only rows that are new or changed — a sweep's jobs share their test sets)
_LOGGED_ROWS: dict[tuple[str, str, str], tuple[int, ...]] = {}


def _log_index_report(report: IndexReport, task: str) -> None:
    fresh = [k for k, r in report.rows.items() if _LOGGED_ROWS.get(k) != tuple(r.values())]
    if not fresh:
        return
    sub = IndexReport(rows={k: report.rows[k] for k in fresh})
    for k in fresh:
        _LOGGED_ROWS[k] = tuple(report.rows[k].values())
    log.info("DF40 index (%s):\n%s", task, sub.format())


def parse_frames_per_video(value: int | Mapping | None) -> dict[str, int | None]:
    """``n`` / ``None`` → the same for train, val and test; ``{"train": n, "test": m}`` → val = test
    unless given (test defaults to train)."""
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


def eval_sampler(dataset) -> Any:
    """Sampler of an evaluation loader: ``None`` (sequential) in one process; under an initialised
    ``torch.distributed`` with several processes Lightning's ``UnrepeatedDistributedSampler`` — every
    frame on exactly one rank, no padded duplicates, so DDP validation/test metrics equal the
    single-process ones. Being a ``DistributedSampler``, the Trainer keeps it
    (``use_distributed_sampler`` replaces only non-distributed samplers)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    if world <= 1:
        return None
    if len(dataset) < world:
        raise ValueError(f"evaluation set of {len(dataset)} frame(s) is smaller than the {world} processes; "
                         "evaluate it on fewer devices")
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


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
        identity_rule: Any = "default",
        identity_groups: Any = "auto",
    ) -> None:
        super().__init__()
        self.json_dir = os.fspath(json_dir)
        self.data_root = os.fspath(data_root)
        self.families: dict[str, list[str]] = {k: list(v) for k, v in (families or DEFAULT_FAMILIES).items()}
        splits = test_splits
        self.test_splits: dict[str, list[str]] = {k: list(v or []) for k, v in (
            DEFAULT_TEST_SPLITS if splits is None else splits).items()}
        self.path_remap = dict(DEFAULT_PATH_REMAP if path_remap is None else path_remap)
        self.label_map = dict(label_map or {})
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
        self.mean, self.std = resolve_mean_std(mean, std)
        self.augment = augment
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.exist_check_workers = int(exist_check_workers)
        self.identity_rule = identity_rule
        self.identity_groups = identity_groups
        self._identities: IdentityResolver | None = None
        if identity_groups != "auto":  # validate rule and groups early
            self._identities = IdentityResolver(identity_rule, self.data_root, identity_groups)
        self.carve: Carve | None = None
        self._exists_hint: dict[str, bool] | None = None  # existence already checked (the doctor)

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
            hint = (" DF40's face-editing family (FE: CollabDiff, e4e, stargan, starganv2, styleclip) has no "
                    "training data (test-only, P3); give a family of your own training JSONs with "
                    f"'data.families={{{family}: [MyJSON]}}'." if family.lower() == "fe" else "")
            raise ValueError(f"unknown family {family!r}; known: {sorted(self.families)} (+ 'joint' = union).{hint}")
        if not sources:
            raise ValueError(f"family {family!r} has no training datasets")
        return sources

    @property
    def identities(self) -> IdentityResolver:
        """The identity resolver of the carve (``identity_groups: auto`` reads every training JSON of
        ``families`` on first use)."""
        if self._identities is None:
            base = IdentityResolver(self.identity_rule, self.data_root)
            universe = list(dict.fromkeys(n for names in self.families.values() for n in names))
            missing = [n for n in universe if not self.json_path(n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"identity_groups=auto groups identities over the training JSONs of every family in "
                    f"data.families, but {', '.join(f'{n}.json' for n in missing)} are not in {self.json_dir!r}: "
                    "remove those families from data.families, or set data.identity_groups (null or files)")
            records = (r for n in universe for r in self._parsed_index(n).get(self.train_split, []))
            self._identities = IdentityResolver(self.identity_rule, self.data_root, auto_groups(records, base),
                                                groups_label="auto-groups")
        return self._identities

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
            hint = self._exists_hint
            flat = [f for r in parsed[split] for f in r.frames] if hint else []
            exists = [hint[f] for f in flat] if hint and all(f in hint for f in flat) else None
            self._checked[key] = check_frames(parsed[split], self.index_report, self.on_missing,
                                              workers=self.exist_check_workers, exists=exists,
                                              desc=f"{name}/{split}: checking frames exist")
            self._warn_missing(name, split)
        return self._checked[key]

    def _warn_missing(self, name: str, split: str) -> None:
        for (d, s, m), row in self.index_report.rows.items():
            if d == name and s == split and (row["missing_frames"] or row["dropped_videos"]):
                log.warning("%s/%s/%s: dropped %d missing frame(s), %d video(s) left empty",
                            d, s, m, row["missing_frames"], row["dropped_videos"])

    def _count_used(self, table: FrameTable, split: str) -> None:
        """Count a built table's frames into :attr:`index_report` (subclasses building their own tables)."""
        _count_used(self.index_report, table, split)

    def _build_train_val(self) -> None:
        if "train" in self._tables:
            return
        carve, train, val = self.train_val_for(self.train_sources, self.task_name, self.index_report)
        self.carve = carve
        self._tables["train"], self._tables["val"] = train, val

    def train_val_for(self, sources: Sequence[str], family: str | None = None,
                      report: IndexReport | None = None) -> tuple[Carve, FrameTable, FrameTable]:
        """Carve + training / validation frame tables of the training JSONs ``sources`` (what
        ``setup("fit")`` builds for a family; the doctor calls it per family). Counts go to
        ``report`` (a fresh one when ``None``). Raises ``ValueError`` when no training frame is left
        or validation lacks a class (``val_fraction > 0``)."""
        family = family or "+".join(sources)
        report = IndexReport() if report is None else report
        self._check_json_files(sources, "training")
        records: list[VideoRecord] = []
        for name in sources:
            records += self._records(name, self.train_split)
        # Carve by identity first (a frame listed by several videos/JSONs is on one side whatever
        # their order), then de-duplicate each side; a frame that is validation never trains.
        carve = carve_by_identity(records, self.val_fraction, self.seed, self.identities)
        for rec in carve.left_out:
            report.row(rec.dataset, self.train_split, rec.method)["left_out_videos"] += 1
        seen: dict = {}
        val = dedupe_frames(carve.val, report, seen)
        train = dedupe_frames(carve.train, report, seen)
        if not train:
            raise ValueError(f"no training frames left for family {family!r} ({list(sources)}): "
                             f"{len(carve.val)} validation and {len(carve.left_out)} left-out videos "
                             f"(val_fraction={self.val_fraction}, seed={self.seed})")
        carve = Carve(train=train, val=val, left_out=carve.left_out, identities=carve.identities,
                      rules=carve.rules, unmatched=carve.unmatched)
        if self.val_fraction > 0:
            classes = {r.label for r in val}
            if classes != {0, 1}:
                missing = "/".join(n for c, n in ((0, "real"), (1, "fake")) if c not in classes)
                raise ValueError(
                    f"validation carve of family {family!r} ({list(sources)}) has no {missing} videos; both "
                    f"classes are needed (val_fraction={self.val_fraction}, seed={self.seed}, "
                    f"{len(carve.side_identities('val'))} validation identities, {len(val)} validation / "
                    f"{len(carve.left_out)} left-out videos, identity rule {self.identities.description!r}). "
                    "Fakes made from several identities are validation only when all of them are: raise "
                    "data.val_fraction, change data.seed, or group paired identities with data.identity_groups "
                    "(e.g. the FF++ split files); `python -m data_modules.doctor` shows the carve."
                )
        else:
            log.warning("val_fraction=0: no validation split for family %r", family)
        train_table = build_frame_table(train, self.frames_per_video["train"], self.frame_sampling)
        val_table = build_frame_table(val, self.frames_per_video["val"], self.frame_sampling)
        _count_used(report, train_table, self.train_split)
        _count_used(report, val_table, "val")
        return carve, train_table, val_table

    # ------------------------------------------------------------------ carve record
    def _carve(self) -> Carve:
        self._build_train_val()
        assert self.carve is not None
        return self.carve

    def carve_record(self) -> dict[str, Any]:
        """The validation carve, JSON-able (seed, fraction, identity rule, a hash of the validation
        video keys, counts); see :mod:`data_modules.identities`."""
        carve = self._carve()
        val_keys = list(self._tables["val"].keys)
        train_keys = list(self._tables["train"].keys)
        return {
            "scheme": CARVE_SCHEME,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "identity_rule": self.identities.description,
            "val_videos_sha256": keys_sha256(val_keys),
            "n_train_videos": len(train_keys),
            "n_val_videos": len(val_keys),
            "n_left_out": len({r.key for r in carve.left_out}),
            "n_train_identities": len(carve.side_identities("train")),
            "n_val_identities": len(carve.side_identities("val")),
            "train_sources": list(self.train_sources),
            "family": self.task_name,
        }

    def split_identities(self) -> dict[str, frozenset[str]]:
        """Identities of the training / validation videos actually used."""
        carve = self._carve()
        return {"train": carve.side_identities("train"), "val": carve.side_identities("val")}

    def _build_test(self, name: str) -> FrameTable:
        if name not in self.test_set_names:
            raise KeyError(f"unknown test set {name!r}; test sets: {self.test_set_names}")
        key = f"test:{name}"
        if key not in self._tables:
            records = dedupe_frames(self._records(name, self.test_split), self.index_report)
            self._tables[key] = build_frame_table(records, self.frames_per_video["test"], self.frame_sampling)
            _count_used(self.index_report, self._tables[key], self.test_split)
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
        _log_index_report(self.index_report, self.task_name)

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
        sampler = None if train else eval_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
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
