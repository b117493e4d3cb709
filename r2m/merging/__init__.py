"""Pure-PyTorch model-merging library (no Lightning/Hydra): R²M and baseline merges.

    merged = merge(method, base, specialists, **hparams)   # -> dict[str, Tensor]

Methods (:data:`METHODS`): average, task_arithmetic, ties, dare, cart, tsv, iso_c, iso_cts, r2m;
defaults in one place (:func:`method_defaults`, mirrored by ``configs/merge/<method>.yaml``).
Inputs are streamed tensor by tensor and may be lazy (:class:`LazySafetensors`);
:class:`DecompositionCache` keeps Grams and spectral factors between merges (:func:`plan_cache`
picks one for a run: none for a single merge, memory/disk when a sweep or re-merge reuses it);
:func:`merge_many` runs a hyperparameter sweep over one validated input set.
"""

from r2m.merging.cache import CACHE_POLICIES, DecompositionCache, plan_cache
from r2m.merging.heads import merge_heads
from r2m.merging.lazy import LazySafetensors
from r2m.merging.registry import METHODS, merge, merge_many, method_defaults, method_spec
from r2m.merging.tasks import DEFAULT_BLOCK_PATTERN, TaskSet

__all__ = [
    "merge",
    "merge_many",
    "merge_heads",
    "METHODS",
    "method_defaults",
    "method_spec",
    "DecompositionCache",
    "plan_cache",
    "CACHE_POLICIES",
    "LazySafetensors",
    "DEFAULT_BLOCK_PATTERN",
    "TaskSet",
]
