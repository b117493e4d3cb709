"""``SpecialistExport``: at the end of ``fit``, write ``specialist.safetensors`` (the best epoch by
validation AUC) and, once, the base θ0 as ``base-<base_hash>.safetensors``.

Put it *before* any callback that consumes the exported file in its own ``on_fit_end`` (e.g. the
merge callback): Lightning calls callbacks in list order. After it ran, every rank sees
``pl_module.exported_specialist_path`` (and ``exported_base_path``).

Besides the architecture / θ0 keys of :meth:`DeepfakeDetector.file_meta`, the specialist metadata
holds (docs/architecture.md §2): ``task``, ``train_sources``, ``families`` (the families trained on:
one → a specialist, several → a joint model), ``carve`` (the data module's ``carve_record()``: how
validation was carved), ``data_config`` (the resolved data config the data module was built from),
``run_group`` (the W&B / Hydra sweep group), ``config`` (the whole run config), ``selected``
(``"best"``: the best checkpoint's weights, ``"last"``: the last weights), ``best_epoch``,
``best_checkpoint``, ``val_auc``, ``epochs``, ``global_step``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["SpecialistExport", "best_checkpoint_callback", "train_families"]

log = logging.getLogger(__name__)


def best_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The trainer's first ``ModelCheckpoint`` that monitors a metric (the one selecting the best
    epoch; a ``monitor=None`` one only keeps the last epoch)."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
            return cb
    return None


def train_families(datamodule: Any, task: str) -> list[str]:
    """The families a data module trains on: its ``train_families`` when it has them; for the task
    ``joint`` of a data module with a ``families`` mapping, all of them; else ``[task]``."""
    explicit = getattr(datamodule, "train_families", None)
    if explicit:
        return [str(f) for f in explicit]
    families = getattr(datamodule, "families", None)
    if task == "joint" and isinstance(families, Mapping) and families:
        return [str(f) for f in families]
    return [str(task)]


class SpecialistExport(Callback):
    """Export the trained specialist at ``on_fit_end``.

    Args:
        filename: file name inside ``trainer.default_root_dir`` (the run / task directory).
        base_dir: where ``base-<base_hash>.safetensors`` goes (``None`` → the run directory);
            an existing file of that name is reused, never rewritten.
        save_base: write the base file at all.
        load_best: export the best checkpoint of the monitoring ``ModelCheckpoint`` (``val/auc`` in
            the default config). When there is none (no monitoring checkpoint callback, or no
            checkpoint written) this is an error unless ``allow_last``; ``load_best=False``
            exports the last weights on purpose.
        allow_last: with ``load_best``, fall back to the last weights (with a warning) instead of
            failing when no best checkpoint exists.
    """

    def __init__(
        self,
        filename: str = "specialist.safetensors",
        base_dir: str | os.PathLike | None = None,
        save_base: bool = True,
        load_best: bool = True,
        allow_last: bool = False,
    ) -> None:
        self.filename = filename
        self.base_dir = base_dir
        self.save_base = save_base
        self.load_best = load_best
        self.allow_last = allow_last

    def _best_val_auc(self, trainer: L.Trainer, ckpt: ModelCheckpoint | None, loaded_best: bool) -> float | None:
        if loaded_best and ckpt is not None and ckpt.monitor == "val/auc" and ckpt.best_model_score is not None:
            return float(ckpt.best_model_score)
        value = trainer.callback_metrics.get("val/auc")
        return None if value is None else float(value)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = best_checkpoint_callback(trainer)
        best = ckpt.best_model_path if ckpt is not None else ""
        loaded_best = False
        best_epoch = None
        if self.load_best and best and Path(best).is_file():
            checkpoint = trainer.strategy.load_checkpoint(best)
            pl_module.load_state_dict(checkpoint["state_dict"], strict=True)  # every rank: later test/merge see the best weights
            best_epoch = int(checkpoint.get("epoch", -1))
            loaded_best = True
        elif self.load_best:
            why = ("no ModelCheckpoint with a monitor" if ckpt is None
                   else f"no best checkpoint written by the ModelCheckpoint monitoring {ckpt.monitor!r}"
                   f" (best_model_path={best!r})")
            if not self.allow_last:
                raise RuntimeError(
                    f"SpecialistExport: {why}, so the best epoch is unknown; refusing to export the last "
                    "weights as the specialist. Add a ModelCheckpoint(monitor='val/auc') "
                    "(callbacks=default) or set callbacks.specialist_export.load_best=false (export the "
                    "last weights) or callbacks.specialist_export.allow_last=true (fall back to them)."
                )
            log.warning("SpecialistExport: %s; exporting the last weights (allow_last=true)", why)

        run_dir = Path(trainer.default_root_dir)
        path = run_dir / self.filename
        base_dir = Path(self.base_dir) if self.base_dir is not None else run_dir
        base_path: Path | None = None
        if trainer.is_global_zero:
            dm = trainer.datamodule
            task = getattr(dm, "task_name", None) or getattr(pl_module, "task_name", None) or "unknown"
            sources = list(getattr(dm, "train_sources", None) or getattr(pl_module, "train_sources", []) or [])
            carve = dm.carve_record() if dm is not None and hasattr(dm, "carve_record") else None
            extra: dict[str, Any] = {
                "families": train_families(dm, task),
                "carve": carve,
                "data_config": getattr(pl_module, "data_config", None),
                "run_group": getattr(pl_module, "run_group", None),
                "selected": "best" if loaded_best else "last",
                "val_auc": self._best_val_auc(trainer, ckpt, loaded_best),
                "best_epoch": best_epoch,
                "best_checkpoint": Path(best).name if loaded_best else None,
                "epochs": int(trainer.current_epoch),
                "global_step": int(trainer.global_step),
            }
            pl_module.export_specialist(
                path, task=task, train_sources=sources, config=getattr(pl_module, "run_config", None), extra_meta=extra
            )
            log.info("specialist (%s epoch%s) written to %s", extra["selected"],
                     f" {best_epoch}" if best_epoch is not None else "s", path)
            if self.save_base:
                try:
                    base_path = pl_module.export_base(base_dir=base_dir)
                except RuntimeError as err:  # θ0 not recoverable (e.g. resumed random init)
                    log.warning("SpecialistExport: base not written: %s", err)
        trainer.strategy.barrier("r2m_specialist_export")
        pl_module.exported_specialist_path = path
        if self.save_base:
            from r2m.checkpoints import base_filename

            candidate = base_dir / base_filename(pl_module.base_hash)
            pl_module.exported_base_path = base_path or (candidate if candidate.is_file() else None)
