"""Lightning callback: merge the specialists trained in one process, then evaluate.

A thin front end of :func:`r2m.pipeline.run_merge`: any failure of the merge raises out of
``trainer.fit`` (Lightning re-raises callback errors), so ``train.py`` exits non-zero with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class MergeCallback(Callback):
    """Collect each fit's exported specialist; after the last expected task, merge and evaluate.

    Pass the *same instance* to the Trainer of every task (``train.py`` does this for callbacks
    with an ``expected_tasks`` attribute and fills it with its task list). It must come after
    :class:`~r2m.models.export.SpecialistExport`, which sets ``pl_module.exported_specialist_path``.

    Args:
        methods: merge jobs: method names (their defaults) or mappings ``{name, method, **hp}``.
        out_dir: where the merged models, tables and plots go.
        expected_tasks: tasks of the run (``None`` → filled in by ``train.py``).
        joint_task: the task whose model is the joint baseline (evaluated, not merged); a file
            whose metadata says "joint" is never merged either.
        eval_specialists: also evaluate each specialist.
        base_dirs / cache_dir / device / diagnostics / save_merged: as in :class:`r2m.pipeline.MergeRequest`.
        wandb: a W&B logger config (``configs/logger/wandb.yaml``; ``None`` → no W&B): one merge
            run per job, in the training runs' group.
        eval_family: data family the merges are validated / tested on (the specialists' data).
    """

    def __init__(
        self,
        methods: Sequence[Any] = ("r2m",),
        out_dir: str | Path = "merge",
        expected_tasks: Sequence[str] | None = None,
        joint_task: str | None = "joint",
        eval_specialists: bool = True,
        base_dirs: Sequence[str | Path] = (),
        cache_dir: str | Path | None = None,
        device: str | None = "auto",
        diagnostics: bool = True,
        save_merged: bool = True,
        wandb: Mapping[str, Any] | None = None,
        eval_family: str | None = "joint",
        check_carve: bool = True,
    ) -> None:
        from r2m.merging.jobs import jobs_from_entries

        self.methods = [m if isinstance(m, str) else dict(m) for m in methods]
        self.jobs = jobs_from_entries(self.methods)  # unknown methods / hyperparameters: error before training
        self.out_dir = Path(out_dir)
        self.expected_tasks = list(expected_tasks) if expected_tasks is not None else None
        self.joint_task = joint_task
        self.eval_specialists = eval_specialists
        self.base_dirs = [Path(d) for d in base_dirs]
        self.cache_dir = cache_dir
        self.device = device
        self.diagnostics = diagnostics
        self.save_merged = save_merged
        self.wandb = dict(wandb) if wandb else None
        self.eval_family = eval_family
        self.check_carve = check_carve
        self.collected: dict[str, Path] = {}
        self.val_aucs: dict[str, float | None] | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        path = getattr(pl_module, "exported_specialist_path", None)
        if path is None:
            raise RuntimeError("MergeCallback found no exported specialist: put SpecialistExport before it")
        task = getattr(trainer.datamodule, "task_name", None) or Path(path).parent.name
        self.collected[task] = Path(path)
        expected = self.expected_tasks or [task]
        if not set(expected) <= set(self.collected):
            log.info("MergeCallback: %d/%d tasks done", len(self.collected), len(expected))
            return
        if trainer.global_rank != 0:
            return
        self.run()

    def request(self):
        from r2m.pipeline import MergeRequest
        from r2m.report import WandbSettings

        specialists = [p for t, p in sorted(self.collected.items()) if t != self.joint_task]
        joint = self.collected.get(self.joint_task) if self.joint_task else None
        return MergeRequest(
            specialists=specialists, joint=joint, base_dirs=self.base_dirs, eval_family=self.eval_family,
            eval_specialists=self.eval_specialists, device=self.device, cache_dir=self.cache_dir,
            diagnostics=self.diagnostics, save_merged=self.save_merged, check_carve=self.check_carve,
            wandb=WandbSettings.from_logger_config(self.wandb, dir=str(self.out_dir)),
        )

    def run(self) -> dict[str, float | None]:
        """Merge the collected specialists (all tasks except the joint one) and evaluate."""
        from r2m.pipeline import run_merge

        log.info("MergeCallback: merging %s with %s", sorted(self.collected), [j.name for j in self.jobs])
        self.val_aucs = run_merge(self.request(), self.jobs, out_dir=self.out_dir)
        return self.val_aucs
