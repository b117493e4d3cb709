"""Hydra callbacks run at the end of a multirun.

:class:`MergeOnMultirunEnd` — ``python train.py -m experiment=df40_specialist data.family=fs,fr,efs``:
after the sweep, collect the specialist files its jobs wrote and run the merge pipeline (R²M first,
then the baselines), so one command goes from data to the comparison table.

:class:`SweepSummary` — ``python merge.py -m ...``: combine the per-job tables into one comparison
table across the sweep, choose the point with the best *validation* AUC and report its test table.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir))


class MergeOnMultirunEnd(Callback):
    """Merge the specialists written by a training sweep, evaluate, write the comparison table.

    Args:
        methods: merge jobs (method names or ``{name, method, **hp}`` mappings).
        joint_task: task name of the joint model among the sweep's outputs (evaluated, not merged).
        eval_family: data family whose validation split is used for the merged models (``joint``
            = the validation videos of every training family).
        eval_specialists: evaluate each specialist too.
        out_subdir: output folder inside the sweep folder.
    """

    def __init__(
        self,
        methods: Sequence[Any] = ("r2m",),
        joint_task: str | None = "joint",
        eval_family: str | None = "joint",
        eval_specialists: bool = True,
        out_subdir: str = "merge",
        diagnostics: bool = True,
    ) -> None:
        self.methods = [m if isinstance(m, str) else dict(m) for m in methods]
        self.joint_task = joint_task
        self.eval_family = eval_family
        self.eval_specialists = eval_specialists
        self.out_subdir = out_subdir
        self.diagnostics = diagnostics

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # --- sweeps helper (r2m/cluster.py): under a submitit launcher this runs as its own job after the sweep
        from r2m.cluster import defer_to_cluster

        if defer_to_cluster(self, config):
            return
        # --- end sweeps helper
        import hydra

        from r2m.checkpoints import read_metadata
        from r2m.pipeline import collect_specialists, merge_and_report

        sweep = _sweep_dir(config)
        try:
            files = collect_specialists(sweep)
        except FileNotFoundError:
            log.error("MergeOnMultirunEnd: no specialist files under %s; nothing merged", sweep)
            return
        by_task = {str(read_metadata(p).get("task")): p for p in files}
        joint = by_task.pop(self.joint_task, None) if self.joint_task else None
        if not by_task:
            log.error("MergeOnMultirunEnd: only a joint model under %s; nothing to merge", sweep)
            return
        data_cfg = config.data.copy()
        if self.eval_family is not None:
            with open_dict(data_cfg):
                data_cfg.family = self.eval_family
        OmegaConf.set_readonly(data_cfg, False)
        datamodule = hydra.utils.instantiate(data_cfg)
        base_dirs = []
        if "paths" in config and config.paths.get("base_dir"):
            base_dirs.append(Path(str(config.paths.base_dir)))
        merge_and_report(
            list(by_task.values()),
            self.methods,
            datamodule,
            out_dir=sweep / self.out_subdir,
            joint=joint,
            eval_specialists=self.eval_specialists,
            base_dirs=base_dirs,
            cache_dir=(Path(str(config.paths.cache_dir)) / "merge_cache") if "paths" in config else None,
            diagnostics=self.diagnostics,
        )


class SweepSummary(Callback):
    """One comparison table across a ``merge.py -m`` sweep, and the point chosen on validation.

    Reads ``results.json`` and ``summary.json`` of every job folder, writes
    ``sweep_comparison.{md,csv,json}`` (every merged model of the sweep, per split) and
    ``best.json`` (the merged model with the highest validation AUC and its test metrics) into
    the sweep folder. The test set is never used for the choice.
    """

    def __init__(self, choose_on: str = "val_auc") -> None:
        self.choose_on = choose_on

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # --- sweeps helper (r2m/cluster.py): under a submitit launcher this runs as its own job after the sweep
        from r2m.cluster import defer_to_cluster

        if defer_to_cluster(self, config):
            return
        # --- end sweeps helper
        from r2m.evaluation import ResultsTable
        from r2m.utils import atomic_write_json, atomic_write_text

        sweep = _sweep_dir(config)
        combined = ResultsTable()
        candidates = []
        seen: set[str] = set()
        for summary_path in sorted(sweep.glob("*/summary.json")):
            job_dir = summary_path.parent
            summary = json.loads(summary_path.read_text())
            results = job_dir / "results.json"
            if results.is_file():
                table = ResultsTable.load(results)
                table.rows[:] = [r for r in table.rows if r["model"] not in seen]
                combined.extend(table)
            for model in summary.get("models", []):
                if model["name"] in seen:
                    continue
                seen.add(model["name"])
                if model.get("group") == "merge":
                    candidates.append({**model, "job_dir": str(job_dir)})
        if not candidates:
            log.warning("SweepSummary: no merged models found under %s", sweep)
            return
        if combined.rows:
            combined.write_comparison(sweep, stem="sweep_comparison")
            print(f"\nSweep comparison ({sweep}):\n{combined.comparison_markdown()}\n", flush=True)
        scored = [c for c in candidates if c.get(self.choose_on) is not None and math.isfinite(c[self.choose_on])]
        if not scored:
            log.warning("SweepSummary: no job reported %s; no point chosen", self.choose_on)
            return
        best = max(scored, key=lambda c: c[self.choose_on])
        atomic_write_json(sweep / "best.json", {"chosen_on": self.choose_on, **best})
        lines = [f"Chosen on {self.choose_on} = {best[self.choose_on]:.4f}: {best['name']} ({best['job_dir']})"]
        for split, metrics in (best.get("per_split") or {}).items():
            lines.append(f"  {split}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                   if isinstance(v, (int, float))))
        atomic_write_text(sweep / "best.txt", "\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
