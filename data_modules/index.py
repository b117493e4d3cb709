"""Reader for DeepfakeBench / DF40 JSON indexes, path remapping, existence checks and dedupe.

Format (``<name>.json``)::

    {<name>: {<label group>: {<split>: {[<compression>]: {<video>: {"label": str,
                                                                   "frames": [path, ...],
                                                                   "masks": [path, ...]}}}}}}

The optional compression level (``c23``/``c40``/``raw`` in FF++ files) is detected by structure:
a split whose children are video entries (dicts with ``frames``/``label``) has no level; a split
whose children are dicts *of* video entries has one. The per-video ``label`` string (not the group
key) decides the class; the group key is kept as the "method".
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_modules.labels import LabelMapper, UnknownLabelError

__all__ = [
    "IndexFormatError",
    "MissingFramesError",
    "VideoRecord",
    "PathResolver",
    "natural_key",
    "natural_sorted",
    "read_json",
    "parse_index",
    "IndexReport",
    "check_frames",
    "dedupe_frames",
    "frames_exist",
    "progress",
    "unknown_label_strings",
    "UNKNOWN_LABEL",
    "DEFAULT_PATH_REMAP",
    "UnknownLabelError",
]

UNKNOWN_LABEL = -1

#: JSON path prefix → folder under ``data_root`` for DF40's JSONs (the layout of configs/data/df40.yaml
#: and the README: ``<root>/{DF40,DF40_train,FaceForensics++,Celeb-DF-v2}``). Relative targets join ``data_root``.
DEFAULT_PATH_REMAP: dict[str, str] = {
    "deepfakes_detection_datasets/DF40": "DF40",
    "deepfakes_detection_datasets/DF40_train": "DF40_train",
    "deepfakes_detection_datasets/FaceForensics++": "FaceForensics++",
    "deepfakes_detection_datasets/Celeb-DF-v2": "Celeb-DF-v2",
}


class IndexFormatError(ValueError):
    """A JSON index that is malformed or does not follow the DeepfakeBench structure."""


class MissingFramesError(FileNotFoundError):
    """Frames listed in a JSON index that do not exist on disk (``on_missing="error"``)."""


@dataclass
class VideoRecord:
    """One video of one JSON index: all its (resolved, naturally sorted) frame paths."""

    dataset: str            # JSON name (file stem)
    method: str             # label group key
    label_name: str         # per-video label string
    label: int              # 0 real, 1 fake (-1 only when parsed with unknown_labels="keep")
    video: str              # video folder key
    split: str
    compression: str | None
    frames: list[str]
    masks: list[str] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """Collision-free video key: (dataset JSON name, label group / method, video folder).

        The group key (not the label string) is used because DF40 family JSONs give every method
        the same label string (``FSAll_Fake``) and reuse folder names (``000_003``) across methods;
        JSON object keys make (group, split, video) unique within a file."""
        return (self.dataset, self.method, self.video)


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key splitting digit runs into integers: ``2.png < 10.png``, ``seed0188 < seed1020``.

    ``re.split`` with a capturing group alternates text (even positions) and digit runs (odd
    positions), so two keys always compare str with str and int with int; the raw text breaks
    ties such as ``0188`` vs ``188``."""
    parts: list = _DIGITS.split(text)
    parts[1::2] = map(int, parts[1::2])
    return (tuple(parts), text)


def natural_sorted(paths: Iterable[str]) -> list[str]:
    """Naturally sorted copy of ``paths`` (by folder, then by file name)."""
    paths = list(paths)
    if len(paths) < 2:
        return paths
    split = [p.rpartition("/") for p in paths]
    if len({h for h, _, _ in split}) == 1:  # one folder (the usual video): sort by file name only
        order = sorted(range(len(paths)), key=lambda i: natural_key(split[i][2]))
    else:
        order = sorted(range(len(paths)), key=lambda i: (natural_key(split[i][0]), natural_key(split[i][2])))
    return [paths[i] for i in order]


def _norm(path: str) -> str:
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


class PathResolver:
    """Maps a JSON frame path to a file path: backslashes → ``/``, longest matching prefix in
    ``path_remap`` replaced (matched on whole path components), then joined to ``data_root``
    unless absolute.

    ``PathResolver("/data", {"deepfakes_detection_datasets/DF40": "DF40"})`` maps
    ``deepfakes_detection_datasets/DF40/simswap/x.png`` → ``/data/DF40/simswap/x.png``.
    """

    def __init__(self, data_root: str | os.PathLike = ".", path_remap: Mapping[str, str] | None = None):
        self.data_root = os.fspath(data_root)
        remap = {}
        for prefix, repl in (path_remap or {}).items():
            p = _norm(str(prefix)).rstrip("/")
            if not p:
                raise ValueError(f"path_remap has an empty prefix (mapped to {repl!r})")
            remap[p] = os.fspath(repl).replace("\\", "/").rstrip("/") if repl is not None else ""
        self._prefixes = sorted(remap.items(), key=lambda kv: len(kv[0]), reverse=True)
        self._folders: dict[str, str] = {}

    def remap(self, path: str) -> str:
        """Apply the prefix table only (no root join)."""
        path = _norm(path)
        for prefix, repl in self._prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                rest = path[len(prefix):].lstrip("/")
                return f"{repl}/{rest}" if repl and rest else (repl or rest)
        return path

    def __call__(self, path: str) -> str:
        path = _norm(path)
        head, sep, tail = path.rpartition("/")
        if not head:  # "name.png" or "/name.png"
            return os.path.join(self.data_root, self.remap(path))
        folder = self._folders.get(head)  # frames of a video share their folder: remap it once
        if folder is None:
            folder = self._folders[head] = os.path.join(self.data_root, self.remap(head))
        return folder + tail if folder.endswith("/") else f"{folder}/{tail}"


def read_json(path: str | os.PathLike) -> dict:
    """Load a JSON index; malformed JSON or an unreadable file raises :class:`IndexFormatError`
    naming the file (and line/column)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as exc:
        raise IndexFormatError(f"{path}: malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{path}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise IndexFormatError(f"{path}: cannot read JSON index: {exc}") from exc
    if not isinstance(obj, dict) or not obj:
        raise IndexFormatError(f"{path}: expected a JSON object {{<dataset name>: {{...}}}}, got {type(obj).__name__}")
    return obj


def _is_video(node: object) -> bool:
    return isinstance(node, dict) and ("frames" in node or "label" in node)


def _split_videos(node: object, where: str, compression: str | None) -> tuple[dict, str | None]:
    """Children of a split node → ({video: entry}, compression level or None)."""
    if not isinstance(node, dict):
        raise IndexFormatError(f"{where}: expected an object of videos, got {type(node).__name__}")
    if all(_is_video(c) for c in node.values()):
        return node, None
    if all(isinstance(c, dict) and not _is_video(c) and all(_is_video(v) for v in c.values())
           for c in node.values()):
        levels = sorted(node)
        if compression is None:
            if len(levels) != 1:
                raise IndexFormatError(f"{where}: several compression levels {levels}; choose one with `compression`")
            compression = levels[0]
        if compression not in node:
            raise IndexFormatError(f"{where}: compression level {compression!r} not present (found {levels})")
        return node[compression], compression
    raise IndexFormatError(
        f"{where}: mixed structure: children must all be videos ({{'label', 'frames'}}) "
        f"or all be compression levels holding videos"
    )


def _str_list(value: object, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IndexFormatError(f"{where}: {key!r} must be a list of path strings")
    return value


def parse_index(
    source: str | os.PathLike | Mapping,
    *,
    name: str | None = None,
    labels: LabelMapper | None = None,
    resolver: Callable[[str], str] | None = None,
    compression: str | None = "c23",
    splits: Sequence[str] | None = None,
    unknown_labels: str = "error",
) -> dict[str, list[VideoRecord]]:
    """Parse one JSON index into ``{split: [VideoRecord, ...]}``.

    ``source`` is a path (dataset name = file stem) or an already loaded object (then ``name``
    is required). ``splits`` restricts the splits kept. ``unknown_labels="keep"`` records
    unknown label strings with ``label=-1`` instead of raising (used by the doctor).
    Frame lists are naturally sorted after path resolution; group/split/video order follows the JSON.
    """
    if unknown_labels not in ("error", "keep"):
        raise ValueError(f"unknown_labels must be 'error' or 'keep', got {unknown_labels!r}")
    labels = labels or LabelMapper()
    resolver = resolver or PathResolver()
    if isinstance(source, Mapping):
        if name is None:
            raise ValueError("parse_index: `name` is required when `source` is an object")
        obj, where0 = source, f"<{name}>"
    else:
        path = Path(source)
        obj, where0 = read_json(path), str(path)
        name = name or path.stem
    if name in obj:
        top = obj[name]
    elif len(obj) == 1:
        top = next(iter(obj.values()))
    else:
        raise IndexFormatError(f"{where0}: top-level key {name!r} not found (keys: {sorted(obj)[:10]})")
    if not isinstance(top, dict):
        raise IndexFormatError(f"{where0}: value of the top-level key must be an object of label groups")

    out: dict[str, list[VideoRecord]] = defaultdict(list)
    for group, group_node in top.items():
        if not isinstance(group_node, dict):
            raise IndexFormatError(f"{where0}: label group {group!r} must be an object of splits")
        for split, split_node in group_node.items():
            if splits is not None and split not in splits:
                continue
            where = f"{where0} [{group}/{split}]"
            videos, level = _split_videos(split_node, where, compression)
            bucket = out[split]  # present even when empty
            for video, entry in videos.items():
                vwhere = f"{where0} [{group}/{split}/{video}]"
                if "label" not in entry:
                    raise IndexFormatError(f"{vwhere}: video entry has no 'label'")
                label_name = entry["label"]
                if unknown_labels == "keep" and isinstance(label_name, str) and labels.lookup(label_name) is None:
                    label = UNKNOWN_LABEL
                else:
                    label = labels(label_name, source=vwhere)
                frames = _str_list(entry.get("frames", []), vwhere, "frames")
                masks = entry.get("masks")
                masks = natural_sorted(resolver(m) for m in _str_list(masks, vwhere, "masks")) if masks else None
                bucket.append(VideoRecord(
                    dataset=name, method=str(group), label_name=label_name, label=label, video=str(video),
                    split=split, compression=level, frames=natural_sorted(resolver(f) for f in frames), masks=masks,
                ))
    return dict(out)


@dataclass
class IndexReport:
    """Counts per (dataset, split, method): listed videos/frames, missing frames, videos dropped
    for having no existing frame left, duplicate frames (and fully duplicated videos) removed by
    dedupe, videos left out of training and validation by the identity carve (their identities
    are split between the two sides), and what is finally used (after sampling and the validation carve)."""

    FIELDS = ("videos", "frames", "missing_frames", "dropped_videos", "duplicate_frames",
              "duplicate_videos", "left_out_videos", "used_videos", "used_frames", "real_frames", "fake_frames")
    rows: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=dict)

    def row(self, dataset: str, split: str, method: str) -> dict[str, int]:
        return self.rows.setdefault((dataset, split, method), dict.fromkeys(self.FIELDS, 0))

    def total(self, key: str, dataset: str | None = None, split: str | None = None) -> int:
        return sum(r[key] for (d, s, _), r in self.rows.items()
                   if (dataset is None or d == dataset) and (split is None or s == split))

    def as_dict(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{"<dataset>/<split>": {method: counts}}`` (JSON-friendly)."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (d, s, m), r in self.rows.items():
            out.setdefault(f"{d}/{s}", {})[m] = dict(r)
        return out

    def format(self) -> str:
        """A plain-text table of all rows."""
        cols = ("videos", "frames", "missing_frames", "dropped_videos", "duplicate_frames", "left_out_videos",
                "used_videos",
                "used_frames", "real_frames", "fake_frames")
        head = ["dataset/split", "method", *cols]
        lines = [[f"{d}/{s}", m, *(str(r[c]) for c in cols)] for (d, s, m), r in self.rows.items()]
        widths = [max(len(x) for x in col) for col in zip(head, *lines)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        return "\n".join(fmt.format(*row) for row in [head, *lines])

    def __getitem__(self, key: str) -> dict[str, dict[str, int]]:
        return self.as_dict()[key]


def _exists_chunk(paths: Sequence[str]) -> list[bool]:
    isfile = os.path.isfile
    return [isfile(p) for p in paths]


#: lists shorter than this get no progress bar (tests, small fixtures)
PROGRESS_MIN = 20_000


def progress(iterable: Iterable, total: int, desc: str, unit: str = "frame", enabled: bool | None = None):
    """``tqdm`` over ``iterable`` on stderr when ``total >= PROGRESS_MIN`` (or ``enabled=True``)."""
    if enabled is False or (enabled is None and total < PROGRESS_MIN):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=True, mininterval=1.0, leave=False)


def frames_exist(paths: Sequence[str], workers: int = 8, chunk: int = 2048, desc: str | None = None,
                 show_progress: bool | None = None) -> list[bool]:
    """``os.path.isfile`` for every path, in threads for large lists (helps on network disks), with a
    progress bar (``desc``) for long lists."""
    if len(paths) <= chunk:
        return _exists_chunk(paths)
    bar = progress(range(len(paths)), len(paths), desc or "checking frames exist", enabled=show_progress)
    return map_chunks(_exists_chunk, paths, chunk, workers, bar)


def map_chunks(fn: Callable[[Sequence[str]], list], paths: Sequence[str], chunk: int, workers: int, bar: Any,
               processes: bool = False) -> list:
    """``fn`` over ``paths`` in chunks of ``chunk`` (in a thread or process pool of ``workers`` when
    there are several chunks), results in order; ``bar`` (a tqdm or a plain iterable) is advanced by
    chunk and closed at the end."""
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    out: list = []
    update = getattr(bar, "update", None)
    pool = None
    if workers <= 1 or len(chunks) <= 1:
        parts: Iterable[list] = map(fn, chunks)
    else:
        pool = (ProcessPoolExecutor if processes else ThreadPoolExecutor)(max_workers=workers)
        parts = pool.map(fn, chunks)
    try:
        for part in parts:
            out.extend(part)
            if update is not None:
                update(len(part))
    finally:
        if pool is not None:
            pool.shutdown()
        if hasattr(bar, "close"):
            bar.close()
    return out


def check_frames(
    records: Sequence[VideoRecord],
    report: IndexReport,
    on_missing: str = "error",
    workers: int = 8,
    max_listed: int = 10,
    exists: Sequence[bool] | None = None,
    desc: str | None = None,
) -> list[VideoRecord]:
    """Existence check of every listed frame (``exists``: precomputed flags for the flat frame list).

    Counts listed videos/frames and missing frames per method into ``report``. ``on_missing="error"``
    raises :class:`MissingFramesError` (count per method + example paths); ``"drop"`` removes the
    missing frames and any video left without frames (counted as ``dropped_videos``).
    """
    if on_missing not in ("error", "drop"):
        raise ValueError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
    flat = [f for r in records for f in r.frames]
    ok = list(exists) if exists is not None else frames_exist(flat, workers=workers, desc=desc)
    if len(ok) != len(flat):
        raise ValueError(f"check_frames: {len(ok)} existence flags for {len(flat)} frames")
    kept: list[VideoRecord] = []
    missing: list[str] = []
    per_method: dict[tuple[str, str, str], int] = defaultdict(int)
    pos = 0
    for rec in records:
        flags = ok[pos:pos + len(rec.frames)]
        pos += len(rec.frames)
        row = report.row(rec.dataset, rec.split, rec.method)
        row["videos"] += 1
        row["frames"] += len(rec.frames)
        n_missing = len(flags) - sum(flags)
        if n_missing:
            row["missing_frames"] += n_missing
            per_method[(rec.dataset, rec.split, rec.method)] += n_missing
            missing.extend(f for f, good in zip(rec.frames, flags) if not good)
            rec = VideoRecord(**{**rec.__dict__, "frames": [f for f, good in zip(rec.frames, flags) if good]})
        if not rec.frames:
            row["dropped_videos"] += 1
            continue
        kept.append(rec)
    if missing and on_missing == "error":
        summary = "; ".join(f"{d}/{s}/{m}: {n}" for (d, s, m), n in per_method.items())
        examples = "\n  ".join(missing[:max_listed])
        raise MissingFramesError(
            f"{len(missing)} listed frame(s) do not exist ({summary}). First ones:\n  {examples}\n"
            "Check data_root / path_remap (python -m data_modules.doctor shows per-method counts), "
            "or set on_missing=drop to drop and count them."
        )
    return kept


def dedupe_frames(
    records: Sequence[VideoRecord],
    report: IndexReport,
    seen: dict[str, tuple[int, tuple[str, str, str]]] | None = None,
) -> list[VideoRecord]:
    """Remove frames already used by an earlier video (same resolved path), in order.

    Family JSONs repeat the real videos of every method (and the FF-domain family JSONs share them),
    so each real frame is kept once, by its first video. Videos left empty are dropped. Removed frames
    are counted as ``duplicate_frames``. A path seen with two different labels raises
    :class:`IndexFormatError`. Pass the same ``seen`` dict to dedupe across several calls.
    """
    seen = {} if seen is None else seen
    kept: list[VideoRecord] = []
    for rec in records:
        fresh: list[str] = []
        for f in rec.frames:
            prev = seen.get(f)
            if prev is None:
                seen[f] = (rec.label, rec.key)
                fresh.append(f)
            elif prev[0] != rec.label:
                raise IndexFormatError(
                    f"frame {f!r} is listed as label {prev[0]} by video {prev[1]} and as label {rec.label} by {rec.key}"
                )
        n_dup = len(rec.frames) - len(fresh)
        if n_dup:
            report.row(rec.dataset, rec.split, rec.method)["duplicate_frames"] += n_dup
        if fresh:
            kept.append(rec if not n_dup else VideoRecord(**{**rec.__dict__, "frames": fresh}))
        else:
            report.row(rec.dataset, rec.split, rec.method)["duplicate_videos"] += 1
    return kept


def unknown_label_strings(records: Iterable[VideoRecord]) -> dict[str, int]:
    """Label strings parsed as unknown (``unknown_labels="keep"``) → number of videos."""
    out: dict[str, int] = defaultdict(int)
    for r in records:
        if r.label == UNKNOWN_LABEL:
            out[r.label_name] += 1
    return dict(out)

