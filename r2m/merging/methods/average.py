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
    """θ*[l] = θ0[l] + mean_i τ_i[l] for every tensor l.

    Streamed in place: Σ_i τ_i summed in order into the output buffer (one fresh tensor per l, the
    NaN/Inf check fused into one check of the sum: :meth:`TaskSet.task_vector_sum`), divided by N,
    θ0 added; on CPU bit-identical to ``θ0 + stack(τ).mean(0)`` (torch's CPU mean is sum / N)."""
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="average"):
        delta = ts.task_vector_sum(key).div_(ts.n)
        out[key] = ts.output(key, delta, owned=True)
    ts.release_scratch()
    return out


def _run(ts: TaskSet, cache: DecompositionCache | None) -> dict[str, Tensor]:
    return average_merge(ts)


SPEC = MethodSpec("average", _run, DEFAULTS, summary="θ0 + mean τ")
