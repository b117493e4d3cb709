"""Per-step learning-rate schedules built from torch's own schedulers, for Hydra ``_partial_`` configs.

Each function takes the optimizer and the total number of optimizer steps (the detector passes
``trainer.estimated_stepping_batches``) and returns a torch ``LRScheduler`` stepped once per
optimizer step:

* :func:`warmup_cosine`: ``SequentialLR(LinearLR, CosineAnnealingLR)`` — a linear warmup
  ``(s+1)/w`` for the first ``w`` steps, then a cosine decay from the base LR to
  ``min_lr_ratio`` × base LR at the last step (Loshchilov & Hutter, SGDR, ICLR 2017);
* :func:`warmup_constant`: ``LinearLR`` warmup, then the base LR (``ConstantLR(factor=1)`` when
  there is no warmup).

``warmup_ratio`` (a fraction of ``total_steps``, rounded) overrides ``warmup_steps`` when set::

    scheduler:
      _target_: r2m.models.schedules.warmup_cosine
      _partial_: true
      warmup_ratio: 0.05
      min_lr_ratio: 0.0
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

__all__ = ["warmup_cosine", "warmup_constant", "warmup_steps_of"]


def warmup_steps_of(total_steps: int, warmup_steps: int = 0, warmup_ratio: float | None = None) -> int:
    """The number of warmup steps: ``round(warmup_ratio × total_steps)`` when the ratio is set."""
    if warmup_ratio is not None:
        if not 0.0 <= float(warmup_ratio) <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        return int(round(float(warmup_ratio) * int(total_steps)))
    if int(warmup_steps) < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return int(warmup_steps)


def _warmup(optimizer: Optimizer, warmup: int) -> LinearLR:
    # factor (s+1)/w at step s < w: from 1/w at step 0 to 1 at step w-1
    return LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_ratio: float | None = None,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` × base LR at step ``total_steps``."""
    total = int(total_steps)
    if total < 1:
        raise ValueError(f"warmup_cosine: total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= float(min_lr_ratio) <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup = min(warmup_steps_of(total, warmup_steps, warmup_ratio), total)
    eta_min = [float(min_lr_ratio) * group["lr"] for group in optimizer.param_groups]
    # CosineAnnealingLR takes one absolute eta_min for all parameter groups
    if len({round(e, 15) for e in eta_min}) > 1:
        raise ValueError("warmup_cosine: param groups with different learning rates are not supported")
    cosine_kwargs = dict(T_max=max(1, total - warmup), eta_min=eta_min[0] if eta_min else 0.0)
    if warmup == 0:
        return CosineAnnealingLR(optimizer, **cosine_kwargs)
    warm = _warmup(optimizer, warmup) if warmup > 1 else ConstantLR(optimizer, factor=1.0, total_iters=0)
    cosine = CosineAnnealingLR(optimizer, **cosine_kwargs)
    return SequentialLR(optimizer, schedulers=[warm, cosine], milestones=[warmup])


def warmup_constant(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_ratio: float | None = None,
) -> LRScheduler:
    """Linear warmup, then the base LR."""
    warmup = warmup_steps_of(int(total_steps), warmup_steps, warmup_ratio)
    if warmup <= 1:
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    return _warmup(optimizer, warmup)
