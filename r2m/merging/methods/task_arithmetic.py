"""Task Arithmetic: θ* = θ0 + λ Σ_i τ_i.

Ilharco et al., "Editing models with task arithmetic", ICLR 2023 (arXiv 2212.04089). Default
λ = 0.3: the de-facto value for CLIP ViT merges (FusionBench ``task_arithmetic`` config, AdaMerging
scripts); the paper itself picks λ on validation data.
"""

from __future__ import annotations

from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.spec import MethodSpec, check_number
from r2m.merging.tasks import TaskSet

DEFAULTS = {"lam": 0.3}  # λ, FusionBench/AdaMerging default for CLIP ViT


def task_arithmetic_merge(ts: TaskSet, *, lam: float) -> dict[str, Tensor]:
    """θ*[l] = θ0[l] + λ Σ_i τ_i[l] (streamed in place like :func:`~r2m.merging.methods.average.average_merge`;
    bit-identical to ``θ0 + λ · stack(τ).sum(0)`` on CPU)."""
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="task_arithmetic"):
        delta = ts.task_vector_sum(key).mul_(lam)
        out[key] = ts.output(key, delta, owned=True)
    ts.release_scratch()
    return out


def _check(hp: dict) -> None:
    check_number("task_arithmetic", "lam", hp["lam"])


def _run(ts: TaskSet, cache: DecompositionCache | None, *, lam: float) -> dict[str, Tensor]:
    return task_arithmetic_merge(ts, lam=float(lam))


SPEC = MethodSpec("task_arithmetic", _run, DEFAULTS, _check, summary="θ0 + λ Σ τ")
