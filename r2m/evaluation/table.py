"""``ResultsTable``: tidy results of several models, written as CSV, JSON and Markdown.

Rows (one dict each): ``model``, ``group``, ``test_set``, ``split``, ``kind`` (``"set"`` or
``"mean"``), ``n_sets``, ``n_frames``, ``n_videos``, the metric columns, then any ``extra``
columns (method, hyper-parameters …). Per test set one ``kind="set"`` row (``split`` = the
split(s) listing it, joined by ``+``); per split one ``kind="mean"`` row with
``test_set = "<split> mean"``, including ``"overall mean"``.

The comparison view has one row per model (insertion order) and columns ``"<split>/<metric>"``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from r2m.evaluation.functional import ALL_METRIC_KEYS, HIGHER_IS_BETTER
from r2m.evaluation.splits import OVERALL, EvalResult
from r2m.utils import atomic_write_json, atomic_write_text

__all__ = ["ResultsTable", "BASE_COLUMNS", "markdown_table"]

BASE_COLUMNS: tuple[str, ...] = ("model", "group", "test_set", "split", "kind", "n_sets",
                                 "n_frames", "n_videos")
_FORMAT = "r2m.results_table"
_VERSION = 1
_LABELS = {"auc": "AUC", "ap": "AP", "eer": "EER", "eer_interp": "EER (interp.)", "acc": "ACC",
           "video_auc": "video AUC", "video_eer": "video EER",
           "video_eer_interp": "video EER (interp.)", "video_acc": "video ACC"}


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, digits: int) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   right_align: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured Markdown table with padded columns."""
    align = list(right_align) if right_align is not None else [False] * len(header)
    widths = [max([len(h)] + [len(r[i]) for r in rows] + [3]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a else c.ljust(w)
                                 for c, w, a in zip(cells, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a else ("-" * (w + 2))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows]) + "\n"


def _json_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _columns(rows: Iterable[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    cols = list(first)
    seen = set(cols)
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


class ResultsTable:
    """Accumulates ``EvalResult``s of several models; see the module docstring for the rows."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._models: list[tuple[str, str | None]] = []

    # ------------------------------------------------------------------ building
    def add(self, model: str, result: EvalResult, group: str | None = None,
            extra: Mapping[str, Any] | None = None) -> None:
        """Add one model's result; ``extra`` adds constant columns to all its rows."""
        ident = (str(model), group)
        if ident in self._models:
            raise ValueError(f"model {model!r} (group {group!r}) is already in the table")
        extra = dict(extra or {})
        clash = [k for k in extra if k in BASE_COLUMNS or k in ALL_METRIC_KEYS]
        if clash:
            raise ValueError(f"extra columns {clash} clash with result columns")
        rows: list[dict[str, Any]] = []
        base = {"model": str(model), "group": group}
        for name, metrics in result.per_set.items():
            rows.append({**base, "test_set": name, "split": "+".join(result.splits_of(name)) or None,
                         "kind": "set", "n_sets": 1, "n_frames": result.n_frames.get(name),
                         "n_videos": result.n_videos.get(name), **metrics, **extra})
        for split, metrics in result.per_split.items():
            sets = result.sets_in(split)
            frames = [result.n_frames[n] for n in sets if n in result.n_frames]
            videos = [result.n_videos[n] for n in sets if n in result.n_videos]
            rows.append({**base, "test_set": f"{split} mean", "split": split, "kind": "mean",
                         "n_sets": len(sets) or None,
                         "n_frames": sum(frames) if len(frames) == len(sets) and sets else None,
                         "n_videos": sum(videos) if len(videos) == len(sets) and sets else None,
                         **metrics, **extra})
        self._rows.extend(rows)
        self._models.append(ident)

    def extend(self, other: ResultsTable, skip_existing: bool = False) -> None:
        """Append all models of ``other``. A model/group already in the table raises
        ``ValueError``, or is left out with ``skip_existing`` (e.g. the specialists every job of a
        sweep evaluates again)."""
        dup = [m for m in other._models if m in self._models]
        if dup and not skip_existing:
            raise ValueError(f"models already in the table: {dup}")
        new = [m for m in other._models if m not in self._models]
        self._rows.extend(dict(r) for r in other._rows if (r["model"], r.get("group")) in set(new))
        self._models.extend(new)

    @property
    def models(self) -> list[tuple[str, str | None]]:
        """``(model, group)`` pairs in insertion order."""
        return list(self._models)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows (copies), every row with the same columns (missing cells ``None``)."""
        cols = self.columns
        return [{c: r.get(c) for c in cols} for r in self._rows]

    @property
    def columns(self) -> list[str]:
        """Base columns, metric columns present, then extra columns (first-seen order)."""
        metric_cols = [k for k in ALL_METRIC_KEYS if any(k in r for r in self._rows)]
        return _columns(self._rows, list(BASE_COLUMNS) + metric_cols)

    def __len__(self) -> int:
        return len(self._models)

    # ------------------------------------------------------------------ comparison view
    def _split_order(self) -> list[str]:
        splits = list(dict.fromkeys(r["split"] for r in self._rows if r["kind"] == "mean"))
        return [s for s in splits if s != OVERALL] + ([OVERALL] if OVERALL in splits else [])

    def comparison(self, metrics: Sequence[str] = ("auc", "eer")) -> list[dict[str, Any]]:
        """One row per model: ``model``, ``group``, extra columns, ``"<split>/<metric>"``."""
        splits = self._split_order()
        extra_cols = [c for c in self.columns if c not in BASE_COLUMNS and c not in ALL_METRIC_KEYS]
        out = []
        for model, group in self._models:
            mine = [r for r in self._rows if r["model"] == model and r["group"] == group]
            row: dict[str, Any] = {"model": model, "group": group}
            for c in extra_cols:
                row[c] = next((r[c] for r in mine if c in r), None)
            means = {r["split"]: r for r in mine if r["kind"] == "mean"}
            for split in splits:
                for m in metrics:
                    row[f"{split}/{m}"] = means.get(split, {}).get(m)
            out.append(row)
        return out

    def comparison_markdown(self, metrics: Sequence[str] = ("auc", "eer"), digits: int = 3,
                            bold_best: bool = True) -> str:
        """Markdown comparison (model rows in insertion order, ``digits`` decimals); with two or
        more models the best value of each column is bold (max AUC/AP/ACC, min EER)."""
        rows = self.comparison(metrics)
        if not rows:
            return "_no results_\n"
        metric_cols = [k for k in rows[0] if "/" in k]
        other = [k for k in rows[0] if "/" not in k and any(r.get(k) is not None for r in rows)]
        best: dict[str, float] = {}
        if bold_best and len(rows) > 1:
            for c in metric_cols:
                vals = [r[c] for r in rows if not _is_missing(r[c])]
                if vals:
                    hib = HIGHER_IS_BETTER.get(c.split("/", 1)[1], True)
                    best[c] = max(vals) if hib else min(vals)
        body = []
        for r in rows:
            cells = [_fmt(r[c], digits) for c in other]
            for c in metric_cols:
                s = _fmt(r[c], digits)
                if c in best and not _is_missing(r[c]) and round(r[c], digits) == round(best[c], digits):
                    s = f"**{s}**"
                cells.append(s)
            body.append(cells)
        header = other + [f"{c.split('/', 1)[0]} {_LABELS.get(c.split('/', 1)[1], c.split('/', 1)[1])}"
                          for c in metric_cols]
        return markdown_table(header, body, [False] * len(other) + [True] * len(metric_cols))

    # ------------------------------------------------------------------ files
    def markdown(self, digits: int = 4) -> str:
        """All rows as one Markdown table (columns that are empty everywhere are left out)."""
        rows = self.rows
        if not rows:
            return "_no results_\n"
        cols = [c for c in self.columns if any(r[c] is not None for r in rows)]
        numeric = [all(isinstance(r[c], (int, float)) or r[c] is None for r in rows) for c in cols]
        body = [[_fmt(r[c], digits) for c in cols] for r in rows]
        return markdown_table(cols, body, numeric)

    def write(self, out_dir: str | os.PathLike, stem: str = "results") -> dict[str, Path]:
        """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.md`` atomically."""
        out = Path(out_dir)
        rows, cols = self.rows, self.columns
        return {
            "csv": atomic_write_text(out / f"{stem}.csv", _csv_text(rows, cols)),
            "json": atomic_write_json(out / f"{stem}.json", {
                "format": _FORMAT, "version": _VERSION, "columns": cols,
                # cells a row does not have are left out; NaN is written as null
                "rows": [_json_safe(r) for r in self._rows]}),
            "md": atomic_write_text(out / f"{stem}.md", self.markdown()),
        }

    def write_comparison(self, out_dir: str | os.PathLike, stem: str = "comparison",
                         metrics: Sequence[str] = ("auc", "eer")) -> dict[str, Path]:
        """Write the comparison view as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json``."""
        out = Path(out_dir)
        rows = self.comparison(metrics)
        cols = _columns(rows, ["model", "group"])
        return {
            "md": atomic_write_text(out / f"{stem}.md", self.comparison_markdown(metrics)),
            "csv": atomic_write_text(out / f"{stem}.csv", _csv_text(rows, cols)),
            "json": atomic_write_json(out / f"{stem}.json", {
                "format": f"{_FORMAT}.comparison", "version": _VERSION, "metrics": list(metrics),
                "rows": [_json_safe(r) for r in rows]}),
        }

    @classmethod
    def load(cls, path: str | os.PathLike) -> ResultsTable:
        """Read a table written by ``write`` (its ``.json``); NaN metrics come back as NaN."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read a results table ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path}: not an r2m results table (format key {_FORMAT!r} missing)")
        if data.get("version") != _VERSION:
            raise ValueError(f"{path}: results table version {data.get('version')!r}, expected {_VERSION}")
        table = cls()
        for i, r in enumerate(data.get("rows", [])):
            missing = [k for k in ("model", "test_set", "kind") if k not in r]
            if missing:
                raise ValueError(f"{path}: row {i} lacks {missing}")
            row = {k: (float("nan") if k in ALL_METRIC_KEYS and v is None else v) for k, v in r.items()}
            row.setdefault("group", None)
            table._rows.append(row)
            ident = (row["model"], row.get("group"))
            if ident not in table._models:
                table._models.append(ident)
        return table
