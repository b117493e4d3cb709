"""CART: Centered Arithmetic with Rank-reduced Task vectors.

Choi, Kim, Lee, Hong, "Revisiting Weight Averaging for Model Merging" (arXiv 2412.12153), official
code JH-GEECS/CART. With τ̄ = (1/N) Σ_i τ_i and centred task vectors δ_i = τ_i − τ̄:

    θ* = θ0 + τ̄ + λ Σ_i LR_r(δ_i)                (on block matrices)
    θ* = θ0 + τ̄                                  (every other tensor: Σ_i δ_i = 0)

LR_r = best rank-r approximation, r = max(1, ⌊rank_ratio · min(m, n)⌋). Defaults rank_ratio = 0.12
and λ = 2.0 ("prior"): the official config for ViT-B/32 on 8 tasks. Block matrices are the 2-D
``attn``/``mlp`` weights (``block_pattern``), as in the official code.

Cache: the spectral factors of every δ_i[l]; δ_i depends on the whole task set, so they are reused
across ``lam`` and ``rank_ratio`` sweeps but recomputed when a specialist is added.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r2m.merging.cache import DecompositionCache
from r2m.merging.decompose import set_signature, spectra
from r2m.merging.linalg import low_rank, rank_for_ratio
from r2m.merging.spec import MethodSpec, check_number
from r2m.merging.tasks import TaskSet

# rank_ratio 0.12 and λ ("prior") 2.0: CART official config, ViT-B/32, 8 tasks
DEFAULTS = {"rank_ratio": 0.12, "lam": 2.0}


def cart_merge(
    ts: TaskSet, cache: DecompositionCache | None, *, rank_ratio: float | None, lam: float
) -> dict[str, Tensor]:
    """CART (module docstring); ``rank_ratio=None`` disables truncation (then CART = averaging)."""
    ts.require_blocks("cart")
    sig = set_signature(ts, "cart-centred") if cache is not None else ""
    out: dict[str, Tensor] = {}
    for key in ts.keys_loop(desc="cart"):
        if not ts.is_block(key):  # θ0 + mean τ, summed in place (bit-identical to the stacked mean)
            out[key] = ts.output(key, ts.task_vector_sum(key).div_(ts.n), owned=True)
            continue
        taus = ts.task_vectors(key)
        mean = taus.mean(0)
        delta = mean
        m, n = ts.shapes[key]
        rank = rank_for_ratio(rank_ratio, m, n)
        if rank < min(m, n):
            # centre in place unless the stack is the resident copy (the same values either way)
            centred = taus - mean if key in ts._resident_tasks else taus.sub_(mean)
            del taus
            entries = [f"cart|{sig}|{h}|{key}" for h in ts.task_hashes()] if cache is not None else None
            _, qs, side = spectra(ts, cache, centred, entries, rank)
            lr = low_rank(centred, torch.stack(qs), rank, side)
            del centred, qs
            delta = lr.sum(0).mul_(lam).add_(mean)  # mean + λ Σ_i LR(δ_i)
            del lr
        # rank = min(m, n): Σ_i δ_i = 0, θ* stays at the average
        out[key] = ts.output(key, delta, owned=True)
    ts.release_scratch()
    return out


def _check(hp: dict) -> None:
    if hp["rank_ratio"] is not None:
        check_number("cart", "rank_ratio", hp["rank_ratio"], lo=0.0, hi=1.0, lo_open=True)
    check_number("cart", "lam", hp["lam"])


def _run(ts: TaskSet, cache: DecompositionCache | None, *, rank_ratio: float | None, lam: float) -> dict[str, Tensor]:
    return cart_merge(ts, cache, rank_ratio=None if rank_ratio is None else float(rank_ratio), lam=float(lam))


SPEC = MethodSpec("cart", _run, DEFAULTS, _check, uses_cache=True, summary="average + λ Σ low-rank centred τ")
