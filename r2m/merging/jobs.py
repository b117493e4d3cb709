"""Merge jobs: what to merge with which hyperparameters, and a sweep run through :func:`merge_many`.

    jobs = jobs_from_entries(["r2m", {"method": "r2m", "alpha": 0.4}, "ties"])
    for job, backbone in run_jobs(jobs, base, specialists, cache=cache, names=names):
        ...                                   # one θ* at a time; keep it only as long as needed

:func:`run_jobs` hands the jobs of one method to :func:`r2m.merging.merge_many` in one call, ordered
so that points differing only in the method's sweep-free hyperparameters (R²M: ``alpha``,
``eta``) are consecutive: their shared work (R²M's residual pass) is done once per group.
Results are bit-identical to one :func:`r2m.merging.merge` per job with the same cache.
Pure PyTorch, no project imports beyond the merge library.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from r2m.merging.registry import METHODS, merge_many, method_defaults, method_spec, resolve_hparams

__all__ = ["MergeJob", "job_display_name", "jobs_from_config", "jobs_from_entries", "run_jobs", "sweep_order"]


@dataclass(frozen=True)
class MergeJob:
    """One merge: a display ``name``, a method of :data:`METHODS` and its hyperparameters (only
    those that differ from the method defaults need to be given)."""

    name: str
    method: str
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def full_hparams(self) -> dict[str, Any]:
        """The method defaults updated with this job's hyperparameters."""
        return resolve_hparams(self.method, dict(self.hparams))

    def changed_hparams(self) -> dict[str, Any]:
        """The hyperparameters that differ from the method defaults."""
        defaults = method_defaults(self.method)
        return {k: v for k, v in sorted(self.full_hparams().items()) if defaults.get(k) != v}


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def job_display_name(method: str, hparams: Mapping[str, Any], name: str | None = None) -> str:
    """``name`` (default: the method) followed by the hyperparameters that differ from the
    method's defaults, e.g. ``r2m[alpha=0.4,rank_ratio=0.05]``; an explicit ``name`` is kept."""
    defaults = method_defaults(method)
    diffs = [f"{k}={_fmt_value(v)}" for k, v in sorted(hparams.items()) if k in defaults and defaults[k] != v]
    base = name or method
    return f"{base}[{','.join(diffs)}]" if diffs and base == method else base


def jobs_from_config(entries: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> list[MergeJob]:
    """:class:`MergeJob` s from mappings ``{name?, method, **hparams}`` (one or a list). Unknown
    methods or hyperparameters, invalid values and duplicate names raise ``ValueError`` here,
    before any work."""
    if isinstance(entries, Mapping):
        entries = [entries]
    jobs: list[MergeJob] = []
    for entry in entries:
        entry = dict(entry)
        method = entry.pop("method", None)
        if method not in METHODS:
            raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
        name = entry.pop("name", None)
        resolve_hparams(method, dict(entry))
        display = job_display_name(method, entry, name if name and name != method else None)
        jobs.append(MergeJob(name=display, method=method, hparams=entry))
    names = [j.name for j in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate merge job names {dupes}: give each variant its own `name`")
    return jobs


def jobs_from_entries(entries: Sequence[Any]) -> list[MergeJob]:
    """Jobs from a mixed list: a method name (its defaults) or a mapping ``{name?, method, **hp}``."""
    return jobs_from_config([{"method": e} if isinstance(e, str) else dict(e) for e in entries])


def sweep_order(jobs: Sequence[MergeJob]) -> list[MergeJob]:
    """The order :func:`run_jobs` yields ``jobs`` in: grouped by method (first-appearance order); within a method, jobs sharing the
    hyperparameters that are not sweep-free become consecutive (stable)."""
    by_method: dict[str, list[MergeJob]] = {}
    for job in jobs:
        by_method.setdefault(job.method, []).append(job)
    out = []
    for method, group in by_method.items():
        free = set(method_spec(method).sweep_free)
        keys: list[str] = []
        buckets: dict[str, list[MergeJob]] = {}
        for job in group:
            fixed = repr(sorted((k, v) for k, v in job.full_hparams().items() if k not in free))
            if fixed not in buckets:
                keys.append(fixed)
                buckets[fixed] = []
            buckets[fixed].append(job)
        out.extend(j for k in keys for j in buckets[k])
    return out


def run_jobs(
    jobs: Sequence[MergeJob],
    base: Mapping[str, Tensor],
    specialists: Sequence[Mapping[str, Tensor]],
    **kwargs: Any,
) -> Iterator[tuple[MergeJob, dict[str, Tensor]]]:
    """Yield ``(job, θ*)`` for every job, one method at a time through one
    :func:`~r2m.merging.merge_many` call (one validated input set, one cache, shared group work).
    ``kwargs`` go to ``merge_many`` (``device``, ``cache``, ``names``, ``progress``, hashes …).
    Every job's hyperparameters are validated before the first merge."""
    for job in jobs:
        job.full_hparams()
    ordered = sweep_order(jobs)
    groups = [[j for j in ordered if j.method == m] for m in dict.fromkeys(j.method for j in ordered)]
    for group in groups:
        grid = [dict(j.hparams) for j in group]
        for job, (_, merged) in zip(group, merge_many(group[0].method, base, specialists, grid, **kwargs)):
            yield job, merged
