"""The merge pipeline: request → pool → checks → jobs → evaluator → report.

Every front end calls :func:`run_merge` — ``merge.py`` (through :func:`run_merge_from_config`), the
Lightning :class:`~r2m.callbacks.merge.MergeCallback`, the Hydra
:class:`~r2m.callbacks.hydra.MergeOnMultirunEnd` and the sweeps (Optuna search, grouped launcher):

    from r2m.pipeline import request_from_config, run_merge
    from r2m.merging.jobs import jobs_from_entries

    request = request_from_config(cfg)                     # a composed merge.yaml config
    aucs = run_merge(request, jobs_from_entries(["r2m", {"method": "r2m", "alpha": 0.4}]),
                     out_dir="out")                        # {job name: validation AUC or None}

Order of work (nothing is merged or written before every check passed):

1. :class:`~r2m.pool.SpecialistPool` collects the specialists (kinds from metadata, duplicates
   refused, the joint model set aside), verifies them and finds θ0;
2. :mod:`r2m.evaldata` resolves the evaluation data (the specialists' own by default), sets the
   data module up for every stage that will run, and checks the validation carve;
3. :func:`r2m.merging.jobs.run_jobs` merges, one method at a time through ``merge_many`` and a
   per-process :class:`~r2m.merging.DecompositionCache`;
4. :class:`~r2m.evaluation.evaluator.Evaluator` validates / tests specialists, joint and merges;
5. :class:`~r2m.report.MergeReport` writes tables, ROC plots, ``summary.json`` (``status``) and one
   W&B run per job; on any error it marks the output ``FAILED`` and the error propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from r2m.merging.jobs import MergeJob, job_display_name, jobs_from_config, jobs_from_entries
from r2m.report import MergeReport, WandbSettings, log_sweep_table
from r2m.utils import atomic_write_json, code_version, resolve_device

log = logging.getLogger(__name__)

MERGED_FILENAME = "merged.safetensors"

__all__ = ["MergeRequest", "MergeOutcome", "run_merge", "request_from_config", "run_merge_from_config",
           "MergeJob", "jobs_from_config", "jobs_from_entries", "job_display_name", "shared_cache"]


@dataclass
class MergeRequest:
    """What to merge and how to evaluate it (everything but the jobs and the output folder).

    Attributes:
        specialists: file, folder, glob or a list of them (see :class:`~r2m.pool.SpecialistPool`).
        add: extra specialist files (composable re-merge), each must be new and a specialist.
        joint: a joint ("all-in-one") model file evaluated alongside (``None`` → one found among
            folder / glob sources).
        base, base_dirs: θ0 file, or folders holding ``base-<hash>.safetensors``.
        data: ``None`` → the specialists' recorded data; a mapping without ``_target_`` →
            overrides on top of it; with ``_target_`` → that data config (see :mod:`r2m.evaldata`).
        datamodule: an already built data module (used as is; the carve is still checked).
        eval_family: the data module family for evaluation (``joint`` = every family's validation).
        validate / test: which loops run; eval_specialists: evaluate each specialist too.
        allow_mixed_data: accept specialists trained on different data configs.
        check_carve: check the validation carve against the specialists' (see :mod:`r2m.evaldata`).
        device: where merges compute; accelerator / precision: the evaluation loops.
        cache_dir: on-disk decomposition cache (``None`` → memory, shared within the process).
        cache: decomposition-cache policy (:func:`r2m.merging.plan_cache`): ``auto`` (default: no
            cache for a single merge that nothing can reuse; the on-disk cache for a sweep, several
            decomposition methods, or when ``cache_dir`` already holds entries), ``memory``, ``disk``, ``off``.
        save_merged, diagnostics, progress: outputs.
        wandb: W&B settings (``None`` → no W&B); its ``group`` defaults to the specialists' run group.
        sweep_table: with several jobs, also log a sweep-level W&B table run.
        context: extra JSON-able facts recorded in summary and W&B config (e.g. the sweep folder).
    """

    specialists: Any
    add: Any = None
    joint: str | Path | None = None
    base: str | Path | None = None
    base_dirs: Sequence[str | Path] = ()
    data: Mapping[str, Any] | None = None
    datamodule: Any = None
    eval_family: str | None = "joint"
    validate: bool = True
    test: bool = True
    eval_specialists: bool = False
    allow_mixed_data: bool = False
    check_carve: bool = True
    device: str | None = "auto"
    accelerator: str = "auto"
    precision: str | None = None
    cache_dir: str | Path | None = None
    cache: str = "auto"
    save_merged: bool = True
    diagnostics: bool = True
    progress: bool = True
    wandb: WandbSettings | None = None
    sweep_table: bool = True
    context: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> MergeRequest:
        return replace(self, **changes)


@dataclass
class MergeOutcome:
    """What :func:`run_merge_outcome` returns: per-job validation AUCs, the report, the pool."""

    val_aucs: dict[str, float | None]
    report: MergeReport
    pool: Any
    written: dict[str, Path]


_CACHES: dict[str, Any] = {}


def shared_cache(cache_dir: str | Path | None):
    """One :class:`~r2m.merging.DecompositionCache` per folder and process (jobs of a sweep run in
    one process share the in-memory layer)."""
    from r2m.merging import DecompositionCache

    key = str(Path(cache_dir).resolve()) if cache_dir else "<memory>"
    if key not in _CACHES:
        _CACHES[key] = DecompositionCache(str(cache_dir) if cache_dir else None)
    return _CACHES[key]


_CACHE_METHODS = ("cart", "tsv", "r2m")


def cache_for(request: MergeRequest, jobs: Sequence[MergeJob]):
    """The decomposition cache of a run, by ``request.cache`` (see :func:`r2m.merging.plan_cache`):
    ``None`` when no merge of the run can reuse one; otherwise the process-wide cache of that folder."""
    from r2m.merging import plan_cache

    n = sum(1 for job in jobs if job.method in _CACHE_METHODS)
    if n and request.context.get("sweep_dir"):  # a job of a merge.py -m sweep: its siblings reuse the cache
        n = max(n, 2)
    planned = plan_cache(request.cache, n, request.cache_dir)
    if planned is None:
        return None
    return shared_cache(planned.directory)


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=," else "_" for ch in name)


def _fill_inputs(cfg: dict[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Input size and normalisation of the evaluation data from the specialists' metadata when the
    data config leaves them null."""
    for key in ("mean", "std"):
        if key in cfg and cfg[key] is None and meta.get(key) is not None:
            cfg[key] = list(meta[key])
    if "image_size" in cfg and cfg["image_size"] is None:
        size = meta.get("image_size") or (meta.get("model_spec") or {}).get("image_size")
        cfg["image_size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
    return cfg


def _prepare(request: MergeRequest, jobs: Sequence[MergeJob]):
    """Every check that can fail, before any merge: pool, θ0, data, carve."""
    from r2m import evaldata
    from r2m.pool import SpecialistPool

    if not jobs:
        raise ValueError("no merge jobs given")
    pool = SpecialistPool.collect(request.specialists, add=request.add, joint=request.joint, base=request.base,
                                  base_dirs=request.base_dirs)
    for method in dict.fromkeys(j.method for j in jobs):
        pool.require_merge(method)
    pool.verify()
    evaluate = request.validate or request.test
    datamodule, data_info = request.datamodule, {"source": "given" if request.datamodule is not None else None}
    files = [(str(e.path), e.meta) for e in pool.entries] + ([(str(pool.joint.path), pool.joint.meta)]
                                                             if pool.joint else [])
    data_cfg = None
    if evaluate and datamodule is None:
        data_cfg, source = evaldata.resolve_data_config(files, request.data, family=request.eval_family,
                                                        allow_mixed=request.allow_mixed_data)
        data_cfg = _fill_inputs(data_cfg, pool.entries[0].meta)
        data_info = {"source": source, "target": data_cfg.get("_target_"), "family": data_cfg.get("family")}
        log.info("evaluation data: %s (from %s)", data_cfg.get("_target_"), source)
        datamodule = evaldata.instantiate_data(data_cfg)
    if evaluate:
        evaldata.preflight(datamodule, validate=request.validate, test=request.test)
    if request.validate and request.check_carve:
        if data_cfg is None and hasattr(datamodule, "carve_record"):
            # a data module was given: the specialists' own carves are recomputed from their data
            data_cfg, _ = evaldata.resolve_data_config(files, None, family=request.eval_family,
                                                       allow_mixed=request.allow_mixed_data)
        data_info["carve"] = evaldata.check_carve(datamodule, data_cfg or {}, files)
    return pool, datamodule, data_info


def run_merge_outcome(request: MergeRequest, jobs: Sequence[MergeJob], *, out_dir: str | Path) -> MergeOutcome:
    """:func:`run_merge`, returning the report and pool as well."""
    from r2m.evaluation.evaluator import Evaluator
    from r2m.merging import merge_heads
    from r2m.merging.jobs import sweep_order

    t_start = time.perf_counter()
    jobs = list(jobs)
    out_dir = Path(out_dir)
    try:
        pool, datamodule, data_info = _prepare(request, jobs)
    except BaseException as err:  # refused before any work; an earlier run's outputs must not look current
        if (out_dir / "summary.json").is_file():
            MergeReport(out_dir).fail(err)
        raise
    wandb = request.wandb
    if wandb is not None and wandb.group is None:  # the training sweep's group, else the merge sweep's
        groups = pool.run_groups
        wandb = replace(wandb, group=groups[0] if len(groups) == 1 else request.context.get("default_group"))
    context = {**request.context, "data": data_info, "code_version": code_version(),
               "wandb_group": wandb.group if wandb is not None else None}
    report = MergeReport(out_dir, pool_info=pool.describe(), wandb=wandb, context=context)
    report.start()
    evaluator = Evaluator(datamodule, pool.paths[0], accelerator=request.accelerator, precision=request.precision,
                          validate=request.validate, test=request.test, progress=request.progress)
    cache = cache_for(request, jobs)
    device = resolve_device(request.device)
    try:
        if evaluator.active and request.eval_specialists:
            for entry in pool.entries:
                report.add(evaluator.evaluate_file(f"specialist:{entry.name}", entry.path, group="specialist"))
        if evaluator.active and pool.joint is not None:
            report.add(evaluator.evaluate_file("joint", pool.joint.path, group="joint"))
        head = merge_heads(pool.heads())
        ordered = sweep_order(jobs)
        merges = _merge_stream(ordered, pool.base(), pool.backbones(), device=device, cache=cache, names=pool.names,
                               progress=request.progress)
        for job in ordered:
            report.begin_job(job)
            t0 = time.perf_counter()
            done, backbone = next(merges)
            if done is not job:  # run_jobs yields in sweep_order; anything else is a bug
                raise RuntimeError(f"merge stream yielded {done.name}, expected {job.name}")
            log.info("merged %s in %.2fs", job.name, time.perf_counter() - t0)
            path = _write_merged(out_dir, pool, job, backbone, head) if request.save_merged else None
            images: list[Path] = []
            if request.diagnostics and job.method == "r2m":
                images += _diagnose(out_dir, pool, job, device)
            extra = {"method": job.method, **job.full_hparams()}
            if evaluator.active:
                ev = evaluator.evaluate_state(job.name, backbone, head, group="merge", path=path, extra=extra)
            else:
                from r2m.evaluation.evaluator import ModelEval

                ev = ModelEval(job.name, "merge", None, None, path, extra)
            report.add(ev)
            if wandb is not None and ev.result is not None:
                images += report.roc_images([*report.references(), ev], out_dir / "roc_per_job" / _safe_name(job.name))
            report.end_job(job, ev, images)
            del backbone
        report.context["cache_stats"] = dict(getattr(cache, "stats", {}))
        report.context["seconds"] = round(time.perf_counter() - t_start, 3)
        written = report.complete()
        if wandb is not None and request.sweep_table and len(jobs) > 1:
            log_sweep_table(wandb, report.sweep_rows(), name=f"merge summary ({len(jobs)} merges)")
    except BaseException as err:
        report.fail(err)
        raise
    aucs = {ev.name: ev.val_auc for ev in report.evals if ev.group == "merge"}
    return MergeOutcome(val_aucs={j.name: aucs.get(j.name) for j in jobs}, report=report, pool=pool, written=written)


def _merge_stream(jobs: Sequence[MergeJob], base: Any, backbones: Any, **options: Any):
    """``(job, θ*)`` for every job: one ``merge_many`` pass per method (:func:`run_jobs`), or — when a
    grouped launcher planned this Hydra job as part of a larger sweep (``r2m.sweeps``) — the
    group's shared pass."""
    from r2m.merging.jobs import run_jobs

    try:
        from r2m.sweeps import active_plan, planned_merge
    except ImportError:  # the grouped launcher is not installed
        active_plan = None
    if active_plan is not None and active_plan() is not None:
        for job in jobs:
            yield job, planned_merge(job.method, base, backbones, **options, **dict(job.hparams))
        return
    yield from run_jobs(jobs, base, backbones, **options)


def run_merge(request: MergeRequest, jobs: Sequence[MergeJob], *, out_dir: str | Path) -> dict[str, float | None]:
    """Merge the request's specialists with every job, evaluate, report.

    Returns ``{job name: validation AUC}`` in job order (``None`` when validation is off) — the
    objective sweeps choose on (never the test set). Raises, with ``out_dir`` marked ``FAILED``,
    on any error; nothing is merged before every check (specialists, θ0, data, carve) passed."""
    return run_merge_outcome(request, jobs, out_dir=out_dir).val_aucs


# ----------------------------------------------------------------------------------- outputs


def _manifest(pool: Any, job: MergeJob) -> dict[str, Any]:
    return {
        "name": job.name,
        "method": job.method,
        "hparams": job.full_hparams(),
        "specialists": [{"path": str(e.path), "task": e.name, "sha256": e.sha256, "base_hash": e.meta.get("base_hash")}
                        for e in pool.entries],
        "base_hash": pool.base_hash,
        "base_source": pool.base_source,
        "model_name": pool.entries[0].meta.get("model_name"),
        "head": "mean of the specialists' linear heads",
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write_merged(out_dir: Path, pool: Any, job: MergeJob, backbone: Mapping[str, Any], head: Mapping[str, Any]) -> Path:
    """``merged/<name>/merged.safetensors`` and ``manifest.json``, atomically."""
    from r2m.checkpoints import save_merged

    folder = out_dir / "merged" / _safe_name(job.name)
    manifest = _manifest(pool, job)
    keep = ("model_name", "model_spec", "base_hash", "base_source", "feature", "image_size", "mean", "std",
            "data_config", "carve", "run_group")
    meta = {k: v for k, v in pool.entries[0].meta.items() if k in keep}
    meta.update({"kind": "merged", "task": job.name, "method": job.method, "hparams": manifest["hparams"],
                 "families": sorted({f for e in pool.entries for f in e.families}),
                 "merged_from": [s["path"] for s in manifest["specialists"]],
                 "specialist_sha256": [s["sha256"] for s in manifest["specialists"]],
                 "code_version": manifest["code_version"]})
    path = save_merged(folder / MERGED_FILENAME, backbone, head, meta)
    atomic_write_json(folder / "manifest.json", manifest)
    return path


def _diagnose(out_dir: Path, pool: Any, job: MergeJob, device: Any) -> list[Path]:
    from r2m.diagnostics import compute_diagnostics, plot_diagnostics

    hp = job.full_hparams()
    diag = compute_diagnostics(pool.base(), pool.backbones(), pool.names, center=hp.get("center", False),
                               residual=hp.get("residual", "orthogonal"), k=hp.get("k", 1),
                               rank_ratio=hp.get("rank_ratio", 0.1), device=device)
    log.info("%s diagnostics: top singular value share of the task matrix σ₁²/Σσ² = %.3f (%.3f = 1/N would "
             "mean no shared component, 1 parallel task vectors)", job.name, diag["top_singular_share"],
             1.0 / len(pool.names))
    return list(plot_diagnostics(diag, out_dir / "diagnostics" / _safe_name(job.name)))


# ------------------------------------------------------------------------ config front end


def _hydra_dirs(cfg: Any) -> tuple[Path, Path | None]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        multirun = str(hc.mode) == "RunMode.MULTIRUN"
        return Path(hc.runtime.output_dir), (Path(hc.sweep.dir) if multirun else None)
    except (ValueError, ImportError):  # outside Hydra
        return Path(cfg.paths.output_dir), None


def request_from_config(cfg: Any) -> MergeRequest:
    """A :class:`MergeRequest` from a composed ``configs/merge.yaml`` config."""
    from omegaconf import OmegaConf

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    if cfg.get("specialists") is None:
        raise ValueError("specialists is not set: pass specialists=<file|folder|glob|[files]>")
    specialists = plain(cfg.specialists)
    if isinstance(specialists, list) and not specialists:
        raise ValueError("specialists=[] is empty: name at least two specialist files, a folder or a glob")
    ev = cfg.eval
    _, sweep_dir = _hydra_dirs(cfg)
    wandb = None
    for node in (plain(cfg.get("logger")) or {}).values():
        wandb = wandb or WandbSettings.from_logger_config(node)
    if wandb is not None:
        wandb.dir = wandb.dir or str(_hydra_dirs(cfg)[0])
    request = MergeRequest(
        specialists=specialists,
        add=plain(cfg.get("add")),
        joint=ev.get("joint"),
        base=cfg.get("base"),
        base_dirs=[d for d in [cfg.paths.get("base_dir")] if d],
        data=plain(cfg.get("data")) or None,
        eval_family=ev.get("family", "joint"),
        validate=bool(ev.validate),
        test=bool(ev.test),
        eval_specialists=bool(ev.specialists),
        allow_mixed_data=bool(ev.get("allow_mixed_data", False)),
        check_carve=bool(ev.get("check_carve", True)),
        device=cfg.device,
        accelerator=cfg.accelerator,
        precision=cfg.get("precision"),
        cache_dir=cfg.get("cache_dir"),
        cache=cfg.get("cache", "auto"),
        save_merged=bool(cfg.save_merged),
        diagnostics=bool(cfg.diagnostics),
        wandb=wandb,
        context={"sweep_dir": str(sweep_dir) if sweep_dir else None},
    )
    if sweep_dir is not None:  # W&B group of a merge.py -m sweep without a training group
        request.context["default_group"] = f"merge-{sweep_dir.name}"
    return request


def jobs_from_merge_config(cfg: Any) -> list[MergeJob]:
    """``cfg.merge`` (one method config) plus ``cfg.extra_methods``."""
    from omegaconf import OmegaConf

    jobs = jobs_from_config(OmegaConf.to_container(cfg.merge, resolve=True))
    extra = cfg.get("extra_methods")
    if extra:
        from r2m.pool import as_list

        jobs += jobs_from_entries(as_list(OmegaConf.to_container(extra, resolve=True)))
    return jobs


def run_merge_from_config(cfg: Any) -> float:
    """``merge.py``'s job: returns the first job's validation AUC (NaN when validation is off)."""
    out_dir, _ = _hydra_dirs(cfg)
    request = request_from_config(cfg)
    jobs = jobs_from_merge_config(cfg)
    aucs = run_merge(request, jobs, out_dir=out_dir)
    first = aucs.get(jobs[0].name)
    return float(first) if first is not None else float("nan")

