"""DARE (Drop And REscale) followed by Task Arithmetic.

Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
Lunch", ICML 2024 (arXiv 2311.03099). Per task and entry, keep with probability 1 − p:

    τ̃_i = τ_i ⊙ m_i / (1 − p),  m_i ~ Bernoulli(1 − p);   θ* = θ0 + λ Σ_i τ̃_i

Defaults p = 0.5 and λ = 0.3 (FusionBench ``dare/task_arithmetic``), seed = 0.

Randomness rule: the mask of tensor l of specialist i is drawn on the CPU from a generator seeded
by sha256(seed, l, content hash of θ_i[l]). It depends on the seed and on that tensor's content
only — not on the specialist's position in the list, the device or the order of processing — so
a fixed seed gives the same result on every run and permuting the specialists changes nothing.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.spec import MethodSpec, check_number
from r2m.merging.tasks import TaskSet
from r2m.utils import tensor_hash

# p: drop probability, lam: TA coefficient (FusionBench dare/task_arithmetic); seed: ours
DEFAULTS = {"p": 0.5, "seed": 0, "lam": 0.3}


def dare_mask(tensor: Tensor, key: str, seed: int, p: float, out: Tensor | None = None) -> Tensor:
    """Keep-mask (bool, CPU, shape of ``tensor``) for one specialist tensor (module docstring).
    ``out``: optional float32 CPU buffer of that shape for the uniform draws (reused across calls)."""
    digest = hashlib.sha256(f"r2m-dare|{seed}|{key}|".encode())
    digest.update(tensor_hash(tensor).digest())
    gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest.digest()[:8], "little") >> 1)
    if out is None:
        return torch.rand(tensor.shape, generator=gen) >= p
    return torch.rand(tensor.shape, generator=gen, out=out) >= p


def dare_merge(ts: TaskSet, *, p: float, seed: int, lam: float) -> dict[str, Tensor]:
    """DARE + Task Arithmetic (module docstring); returns θ*.

    One specialist at a time per tensor: its τ_i is formed, masked and added to the running sum
    (no N-stack of task vectors, no zero-initialised sum), the uniform draws reuse one buffer."""
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="dare"):
        total: Tensor | None = None
        draws = torch.empty(ts.shapes[key], dtype=torch.float32)
        for i in range(ts.n):
            keep = dare_mask(ts.raw_specialist(i, key), key, seed, p, out=draws).to(ts.device)
            kept = torch.where(keep, ts.task_vector(i, key), 0)
            total = kept if total is None else total.add_(kept)  # same sums, in the same order
        out[key] = ts.output(key, (lam / (1.0 - p)) * total)
    return out


def _check(hp: dict) -> None:
    check_number("dare", "p", hp["p"], lo=0.0, hi=1.0, hi_open=True)
    check_number("dare", "seed", hp["seed"], lo=0, integer=True)
    check_number("dare", "lam", hp["lam"])


def _run(ts: TaskSet, cache: DecompositionCache | None, *, p: float, seed: int, lam: float) -> dict[str, Tensor]:
    return dare_merge(ts, p=float(p), seed=int(seed), lam=float(lam))


SPEC = MethodSpec("dare", _run, DEFAULTS, _check, summary="random drop + rescale, then task arithmetic")
