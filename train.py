"""Train deepfake-detection specialists: data + model + trainer from Hydra configs → fit → export.

    python train.py experiment=tiny
    python train.py -m experiment=df40_specialist data.family=fs,fr,efs
    python train.py experiment=df40_specialist trainer=ddp trainer.devices=8

For each task (``cfg.tasks``, default ``[cfg.data.family]``) this builds the data module
(``family=<task>``), the ``DeepfakeDetector``, callbacks, loggers and a Trainer whose
``default_root_dir`` is the run directory (``<run dir>/<task>`` with several tasks), fits
(``SpecialistExport`` writes ``specialist.safetensors``), and optionally tests the specialist and
writes ``results.{csv,json,md}``. Returns the mean best validation AUC (for Hydra sweepers).

Callbacks: each task gets fresh instances, except *run-scoped* callbacks (class attribute
``run_scoped = True``, or an ``expected_tasks`` attribute) which are created once and shared by
all tasks of the run; a run-scoped callback's ``expected_tasks`` is set to the task list when null.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

# OpenMP threads sleep instead of spinning while they wait. Must be set before torch is imported.
# On a CPU shared with other processes, spinning threads made training steps ~10× slower (measured
# on the 2-core development machine: 2.1-3.3 s vs 0.29 s per tiny64 step); GPU runs are unaffected.
# Export OMP_WAIT_POLICY=ACTIVE to restore OpenMP's default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402  (neither imports torch)
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("r2m.train")


def _rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def is_run_scoped(callback: Any) -> bool:
    """A callback shared by all tasks of a run (e.g. the merge callback)."""
    return bool(getattr(type(callback), "run_scoped", False)) or hasattr(callback, "expected_tasks")


def make_callbacks(cfg: DictConfig, task_dir: Path, tasks: list[str], shared: dict[str, Any]) -> list[Any]:
    """Instantiate ``cfg.callbacks`` in order; reuse run-scoped instances from ``shared``."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if name in shared:
            callbacks.append(shared[name])
            continue
        if not _has_target(node):
            continue
        cb = instantiate(node)
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str((task_dir / "checkpoints").resolve())
        if is_run_scoped(cb):
            if getattr(cb, "expected_tasks", "absent") is None:
                cb.expected_tasks = list(tasks)
            shared[name] = cb
        callbacks.append(cb)
    return callbacks


def make_loggers(cfg: DictConfig, task: str, task_dir: Path, multi_task: bool) -> list[Any]:
    """Instantiate ``cfg.logger``; with several tasks each logger writes under the task's directory;
    a logger ``name`` left null becomes the task name."""
    from hydra.utils import instantiate

    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not _has_target(node):
            continue
        overrides: dict[str, Any] = {}
        if multi_task and "save_dir" in node:
            overrides["save_dir"] = str(task_dir)
        if "name" in node and node.name is None:
            overrides["name"] = task
        loggers.append(instantiate(node, **overrides))
    return loggers


def _finish_wandb(loggers: list[Any]) -> None:
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


def run_pretraining(cfg: DictConfig, first_task: str) -> Path:
    """``cfg.pretrain`` → a cached base file trained on real images once (r2m.models.pretrain)."""
    from r2m.models.pretrain import pretrain_from_config

    return pretrain_from_config(cfg, first_task)


def train_task(cfg: DictConfig, task: str, task_dir: Path, tasks: list[str], shared: dict[str, Any],
               config_dict: dict, pretrained: str | None) -> tuple[Any, Any]:
    """Fit (and optionally test) one specialist. Returns ``(model, trainer)``."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True)  # same θ0 for every task when the init is random
    model_overrides = {"pretrained": pretrained} if pretrained is not None else {}
    model = instantiate(cfg.model, **model_overrides)
    model.run_config = config_dict
    data_overrides: dict[str, Any] = {"family": task}
    for key, value in (("mean", model.input_mean), ("std", model.input_std)):
        if key in cfg.data and cfg.data[key] is None:
            data_overrides[key] = list(value)
    datamodule = instantiate(cfg.data, **data_overrides)

    callbacks = make_callbacks(cfg, task_dir, tasks, shared)
    loggers = make_loggers(cfg, task, task_dir, multi_task=len(tasks) > 1)
    for lg in loggers:
        lg.log_hyperparams(config_dict)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(task_dir))
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.is_global_zero and model.exported_specialist_path is not None:
        log.info("[%s] specialist: %s", task, model.exported_specialist_path)

    if cfg.get("test_after_fit"):
        exported = model.exported_specialist_path is not None
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=None if exported or not best else "best")
        if trainer.is_global_zero and model.test_results is not None:
            from r2m.evaluation import ResultsTable, format_summary

            table = ResultsTable()
            table.add(f"specialist_{task}", model.test_results)
            table.write(task_dir)
            log.info("[%s] test results (%s/results.md):\n%s", task, task_dir, format_summary(model.test_results))
    _finish_wandb(loggers)
    return model, trainer


def _best_val_auc(model: Any, trainer: Any) -> float | None:
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "monitor", None) == "val/auc" and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    value = trainer.callback_metrics.get("val/auc")
    return None if value is None else float(value)


def train(cfg: DictConfig) -> float | None:
    """Run all tasks of ``cfg``; return the mean best validation AUC (``None`` if unavailable)."""
    import torch

    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config") and _rank_zero():
        print(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    tasks = [str(t) for t in (cfg.get("tasks") or [cfg.data.family])]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks has duplicates: {tasks}")
    if cfg.get("ckpt_path") and len(tasks) > 1:
        raise ValueError(f"ckpt_path resumes one task; got tasks={tasks}. Set tasks=[<task>] (or leave it null).")
    config_dict = OmegaConf.to_container(cfg, resolve=True)

    pretrained = None
    if cfg.get("pretrain"):
        pretrained = str(run_pretraining(cfg, tasks[0]))
        log.info("pretrained base θ0: %s", pretrained)

    shared: dict[str, Any] = {}
    aucs: dict[str, float | None] = {}
    exported: dict[str, Any] = {}
    for task in tasks:
        task_dir = run_dir / task if len(tasks) > 1 else run_dir
        model, trainer = train_task(cfg, task, task_dir, tasks, shared, config_dict, pretrained)
        aucs[task] = _best_val_auc(model, trainer)
        exported[task] = model.exported_specialist_path
    if _rank_zero():
        for task in tasks:
            auc = aucs[task]
            print(f"[r2m] {task}: specialist {exported[task] or '(not exported)'}; best val AUC "
                  f"{'n/a' if auc is None else f'{auc:.4f}'}")
    values = [a for a in aucs.values() if a is not None and math.isfinite(a)]
    return sum(values) / len(values) if values else None


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
