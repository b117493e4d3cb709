"""``SpecialistExport``: at the end of ``fit``, write ``specialist.safetensors`` (best weights by
validation AUC) and, once, the base θ0 as ``base-<base_hash>.safetensors``.

Put it *before* any callback that consumes the exported file in its own ``on_fit_end`` (e.g. the
merge callback): Lightning calls callbacks in list order. After it ran, every rank sees
``pl_module.exported_specialist_path`` (and ``exported_base_path``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["SpecialistExport"]

log = logging.getLogger(__name__)


class SpecialistExport(Callback):
    """Export the trained specialist at ``on_fit_end``.

    Args:
        filename: file name inside ``trainer.default_root_dir`` (the run / task directory).
        base_dir: where ``base-<base_hash>.safetensors`` goes (``None`` → the run directory);
            an existing file of that name is reused, never rewritten.
        save_base: write the base file at all.
        load_best: load the best checkpoint of the trainer's ``ModelCheckpoint`` first (by its
            monitored metric, ``val/auc`` in the default config); otherwise export the last weights.
    """

    def __init__(
        self,
        filename: str = "specialist.safetensors",
        base_dir: str | os.PathLike | None = None,
        save_base: bool = True,
        load_best: bool = True,
    ) -> None:
        self.filename = filename
        self.base_dir = base_dir
        self.save_base = save_base
        self.load_best = load_best

    @staticmethod
    def _checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
        return trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None

    def _best_val_auc(self, trainer: L.Trainer, ckpt: ModelCheckpoint | None, loaded_best: bool) -> float | None:
        if loaded_best and ckpt is not None and ckpt.monitor == "val/auc" and ckpt.best_model_score is not None:
            return float(ckpt.best_model_score)
        value = trainer.callback_metrics.get("val/auc")
        return None if value is None else float(value)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = self._checkpoint_callback(trainer)
        best = ckpt.best_model_path if ckpt is not None else ""
        loaded_best = False
        if self.load_best and best and Path(best).is_file():
            state = trainer.strategy.load_checkpoint(best)["state_dict"]
            pl_module.load_state_dict(state, strict=True)  # every rank: later test/merge see the best weights
            loaded_best = True
        elif self.load_best:
            log.warning("SpecialistExport: no best checkpoint found; exporting the last weights")

        run_dir = Path(trainer.default_root_dir)
        path = run_dir / self.filename
        base_dir = Path(self.base_dir) if self.base_dir is not None else run_dir
        base_path: Path | None = None
        if trainer.is_global_zero:
            dm = trainer.datamodule
            task = getattr(dm, "task_name", None) or getattr(pl_module, "task_name", None) or "unknown"
            sources = list(getattr(dm, "train_sources", None) or getattr(pl_module, "train_sources", []) or [])
            extra: dict[str, Any] = {
                "val_auc": self._best_val_auc(trainer, ckpt, loaded_best),
                "best_checkpoint": Path(best).name if loaded_best else None,
                "epochs": int(trainer.current_epoch),
                "global_step": int(trainer.global_step),
            }
            pl_module.export_specialist(
                path, task=task, train_sources=sources, config=getattr(pl_module, "run_config", None), extra_meta=extra
            )
            log.info("specialist written to %s", path)
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
