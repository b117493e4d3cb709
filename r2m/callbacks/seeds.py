"""Hydra callback: aggregate the result tables of a seed sweep into one mean ± sd table.

    python train.py -m seed=0,1,2                 # fine-tuning seeds (θ0 and the carve fixed)
    python train.py -m data.carve_seed=0,1,2      # validation-carve seeds (θ0 and fine-tuning fixed)

After the sweep, every job's ``<job dir>/<results>`` (default ``merge/results.json``, the merge
step's table) is read and :func:`r2m.evaluation.aggregate.aggregate` writes
``<sweep dir>/aggregate.md`` and ``aggregate.json``: mean ± sd per method and split, and each
method's paired difference from the reference (R²M) with "beats R²M in k of n runs". A job
without its table is an error (the sweep exits non-zero; nothing is written). A single run (no
``-m``) does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["AggregateSeeds", "aggregate_sweep"]


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def _job_labels(jobs: Sequence[Path]) -> dict[str, str]:
    """Job folder → its swept overrides (``seed=1``): those not shared by every job (else the
    folder name)."""
    per_job = {j.name: _overrides(j) for j in jobs}
    common = set.intersection(*(set(o) for o in per_job.values())) if per_job else set()
    return {name: ",".join(o for o in ov if o not in common) or name for name, ov in per_job.items()}


def aggregate_sweep(sweep_dir: str | Path, results: str = "merge/results.json", reference: str = "r2m",
                    metrics: Sequence[str] = ("auc", "eer"), expected_jobs: int | None = None) -> dict[str, Any]:
    """Aggregate every job folder of ``sweep_dir`` (sub-folders holding ``.hydra/``) and write
    ``aggregate.{md,json}`` there. Returns the aggregate dict."""
    from r2m.evaluation.aggregate import aggregate, aggregate_markdown, read_split_means
    from r2m.utils import atomic_write_json, atomic_write_text

    sweep = Path(sweep_dir)
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda p: (len(p.name), p.name))
    if expected_jobs is not None and len(jobs) != expected_jobs:
        raise RuntimeError(f"seed aggregation: {sweep} holds {len(jobs)} job folders, the sweep ran {expected_jobs}")
    missing = [str(j / results) for j in jobs if not (j / results).is_file()]
    if missing or not jobs:
        raise RuntimeError(f"seed aggregation: missing result tables: {missing or f'no job folders in {sweep}'}")
    runs = {j.name: read_split_means(j / results, metrics) for j in jobs}
    labels = _job_labels(jobs)
    agg = aggregate(runs, reference=reference, metrics=metrics)
    agg["run_labels"] = labels
    text = "\n\n".join(aggregate_markdown(agg, metric=m, run_labels=labels) for m in metrics)
    atomic_write_json(sweep / "aggregate.json", agg)
    atomic_write_text(sweep / "aggregate.md", f"# Seed aggregate of {sweep.name}\n\n{text}")
    log.info("seed aggregate (%d runs) → %s\n%s", len(jobs), sweep / "aggregate.md",
             aggregate_markdown(agg, metric=metrics[0], run_labels=labels))
    return agg


class AggregateSeeds(Callback):
    """``on_multirun_end``: :func:`aggregate_sweep` over the sweep folder.

    Args:
        results: each job's results table, relative to its job folder.
        reference: the model every other model is compared with (paired differences).
        metrics: metrics aggregated (split means of the table).
    """

    def __init__(self, results: str = "merge/results.json", reference: str = "r2m",
                 metrics: Sequence[str] = ("auc", "eer")) -> None:
        self.results = results
        self.reference = reference
        self.metrics = list(metrics)
        self.n_jobs = 0

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.n_jobs += 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        aggregate_sweep(str(config.hydra.sweep.dir), self.results, self.reference, self.metrics,
                        expected_jobs=self.n_jobs or None)
