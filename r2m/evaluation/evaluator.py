"""The evaluator: the only Lightning code of the merge side.

One path for every model a merge run looks at — specialists, the joint model, merged models:
a :class:`~r2m.models.DeepfakeDetector` (from a file, or the specialists' architecture with a
merged state) → Lightning ``validate`` (the validation AUC merges are chosen on) and ``test``
(per test set / per split metrics, :class:`~r2m.evaluation.EvalResult`) → :class:`ModelEval`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelEval", "Evaluator"]


@dataclass
class ModelEval:
    """Evaluation of one model: test :class:`~r2m.evaluation.EvalResult` (or ``None``) and
    validation AUC (or ``None``); ``extra`` holds method and hyperparameters of a merge."""

    name: str
    group: str
    result: Any | None
    val_auc: float | None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Evaluator:
    """Validate / test detectors on one data module with identical Trainer settings.

    Args:
        datamodule: a LightningDataModule (``None`` → nothing is evaluated).
        template: a model file whose architecture merged states are loaded into.
        accelerator / precision: Lightning settings of the loops (one device).
        validate / test: which loops run.
    """

    def __init__(self, datamodule: Any, template: str | Path, *, accelerator: str = "auto",
                 precision: str | None = None, validate: bool = True, test: bool = True,
                 progress: bool = True) -> None:
        self.datamodule = datamodule
        self.template = Path(template)
        self.accelerator = accelerator
        self.precision = precision
        self.validate = validate and datamodule is not None
        self.test = test and datamodule is not None
        self.progress = progress

    @property
    def active(self) -> bool:
        return self.validate or self.test

    def _trainer(self):
        """One Trainer for every loop of this evaluator (identical settings, one start-up log)."""
        if getattr(self, "_cached_trainer", None) is not None:
            return self._cached_trainer
        import lightning as L

        self._cached_trainer = L.Trainer(accelerator=self.accelerator, devices=1, precision=self.precision, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=self.progress, deterministic=False)
        return self._cached_trainer

    def detector_from_file(self, path: str | Path):
        from r2m.models.detector import DeepfakeDetector

        return DeepfakeDetector.from_file(path).eval()

    def detector_with(self, backbone: Mapping[str, Any], head: Mapping[str, Any]):
        """The template's architecture with the given weights (strict loading)."""
        det = self.detector_from_file(self.template)
        det.backbone.load_state_dict(dict(backbone), strict=True)
        det.head.load_state_dict(dict(head), strict=True)
        return det.eval()

    def evaluate(self, name: str, detector: Any, *, group: str, path: Path | None = None,
                 extra: Mapping[str, Any] | None = None) -> ModelEval:
        """Validation AUC and test metrics of one detector."""
        val_auc = result = None
        if self.validate:
            metrics = self._trainer().validate(detector, datamodule=self.datamodule, verbose=False)
            if not metrics or "val/auc" not in metrics[0]:
                raise RuntimeError(f"{name}: validation produced no val/auc (empty validation split?)")
            val_auc = float(metrics[0]["val/auc"])
        if self.test:
            self._trainer().test(detector, datamodule=self.datamodule, verbose=False)
            result = detector.test_results
            if result is None:
                raise RuntimeError(f"{name}: the test loop produced no results")
        return ModelEval(name=name, group=group, result=result, val_auc=val_auc, path=path, extra=dict(extra or {}))

    def evaluate_file(self, name: str, path: str | Path, *, group: str) -> ModelEval:
        return self.evaluate(name, self.detector_from_file(path), group=group, path=Path(path))

    def evaluate_state(self, name: str, backbone: Mapping[str, Any], head: Mapping[str, Any], *, group: str,
                       path: Path | None = None, extra: Mapping[str, Any] | None = None) -> ModelEval:
        return self.evaluate(name, self.detector_with(backbone, head), group=group, path=path, extra=extra)
