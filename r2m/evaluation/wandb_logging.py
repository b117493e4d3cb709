"""Log a ``ResultsTable`` and ROC images to Weights & Biases (lazy ``wandb`` import)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r2m.evaluation.functional import ALL_METRIC_KEYS
from r2m.evaluation.table import ResultsTable

__all__ = ["log_to_wandb", "resolve_wandb_run"]

log = logging.getLogger(__name__)


def resolve_wandb_run(logger_or_run: Any) -> Any | None:
    """The W&B run behind ``logger_or_run``, or ``None``.

    Accepts a wandb run, a Lightning ``WandbLogger`` (its ``.experiment``), or a list of Lightning
    loggers (e.g. ``trainer.loggers``; the first W&B one is used). Other loggers give ``None``."""
    if logger_or_run is None:
        return None
    if isinstance(logger_or_run, (list, tuple)):
        for item in logger_or_run:
            run = resolve_wandb_run(item)
            if run is not None:
                return run
        return None
    if "wandb" in type(logger_or_run).__name__.lower() and hasattr(logger_or_run, "experiment"):
        return logger_or_run.experiment
    if callable(getattr(logger_or_run, "log", None)) and hasattr(logger_or_run, "summary"):
        return logger_or_run
    return None


def _table(wandb: Any, rows: list[dict[str, Any]]) -> Any:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    data = [[r.get(c) for c in columns] for r in rows]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def log_to_wandb(logger_or_run: Any, table: ResultsTable, images: Sequence[str | os.PathLike] = (),
                 prefix: str = "eval") -> None:
    """Log ``<prefix>/results`` and ``<prefix>/comparison`` (``wandb.Table``), one
    ``wandb.Image`` per PNG as ``<prefix>/<file stem>``, and summary scalars
    ``<prefix>/<model>/<split>/<metric>`` of every split mean. A no-op when wandb is not
    installed or no W&B run is behind ``logger_or_run``."""
    run = resolve_wandb_run(logger_or_run)
    if run is None:
        log.debug("log_to_wandb: no W&B run behind %r; nothing logged", type(logger_or_run).__name__)
        return
    try:
        import wandb
    except ImportError:
        log.debug("log_to_wandb: wandb not installed; nothing logged")
        return
    payload: dict[str, Any] = {
        f"{prefix}/results": _table(wandb, table.rows),
        f"{prefix}/comparison": _table(wandb, table.comparison(("auc", "ap", "eer", "acc"))),
    }
    for img in images:
        path = Path(img)
        if not path.is_file():
            raise FileNotFoundError(f"log_to_wandb: image {path} does not exist")
        payload[f"{prefix}/{path.stem}"] = wandb.Image(str(path))
    run.log(payload)
    for row in table.rows:
        if row["kind"] != "mean":
            continue
        for key in ALL_METRIC_KEYS:
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                run.summary[f"{prefix}/{row['model']}/{row['split']}/{key}"] = float(value)
