"""Data doctor: check DF40 / DeepfakeBench JSON indexes against the frames on disk.

Usage::

    python -m data_modules.doctor A.json B.json [--data-root R] [--remap OLD=NEW ...] [--label K=V ...]
    python -m data_modules.doctor --config configs/data/df40.yaml --data-root /data/df40 [--json-dir J]

For every JSON, split and method (label group) it prints: videos, frames listed / found / missing
(counted per listing: a real frame repeated under several methods counts once per method),
videos with no frame on disk, frames listed again by an earlier video (real frames repeated across
methods), real/fake frame balance and an image-size histogram read from the headers of at most
``--size-samples`` frames per method. A summary per JSON/split gives unique real/fake frames.

With ``--config``, the data config (e.g. ``configs/data/df40.yaml``) is loaded with OmegaConf; every
JSON named in its ``families`` and ``test_splits`` is checked with its ``json_dir``, ``data_root``,
``path_remap``, ``label_map`` and ``compression``. ``${paths.*}`` interpolations are resolved from
``configs/paths/default.yaml`` next to the data config group when it resolves standalone, then from
``--data-root`` (= ``paths.df40_root``), ``--json-dir`` (= ``paths.df40_json_dir``) and
``--set KEY=VALUE`` (any dotted key of the composed ``{paths, model, data}`` config).

Exit status: 0 when everything is found and readable; 1 on malformed JSON, unknown label strings,
label conflicts, missing frames (unless ``--allow-missing``) or unreadable images; 2 on usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_modules.image_io import UnreadableImageError, image_size
from data_modules.index import (
    UNKNOWN_LABEL,
    IndexFormatError,
    PathResolver,
    frames_exist,
    parse_index,
)
from data_modules.labels import LabelMapper
from data_modules.sampling import uniform_indices

__all__ = ["DoctorSettings", "run_doctor", "settings_from_config", "main"]


@dataclass
class DoctorSettings:
    """What to check: JSON files, path resolution, labels, compression, splits."""

    jsons: list[str]
    data_root: str = "."
    path_remap: dict[str, str] = field(default_factory=dict)
    label_map: dict[str, int] = field(default_factory=dict)
    compression: str | None = "c23"
    splits: list[str] | None = None
    size_samples: int = 20
    allow_missing: bool = False
    workers: int = 8


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, len(head) - 1) else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r).rstrip() for r in [head, *rows])


def run_doctor(s: DoctorSettings, out=None) -> int:
    """Check every JSON of ``s``, print the report to ``out`` (stdout) and return the exit status."""
    out = out or sys.stdout
    labels = LabelMapper(s.label_map)
    resolver = PathResolver(s.data_root, s.path_remap)
    errors: list[str] = []
    warnings: list[str] = []
    head = ["dataset/split", "method", "videos", "frames", "found", "missing", "empty_videos",
            "duplicate", "real", "fake", "image sizes (sampled)"]
    rows: list[list[str]] = []
    summary: list[list[str]] = []
    totals = Counter()
    for json_path in s.jsons:
        try:
            parsed = parse_index(json_path, labels=labels, resolver=resolver, compression=s.compression,
                                 splits=s.splits, unknown_labels="keep")
        except (IndexFormatError, ValueError) as exc:
            errors.append(str(exc))
            continue
        if not parsed:
            warnings.append(f"{json_path}: no videos in splits {s.splits or 'any'}")
        for split, records in parsed.items():
            flat = [f for r in records for f in r.frames]
            ok = frames_exist(flat, workers=s.workers)
            stats: dict[str, Counter] = defaultdict(Counter)
            found_by_method: dict[str, list[str]] = defaultdict(list)
            seen: dict[str, int] = {}
            unknown: Counter = Counter()
            pos = 0
            for rec in records:
                flags = ok[pos:pos + len(rec.frames)]
                pos += len(rec.frames)
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
            name = Path(json_path).stem
            for method, st in stats.items():
                frames = found_by_method[method]
                idx = range(len(frames)) if s.size_samples <= 0 else uniform_indices(len(frames), s.size_samples) if frames else []
                sizes: Counter = Counter()
                for i in idx:
                    try:
                        w, h = image_size(frames[i])
                        sizes[f"{w}x{h}"] += 1
                    except UnreadableImageError as exc:
                        sizes["unreadable"] += 1
                        errors.append(str(exc))
                hist = ", ".join(f"{k}:{v}" for k, v in sorted(sizes.items())) or "-"
                rows.append([f"{name}/{split}", method, *(str(st[k]) for k in head[2:10]), hist])
                totals["missing"] += st["missing"]
                totals["frames"] += st["frames"]
            real = sum(st["real"] for st in stats.values())
            fake = sum(st["fake"] for st in stats.values())
            share = f"{real / (real + fake):.1%}" if real + fake else "-"
            summary.append([f"{name}/{split}", str(len({r.key for r in records})), str(real), str(fake), share])
    print(_table(head, rows) if rows else "(no videos)", file=out)
    if summary:
        print("\nunique frames found per JSON/split:", file=out)
        print(_table(["dataset/split", "videos", "real", "fake", "real share"], summary), file=out)
    print(f"\ntotal: {totals['frames']} frames listed, {totals['missing']} missing", file=out)
    for w in warnings:
        print(f"WARNING: {w}", file=out)
    if totals["missing_listed"] > 10:
        print(f"WARNING: ... and {totals['missing_listed'] - 10} more missing frames", file=out)
    if totals["missing"] and not s.allow_missing:
        errors.append(f"{totals['missing']} listed frame(s) missing (check --data-root / --remap; "
                      "--allow-missing to accept)")
    for e in errors:
        print(f"ERROR: {e}", file=out)
    print("status: " + ("FAILED" if errors else "OK"), file=out)
    return 1 if errors else 0


def settings_from_config(config: str, data_root: str | None = None, json_dir: str | None = None,
                         overrides: Sequence[str] = ()) -> DoctorSettings:
    """Doctor settings from a data config YAML (see module docstring for interpolation handling)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg_path = Path(config)
    if not cfg_path.is_file():
        raise SystemExit(f"data config not found: {config}")
    root = OmegaConf.create({"paths": {}, "model": {"image_size": 224, "mean": None, "std": None}})
    paths_default = cfg_path.resolve().parent.parent / "paths" / "default.yaml"
    if paths_default.is_file():
        root.paths = OmegaConf.load(paths_default)
    root.data = OmegaConf.load(cfg_path)
    if data_root is not None:
        root.paths.df40_root = data_root
        root.data.data_root = data_root
    if json_dir is not None:
        root.paths.df40_json_dir = json_dir
        root.data.json_dir = json_dir
    if overrides:
        root = OmegaConf.merge(root, OmegaConf.from_dotlist(list(overrides)))

    def get(key: str, default: Any = None) -> Any:
        try:
            node = OmegaConf.select(root, f"data.{key}", default=default, throw_on_missing=True)
            return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except OmegaConfBaseException as exc:
            raise SystemExit(f"{config}: cannot resolve data.{key} ({exc}); pass --data-root / --json-dir "
                             "or --set paths.<name>=VALUE") from None

    json_dir_value = get("json_dir")
    if json_dir_value is None:
        raise SystemExit(f"{config}: no json_dir; pass --json-dir")
    names: dict[str, None] = {}
    for group in ("families", "test_splits"):
        for lst in (get(group) or {}).values():
            names.update(dict.fromkeys(lst or []))
    return DoctorSettings(
        jsons=[str(Path(json_dir_value) / f"{n}.json") for n in names],
        data_root=str(get("data_root", ".")),
        path_remap={str(k): str(v) for k, v in (get("path_remap") or {}).items()},
        label_map={str(k): int(v) for k, v in (get("label_map") or {}).items()},
        compression=get("compression", "c23"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_modules.doctor",
                                     description="Check DF40 / DeepfakeBench JSON indexes against the frames on disk.")
    parser.add_argument("jsons", nargs="*", help="JSON index files")
    parser.add_argument("--config", help="a data config YAML (e.g. configs/data/df40.yaml) instead of / besides JSONs")
    parser.add_argument("--data-root", help="root joined to (remapped) frame paths; with --config sets paths.df40_root")
    parser.add_argument("--json-dir", help="with --config: folder of the JSONs (paths.df40_json_dir)")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD=NEW", help="path prefix remap (repeatable)")
    parser.add_argument("--label", action="append", default=[], metavar="LABEL=0|1", help="extra label string (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --config: dotted override")
    parser.add_argument("--compression", default=None, help="compression level to check when present (default c23)")
    parser.add_argument("--split", action="append", default=None, help="only these splits (repeatable; default all)")
    parser.add_argument("--size-samples", type=int, default=20, help="image headers read per method (0 = all)")
    parser.add_argument("--allow-missing", action="store_true", help="exit 0 when the only problem is missing frames")
    parser.add_argument("--workers", type=int, default=8, help="threads for the existence check")
    args = parser.parse_args(argv)
    if not args.jsons and not args.config:
        parser.error("give JSON files and/or --config")
    if args.config:
        s = settings_from_config(args.config, args.data_root, args.json_dir, args.set)
    else:
        s = DoctorSettings(jsons=[], data_root=args.data_root or ".")
    s.jsons = [*s.jsons, *args.jsons]
    if args.data_root is not None:
        s.data_root = args.data_root
    s.path_remap.update(_pairs(args.remap, "--remap"))
    try:
        s.label_map.update({k: int(v) for k, v in _pairs(args.label, "--label").items()})
    except ValueError:
        parser.error("--label values must be 0 or 1")
    if args.compression is not None:
        s.compression = args.compression
    s.splits, s.size_samples, s.allow_missing, s.workers = args.split, args.size_samples, args.allow_missing, args.workers
    try:
        return run_doctor(s)
    except ValueError as exc:  # e.g. a label_map value other than 0/1
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
