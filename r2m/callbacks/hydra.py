"""Hydra callbacks run at the end of a multirun — thin front ends, no silent failure.

:class:`MergeOnMultirunEnd` — ``python train.py -m experiment=df40_specialist data.family=fs,fr,efs,joint``:
after the sweep, merge the specialists its jobs wrote (:func:`r2m.pipeline.run_merge`; the joint
model is evaluated alongside, never merged), so one command goes from data to the comparison table.

:class:`SweepSummary` — ``python merge.py -m ...``: one comparison table across the sweep's jobs,
the point chosen on *validation* AUC (``best.json``) and a sweep-level W&B table.

Hydra turns an ``Exception`` raised by a callback into a warning and exits 0; these callbacks
print the error and raise ``SystemExit(1)`` instead, so a failed merge or summary fails the command.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir))


def _fail(where: str, err: BaseException) -> None:
    traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"[r2m] {where} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    log.error("%s failed: %s", where, err)
    raise SystemExit(1) from err


def _deferred(callback: Callback, config: DictConfig) -> bool:
    """Cluster mode (``r2m.cluster``): under a submitit launcher the callback runs as its own job
    after the sweep, not in the submitting process; ``True`` when it was submitted."""
    try:
        from r2m.cluster import defer_to_cluster
    except ImportError:
        return False
    return bool(defer_to_cluster(callback, config))


def _wandb_node(config: DictConfig) -> dict[str, Any] | None:
    logger = config.get("logger")
    if not logger:
        return None
    for name in logger:
        node = logger[name]
        if not OmegaConf.is_dict(node) or "wandb" not in str(node.get("_target_", "")).lower():
            continue
        out = {}
        for key in node:  # after the sweep, ${hydra:runtime...} (e.g. save_dir) cannot be resolved: left out
            try:
                value = node[key]
            except Exception:  # noqa: BLE001  (an interpolation of the jobs' runtime)
                continue
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        return out
    return None


class MergeOnMultirunEnd(Callback):
    """Merge the specialists written by a training sweep, evaluate, write the comparison table.

    Args:
        methods: merge jobs (method names or ``{name, method, **hp}`` mappings).
        joint_task: kept for old configs; joint models are recognised by their metadata.
        eval_family: data family the merges are validated / tested on (``joint`` = the
            validation videos of every training family), on the specialists' recorded data.
        eval_specialists: evaluate each specialist too.
        out_subdir: output folder inside the sweep folder.
        submit_after_sweep: cluster mode hook — instead of merging in this (submitting) process,
            hand the prepared request to :meth:`submit` (implemented by the cluster launcher
            support, :mod:`r2m.cluster`), e.g. a job with an ``afterok`` dependency.
    """

    def __init__(
        self,
        methods: Sequence[Any] = ("r2m",),
        joint_task: str | None = "joint",
        eval_family: str | None = "joint",
        eval_specialists: bool = True,
        out_subdir: str = "merge",
        diagnostics: bool = True,
        check_carve: bool = True,
        submit_after_sweep: bool = False,
    ) -> None:
        from r2m.merging.jobs import jobs_from_entries

        self.methods = [m if isinstance(m, str) else dict(m) for m in methods]
        self.jobs = jobs_from_entries(self.methods)
        self.joint_task = joint_task
        self.eval_family = eval_family
        self.eval_specialists = eval_specialists
        self.out_subdir = out_subdir
        self.diagnostics = diagnostics
        self.check_carve = check_carve
        self.submit_after_sweep = submit_after_sweep

    def request(self, config: DictConfig):
        """The merge request of the sweep in ``config`` (specialists = the sweep folder)."""
        from r2m.pipeline import MergeRequest
        from r2m.report import WandbSettings

        sweep = _sweep_dir(config)
        paths = config.get("paths") or {}
        out_dir = sweep / self.out_subdir
        return MergeRequest(
            specialists=str(sweep), base_dirs=[str(paths.base_dir)] if paths.get("base_dir") else [],
            eval_family=self.eval_family, eval_specialists=self.eval_specialists,
            cache_dir=(Path(str(paths.cache_dir)) / "merge_cache") if paths.get("cache_dir") else None,
            diagnostics=self.diagnostics, check_carve=self.check_carve,
            wandb=WandbSettings.from_logger_config(_wandb_node(config), dir=str(out_dir)),
            context={"sweep_dir": str(sweep)},
        ), out_dir

    def submit(self, config: DictConfig, request: Any, out_dir: Path) -> None:
        """Cluster mode: run the merge as its own job (the sweeps helper's ``r2m.cluster``)."""
        from r2m import cluster  # noqa: F401  (provided by the cluster support)

        cluster.submit_after_sweep(config, request, self.jobs, out_dir)  # type: ignore[attr-defined]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from r2m.pipeline import run_merge

        try:
            if _deferred(self, config):
                return
            request, out_dir = self.request(config)
            if self.submit_after_sweep:
                self.submit(config, request, out_dir)
            else:
                run_merge(request, self.jobs, out_dir=out_dir)
        except Exception as err:
            _fail(f"MergeOnMultirunEnd (merge of the sweep {_sweep_dir(config)})", err)


class SweepSummary(Callback):
    """One comparison table across a ``merge.py -m`` sweep, and the point chosen on validation.

    Reads ``summary.json`` and ``results.json`` of every job folder (a job without a complete
    summary is an error), writes ``sweep_comparison.{md,csv,json}`` (every model once: the
    specialists and joint model that several jobs evaluate appear once) and ``best.json`` (the
    merge with the highest validation AUC and its test metrics) into the sweep folder, and logs
    the sweep table to W&B when the sweep logs to W&B. The test set is never used for the choice.
    """

    def __init__(self, choose_on: str = "val_auc") -> None:
        self.choose_on = choose_on

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if _deferred(self, config):
                return
            self.summarise(config)
        except Exception as err:
            _fail(f"SweepSummary of {_sweep_dir(config)}", err)

    def summarise(self, config: DictConfig) -> dict[str, Any] | None:
        from r2m.report import WandbSettings, summarise_sweep

        sweep = _sweep_dir(config)
        job_dirs = sorted((p.parent for p in sweep.glob("*/.hydra")), key=lambda p: (len(p.name), p.name))
        return summarise_sweep(sweep, job_dirs, choose_on=self.choose_on,
                               wandb=WandbSettings.from_logger_config(_wandb_node(config), dir=str(sweep)))
