"""Reports of a merge run: tables, summary, ROC plots and W&B — results only, no models.

:class:`MergeReport` collects :class:`~r2m.evaluation.evaluator.ModelEval` s and writes, into
``out_dir``: ``results.{csv,json,md}`` (tidy), ``comparison.{md,csv,json}``, ``roc_<split>.png``,
``summary.json`` with ``status: complete`` — or, when the run fails, ``summary.json`` with
``status: failed`` and the error, plus a ``FAILED`` marker file, so partial output never looks
complete (a stale marker of an earlier run is removed when a run starts).

W&B (:class:`WandbSettings`): the report owns its runs and always finishes them (``exit_code=1``
on failure). One run per merge job, ``job_type="merge"``, in the group of the training sweep,
named after the method and the hyperparameters that differ from its defaults; config = method,
hyperparameters, specialists' tasks and sha256; the same metric keys in every run
(``val/auc``, ``test/<split>/<metric>``, ``test/<test set>/<metric>``); the run's results and
comparison tables (the merge next to the specialists / joint model) and ROC images. A sweep-level
table goes to one ``job_type="merge-summary"`` run (:func:`log_sweep_table`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2m.evaluation.functional import ALL_METRIC_KEYS
from r2m.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["WandbSettings", "MergeReport", "metric_keys", "log_sweep_table", "summarise_sweep", "FAILED_MARKER",
           "jsonable"]

FAILED_MARKER = "FAILED"


def jsonable(obj: Any) -> Any:
    """Plain JSON data (non-finite floats → ``None``, paths → strings)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    return json.loads(json.dumps(obj, default=str))


def metric_keys(ev: Any) -> dict[str, float]:
    """The scalar keys of one model, identical in every merge run: ``val/auc``,
    ``test/<split>/<metric>`` (split means, incl. ``overall``), ``test/<test set>/<metric>``."""
    out: dict[str, float] = {}
    if ev.val_auc is not None and math.isfinite(ev.val_auc):
        out["val/auc"] = float(ev.val_auc)
    res = ev.result
    if res is not None:
        for group in (res.per_split, res.per_set):
            for name, metrics in group.items():
                for key in ALL_METRIC_KEYS:
                    value = metrics.get(key)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        out.setdefault(f"test/{name}/{key}", float(value))
    return out


# ------------------------------------------------------------------------------------ W&B


@dataclass
class WandbSettings:
    """Where and how merge runs go to W&B (``None`` settings = no W&B)."""

    project: str = "r2m"
    dir: str | None = None
    mode: str = "offline"            # offline | online | disabled (WANDB_MODE in the environment wins)
    group: str | None = None
    entity: str | None = None
    tags: list[str] = field(default_factory=list)

    @classmethod
    def from_logger_config(cls, node: Mapping[str, Any] | None, **overrides: Any) -> WandbSettings | None:
        """From a Lightning ``WandbLogger`` config (``configs/logger/wandb.yaml``); ``None`` when
        ``node`` is not a W&B logger config."""
        if not node or "wandb" not in str(node.get("_target_", "")).lower():
            return None
        s = cls(project=node.get("project") or "r2m", dir=node.get("save_dir"),
                mode="offline" if node.get("offline", True) else "online", group=node.get("group"),
                entity=node.get("entity"), tags=[str(t) for t in (node.get("tags") or [])])
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    def init(self, *, name: str, job_type: str, config: Mapping[str, Any], tags: Sequence[str] = ()):
        import wandb

        if self.dir:
            Path(self.dir).mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.project, entity=self.entity, dir=self.dir, group=self.group,
                          job_type=job_type, name=name, config=dict(config), tags=[*self.tags, *tags] or None,
                          mode=os.environ.get("WANDB_MODE") or self.mode, reinit="create_new")


def _wandb_table(rows: Sequence[Mapping[str, Any]]):
    import wandb

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return wandb.Table(columns=columns, data=[[jsonable(r.get(c)) for c in columns] for r in rows],
                       allow_mixed_types=True)


def log_sweep_table(settings: WandbSettings | None, rows: Sequence[Mapping[str, Any]], *, name: str = "sweep summary",
                    config: Mapping[str, Any] | None = None) -> None:
    """One ``job_type="merge-summary"`` run holding ``sweep/comparison`` (one row per merge)."""
    if settings is None or not rows:
        return
    run = settings.init(name=name, job_type="merge-summary", config=config or {"n_merges": len(rows)})
    try:
        run.log({"sweep/comparison": _wandb_table(rows)})
        best = [r for r in rows if isinstance(r.get("val_auc"), (int, float)) and math.isfinite(r["val_auc"])]
        if best:
            top = max(best, key=lambda r: r["val_auc"])
            run.summary["best/name"] = top.get("model") or top.get("name")
            run.summary["best/val_auc"] = float(top["val_auc"])
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


# --------------------------------------------------------------------------------- report


class MergeReport:
    """Collects evaluations of one merge run and writes every report (see module docstring)."""

    def __init__(self, out_dir: str | Path, *, pool_info: Mapping[str, Any] | None = None,
                 wandb: WandbSettings | None = None, context: Mapping[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.pool_info = dict(pool_info or {})
        self.wandb = wandb
        self.context = dict(context or {})
        self.evals: list[Any] = []
        self.images: list[Path] = []
        self.jobs: list[dict[str, Any]] = []
        self._run = None

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Create ``out_dir`` and remove a stale ``FAILED`` marker of an earlier run."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / FAILED_MARKER).unlink(missing_ok=True)

    def add(self, ev: Any) -> None:
        self.evals.append(ev)

    def references(self) -> list[Any]:
        """Evaluations of specialists / joint model (shown next to every merge)."""
        return [e for e in self.evals if e.group != "merge"]

    # per merge job: one W&B run ------------------------------------------------------
    def job_config(self, job: Any) -> dict[str, Any]:
        return {
            "merge/name": job.name,
            "merge/method": job.method,
            **{f"merge/{k}": v for k, v in job.full_hparams().items()},
            "specialists/tasks": [s["task"] for s in self.pool_info.get("specialists", [])],
            "specialists/sha256": {s["task"]: s["sha256"] for s in self.pool_info.get("specialists", [])},
            **{f"context/{k}": v for k, v in self.context.items()},
        }

    def begin_job(self, job: Any) -> None:
        """Open the job's W&B run (before its merge is computed)."""
        self.jobs.append({"name": job.name, "method": job.method, "hparams": job.full_hparams(), "status": "running"})
        if self.wandb is not None:
            tags = [job.method, *(f"{k}={v}" for k, v in job.changed_hparams().items())]
            self._run = self.wandb.init(name=job.name, job_type="merge", config=jsonable(self.job_config(job)),
                                        tags=tags)

    def end_job(self, job: Any, ev: Any | None, images: Sequence[Path] = ()) -> None:
        """Log the job's evaluation to its W&B run and finish it."""
        self.jobs[-1]["status"] = "complete"
        run, self._run = self._run, None
        if run is None:
            return
        try:
            payload: dict[str, Any] = {}
            if ev is not None:
                payload.update(metric_keys(ev))
                table = self.results_table([*self.references(), ev])
                if table.rows:
                    payload["merge/results"] = _wandb_table(table.rows)
                    payload["merge/comparison"] = _wandb_table(table.comparison(("auc", "ap", "eer", "acc")))
            import wandb

            for img in images:
                payload[f"merge/{Path(img).stem}"] = wandb.Image(str(img))
            run.log(payload)
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()

    def abort_job(self) -> None:
        if self.jobs and self.jobs[-1]["status"] == "running":
            self.jobs[-1]["status"] = "failed"
        run, self._run = self._run, None
        if run is not None:
            run.finish(exit_code=1)

    # ------------------------------------------------------------------------ files
    def results_table(self, evals: Sequence[Any] | None = None):
        from r2m.evaluation import ResultsTable

        table = ResultsTable()
        for ev in self.evals if evals is None else evals:
            if ev.result is not None:
                table.add(ev.name, ev.result, group=ev.group, extra={"val_auc": ev.val_auc})
        return table

    def summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        models = [{
            "name": ev.name, "group": ev.group, "val_auc": ev.val_auc,
            "path": str(ev.path) if ev.path else None,
            "per_split": ev.result.per_split if ev.result is not None else None,
            **{f"hp/{k}": v for k, v in ev.extra.items()},
        } for ev in self.evals]
        out = {"status": status, **self.pool_info, "models": models, "jobs": self.jobs, **self.context}
        if error:
            out["error"] = error
        return jsonable(out)

    def roc_images(self, evals: Sequence[Any], out_dir: Path, stem: str = "roc") -> list[Path]:
        from r2m.evaluation import plot_roc

        evaluated = {ev.name: ev.result for ev in evals if ev.result is not None}
        if not evaluated:
            return []
        first = next(iter(evaluated.values()))
        return plot_roc(evaluated, first.test_splits, out_dir, stem=stem)

    def complete(self) -> dict[str, Path]:
        """Write tables, comparison, ROC curves and ``summary.json`` (status complete)."""
        written: dict[str, Path] = {}
        table = self.results_table()
        if table.rows:
            written.update({f"table_{k}": v for k, v in table.write(self.out_dir).items()})
            written.update({f"comparison_{k}": v for k, v in table.write_comparison(self.out_dir).items()})
            for i, p in enumerate(self.roc_images(self.evals, self.out_dir)):
                written[f"roc_{i}"] = p
            print(f"\nComparison ({self.out_dir}):\n{table.comparison_markdown()}\n", flush=True)
        written["summary"] = atomic_write_json(self.out_dir / "summary.json", self.summary("complete"))
        return written

    def fail(self, err: BaseException) -> None:
        """Mark the run failed: ``summary.json`` (status failed, error) and a ``FAILED`` marker."""
        self.abort_job()
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out_dir / "summary.json", self.summary("failed", f"{type(err).__name__}: {err}"))
            atomic_write_text(self.out_dir / FAILED_MARKER, text)
        except OSError as write_err:  # never hide the original error
            log.error("could not write the failure marker in %s: %s", self.out_dir, write_err)

    def sweep_rows(self) -> list[dict[str, Any]]:
        """One row per merge of this run: name, method, hyperparameters, val AUC, split means."""
        rows = []
        for ev in self.evals:
            if ev.group != "merge":
                continue
            row = {"model": ev.name, "val_auc": ev.val_auc, **{f"hp/{k}": v for k, v in ev.extra.items()}}
            row.update({k: v for k, v in metric_keys(ev).items() if k.count("/") == 2 and k.split("/")[1]
                        in ((ev.result.per_split if ev.result else {}) or {})})
            rows.append(row)
        return rows


# --------------------------------------------------------------------------------- sweeps


def summarise_sweep(sweep: str | Path, job_dirs: Sequence[str | Path], *, choose_on: str = "val_auc",
                    wandb: WandbSettings | None = None) -> dict[str, Any] | None:
    """Combine the merge runs in ``job_dirs`` (each with ``summary.json`` / ``results.json``) into
    ``<sweep>/sweep_comparison.{md,csv,json}`` (every model once: specialists and the joint model
    that several jobs evaluate appear once), choose the merge with the best ``choose_on``
    (validation, never test) into ``best.json`` / ``best.txt``, and log the sweep table to W&B
    (group: the jobs' group). A job without a complete summary is an error. Returns the best row."""
    from dataclasses import replace

    from r2m.evaluation import ResultsTable

    sweep = Path(sweep)
    combined = ResultsTable()
    candidates: list[dict[str, Any]] = []
    groups: set[str] = set()
    for job_dir in map(Path, job_dirs):
        summary_path = job_dir / "summary.json"
        if not summary_path.is_file():
            raise RuntimeError(f"{job_dir}: no summary.json (the job did not finish)")
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "complete":
            raise RuntimeError(f"{summary_path}: status {summary.get('status')!r}: {summary.get('error')}")
        if summary.get("wandb_group"):
            groups.add(summary["wandb_group"])
        results = job_dir / "results.json"
        if results.is_file():
            combined.extend(ResultsTable.load(results), skip_existing=True)
        candidates += [{**m, "job_dir": str(job_dir)} for m in summary.get("models", []) if m.get("group") == "merge"]
    if not candidates:
        raise RuntimeError(f"no merged models in the job folders of {sweep}")
    if combined.rows:
        combined.write_comparison(sweep, stem="sweep_comparison")
        print(f"\nSweep comparison ({sweep}):\n{combined.comparison_markdown()}\n", flush=True)
    rows = [{"model": c["name"], "job_dir": c["job_dir"], choose_on: c.get(choose_on),
             **{k: v for k, v in c.items() if k.startswith("hp/")},
             **{f"test/{s}/{m}": v for s, ms in (c.get("per_split") or {}).items() for m, v in ms.items()
                if m in ("auc", "eer")}} for c in candidates]
    if wandb is not None:
        wandb = replace(wandb, group=wandb.group or (next(iter(groups)) if len(groups) == 1 else None))
    log_sweep_table(wandb, rows, name=f"sweep summary ({len(rows)} merges)")
    scored = [c for c in candidates if isinstance(c.get(choose_on), (int, float)) and math.isfinite(c[choose_on])]
    if not scored:
        log.warning("sweep summary: no job reported %s; no point chosen", choose_on)
        return None
    best = max(scored, key=lambda c: c[choose_on])
    atomic_write_json(sweep / "best.json", jsonable({"chosen_on": choose_on, **best}))
    lines = [f"Chosen on {choose_on} = {best[choose_on]:.4f}: {best['name']} ({best['job_dir']})"]
    for split, metrics in (best.get("per_split") or {}).items():
        lines.append(f"  {split}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float))))
    atomic_write_text(sweep / "best.txt", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return best
