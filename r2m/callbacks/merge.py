"""Lightning callback: merge the specialists trained in one process, then evaluate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class MergeCallback(Callback):
    """Collect each fit's exported specialist; after the last expected task, merge and evaluate.

    Pass the *same instance* to the Trainer of every task (``train.py`` does this for callbacks
    with an ``expected_tasks`` attribute and fills it with its task list). It must come after
    :class:`~r2m.models.export.SpecialistExport`, which sets ``pl_module.exported_specialist_path``
    in ``on_fit_end``.

    Args:
        methods: merge jobs: method names (their defaults) or mappings ``{name, method, **hp}``;
            R²M first by convention.
        out_dir: where the merged models, tables and plots go.
        expected_tasks: tasks of the run (``None`` → filled in by ``train.py``).
        joint_task: the task whose model is the joint ("all-in-one") baseline: evaluated, not merged.
        eval_specialists: also evaluate each specialist.
        base_dirs: where to look for ``base-<hash>.safetensors``.
        cache_dir: decomposition cache folder (``None`` → memory).
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
    ) -> None:
        from r2m.pipeline import jobs_from_entries

        self.methods = [m if isinstance(m, str) else dict(m) for m in methods]
        jobs_from_entries(self.methods)  # validate early: unknown methods / hyperparameters
        self.out_dir = Path(out_dir)
        self.expected_tasks = list(expected_tasks) if expected_tasks is not None else None
        self.joint_task = joint_task
        self.eval_specialists = eval_specialists
        self.base_dirs = [Path(d) for d in base_dirs]
        self.cache_dir = cache_dir
        self.device = device
        self.diagnostics = diagnostics
        self.save_merged = save_merged
        self.collected: dict[str, Path] = {}
        self.pipeline = None

    def on_fit_end(self, trainer, pl_module) -> None:
        path = getattr(pl_module, "exported_specialist_path", None)
        if path is None:
            raise RuntimeError(
                "MergeCallback found no exported specialist: put SpecialistExport before it in the callbacks"
            )
        dm = trainer.datamodule
        task = getattr(dm, "task_name", None) or Path(path).parent.name
        self.collected[task] = Path(path)
        expected = self.expected_tasks or [task]
        if not set(expected) <= set(self.collected):
            log.info("MergeCallback: %d/%d tasks done", len(self.collected), len(expected))
            return
        if trainer.global_rank != 0:
            return
        self.run(dm, loggers=trainer.loggers)

    def run(self, datamodule=None, loggers: Sequence[Any] = ()):
        """Merge the collected specialists (all tasks except the joint one) and evaluate."""
        from r2m.pipeline import merge_and_report

        specialists = [p for t, p in sorted(self.collected.items()) if t != self.joint_task]
        joint = self.collected.get(self.joint_task) if self.joint_task else None
        if not specialists:
            log.warning("MergeCallback: no specialists to merge")
            return None
        log.info("MergeCallback: merging %s with %s", [p.parent.name for p in specialists], self.methods)
        self.pipeline = merge_and_report(
            specialists,
            self.methods,
            datamodule,
            out_dir=self.out_dir,
            joint=joint,
            eval_specialists=self.eval_specialists,
            base_dirs=self.base_dirs,
            cache_dir=self.cache_dir,
            device=self.device,
            diagnostics=self.diagnostics,
            save_merged=self.save_merged,
            loggers=loggers,
        )
        return self.pipeline
