"""Data doctor: check DF40 / DeepfakeBench JSON indexes, the frames on disk and the validation carve.

Usage::

    python -m data_modules.doctor --config configs/data/df40.yaml --data-root $DF40_ROOT [--deep]
    python -m data_modules.doctor --config df40 data.family=fr data.val_fraction=0.2   # Hydra overrides
    python -m data_modules.doctor A.json B.json [--data-root R] [--remap OLD=NEW ...] [--label K=V ...]

``--config`` takes a data config by path (``configs/data/df40.yaml``, or your own
``<dir>/data/mine.yaml``, whose ``<dir>`` is added to Hydra's search path) or by group name
(``df40``, ``fixture``), and composes it with Hydra's compose API exactly as ``train.py`` does
(``train.yaml`` + ``data=<name>`` + overrides), so a ``defaults: [df40, _self_]`` list works.
``--data-root`` sets ``paths.df40_root``, ``--json-dir`` ``paths.df40_json_dir``; trailing
``KEY=VALUE`` arguments (or ``--set KEY=VALUE``) are further overrides. Without ``--config`` the
JSON files are resolved with DF40's default prefix table (``DEFAULT_PATH_REMAP``:
``deepfakes_detection_datasets/{DF40,DF40_train,FaceForensics++,Celeb-DF-v2}`` → the folders of
the same name under ``--data-root``), ``--remap`` entries on top (``--no-default-remap`` to start
from an empty table).

It prints

1. per JSON, split and method: videos, frames listed / found / missing, videos with no frame on disk,
   frames listed again by an earlier video, real / fake frames and an image-size histogram
   (headers of at most ``--size-samples`` frames per method);
2. an image check: the header of **every** frame found (PNG signature + IHDR CRC + IEND trailer,
   JPEG SOI/EOI markers), plus a seeded sample of ``--decode-samples`` frames per method decoded in
   full; ``--deep`` decodes every frame training and testing would read (the sampled frames of the
   data module's tables; every found frame without ``--config``), in a process pool with a progress bar.
   Every unreadable file is listed;
3. per training set (family): the identities found, the videos whose names matched no identity rule
   ("no pairing detected": the folder is its own identity), and the carve training will use —
   videos and frames per side (train / validation) and class, and the videos left out because their
   identities are split between the sides (see :mod:`data_modules.identities`).

Exit status: 0 when everything is found, readable and carvable; 1 on malformed JSON, unknown label
strings, label conflicts, missing frames (unless ``--allow-missing``), unreadable images or a carve
training would reject (one class in validation, no training frames); 2 on usage errors.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.image_io import UnreadableImageError, image_size
from data_modules.index import (
    UNKNOWN_LABEL,
    IndexFormatError,
    PathResolver,
    frames_exist,
    map_chunks,
    parse_index,
    progress,
)
from data_modules.labels import LabelMapper
from data_modules.sampling import uniform_indices

__all__ = ["DoctorSettings", "run_doctor", "settings_from_config", "compose_data_config", "check_header",
           "decode_ok", "main"]

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PNG_SIG = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass
class DoctorSettings:
    """What to check: JSON files, path resolution, labels, compression, splits, image checks; with a data
    module (``--config``) also its carve per family and the frames its tables would read."""

    jsons: list[str]
    data_root: str = "."
    path_remap: dict[str, str] = field(default_factory=dict)
    label_map: dict[str, int] = field(default_factory=dict)
    compression: str | None = "c23"
    splits: list[str] | None = None
    size_samples: int = 20
    decode_samples: int = 8
    deep: bool = False
    seed: int = 0
    allow_missing: bool = False
    workers: int = 8
    show_progress: bool | None = None
    datamodule: Any = None          # a DF40DataModule (config mode): carve per family + deep frame list
    carve: bool = True              # JSON mode: carve every JSON with a training split with the DF40 defaults
    carve_kwargs: dict[str, Any] = field(default_factory=dict)


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def _table(head: list[str], rows: list[list[str]], left: Sequence[int] | None = None) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    left = (0, 1, len(head) - 1) if left is None else left
    fmt = "  ".join(f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r).rstrip() for r in [head, *rows])


# ---------------------------------------------------------------------------------------------- images
def check_header(path: str) -> str | None:
    """Cheap structural check of an image file: ``None`` when it looks complete, else the reason.

    PNG: 8-byte signature, IHDR chunk with a valid CRC and sane size, IEND trailer (catches
    truncation, zero-byte files, text or other formats named ``.png``, damaged headers). JPEG: SOI
    marker at the start, EOI marker in the last bytes. Other formats: decodable header (PIL)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "zero-byte file"
        with open(path, "rb") as f:
            head = f.read(33)
            if head.startswith(PNG_SIG):
                if len(head) < 33 or head[12:16] != b"IHDR" or struct.unpack(">I", head[8:12])[0] != 13:
                    return "PNG without a complete IHDR chunk (truncated?)"
                if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
                    return "PNG IHDR CRC mismatch (corrupted header)"
                w, h = struct.unpack(">II", head[16:24])
                if not (0 < w < 1 << 16 and 0 < h < 1 << 16):
                    return f"PNG with implausible size {w}x{h}"
                f.seek(max(size - 12, 0))
                if f.read(12) != PNG_IEND:
                    return "PNG without IEND trailer (truncated or trailing garbage)"
                return None
            if head.startswith(b"\xff\xd8\xff"):
                f.seek(max(size - 64, 0))
                if b"\xff\xd9" not in f.read(64):
                    return "JPEG without EOI marker (truncated)"
                return None
    except OSError as exc:
        return f"cannot read: {exc}"
    if path.lower().endswith((".png", ".jpg", ".jpeg")):
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "data"
        return f"not a {'PNG' if path.lower().endswith('.png') else 'JPEG'} file ({kind}: {head[:16]!r})"
    try:
        image_size(path)
    except UnreadableImageError as exc:
        return str(exc)
    return None


def decode_ok(path: str) -> str | None:
    """Decode ``path`` in full with OpenCV, as training reads it: ``None`` or the reason. (libpng checks
    every chunk CRC and the zlib stream, so damaged PNG data fails here; truncated JPEGs, which OpenCV
    pads silently, are caught by :func:`check_header`.)"""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return "OpenCV could not decode it (corrupt image data)"
    return None


def _decode_chunk(paths: Sequence[str]) -> list[str | None]:
    import cv2

    cv2.setNumThreads(1)
    return [decode_ok(p) for p in paths]


def _header_chunk(paths: Sequence[str]) -> list[str | None]:
    return [check_header(p) for p in paths]


def _map_chunks(fn, paths: Sequence[str], workers: int, desc: str, processes: bool,
                show: bool | None, chunk: int = 256) -> list[str | None]:
    bar = progress(range(len(paths)), len(paths), desc, enabled=show if show is not None else (
        None if len(paths) >= 20_000 or not processes else len(paths) >= 2_000))
    return map_chunks(fn, paths, chunk, workers, bar, processes=processes)


# ---------------------------------------------------------------------------------------------- report
def run_doctor(s: DoctorSettings, out=None) -> int:
    """Check everything ``s`` names, print the report to ``out`` (stdout) and return the exit status."""
    out = out or sys.stdout
    t0 = time.perf_counter()
    labels = LabelMapper(s.label_map)
    resolver = PathResolver(s.data_root, s.path_remap)
    errors: list[str] = []
    warnings: list[str] = []
    head = ["dataset/split", "method", "videos", "frames", "found", "missing", "empty_videos",
            "duplicate", "real", "fake", "image sizes (sampled)"]
    rows: list[list[str]] = []
    summary: list[list[str]] = []
    totals = Counter()
    found_all: dict[str, None] = {}
    exists: dict[str, bool] = {}
    decode_pick: dict[str, None] = {}
    train_jsons: list[str] = []
    for json_path in s.jsons:
        try:
            parsed = parse_index(json_path, labels=labels, resolver=resolver, compression=s.compression,
                                 splits=s.splits, unknown_labels="keep")
        except (IndexFormatError, ValueError) as exc:
            errors.append(str(exc))
            continue
        if not parsed:
            warnings.append(f"{json_path}: no videos in splits {s.splits or 'any'}")
        name = Path(json_path).stem
        if "train" in parsed and parsed["train"]:
            train_jsons.append(json_path)
        for split, records in parsed.items():
            flat = [f for r in records for f in r.frames]
            todo = [f for f in dict.fromkeys(flat) if f not in exists]
            exists.update(zip(todo, frames_exist(todo, workers=s.workers, desc=f"{name}/{split}: checking frames exist",
                                                 show_progress=s.show_progress)))
            stats: dict[str, Counter] = defaultdict(Counter)
            found_by_method: dict[str, list[str]] = defaultdict(list)
            seen: dict[str, int] = {}
            unknown: Counter = Counter()
            for rec in records:
                flags = [exists[f] for f in rec.frames]
                st = stats[rec.method]
                st["videos"] += 1
                st["frames"] += len(rec.frames)
                n_found = sum(flags)
                st["found"] += n_found
                st["missing"] += len(flags) - n_found
                st["empty_videos"] += n_found == 0
                if rec.label == UNKNOWN_LABEL:
                    unknown[rec.label_name] += 1
                for f, good in zip(rec.frames, flags):
                    if not good:
                        if totals["missing_listed"] < 10:
                            warnings.append(f"missing: {f}")
                        totals["missing_listed"] += 1
                        continue
                    found_all[f] = None
                    if f in seen:
                        st["duplicate"] += 1
                        if seen[f] != rec.label:
                            errors.append(f"{json_path} [{split}]: frame {f!r} listed with labels {seen[f]} and {rec.label}")
                        continue
                    seen[f] = rec.label
                    found_by_method[rec.method].append(f)
                    st["real" if rec.label == 0 else "fake" if rec.label == 1 else "unknown"] += 1
            for label_name, n in unknown.items():
                errors.append(f"{json_path} [{split}]: unknown label string {label_name!r} ({n} videos); "
                              f"add it with --label {label_name}=0|1 or to label_map")
            for method, st in stats.items():
                frames = found_by_method[method]
                idx = range(len(frames)) if s.size_samples <= 0 else uniform_indices(len(frames), s.size_samples) if frames else []
                sizes: Counter = Counter()
                for i in idx:
                    try:
                        w, h = image_size(frames[i])
                        sizes[f"{w}x{h}"] += 1
                    except UnreadableImageError:
                        sizes["unreadable"] += 1
                hist = ", ".join(f"{k}:{v}" for k, v in sorted(sizes.items())) or "-"
                rows.append([f"{name}/{split}", method, *(str(st[k]) for k in head[2:10]), hist])
                totals["missing"] += st["missing"]
                totals["frames"] += st["frames"]
                if frames and s.decode_samples > 0 and not s.deep:
                    rng = np.random.default_rng([s.seed, zlib.crc32(f"{name}/{split}/{method}".encode())])
                    k = min(len(frames), s.decode_samples)
                    decode_pick.update(dict.fromkeys(frames[i] for i in sorted(rng.choice(len(frames), k, replace=False))))
            real = sum(st["real"] for st in stats.values())
            fake = sum(st["fake"] for st in stats.values())
            share = f"{real / (real + fake):.1%}" if real + fake else "-"
            summary.append([f"{name}/{split}", str(len({r.key for r in records})), str(real), str(fake), share])
    t_index = time.perf_counter() - t0
    print(_table(head, rows) if rows else "(no videos)", file=out)
    if summary:
        print("\nunique frames found per JSON/split:", file=out)
        print(_table(["dataset/split", "videos", "real", "fake", "real share"], summary), file=out)
    print(f"\ntotal: {totals['frames']} frames listed, {totals['missing']} missing", file=out)

    # ---- carve (before the deep decode: its frame list comes from the data module's tables)
    dm = s.datamodule
    if dm is None and s.carve and train_jsons:
        dm = _json_mode_datamodule(s, train_jsons, warnings)
    deep_paths: dict[str, None] = {}
    if dm is not None:
        dm._exists_hint = exists
        # config mode: a carve training would reject is an error; JSON mode carves with DF40's defaults
        # (training's own config may differ), so there it is a warning
        _print_carve(dm, out, errors if s.datamodule is not None else warnings, warnings,
                     deep_paths if s.deep and s.datamodule is not None else None)
        if s.deep and s.datamodule is not None:
            for name in dm.test_set_names:
                try:
                    t = dm.table(name)
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    errors.append(f"test set {name}: {exc}")
                    continue
                deep_paths.update(dict.fromkeys(t.path(i) for i in range(len(t))))

    # ---- images
    t1 = time.perf_counter()
    found = list(found_all)
    bad: dict[str, str] = {}
    for p, why in zip(found, _map_chunks(_header_chunk, found, s.workers, "reading image headers",
                                         processes=False, show=s.show_progress)):
        if why:
            bad[p] = f"header: {why}"
    t_head = time.perf_counter() - t1
    if s.deep:
        targets = [p for p in (deep_paths or found_all) if exists.get(p, True) and p not in bad]
        what = "every frame training/testing reads" if deep_paths else "every frame found"
    else:
        targets = [p for p in decode_pick if p not in bad]
        what = f"a seeded sample ({s.decode_samples} per method)"
    t2 = time.perf_counter()
    for p, why in zip(targets, _map_chunks(_decode_chunk, targets, s.workers, "decoding images",
                                           processes=True, show=s.show_progress)):
        if why:
            bad[p] = f"decode: {why}"
    t_dec = time.perf_counter() - t2
    print(f"\nimages: {len(found)} headers read ({_rate(len(found), t_head)}), {len(targets)} decoded in full "
          f"[{what}] ({_rate(len(targets), t_dec)}); {len(bad)} unreadable", file=out)
    for p, why in sorted(bad.items()):
        print(f"  UNREADABLE {p}: {why}", file=out)
    if bad:
        errors.append(f"{len(bad)} unreadable image file(s) (listed above)")
    if not s.deep and found:
        print("  (--deep decodes every frame training and testing would read)", file=out)

    for w in warnings:
        print(f"WARNING: {w}", file=out)
    if totals["missing_listed"] > 10:
        print(f"WARNING: ... and {totals['missing_listed'] - 10} more missing frames", file=out)
    if totals["missing"] and not s.allow_missing:
        errors.append(f"{totals['missing']} listed frame(s) missing (check --data-root / --remap; "
                      "--allow-missing to accept)")
    for e in errors:
        print(f"ERROR: {e}", file=out)
    print(f"time: index {t_index:.1f}s, headers {t_head:.1f}s, decode {t_dec:.1f}s", file=out)
    print("status: " + ("FAILED" if errors else "OK"), file=out)
    return 1 if errors else 0


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if n and seconds > 0 else "-"


def _json_mode_datamodule(s: DoctorSettings, train_jsons: list[str], warnings: list[str]):
    from data_modules.df40 import DF40DataModule

    dirs = {str(Path(p).resolve().parent) for p in train_jsons}
    if len(dirs) != 1:
        warnings.append("training JSONs in several folders: carve not shown (use --config)")
        return None
    stems = [Path(p).stem for p in train_jsons]
    kwargs = dict(frames_per_video=8, val_fraction=0.1, seed=1024)
    kwargs.update(s.carve_kwargs)
    return DF40DataModule(json_dir=dirs.pop(), data_root=s.data_root, families={n: [n] for n in stems},
                          family=stems[0], test_splits={}, path_remap=s.path_remap, label_map=s.label_map,
                          compression=s.compression, on_missing="drop", num_workers=0, **kwargs)


def _print_carve(dm, out, errors: list[str], warnings: list[str], deep_paths: dict | None) -> None:
    """Carve table per family of ``dm``; failures go to ``errors``, unmatched names to ``warnings``."""
    from data_modules.index import IndexReport

    print(f"\nvalidation carve: val_fraction={dm.val_fraction}, seed={dm.seed}, identity rule "
          f"{dm.identities.description!r}, frames_per_video={dm.frames_per_video}", file=out)
    head = ["family", "side", "real videos", "real frames", "fake videos", "fake frames", "carve units"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for family in dm.families:
        sources = dm.families[family]
        try:
            carve, train, val = dm.train_val_for(sources, family, IndexReport())
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            errors.append(f"training set {family!r} ({', '.join(sources)}): {exc}")
            continue
        for side, table, recs in (("train", train, carve.train), ("val", val, carve.val)):
            vids = {0: set(), 1: set()}
            for r in recs:
                vids.setdefault(r.label, set()).add(r.key)
            rows.append([family, side, str(len(vids[0])), str(int((table.labels == 0).sum())),
                         str(len(vids[1])), str(int((table.labels == 1).sum())),
                         str(len(carve.side_identities(side)))])
            if deep_paths is not None:
                deep_paths.update(dict.fromkeys(table.path(i) for i in range(len(table))))
        left = Counter(r.label for r in {r.key: r for r in carve.left_out}.values())
        recs = [*carve.train, *carve.val, *carve.left_out]
        raw_ids = {i for r in recs for i in dm.identities.raw(r)}
        units = {i for ids in carve.identities.values() for i in ids}
        by_ns = Counter(i.split(":", 1)[0] for i in raw_ids)
        rules = ", ".join(f"{k}: {v}" for k, v in carve.rules.most_common())
        grouped = f", carved as {len(units)} units after identity_groups" if len(units) != len(raw_ids) else ""
        notes.append(f"{family} ({', '.join(sources)}): {len(raw_ids)} identities "
                     f"({', '.join(f'{k} {v}' for k, v in by_ns.most_common())}{grouped}); videos per rule: {rules}; "
                     f"left out (identities split between train and val): {sum(left.values())} videos "
                     f"({left.get(0, 0)} real, {left.get(1, 0)} fake)")
        if carve.unmatched:
            ex = ", ".join("/".join(k) for k in carve.unmatched[:3])
            warnings.append(f"{family}: no pairing detected for {len(carve.unmatched)} video(s) (their names match "
                            f"no identity rule; each folder is its own identity), e.g. {ex}; set data.identity_rule "
                            "if fakes and reals share sources")
    if rows:
        print(_table(head, rows, left=(0, 1)), file=out)
    for n in notes:
        print(f"  {n}", file=out)


# ---------------------------------------------------------------------------------------------- config
def compose_data_config(config: str, overrides: Sequence[str] = (), config_dir: str | os.PathLike | None = None):
    """The full ``train.yaml`` config with ``data=<config>`` composed by Hydra's compose API (as ``train.py``).

    ``config``: a group name (``df40``) or a YAML path. A path inside a ``data/`` folder adds that
    folder's parent to the search path (so its ``defaults`` may name the repo's configs and its own
    siblings); a loose file is copied into a temporary ``data/`` group."""
    import tempfile

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    cfg_root = Path(config_dir) if config_dir else REPO_CONFIGS
    if not (cfg_root / "train.yaml").is_file():
        raise SystemExit(f"no train.yaml in {cfg_root} (pass --config-dir, the project's configs/ folder)")
    extra: list[str] = []
    tmp = None
    path = Path(config)
    if config.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise SystemExit(f"data config not found: {config}")
        path = path.resolve()
        name = path.stem
        if path.parent.name == "data":
            search = path.parent.parent
        else:
            tmp = tempfile.TemporaryDirectory(prefix="r2m-doctor-")
            (Path(tmp.name) / "data").mkdir()
            (Path(tmp.name) / "data" / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
            search = Path(tmp.name)
        if search.resolve() != cfg_root.resolve():
            extra.append(f"hydra.searchpath=[file://{search.resolve()}]")
    else:
        name = config
    try:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(cfg_root.resolve()), version_base="1.3", job_name="doctor"):
            return compose(config_name="train", overrides=[f"data={name}", *extra, *overrides])
    except Exception as exc:  # hydra.errors.* — a usage error with its message
        raise SystemExit(f"cannot compose data config {config!r}: {exc}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()


def settings_from_config(config: str, data_root: str | None = None, json_dir: str | None = None,
                         overrides: Sequence[str] = (), config_dir: str | None = None) -> DoctorSettings:
    """Doctor settings (and the data module, on_missing=drop) from a data config composed like ``train.py``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from data_modules.df40 import DF40DataModule

    ov = list(overrides)
    if data_root is not None:
        ov.append(f"paths.df40_root={data_root}")
    if json_dir is not None:
        ov.append(f"paths.df40_json_dir={json_dir}")
    cfg = compose_data_config(config, ov, config_dir)
    for key in ("json_dir", "data_root"):
        if key in cfg.data:
            try:
                OmegaConf.select(cfg, f"data.{key}", throw_on_missing=True)
                str(cfg.data[key])
            except OmegaConfBaseException as exc:
                raise SystemExit(f"{config}: cannot resolve data.{key} ({exc}); pass --data-root / --json-dir "
                                 "or an override paths.<name>=VALUE") from None
    target = str(cfg.data.get("_target_", ""))
    if "json_dir" not in cfg.data and not target.endswith("fixture_datamodule"):
        raise SystemExit(f"{config}: not a DF40-format data config ({target or 'no _target_'} has no json_dir); "
                         "the doctor checks DF40 / DeepfakeBench JSON indexes")
    if "json_dir" in cfg.data and cfg.data.json_dir is None:
        raise SystemExit(f"{config}: no json_dir; pass --json-dir")
    try:
        dm = instantiate(cfg.data, on_missing="drop", num_workers=0)
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"{config}: cannot build the data module: {exc}") from None
    if not isinstance(dm, DF40DataModule):
        raise SystemExit(f"{config}: {type(dm).__name__} is not a DF40-format data module; the doctor checks "
                         "DF40 / DeepfakeBench JSON indexes")
    names = list(dict.fromkeys([*(n for v in dm.families.values() for n in v), *dm.test_set_names]))
    return DoctorSettings(
        jsons=[str(dm.json_path(n)) for n in names],
        data_root=dm.data_root,
        path_remap=dict(dm.path_remap),
        label_map=dict(dm.label_map),
        compression=dm.compression,
        datamodule=dm,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from data_modules.index import DEFAULT_PATH_REMAP

    parser = argparse.ArgumentParser(prog="python -m data_modules.doctor",
                                     description="Check DF40 / DeepfakeBench JSON indexes, the frames on disk, "
                                                 "the images and the validation carve.")
    parser.add_argument("jsons", nargs="*", help="JSON index files; KEY=VALUE items are Hydra overrides (with --config)")
    parser.add_argument("--config", help="a data config: a YAML path (configs/data/df40.yaml) or a group name (df40)")
    parser.add_argument("--config-dir", help="the project's configs/ folder (default: this checkout's)")
    parser.add_argument("--data-root", help="root joined to (remapped) frame paths; with --config sets paths.df40_root")
    parser.add_argument("--json-dir", help="with --config: folder of the JSONs (paths.df40_json_dir)")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD=NEW", help="path prefix remap (repeatable)")
    parser.add_argument("--no-default-remap", action="store_true",
                        help="JSON mode: start from an empty prefix table instead of DF40's")
    parser.add_argument("--label", action="append", default=[], metavar="LABEL=0|1", help="extra label string (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --config: Hydra override")
    parser.add_argument("--compression", default=None, help="compression level to check when present (default c23)")
    parser.add_argument("--split", action="append", default=None, help="only these splits (repeatable; default all)")
    parser.add_argument("--size-samples", type=int, default=20, help="image headers in the size histogram per method (0 = all)")
    parser.add_argument("--decode-samples", type=int, default=8, help="frames per method decoded in full (seeded)")
    parser.add_argument("--deep", action="store_true", help="decode every frame training and testing would read")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decode sample")
    parser.add_argument("--val-fraction", type=float, default=None, help="JSON mode: carve fraction (default 0.1)")
    parser.add_argument("--carve-seed", type=int, default=None, help="JSON mode: carve seed (default 1024)")
    parser.add_argument("--identity-rule", default=None, help="JSON mode: identity rule (regex; default built-in rules)")
    parser.add_argument("--identity-groups", action="append", default=None, help="JSON mode: identity group file(s)")
    parser.add_argument("--frames-per-video", type=int, default=None, help="JSON mode: frames per video (default 8)")
    parser.add_argument("--no-carve", action="store_true", help="JSON mode: do not show the carve")
    parser.add_argument("--allow-missing", action="store_true", help="exit 0 when the only problem is missing frames")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads / processes for existence checks, headers and decoding")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    overrides = [a for a in args.jsons if "=" in a and not a.endswith(".json")]
    jsons = [a for a in args.jsons if a not in overrides]
    if not jsons and not args.config:
        parser.error("give JSON files and/or --config")
    if overrides and not args.config:
        parser.error(f"overrides {overrides} need --config")
    if args.config:
        s = settings_from_config(args.config, args.data_root, args.json_dir, [*args.set, *overrides], args.config_dir)
        if jsons:
            s.jsons = [*s.jsons, *jsons]
    else:
        s = DoctorSettings(jsons=jsons, data_root=args.data_root or ".",
                           path_remap={} if args.no_default_remap else dict(DEFAULT_PATH_REMAP))
    s.path_remap.update(_pairs(args.remap, "--remap"))
    try:
        s.label_map.update({k: int(v) for k, v in _pairs(args.label, "--label").items()})
    except ValueError:
        parser.error("--label values must be 0 or 1")
    if args.compression is not None:
        s.compression = args.compression
    if s.datamodule is not None and (args.remap or args.label or args.compression):
        # keep the data module (carve, deep frame list) consistent with the command-line changes
        from data_modules.index import PathResolver as _PR
        from data_modules.labels import LabelMapper as _LM

        dm = s.datamodule
        dm.path_remap, dm.label_map, dm.compression = dict(s.path_remap), dict(s.label_map), s.compression
        dm._resolver, dm._labels = _PR(dm.data_root, dm.path_remap), _LM(dm.label_map)
    s.splits, s.size_samples, s.allow_missing, s.workers = args.split, args.size_samples, args.allow_missing, args.workers
    s.decode_samples, s.deep, s.seed, s.carve = args.decode_samples, args.deep, args.seed, not args.no_carve
    s.show_progress = False if args.no_progress else None
    s.carve_kwargs = {k: v for k, v in (("val_fraction", args.val_fraction), ("seed", args.carve_seed),
                                        ("identity_rule", args.identity_rule), ("identity_groups", args.identity_groups),
                                        ("frames_per_video", args.frames_per_video)) if v is not None}
    try:
        return run_doctor(s)
    except ValueError as exc:  # e.g. a label_map value other than 0/1
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
