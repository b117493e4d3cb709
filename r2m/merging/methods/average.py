"""Weight averaging (model soup): θ* = θ0 + (1/N) Σ_i τ_i.

Wortsman et al., "Model soups", ICML 2022 (arXiv 2203.05482); the R²M paper's motivating baseline
(code kit option ``AVG``). No hyperparameters.
"""

from __future__ import annotations

from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.spec import MethodSpec
from r2m.merging.tasks import TaskSet

DEFAULTS: dict = {}


def average_merge(ts: TaskSet) -> dict[str, Tensor]:
    """θ*[l] = θ0[l] + mean_i τ_i[l] for every tensor l."""
    return {key: ts.output(key, ts.task_vectors(key).mean(0)) for key in ts.keys_loop(desc="average")}


def _run(ts: TaskSet, cache: DecompositionCache | None) -> dict[str, Tensor]:
    return average_merge(ts)


SPEC = MethodSpec("average", _run, DEFAULTS, summary="θ0 + mean τ")
