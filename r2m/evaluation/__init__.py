"""Evaluation of deepfake detectors: one module for specialists, the joint model and merged models.

Knows probabilities, labels and keys — not models, not datasets. Metrics follow DeepfakeBench
(``docs`` of ``r2m.evaluation.functional``): frame AUC / AP / EER (nearest ROC point) / ACC@0.5,
an interpolated EER, and video AUC / EER / ACC from mean frame probabilities per collision-free
video key; per-split means and an overall mean; tables (CSV / JSON / Markdown), ROC plots, W&B.
"""

from r2m.evaluation.functional import (
    ALL_METRIC_KEYS,
    HIGHER_IS_BETTER,
    METRIC_KEYS,
    VIDEO_METRIC_KEYS,
    compute_metrics,
    roc_curve,
)
from r2m.evaluation.metric import DetectionMetrics, DetectionOutput
from r2m.evaluation.plots import plot_roc
from r2m.evaluation.splits import OVERALL, EvalResult, SplitEvaluator, format_summary, split_means
from r2m.evaluation.table import ResultsTable
from r2m.evaluation.wandb_logging import log_to_wandb

__all__ = [
    "ALL_METRIC_KEYS",
    "HIGHER_IS_BETTER",
    "METRIC_KEYS",
    "VIDEO_METRIC_KEYS",
    "OVERALL",
    "compute_metrics",
    "roc_curve",
    "DetectionMetrics",
    "DetectionOutput",
    "SplitEvaluator",
    "EvalResult",
    "split_means",
    "format_summary",
    "ResultsTable",
    "plot_roc",
    "log_to_wandb",
]
