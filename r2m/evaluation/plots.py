"""ROC figures: one PNG per split, one curve per model.

A model's curve for a split is the *vertical average* of the ROC curves of the split's test sets:
the TPR of each set's ROC polyline is read at a common FPR grid (linear interpolation between ROC
points, i.e. the curve whose trapezoid area is the AUC) and averaged. The legend shows the split
mean AUC of the tables (mean of the per-set AUCs), which is also the area under the averaged curve
up to the grid resolution. ``per_set=True`` adds each test set's own curve as a thin line.
Matplotlib is imported lazily and drawn with the Agg canvas (no global backend change).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from r2m.evaluation.splits import OVERALL, EvalResult
from r2m.utils import atomic_write

__all__ = ["plot_roc", "mean_roc", "curve_style"]

_GRID = np.linspace(0.0, 1.0, 1001)
# matplotlib's tab20, dark shades first, then light shades: 20 distinct colours
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
            "#dbdb8d", "#9edae5")
_LINESTYLES = ("-", "--", "-.", ":")


def curve_style(index: int) -> tuple[str, str]:
    """``(colour, linestyle)`` of the ``index``-th curve: 20 distinct colours; the light half and
    every further round of 20 also get their own line style, so no two of the first 80 curves
    look alike."""
    rounds, light = divmod(index, len(_PALETTE))
    return _PALETTE[light], _LINESTYLES[(rounds + light // 10) % len(_LINESTYLES)]


def mean_roc(curves: Sequence[tuple[np.ndarray, np.ndarray]], grid: np.ndarray = _GRID) -> np.ndarray:
    """Vertical average of ROC curves at FPR values ``grid``. At a vertical ROC segment (repeated
    FPR) ``np.interp`` takes the last, highest TPR — the curve's upper corner."""
    return np.mean([np.interp(grid, np.asarray(f, float), np.asarray(t, float)) for f, t in curves], axis=0)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "split"


def plot_roc(results: Mapping[str, EvalResult], test_splits: Mapping[str, Sequence[str]] | None,
             out_dir: str | os.PathLike, stem: str = "roc", per_set: bool = False,
             dpi: int = 120) -> list[Path]:
    """Write ``<stem>_<split>.png`` for each split (in ``test_splits`` order, then ``overall``)
    that has a ROC for at least one model; returns the paths.

    ``results`` maps a model name to its ``EvalResult``; ``test_splits=None`` uses each result's
    own ``test_splits``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    split_names: list[str] = list(test_splits or {})
    if test_splits is None:
        for r in results.values():
            split_names += [s for s in r.test_splits if s not in split_names]
    split_names.append(OVERALL)

    out = Path(out_dir)
    paths: list[Path] = []
    for split in split_names:
        n_models = len(results)
        wide = n_models > 8  # legend beside the axes, so 16+ curves stay readable
        fig = Figure(figsize=(9.0 if wide else 5.5, max(5.0, 0.22 * n_models) if wide else 5.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        drawn = 0
        n_sets = 0
        for idx, (model, res) in enumerate(results.items()):
            if split == OVERALL:
                sets = list(res.per_set)
            else:
                members = (test_splits or res.test_splits).get(split, [])
                sets = [n for n in dict.fromkeys(members) if n in res.per_set]
            sets = [n for n in sets if n in res.roc]
            if not sets:
                continue
            n_sets = max(n_sets, len(sets))
            aucs = [res.per_set[n]["auc"] for n in sets]
            mean_auc = float(np.mean(aucs))
            colour, style = curve_style(idx)
            line = ax.plot(_GRID, mean_roc([res.roc[n] for n in sets]), lw=1.8, color=colour, ls=style,
                           label=f"{model} (AUC {mean_auc:.3f})")[0]
            if per_set and len(sets) > 1:
                for n in sets:
                    f, t = res.roc[n]
                    ax.plot(f, t, lw=0.7, alpha=0.5, color=line.get_color(),
                            label=f"  {n} ({res.per_set[n]['auc']:.3f})")
            drawn += 1
        if not drawn:
            continue
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.005)
        ax.set_xlabel("false positive rate (real → fake)")
        ax.set_ylabel("true positive rate (fake detected)")
        ax.set_title(f"ROC — {split} (mean over {n_sets} test set{'s' if n_sets != 1 else ''})")
        ax.grid(alpha=0.3)
        if wide:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
        else:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out / f"{stem}_{_safe(split)}.png"
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi))
        paths.append(path)
    return paths
