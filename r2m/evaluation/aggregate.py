"""Multi-seed aggregation of result tables: mean ± sd per method and split, and every method's
paired difference from a reference method (R²M) with its sign count.

Pure functions over plain data: :func:`read_split_means` turns one results table (the merge step's
``results.json``) into ``{(model, split): {metric: value}}``; :func:`aggregate` combines those of
several runs; :func:`aggregate_markdown` renders the result. The Hydra callback
:class:`r2m.callbacks.seeds.AggregateSeeds` wires them to ``train.py -m seed=...``.

Statistics: per (model, split, metric) the mean and the sample standard deviation (``n − 1``;
``nan`` for one run) over the runs that have the value; paired differences ``d_i = v_i(model) −
v_i(reference)`` over the runs that have both, with ``k`` = number of runs where the model is
better (``d_i > 0`` for higher-is-better metrics, ``< 0`` for EER) and ``ties`` = runs with
``d_i == 0``. A difference "exceeds the seed noise" here when every run agrees on its sign
(``k == n`` or ``k == 0`` with no ties) and ``|mean d| > sd(d)``; that is a description of the
runs, not a significance test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["read_split_means", "aggregate", "aggregate_markdown", "HIGHER_IS_BETTER_DEFAULT"]

#: Metrics where larger is better (the others, e.g. EER, are better when smaller).
HIGHER_IS_BETTER_DEFAULT = ("auc", "ap", "acc", "video_auc", "video_acc")

RunMeans = dict[tuple[str, str], dict[str, float]]


def read_split_means(path: str | os.PathLike, metrics: Sequence[str] = ("auc", "eer")) -> RunMeans:
    """``{(model, split): {metric: value}}`` from the split-mean rows (``kind == "mean"``) of a
    results table written by :class:`r2m.evaluation.table.ResultsTable` (``.json``). The one place
    that reads result files: adapt it if the table format changes."""
    from r2m.evaluation.table import ResultsTable

    table = ResultsTable.load(Path(path))
    out: RunMeans = {}
    for row in table.rows:
        if row.get("kind") != "mean" or row.get("split") is None:
            continue
        values = {m: float(row[m]) for m in metrics if row.get(m) is not None}
        out[(str(row["model"]), str(row["split"]))] = values
    if not out:
        raise ValueError(f"{path}: no split-mean rows in the results table")
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(runs: Mapping[str, RunMeans], reference: str = "r2m", metrics: Sequence[str] = ("auc", "eer"),
              higher_is_better: Sequence[str] = HIGHER_IS_BETTER_DEFAULT) -> dict[str, Any]:
    """Combine the split means of several runs (``{run name: read_split_means(...)}``).

    Returns a JSON-able dict: ``runs`` (names, sorted), ``reference``, ``models`` and ``splits``
    (first-seen order), ``stats`` — one row per (model, split, metric) with ``n``, ``mean``, ``sd``,
    ``values`` (per run, ``None`` where missing) — and ``paired`` — one row per (model ≠ reference,
    split, metric) with ``n``, ``mean_diff``, ``sd_diff``, ``better`` (k), ``ties``, ``diffs``,
    ``consistent`` (every run agrees on the sign and ``|mean| > sd``). ``ValueError`` when fewer than
    one run is given or the reference model is absent from a run."""
    if not runs:
        raise ValueError("aggregate: no runs to aggregate")
    names = sorted(runs)
    models: list[str] = []
    splits: list[str] = []
    for name in names:
        for model, split in runs[name]:
            if model not in models:
                models.append(model)
            if split not in splits:
                splits.append(split)
        if not any(m == reference for m, _ in runs[name]):
            raise ValueError(f"aggregate: run {name!r} has no rows of the reference model {reference!r} "
                             f"(models: {sorted({m for m, _ in runs[name]})})")

    def value(name: str, model: str, split: str, metric: str) -> float | None:
        v = runs[name].get((model, split), {}).get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    stats, paired = [], []
    for model in models:
        for split in splits:
            for metric in metrics:
                vals = [value(n, model, split, metric) for n in names]
                present = [v for v in vals if v is not None]
                if not present:
                    continue
                mean, sd = _mean_sd(present)
                stats.append({"model": model, "split": split, "metric": metric, "n": len(present),
                              "mean": mean, "sd": sd, "values": vals})
                if model == reference:
                    continue
                refs = [value(n, reference, split, metric) for n in names]
                diffs = [v - r for v, r in zip(vals, refs) if v is not None and r is not None]
                if not diffs:
                    continue
                sign = 1.0 if metric in higher_is_better else -1.0
                better = sum(1 for d in diffs if sign * d > 0)
                ties = sum(1 for d in diffs if d == 0)
                md, sdd = _mean_sd(diffs)
                consistent = (len(diffs) >= 2 and ties == 0 and better in (0, len(diffs))
                              and (math.isnan(sdd) or abs(md) > sdd))
                paired.append({"model": model, "split": split, "metric": metric, "n": len(diffs),
                               "mean_diff": md, "sd_diff": sdd, "better": better, "ties": ties,
                               "diffs": diffs, "consistent": consistent})
    return {"format": "r2m.seed_aggregate", "version": 1, "runs": names, "reference": reference,
            "metrics": list(metrics), "models": models, "splits": splits, "stats": stats, "paired": paired}


def _pm(mean: float, sd: float, digits: int) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def aggregate_markdown(agg: Mapping[str, Any], metric: str = "auc", digits: int = 3,
                       run_labels: Mapping[str, str] | None = None) -> str:
    """Two Markdown tables for ``metric``: mean ± sd per model (rows) and split (columns); and each
    model's paired difference from the reference per split as ``+0.012 ± 0.008 (3/3)`` — mean ±
    sd of the difference and in how many runs the model beats the reference."""
    from r2m.evaluation.table import markdown_table

    splits, ref = list(agg["splits"]), agg["reference"]
    stat = {(r["model"], r["split"]): r for r in agg["stats"] if r["metric"] == metric}
    pair = {(r["model"], r["split"]): r for r in agg["paired"] if r["metric"] == metric}
    n = len(agg["runs"])
    runs = ", ".join(run_labels.get(r, r) for r in agg["runs"]) if run_labels else ", ".join(agg["runs"])
    lines = [f"### {metric.upper()} over {n} run(s): mean ± sd (sample sd, n − 1)\n", f"Runs: {runs}\n"]
    rows = [[m] + [_pm(stat[(m, s)]["mean"], stat[(m, s)]["sd"], digits) if (m, s) in stat else "" for s in splits]
            for m in agg["models"]]
    lines.append(markdown_table(["model", *splits], rows, [False] + [True] * len(splits)))
    lines.append(f"\n### Paired difference from {ref} ({metric.upper()}, model − {ref}): mean ± sd "
                 f"(beats {ref} in k of n runs){' ; * = every run agrees and |mean| > sd' if n > 1 else ''}\n")
    rows = []
    for m in agg["models"]:
        if m == ref:
            continue
        cells = []
        for s in splits:
            p = pair.get((m, s))
            if p is None:
                cells.append("")
                continue
            mean = f"{p['mean_diff']:+.{digits}f}"
            sd = "" if math.isnan(p["sd_diff"]) else f" ± {p['sd_diff']:.{digits}f}"
            tie = f", {p['ties']} tie" if p["ties"] else ""
            cells.append(f"{mean}{sd} ({p['better']}/{p['n']}{tie}){' *' if p['consistent'] else ''}")
        rows.append([m, *cells])
    lines.append(markdown_table(["model", *splits], rows, [False] + [True] * len(splits)))
    return "\n".join(lines)
