"""Grouped merge sweeps: the jobs of ``merge.py -m`` that differ only in ``merge.*`` hyperparameters
share one :func:`r2m.merging.merge_many` pass.

    python merge.py -m merge=r2m merge.rank_ratio=0.05,0.1,0.2 merge.alpha=0.4,0.6,0.8 specialists=...

The launcher ``hydra/launcher=r2m_grouped`` (``hydra_plugins/r2m_launcher/grouped.py``, the default
of ``configs/merge.yaml``) composes every job's config first and calls :func:`plan_groups`: jobs
whose configs are equal except for the merge method's hyperparameters form a group, ordered so that
points differing only in a method's sweep-free hyperparameters (R²M: ``alpha``, ``eta``) are
consecutive. Each job then still runs as its own Hydra job (own folder, log, ``.hydra``, callbacks,
W&B run, return value), inside :func:`planned` with the group's :class:`GroupPlan` active; the
pipeline's merge step (``r2m.pipeline._merge_stream``) then calls :func:`planned_merge` instead of
``run_jobs``, which
serves the job's θ* from the group's ``merge_many`` generator (one residual-sum pass for all α/η
points of one rank ratio, the decomposition cache for the rest) — bit-identical to ``merge`` with a
cache. Anything unplanned (another method, other inputs, a job run out of order) falls back to
``merge``, so the results never depend on the grouping.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["GroupPlan", "SweepGroup", "plan_groups", "planned", "planned_merge", "active_plan"]

_ACTIVE: list[GroupPlan] = []


@dataclass
class SweepGroup:
    """Indices of the jobs (in Hydra's order) of one group, in the order they should run, and the
    plan that serves their merges (``None`` for a group of one)."""

    order: list[int]
    plan: GroupPlan | None = None


def _merge_node(cfg: Any) -> dict[str, Any] | None:
    from omegaconf import OmegaConf

    if "merge" not in cfg or not OmegaConf.is_dict(cfg.merge) or "method" not in cfg.merge:
        return None
    return OmegaConf.to_container(cfg.merge, resolve=True)


def _rest_key(cfg: Any) -> str:
    """Everything except ``hydra`` and ``merge`` (unresolved: interpolations compare as written)."""
    from omegaconf import OmegaConf

    rest = OmegaConf.to_container(cfg, resolve=False)
    rest.pop("hydra", None)
    rest.pop("merge", None)
    return json.dumps(rest, sort_keys=True, default=str)


def plan_groups(configs: Sequence[Any]) -> list[SweepGroup]:
    """Group composed job configs (see module docstring). A config without ``merge.method`` (e.g.
    a training job), or one whose merge settings do not validate, is a group of its own — its job
    then fails or runs exactly as under the basic launcher."""
    from r2m.merging.registry import method_spec, resolve_hparams

    buckets: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    singles: list[int] = []
    for i, cfg in enumerate(configs):
        try:
            node = _merge_node(cfg)
            if node is None:
                singles.append(i)
                continue
            method = node.pop("method")
            node.pop("name", None)
            hp = resolve_hparams(method, node)
        except Exception:  # let the job itself report its configuration error
            singles.append(i)
            continue
        buckets.setdefault((method, _rest_key(cfg)), []).append((i, hp))
    groups: list[tuple[int, SweepGroup]] = [(i, SweepGroup(order=[i])) for i in singles]
    for (method, _), members in buckets.items():
        if len(members) == 1:
            groups.append((members[0][0], SweepGroup(order=[members[0][0]])))
            continue
        free = set(method_spec(method).sweep_free)

        def fixed_key(item: tuple[int, dict[str, Any]]) -> str:
            return json.dumps({k: v for k, v in item[1].items() if k not in free}, sort_keys=True, default=str)

        first_seen: dict[str, int] = {}
        for pos, item in enumerate(members):
            first_seen.setdefault(fixed_key(item), pos)
        ordered = sorted(members, key=lambda item: (first_seen[fixed_key(item)], members.index(item)))
        plan = GroupPlan(method, [hp for _, hp in ordered])
        groups.append((ordered[0][0], SweepGroup(order=[i for i, _ in ordered], plan=plan)))
    groups.sort(key=lambda g: g[0])
    return [g for _, g in groups]


def _identity(mapping: Mapping[str, torch.Tensor]) -> Any:
    path = getattr(mapping, "path", None)
    if path is not None and hasattr(mapping, "content_hash"):
        return (str(path.resolve()), getattr(mapping, "prefix", ""), mapping.content_hash())
    return ("object", id(mapping))


def _option_id(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_option_id(v) for v in value]
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    return f"{type(value).__name__}@{id(value)}"  # e.g. the cache: the same object across the group


@dataclass
class GroupPlan:
    """The merge points of one group, served in order from one ``merge_many`` generator."""

    method: str
    points: list[dict[str, Any]]
    cursor: int = 0
    served: int = 0
    fallbacks: int = 0
    _gen: Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = field(default=None, repr=False)
    _key: Any = field(default=None, repr=False)

    def take(self, method: str, base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
             hparams: Mapping[str, Any], merge_kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """θ* for this point from the group's pass, or ``None`` when the call is not the planned
        next point on the planned inputs (the caller then merges itself)."""
        from r2m.merging import merge_many
        from r2m.merging.registry import resolve_hparams

        if method != self.method or self.cursor >= len(self.points):
            return None
        hp = resolve_hparams(method, dict(hparams))
        if hp != self.points[self.cursor]:
            return None
        key = (_identity(base), tuple(_identity(s) for s in specialists),
               json.dumps({k: _option_id(v) for k, v in sorted(merge_kwargs.items())}))
        if self._gen is not None and key != self._key:
            log.info("grouped sweep: job %d merges other inputs; it and the rest of the group merge separately",
                     self.cursor)
            self.close()
            self.cursor = len(self.points)
            return None
        if self._gen is None:
            self._key = key
            self._gen = merge_many(method, base, specialists, self.points[self.cursor:], **dict(merge_kwargs))
        got_hp, merged = next(self._gen)
        if got_hp != hp:  # merge_many yields points in order; anything else is a bug
            raise RuntimeError(f"grouped sweep: merge_many yielded {got_hp}, expected {hp}")
        self.cursor += 1
        self.served += 1
        return merged

    def skip_to(self, hparams: Mapping[str, Any]) -> None:
        """A job of the group is about to run: if an earlier planned job never asked for its merge
        (it failed first), drop the generator so that this one is not served stale points."""
        from r2m.merging.registry import resolve_hparams

        hp = resolve_hparams(self.method, dict(hparams))
        if self.cursor < len(self.points) and self.points[self.cursor] != hp:
            rest = self.points[self.cursor:]
            if hp in rest:
                self.close()
                self.cursor += rest.index(hp)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
        self._gen = None
        self._key = None


@contextlib.contextmanager
def planned(plan: GroupPlan | None) -> Iterator[GroupPlan | None]:
    """Make ``plan`` the active plan of :func:`planned_merge` (``None``: no plan)."""
    if plan is None:
        yield None
        return
    _ACTIVE.append(plan)
    try:
        yield plan
    finally:
        _ACTIVE.remove(plan)
        plan.close()


def active_plan() -> GroupPlan | None:
    return _ACTIVE[-1] if _ACTIVE else None


def planned_merge(method: str, base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
                  **kwargs: Any) -> dict[str, torch.Tensor]:
    """Drop-in for :func:`r2m.merging.merge` (same arguments: the method's hyperparameters and the
    merge options ``device``, ``cache``, ``names``, ``progress``, ...): served from the active
    group plan when this is its next point, else ``merge`` itself."""
    from r2m.merging import merge, method_defaults

    plan = active_plan()
    if plan is not None:
        hp_names = set(method_defaults(method)) if method == plan.method else set()
        hparams = {k: v for k, v in kwargs.items() if k in hp_names}
        options = {k: v for k, v in kwargs.items() if k not in hp_names}
        merged = plan.take(method, base, specialists, hparams, options)
        if merged is not None:
            return merged
        if method == plan.method:
            plan.fallbacks += 1
    return merge(method, base, specialists, **kwargs)

