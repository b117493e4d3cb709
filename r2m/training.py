"""Training glue behind ``train.py``: Hydra config → data, model, callbacks, loggers, Trainer → fit →
the exported specialist (docs/training.md).

:func:`train` runs every task of a run (``cfg.tasks``, default ``[cfg.data.family]``): for each it
builds the data module (``family=<task>``), the ``DeepfakeDetector``, callbacks and loggers, and a
Trainer whose ``default_root_dir`` is the run directory (``<run dir>/<task>`` with several tasks);
fits (``SpecialistExport`` writes ``specialist.safetensors``, the best validation epoch), optionally
tests the specialist (``results.{csv,json,md}``), and always closes the task's loggers (a W&B run
is finished even when the task fails). It returns the mean best validation AUC, for sweepers.

Callbacks: each task gets fresh instances, except *run-scoped* callbacks (class attribute
``run_scoped = True``, or an ``expected_tasks`` attribute) which are created once and shared by
all tasks of the run; a run-scoped callback's ``expected_tasks`` is set to the task list when null.
``LearningRateMonitor`` is dropped when there is no logger.

Resume: ``resume=<run dir>`` makes Hydra reuse that folder (``configs/hydra/default.yaml``) and each
task continues from its ``checkpoints/last.ckpt`` (the last epoch); ``ckpt_path=<file>`` starts a
new run folder from a checkpoint (one task).

Nothing here imports Lightning, torch or the data modules at import time.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "train",
    "train_task",
    "make_callbacks",
    "make_loggers",
    "close_loggers",
    "run_pretraining",
    "run_group",
    "run_name",
    "task_list",
    "resolve_resume",
    "is_run_scoped",
    "quiet_lightning",
]

log = logging.getLogger("r2m.train")

LAST_CKPT = "last.ckpt"


# ---------------------------------------------------------------------------------------- helpers


def _rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def _is_wandb(node: Any) -> bool:
    return _has_target(node) and str(node._target_).rsplit(".", 1)[-1] == "WandbLogger"


def _hydra_config() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_multirun(hc: Any) -> bool:
    from hydra.types import RunMode

    return hc is not None and hc.mode == RunMode.MULTIRUN


def is_run_scoped(callback: Any) -> bool:
    """A callback shared by all tasks of a run (e.g. the merge callback)."""
    return bool(getattr(type(callback), "run_scoped", False)) or hasattr(callback, "expected_tasks")


def task_list(cfg: DictConfig) -> list[str]:
    """``cfg.tasks`` (default ``[cfg.data.family]``), checked for duplicates."""
    tasks = [str(t) for t in (cfg.get("tasks") or [cfg.data.family])]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks has duplicates: {tasks}")
    return tasks


def task_dir_of(run_dir: Path, task: str, tasks: list[str]) -> Path:
    return run_dir / task if len(tasks) > 1 else run_dir


# ------------------------------------------------------------------------------------ a quiet log


class _LightningNoise(logging.Filter):
    """Drop Lightning's adverts ("💡 Tip: ... litlogger / litmodels") and let the hardware lines
    ("GPU available: ...", "TPU available: ...") through once per process."""

    _ONCE = ("GPU available:", "TPU available:", "HPU available:", "IPU available:", "LOCAL_RANK:")

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("💡") or "litlogger" in msg or "litmodels" in msg:
            return False
        if msg.startswith(self._ONCE):
            if msg in self.seen:
                return False
            self.seen.add(msg)
        return True


_NOISE = _LightningNoise()


def quiet_lightning() -> None:
    """Install the filter on Lightning's rank-zero loggers, and when the root logger has handlers
    (Hydra's console + ``<run dir>/train.log``) drop the console handler that ``import lightning``
    adds to the ``lightning`` logger, which printed every Lightning message twice. Idempotent."""
    import lightning  # noqa: F401  (its import installs the handler)

    if logging.getLogger().handlers:
        package = logging.getLogger("lightning")
        for handler in list(package.handlers):
            if type(handler) is logging.StreamHandler:
                package.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.pytorch.trainer.connectors.logger_connector"):
        logger = logging.getLogger(name)
        if _NOISE not in logger.filters:
            logger.addFilter(_NOISE)


def setup_run(cfg: DictConfig, tasks: list[str], group: str | None) -> None:
    """Once per run: warnings, the config (printed once per run, not per sweep job or task), the
    matmul precision, a header with seed, tasks, run folder and group."""
    import torch

    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    quiet_lightning()
    hc = _hydra_config()
    if extras.get("print_config") and _rank_zero():
        if _is_multirun(hc) and int(hc.job.num) > 0:
            overrides = " ".join(hc.overrides.task) or "(none)"
            print(f"[r2m] sweep job {hc.job.num}: overrides {overrides} "
                  f"(full config: {Path(cfg.paths.output_dir) / '.hydra' / 'config.yaml'})")
        else:
            print(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    if _rank_zero():
        log.info("run %s: tasks %s, seed %s, matmul_precision %s, group %s%s", cfg.paths.output_dir, tasks,
                 cfg.seed, cfg.get("matmul_precision"), group,
                 f", resuming {cfg.resume}" if cfg.get("resume") else "")


# ---------------------------------------------------------------------------- run group and names


def run_group(cfg: DictConfig) -> str | None:
    """The group of the run's W&B runs (training and merges alike), recorded in the specialist
    metadata as ``run_group``: ``logger.wandb.group`` when set, else the Hydra sweep folder's name
    for a multirun (all jobs of a sweep share it), else the run folder's name."""
    wandb_node = (cfg.get("logger") or {}).get("wandb")
    if wandb_node is not None and wandb_node.get("group"):
        return str(wandb_node.group)
    hc = _hydra_config()
    if _is_multirun(hc):
        return Path(hc.sweep.dir).name
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    return Path(str(output_dir)).name if output_dir else None


def _swept_keys(hc: Any) -> list[str]:
    """The keys a multirun sweeps over: command-line sweep overrides (``a=1,2``, ``range(...)``, ...)
    and the sweeper's ``params``."""
    import sys

    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in sys.argv[1:] if "=" in a and not a.startswith("-")])
        keys += [o.key_or_group for o in parsed if o.is_sweep_override()]
    except Exception:  # noqa: BLE001 - a name is cosmetic; never fail a run over it
        pass
    params = OmegaConf.select(hc, "sweeper.params", default=None) if hc is not None else None
    keys += [str(k) for k in (params or {})]
    return list(dict.fromkeys(keys))


def run_name(task: str) -> str:
    """A readable W&B run name: the task, plus (in a multirun) the job's values of the swept keys
    other than the family, e.g. ``fs seed=2 model.optimizer.lr=0.0001``."""
    hc = _hydra_config()
    if not _is_multirun(hc):
        return task
    swept = set(_swept_keys(hc)) - {"data.family", "tasks"}
    extra = [item for item in hc.overrides.task if item.split("=", 1)[0].lstrip("+~") in swept]
    return " ".join([task, *extra])[:128]


# ------------------------------------------------------------------------------ callbacks, loggers


def make_callbacks(cfg: DictConfig, task_dir: Path, tasks: list[str], shared: dict[str, Any],
                   has_logger: bool = True) -> list[Any]:
    """Instantiate ``cfg.callbacks`` in order; reuse run-scoped instances from ``shared``; drop
    ``LearningRateMonitor`` when the task has no logger (it would raise)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if name in shared:
            callbacks.append(shared[name])
            continue
        if not _has_target(node):
            continue
        cb = instantiate(node)
        if isinstance(cb, LearningRateMonitor) and not has_logger:
            log.debug("callbacks.%s (LearningRateMonitor) dropped: no logger", name)
            continue
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str((task_dir / "checkpoints").resolve())
        if is_run_scoped(cb):
            if getattr(cb, "expected_tasks", "absent") is None:
                cb.expected_tasks = list(tasks)
            shared[name] = cb
        callbacks.append(cb)
    return callbacks


def make_loggers(cfg: DictConfig, task: str, task_dir: Path, multi_task: bool,
                 group: str | None = None) -> list[Any]:
    """Instantiate ``cfg.logger``; with several tasks each logger writes under the task's directory;
    a logger ``name`` left null becomes the task name (W&B: :func:`run_name`). W&B runs get the
    run's ``group`` when theirs is null, and ``job_type`` ``train`` when theirs is null."""
    from hydra.utils import instantiate

    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not _has_target(node):
            continue
        overrides: dict[str, Any] = {}
        if multi_task and "save_dir" in node:
            overrides["save_dir"] = str(task_dir)
        if "name" in node and node.name is None:
            overrides["name"] = run_name(task) if _is_wandb(node) else task
        if _is_wandb(node):
            if node.get("group") is None and group is not None:
                overrides["group"] = group
            if node.get("job_type") is None:
                overrides["job_type"] = "train"
        loggers.append(instantiate(node, **overrides))
    return loggers


def close_loggers(loggers: list[Any], failed: bool) -> None:
    """Finalize every logger; finish W&B runs (exit code 1 when the task failed). Errors while
    closing are logged, never raised (they must not hide the task's own error)."""
    status = "failed" if failed else "success"
    for lg in loggers:
        try:
            if type(lg).__name__ == "WandbLogger":
                run = getattr(lg, "_experiment", None)
                if run is not None:
                    run.finish(exit_code=1 if failed else 0)
            else:
                lg.finalize(status)
        except Exception as err:  # noqa: BLE001 - closing must not mask the task's error
            log.warning("closing logger %s failed: %s", type(lg).__name__, err)


# -------------------------------------------------------------------------------------- resume


def resolve_resume(cfg: DictConfig, run_dir: Path, tasks: list[str]) -> dict[str, str | None]:
    """The checkpoint each task starts from: ``ckpt_path`` (one task), or with ``resume=<run dir>``
    the task's ``checkpoints/last.ckpt`` inside that run folder (tasks that never wrote one start
    fresh); ``None`` everywhere otherwise."""
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if resume and ckpt_path:
        raise ValueError("give either resume=<run dir> (continue a run in its folder) or ckpt_path=<file> "
                         f"(start a new run from a checkpoint), not both: resume={resume}, ckpt_path={ckpt_path}")
    if ckpt_path:
        if len(tasks) > 1:
            raise ValueError(f"ckpt_path resumes one task; got tasks={tasks}. Use resume=<run dir>, or "
                             "set tasks=[<task>] (or leave it null).")
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return {tasks[0]: str(ckpt_path)}
    if not resume:
        return {t: None for t in tasks}
    folder = Path(resume)
    if not folder.is_dir():
        raise FileNotFoundError(f"resume={resume}: no such run folder")
    if folder.resolve() != run_dir.resolve():
        raise ValueError(
            f"resume={resume} but this run writes to {run_dir}: resume continues a single run inside its own "
            "folder (hydra.run.dir follows resume); do not combine it with -m or hydra.run.dir")
    found = {t: task_dir_of(folder, t, tasks) / "checkpoints" / LAST_CKPT for t in tasks}
    ckpts = {t: str(p) if p.is_file() else None for t, p in found.items()}
    if not any(ckpts.values()):
        raise FileNotFoundError(
            f"resume={resume}: no {LAST_CKPT} to resume from (looked for "
            f"{', '.join(str(p) for p in found.values())}); check the folder and `tasks`")
    return ckpts


# ----------------------------------------------------------------------------------- pretraining


def run_pretraining(cfg: DictConfig, first_task: str) -> Path:
    """``cfg.pretrain`` → a cached base file trained on real images once, via
    :func:`r2m.models.pretrain.pretrain_from_config` (every ``cfg.pretrain`` key is passed on to
    ``ensure_pretrained_base``; an unknown key is an error naming it)."""
    from r2m.models.pretrain import pretrain_from_config

    return pretrain_from_config(cfg, first_task)


# ------------------------------------------------------------------------------------------ tasks


def _best_val_auc(trainer: Any) -> float | None:
    from r2m.models.export import best_checkpoint_callback

    ckpt = best_checkpoint_callback(trainer)
    if ckpt is not None and ckpt.monitor == "val/auc" and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    value = trainer.callback_metrics.get("val/auc")
    return None if value is None else float(value)


def train_task(cfg: DictConfig, task: str, task_dir: Path, tasks: list[str], shared: dict[str, Any],
               config_dict: dict, pretrained: str | None, ckpt_path: str | None = None,
               group: str | None = None) -> tuple[Any, Any]:
    """Fit (and optionally test) one specialist. Returns ``(model, trainer)``. The task's loggers
    are closed whatever happens (a failed task finishes its W&B run with exit code 1)."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # same θ0 for every task when the init is random
    model_overrides = {"pretrained": pretrained} if pretrained is not None else {}
    model = instantiate(cfg.model, **model_overrides)
    data_overrides: dict[str, Any] = {"family": task}
    for key, value in (("mean", model.input_mean), ("std", model.input_std)):
        if key in cfg.data and cfg.data[key] is None:
            data_overrides[key] = list(value)
    datamodule = instantiate(cfg.data, **data_overrides)
    model.run_config = config_dict
    model.data_config = {**OmegaConf.to_container(cfg.data, resolve=True), **data_overrides}
    model.run_group = group

    loggers = make_loggers(cfg, task, task_dir, multi_task=len(tasks) > 1, group=group)
    failed = True
    try:
        callbacks = make_callbacks(cfg, task_dir, tasks, shared, has_logger=bool(loggers))
        for lg in loggers:
            lg.log_hyperparams(config_dict)  # the run config, once (the model does not log its hparams)
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                              default_root_dir=str(task_dir))
        if ckpt_path and trainer.is_global_zero:
            log.info("[%s] resuming from %s", task, ckpt_path)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.is_global_zero and model.exported_specialist_path is not None:
            log.info("[%s] specialist: %s", task, model.exported_specialist_path)
        if cfg.get("test_after_fit"):
            _test(trainer, model, datamodule, task, task_dir)
        failed = False
    finally:
        close_loggers(loggers, failed)
    return model, trainer


def _test(trainer: Any, model: Any, datamodule: Any, task: str, task_dir: Path) -> None:
    from r2m.models.export import best_checkpoint_callback

    exported = model.exported_specialist_path is not None  # the model holds the exported (best) weights
    ckpt = best_checkpoint_callback(trainer)
    best = ckpt.best_model_path if ckpt is not None else ""
    trainer.test(model, datamodule=datamodule, ckpt_path=best if best and not exported else None, verbose=False)
    if trainer.is_global_zero and model.test_results is not None:
        from r2m.evaluation import ResultsTable, format_summary

        table = ResultsTable()
        table.add(f"specialist_{task}", model.test_results)
        table.write(task_dir)
        log.info("[%s] test results (%s/results.md):\n%s", task, task_dir, format_summary(model.test_results))


def train(cfg: DictConfig) -> float | None:
    """Run all tasks of ``cfg``; return the mean best validation AUC (``None`` if unavailable)."""
    import lightning as L

    if "resume" in cfg and OmegaConf.is_missing(cfg, "resume"):
        cfg.resume = None  # `???` in train.yaml (for hydra.run.dir's oc.select): not resuming
    tasks = task_list(cfg)
    group = run_group(cfg)
    setup_run(cfg, tasks, group)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.output_dir)
    ckpts = resolve_resume(cfg, run_dir, tasks)
    config_dict = OmegaConf.to_container(cfg, resolve=True)

    pretrained = None
    if cfg.get("pretrain"):
        pretrained = str(run_pretraining(cfg, tasks[0]))
        log.info("pretrained base θ0: %s", pretrained)

    shared: dict[str, Any] = {}
    aucs: dict[str, float | None] = {}
    exported: dict[str, Any] = {}
    for task in tasks:
        model, trainer = train_task(cfg, task, task_dir_of(run_dir, task, tasks), tasks, shared, config_dict,
                                    pretrained, ckpt_path=ckpts[task], group=group)
        aucs[task] = _best_val_auc(trainer)
        exported[task] = model.exported_specialist_path
    if _rank_zero():
        for task in tasks:
            auc = aucs[task]
            print(f"[r2m] {task}: specialist {exported[task] or '(not exported)'}; best val AUC "
                  f"{'n/a' if auc is None else f'{auc:.4f}'}")
    values = [a for a in aucs.values() if a is not None and math.isfinite(a)]
    return sum(values) / len(values) if values else None
