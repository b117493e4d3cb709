"""Method specification and hyperparameter checks shared by the method modules."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["MethodSpec", "check_number", "check_choice", "check_bool"]


@dataclass(frozen=True)
class MethodSpec:
    """One merge method: its name, defaults (the single source of truth), value checks and the
    function holding the math, called as ``fn(taskset, cache, **hparams)``.

    ``sweep`` (optional) serves a group of sweep points that differ only in the hyperparameters
    named by ``sweep_free``: ``sweep(taskset, cache, points) -> iterator of θ*`` in the order of
    ``points``, each equal to ``fn`` on that point bit for bit (used by ``merge_many``)."""

    name: str
    fn: Callable[..., dict[str, Tensor]]
    defaults: Mapping[str, Any]
    check: Callable[[dict[str, Any]], None] = field(default=lambda hp: None)
    uses_cache: bool = False
    summary: str = ""
    sweep: Callable[..., Iterator[dict[str, Tensor]]] | None = None
    sweep_free: tuple[str, ...] = ()


def check_number(
    method: str,
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real (an int when ``integer``) in range."""
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{method}: {name} must be {kind}, got {value!r}")
    v = float(value)
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        left = "-inf" if lo is None else f"{'(' if lo_open else '['}{lo}"
        right = "inf" if hi is None else f"{hi}{')' if hi_open else ']'}"
        raise ValueError(f"{method}: {name} must lie in {left}, {right}, got {value!r}")


def check_choice(method: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{method}: {name} must be one of {list(choices)}, got {value!r}")


def check_bool(method: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{method}: {name} must be true or false, got {value!r}")
