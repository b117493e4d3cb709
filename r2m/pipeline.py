"""The merge pipeline: collect → verify → merge → evaluate → write.

Shared by ``merge.py``, the Lightning :class:`~r2m.callbacks.merge.MergeCallback` and the Hydra
multirun-end callback, so that every number a user sees comes from the same code path:

1. :func:`collect_specialists` turns files, folders and globs into a sorted list of specialist files;
2. :meth:`MergePipeline.verify` checks, before any work, that all specialists share the model
   spec, the base hash, keys, shapes, dtypes and hold finite values (nothing is written otherwise);
3. :meth:`MergePipeline.merge` streams the backbones lazily from disk into
   :func:`r2m.merging.merge` (on the GPU when there is one), with a content-addressed
   :class:`~r2m.merging.DecompositionCache` so sweeps and re-merges reuse SVDs and Gram entries,
   and averages the heads (the paper's head);
4. :meth:`MergePipeline.evaluate` runs the same Lightning validation / test loops for specialists,
   the joint model and merged models; results go to one :class:`~r2m.evaluation.ResultsTable`;
5. :meth:`MergePipeline.write_reports` writes the tidy table (CSV/JSON/Markdown), the comparison
   table, ROC curves, merge diagnostics and, when a W&B logger is active, the same to W&B.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r2m.utils import atomic_write_json, code_version, file_sha256, resolve_device

log = logging.getLogger(__name__)

SPECIALIST_FILENAME = "specialist.safetensors"
MERGED_FILENAME = "merged.safetensors"

__all__ = [
    "MergeJob",
    "ModelEval",
    "MergePipeline",
    "collect_specialists",
    "jobs_from_config",
    "job_display_name",
]


# --------------------------------------------------------------------------------------------
# merge jobs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeJob:
    """One merge to run: a display ``name``, a method of :data:`r2m.merging.METHODS` and its
    hyperparameters (only those that differ from the method defaults need to be given)."""

    name: str
    method: str
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def full_hparams(self) -> dict[str, Any]:
        """The method defaults updated with this job's hyperparameters."""
        from r2m.merging.registry import resolve_hparams

        return resolve_hparams(self.method, dict(self.hparams))


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def job_display_name(method: str, hparams: Mapping[str, Any], name: str | None = None) -> str:
    """``name`` (default: the method) followed by the hyperparameters that differ from the
    method's defaults, e.g. ``r2m[alpha=0.4,rank_ratio=0.05]``."""
    from r2m.merging import method_defaults

    defaults = method_defaults(method)
    diffs = [f"{k}={_fmt_value(v)}" for k, v in sorted(hparams.items()) if k in defaults and defaults[k] != v]
    base = name or method
    return f"{base}[{','.join(diffs)}]" if diffs and base == method else base


def jobs_from_config(entries: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> list[MergeJob]:
    """Build :class:`MergeJob` s from config mappings ``{name?, method, **hparams}`` (one mapping
    or a list of them). Unknown methods or hyperparameters raise ``ValueError`` here, before any
    work."""
    from r2m.merging import METHODS
    from r2m.merging.registry import resolve_hparams

    if isinstance(entries, Mapping):
        entries = [entries]
    jobs: list[MergeJob] = []
    for entry in entries:
        entry = dict(entry)
        method = entry.pop("method", None)
        if method not in METHODS:
            raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
        name = entry.pop("name", None)
        resolve_hparams(method, dict(entry))  # unknown names or invalid values: ValueError, before any work
        display = job_display_name(method, entry, name if name and name != method else None)
        jobs.append(MergeJob(name=display, method=method, hparams=entry))
    names = [j.name for j in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate merge job names {dupes}: give each variant its own `name`")
    return jobs


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def collect_specialists(sources: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """Expand files, folders (searched recursively for ``specialist.safetensors``) and glob
    patterns into a sorted, de-duplicated list of specialist files. A source that matches
    nothing is an error naming it."""
    if sources is None:
        return []
    if isinstance(sources, (str, Path)):
        sources = [sources]
    found: list[Path] = []
    for src in sources:
        src_str = str(src)
        path = Path(src_str)
        if any(ch in src_str for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(src_str, recursive=True))
            matches = [m if m.is_file() else m / SPECIALIST_FILENAME for m in matches]
            matches = [m for m in matches if m.is_file()]
        elif path.is_dir():
            matches = sorted(path.rglob(SPECIALIST_FILENAME))
        elif path.is_file():
            matches = [path]
        else:
            raise FileNotFoundError(f"specialist source not found: {src_str}")
        if not matches:
            raise FileNotFoundError(f"no specialist files ({SPECIALIST_FILENAME}) under {src_str}")
        found.extend(matches)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(str(p.resolve()), p.resolve())
    return sorted(unique.values(), key=str)


@dataclass
class ModelEval:
    """Evaluation of one model: its test :class:`~r2m.evaluation.EvalResult` (or ``None``) and
    validation AUC (or ``None``)."""

    name: str
    group: str
    result: Any | None
    val_auc: float | None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------

_CACHES: dict[str, Any] = {}


def _shared_cache(cache_dir: str | Path | None):
    """One :class:`DecompositionCache` per folder and process, so that the jobs of a Hydra sweep
    run by the basic launcher (in one process) also share the in-memory layer."""
    from r2m.merging import DecompositionCache

    key = str(Path(cache_dir).resolve()) if cache_dir else "<memory>"
    if key not in _CACHES:
        _CACHES[key] = DecompositionCache(str(cache_dir) if cache_dir else None)
    return _CACHES[key]


class MergePipeline:
    """Merge a set of specialists with one or more methods and evaluate everything alike.

    Args:
        specialists: specialist files (see :func:`collect_specialists`).
        base: explicit base θ0 file (an r2m base file, or anything with the same backbone keys);
            ``None`` → looked up as ``base-<base_hash>.safetensors`` in ``base_dirs``, then rebuilt
            from the specialists' ``base_source`` (open_clip tag or file) and checked by hash.
        base_dirs: folders to search for the base file.
        out_dir: where merged files, tables and plots go.
        device: where merges compute (``"auto"`` → CUDA when available).
        cache_dir: on-disk decomposition cache (``None`` → in memory only).
        accelerator / precision: Lightning settings of the evaluation loops.
        save_merged: write ``merged/<name>/merged.safetensors`` for every merge.
        diagnostics: write merge diagnostics plots for the R²M jobs.
        loggers: Lightning loggers; a W&B logger gets tables, plots and summary scalars.
    """

    def __init__(
        self,
        specialists: Sequence[str | Path],
        *,
        base: str | Path | None = None,
        base_dirs: Sequence[str | Path] = (),
        out_dir: str | Path = "merge_out",
        device: str | None = "auto",
        cache_dir: str | Path | None = None,
        accelerator: str = "auto",
        precision: str | None = None,
        save_merged: bool = True,
        diagnostics: bool = True,
        loggers: Sequence[Any] = (),
        progress: bool = True,
    ) -> None:
        from r2m.checkpoints import read_metadata

        self.paths = [Path(p) for p in specialists]
        if not self.paths:
            raise ValueError("no specialist files given: nothing to merge")
        self.metas = [read_metadata(p) for p in self.paths]
        self.names = [self._task_name(p, m) for p, m in zip(self.paths, self.metas)]
        dupes = sorted({n for n in self.names if self.names.count(n) > 1})
        if dupes:
            self.names = [f"{n}@{p.parent.name}" if n in dupes else n for n, p in zip(self.names, self.paths)]
        self.base_path = Path(base) if base else None
        self.base_dirs = [Path(d) for d in base_dirs]
        self.out_dir = Path(out_dir)
        self.device = resolve_device(device)
        self.cache = _shared_cache(cache_dir)
        self.accelerator = accelerator
        self.precision = precision
        self.save_merged = save_merged
        self.diagnostics = diagnostics
        self.loggers = list(loggers)
        self.progress = progress
        self.evals: list[ModelEval] = []
        self.diagnostic_plots: list[Path] = []
        self._base_state: Mapping[str, torch.Tensor] | None = None
        self._verified = False

    # ---------------------------------------------------------------- inputs and verification
    @staticmethod
    def _task_name(path: Path, meta: Mapping[str, Any]) -> str:
        task = meta.get("task")
        return str(task) if task else path.parent.name

    def _backbones(self) -> list[Mapping[str, torch.Tensor]]:
        from r2m.merging import LazySafetensors

        return [LazySafetensors(str(p), prefix="backbone.") for p in self.paths]

    def _heads(self) -> list[dict[str, torch.Tensor]]:
        from r2m.merging import LazySafetensors

        heads = []
        for p in self.paths:
            lazy = LazySafetensors(str(p), prefix="head.")
            heads.append({k: lazy[k] for k in lazy})
        return heads

    def resolve_base(self) -> Mapping[str, torch.Tensor]:
        """Find θ0 and check its content hash against the specialists' ``base_hash``."""
        if self._base_state is not None:
            return self._base_state
        from r2m.checkpoints import find_base, read_metadata
        from r2m.merging import LazySafetensors
        from r2m.utils import state_dict_hash

        expected = self.metas[0].get("base_hash")
        path = self.base_path
        if path is None:
            path = find_base(self.metas[0], self.base_dirs)
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"base file not found: {path}")
            meta = read_metadata(path)
            prefix = "backbone." if meta.get("format", "").startswith("r2m-") else ""
            state: Mapping[str, torch.Tensor] = LazySafetensors(str(path), prefix=prefix)
            source = str(path)
        else:
            from r2m.models.backbone import build_backbone

            spec = self.metas[0].get("model_spec") or {}
            source = self.metas[0].get("base_source")
            if not source:
                raise FileNotFoundError(
                    f"no base file for base_hash {expected} in {[str(d) for d in self.base_dirs]} and "
                    f"{self.paths[0]} names no base_source: pass base=<file>"
                )
            log.info("rebuilding base θ0 from %s", source)
            module, _ = build_backbone(
                model_name=spec.get("model_name"),
                model_cfg=spec.get("model_cfg"),
                pretrained=source,
                image_size=spec.get("image_size"),
                feature=spec.get("feature", "pooled"),
            )
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        actual = state_dict_hash({k: state[k] for k in state})
        if expected and actual != expected:
            raise ValueError(
                f"base {source} has content hash {actual}, but the specialists were fine-tuned "
                f"from base_hash {expected}"
            )
        self._base_state = state
        self.base_source = source
        return state

    def verify(self) -> None:
        """Refuse mismatched, non-finite or different-base specialists before any work."""
        from r2m.checkpoints import verify_specialists

        verify_specialists(self.paths)
        self.resolve_base()
        self._verified = True

    # --------------------------------------------------------------------------- merging
    def merge(self, job: MergeJob) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run one merge job; returns the merged backbone and the averaged head."""
        from r2m.merging import merge_heads
        from r2m.sweeps import planned_merge as merge  # == r2m.merging.merge unless a grouped sweep planned it

        if not self._verified:
            self.verify()
        base = self.resolve_base()
        t0 = time.perf_counter()
        merged = merge(
            job.method,
            base,
            self._backbones(),
            device=self.device,
            cache=self.cache,
            names=self.names,
            progress=self.progress,
            **dict(job.hparams),
        )
        head = merge_heads(self._heads())
        log.info("merged %s (%s) in %.2fs", job.name, job.method, time.perf_counter() - t0)
        return merged, head

    def manifest(self, job: MergeJob) -> dict[str, Any]:
        """What a merged file was made of: inputs with content hashes, method, hyperparameters."""
        return {
            "name": job.name,
            "method": job.method,
            "hparams": job.full_hparams(),
            "specialists": [
                {"path": str(p), "task": n, "sha256": file_sha256(p), "base_hash": m.get("base_hash")}
                for p, n, m in zip(self.paths, self.names, self.metas)
            ],
            "base_hash": self.metas[0].get("base_hash"),
            "base_source": getattr(self, "base_source", None),
            "model_name": self.metas[0].get("model_name"),
            "head": "mean of the specialists' linear heads",
            "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def write_merged(self, job: MergeJob, backbone: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor]) -> Path:
        """Write ``merged/<name>/merged.safetensors`` and ``manifest.json`` atomically."""
        from r2m.checkpoints import save_merged

        folder = self.out_dir / "merged" / _safe_name(job.name)
        manifest = self.manifest(job)
        meta = {
            k: v
            for k, v in self.metas[0].items()
            if k in ("model_name", "model_spec", "base_hash", "base_source", "feature", "image_size", "mean", "std")
        }
        meta.update(
            {
                "task": job.name,
                "method": job.method,
                "hparams": manifest["hparams"],
                "merged_from": [s["path"] for s in manifest["specialists"]],
                "specialist_sha256": [s["sha256"] for s in manifest["specialists"]],
                "code_version": manifest["code_version"],
            }
        )
        path = save_merged(folder / MERGED_FILENAME, backbone, head, meta)
        atomic_write_json(folder / "manifest.json", manifest)
        return path

    # ------------------------------------------------------------------------- evaluation
    def detector_with(self, backbone: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor]):
        """A :class:`~r2m.models.DeepfakeDetector` with the architecture of the specialists and
        the given weights (strict loading)."""
        from r2m.models.detector import DeepfakeDetector

        det = DeepfakeDetector.from_file(self.paths[0])
        det.backbone.load_state_dict(dict(backbone), strict=True)
        det.head.load_state_dict(dict(head), strict=True)
        return det.eval()

    def _trainer(self):
        import lightning as L

        return L.Trainer(
            accelerator=self.accelerator,
            devices=1,
            precision=self.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=self.progress,
            deterministic=False,
        )

    def evaluate(
        self,
        name: str,
        detector,
        datamodule,
        *,
        group: str,
        test: bool = True,
        validate: bool = True,
        path: Path | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ModelEval:
        """Validation AUC (for model choice) and per-test-set / per-split metrics of one model."""
        val_auc = None
        result = None
        if validate:
            metrics = self._trainer().validate(detector, datamodule=datamodule, verbose=False)
            if metrics and "val/auc" in metrics[0]:
                val_auc = float(metrics[0]["val/auc"])
        if test:
            self._trainer().test(detector, datamodule=datamodule, verbose=False)
            result = detector.test_results
        ev = ModelEval(name=name, group=group, result=result, val_auc=val_auc, path=path, extra=dict(extra or {}))
        self.evals.append(ev)
        return ev

    # ------------------------------------------------------------------------------- run
    def run(
        self,
        jobs: Sequence[MergeJob],
        datamodule=None,
        *,
        eval_specialists: bool = False,
        joint: str | Path | None = None,
        test: bool = True,
        validate: bool = True,
    ) -> list[ModelEval]:
        """Verify, evaluate specialists / joint when asked, then merge and evaluate every job."""
        self.verify()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        evaluate = datamodule is not None and (test or validate)
        if evaluate and eval_specialists:
            from r2m.models.detector import DeepfakeDetector

            for p, n in zip(self.paths, self.names):
                self.evaluate(f"specialist:{n}", DeepfakeDetector.from_file(p), datamodule,
                              group="specialist", test=test, validate=validate, path=p)
        if evaluate and joint:
            from r2m.checkpoints import verify_specialists
            from r2m.models.detector import DeepfakeDetector

            verify_specialists([*self.paths, Path(joint)])  # same architecture and base
            self.evaluate("joint", DeepfakeDetector.from_file(joint), datamodule, group="joint",
                          test=test, validate=validate, path=Path(joint))
        for job in jobs:
            backbone, head = self.merge(job)
            path = self.write_merged(job, backbone, head) if self.save_merged else None
            if self.diagnostics and job.method == "r2m":
                self._diagnose(job)
            if evaluate:
                self.evaluate(job.name, self.detector_with(backbone, head), datamodule, group="merge",
                              test=test, validate=validate, path=path,
                              extra={"method": job.method, **job.full_hparams()})
            else:
                self.evals.append(ModelEval(job.name, "merge", None, None, path,
                                            {"method": job.method, **job.full_hparams()}))
            del backbone
        return self.evals

    def _diagnose(self, job: MergeJob) -> None:
        from r2m.diagnostics import compute_diagnostics, plot_diagnostics

        hp = job.full_hparams()
        diag = compute_diagnostics(
            self.resolve_base(), self._backbones(), self.names,
            center=hp.get("center", False), residual=hp.get("residual", "orthogonal"),
            k=hp.get("k", 1), rank_ratio=hp.get("rank_ratio", 0.1), device=self.device,
        )
        folder = self.out_dir / "diagnostics" / _safe_name(job.name)
        self.diagnostic_plots.extend(plot_diagnostics(diag, folder))

    # --------------------------------------------------------------------------- reports
    def results_table(self):
        from r2m.evaluation import ResultsTable

        table = ResultsTable()
        for ev in self.evals:
            if ev.result is not None:
                # full hyperparameters live in summary.json and each manifest; the name shows the
                # ones that differ from the method defaults
                table.add(ev.name, ev.result, group=ev.group, extra={"val_auc": ev.val_auc})
        return table

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: per model its validation AUC and per-split means."""
        models = []
        for ev in self.evals:
            models.append(
                {
                    "name": ev.name,
                    "group": ev.group,
                    "val_auc": ev.val_auc,
                    "path": str(ev.path) if ev.path else None,
                    "per_split": ev.result.per_split if ev.result is not None else None,
                    **{f"hp/{k}": v for k, v in ev.extra.items()},
                }
            )
        return {"specialists": [str(p) for p in self.paths], "tasks": self.names, "models": models,
                "cache_stats": dict(getattr(self.cache, "stats", {}))}

    def write_reports(self, stem: str = "results") -> dict[str, Path]:
        """Tables (CSV/JSON/Markdown), comparison, ROC curves, summary; W&B when active."""
        from r2m.evaluation import plot_roc

        written: dict[str, Path] = {}
        table = self.results_table()
        evaluated = {ev.name: ev.result for ev in self.evals if ev.result is not None}
        if evaluated:
            written.update({f"table_{k}": v for k, v in table.write(self.out_dir, stem=stem).items()})
            written.update({f"comparison_{k}": v for k, v in table.write_comparison(self.out_dir).items()})
            first = next(iter(evaluated.values()))  # every EvalResult carries its split → test sets map
            pngs = plot_roc(evaluated, first.test_splits, self.out_dir)
        else:
            pngs = []
        written["summary"] = atomic_write_json(self.out_dir / "summary.json", _jsonable(self.summary()))
        images = [*pngs, *self.diagnostic_plots]
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                from r2m.evaluation import log_to_wandb

                log_to_wandb(logger, table, images, prefix="merge")
        return written


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=," else "_" for ch in name)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------------------------
# config front end (merge.py and the callbacks)
# --------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def jobs_from_entries(entries: Sequence[Any]) -> list[MergeJob]:
    """Merge jobs from a mixed list: a method name (its defaults, which equal the
    ``configs/merge/<method>.yaml`` defaults) or a mapping ``{name?, method, **hparams}``."""
    mappings = [{"method": e} if isinstance(e, str) else dict(e) for e in entries]
    return jobs_from_config(mappings)


def _fill_model_inputs(cfg, specialist: Path) -> None:
    """Fill ``cfg.model.{image_size,mean,std}`` (read by the data configs) from a specialist's
    metadata when the config leaves them null."""
    from omegaconf import open_dict

    from r2m.checkpoints import read_metadata

    meta = read_metadata(specialist)
    with open_dict(cfg):
        if "model" not in cfg or cfg.model is None:
            cfg.model = {}
        for key in ("mean", "std"):
            if cfg.model.get(key) is None and meta.get(key) is not None:
                cfg.model[key] = list(meta[key])
        if cfg.model.get("image_size") is None:
            size = meta.get("image_size") or (meta.get("model_spec") or {}).get("image_size")
            if size is None:
                from r2m.models.detector import DeepfakeDetector

                size = DeepfakeDetector.from_file(specialist).backbone.image_size
            cfg.model.image_size = int(size[0] if isinstance(size, (list, tuple)) else size)


def run_merge_from_config(cfg) -> float:
    """Run ``merge.py``'s job from its composed Hydra config; returns the merged model's
    validation AUC (the objective of sweeps; NaN when validation is off)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    try:
        hydra_cfg = HydraConfig.get()
        out_dir = Path(hydra_cfg.runtime.output_dir)
        is_multirun = str(hydra_cfg.mode) == "RunMode.MULTIRUN"
        sweep_dir = Path(hydra_cfg.sweep.dir) if is_multirun else None
    except ValueError:  # called outside Hydra (tests)
        out_dir, sweep_dir = Path(cfg.paths.output_dir), None

    sources = [*_as_list(cfg.specialists), *_as_list(cfg.get("add"))]
    specialists = collect_specialists(sources)
    merge_cfg = OmegaConf.to_container(cfg.merge, resolve=True)
    jobs = jobs_from_config(merge_cfg)
    extra = cfg.get("extra_methods")
    if extra:
        jobs += jobs_from_entries(_as_list(OmegaConf.to_container(extra, resolve=True)))

    loggers = []
    for name, lg_cfg in (cfg.get("logger") or {}).items():
        if lg_cfg is None or "_target_" not in lg_cfg:
            continue
        kwargs = {}
        if "wandb" in str(lg_cfg._target_).lower():
            job = jobs[0]
            kwargs["group"] = lg_cfg.get("group") or (f"merge-sweep-{sweep_dir.name}" if sweep_dir else "merge")
            kwargs["tags"] = [*(lg_cfg.get("tags") or []), job.method,
                              *(f"{k}={_fmt_value(v)}" for k, v in sorted(job.hparams.items()))]
            kwargs["name"] = job.name
        loggers.append(hydra.utils.instantiate(lg_cfg, **kwargs))
    for lg in loggers:
        lg.log_hyperparams(
            {"merge/method": jobs[0].method, **{f"merge/{k}": v for k, v in jobs[0].full_hparams().items()},
             "specialists": [str(p) for p in specialists]}
        )

    evaluate = bool(cfg.eval.test or cfg.eval.validate)
    _fill_model_inputs(cfg, specialists[0])
    datamodule = hydra.utils.instantiate(cfg.data) if evaluate else None
    pipeline = MergePipeline(
        specialists,
        base=cfg.get("base"),
        base_dirs=[cfg.paths.base_dir, *[p.parent for p in specialists]],
        out_dir=out_dir,
        device=cfg.device,
        cache_dir=cfg.get("cache_dir"),
        accelerator=cfg.accelerator,
        precision=cfg.get("precision"),
        save_merged=cfg.save_merged,
        diagnostics=cfg.diagnostics,
        loggers=loggers,
    )
    pipeline.run(jobs, datamodule, eval_specialists=cfg.eval.specialists, joint=cfg.eval.joint,
                 test=cfg.eval.test, validate=cfg.eval.validate)
    written = pipeline.write_reports()
    table = pipeline.results_table()
    if table.rows:
        log.info("\n%s", table.comparison_markdown())
        print(table.comparison_markdown())
    log.info("merge outputs in %s (%s)", out_dir, ", ".join(sorted(written)))
    for lg in loggers:
        if hasattr(lg, "finalize"):
            lg.finalize("success")
    main_eval = next((e for e in pipeline.evals if e.name == jobs[0].name), None)
    return float(main_eval.val_auc) if main_eval and main_eval.val_auc is not None else float("nan")


def merge_and_report(
    specialists: Sequence[str | Path],
    methods: Sequence[Any],
    datamodule=None,
    *,
    out_dir: str | Path,
    joint: str | Path | None = None,
    eval_specialists: bool = True,
    base_dirs: Sequence[str | Path] = (),
    cache_dir: str | Path | None = None,
    device: str | None = "auto",
    diagnostics: bool = True,
    save_merged: bool = True,
    loggers: Sequence[Any] = (),
    validate: bool = True,
) -> MergePipeline:
    """Merge ``specialists`` with every entry of ``methods`` (names or mappings, see
    :func:`jobs_from_entries`), evaluate them — plus each specialist and the joint model when
    given — and write all reports to ``out_dir``. Used by the merge callbacks."""
    specialists = [Path(p) for p in specialists]
    jobs = jobs_from_entries(methods)
    pipeline = MergePipeline(
        specialists,
        base_dirs=[*base_dirs, *{p.parent for p in specialists}, *{p.parent.parent for p in specialists}],
        out_dir=out_dir,
        device=device,
        cache_dir=cache_dir,
        save_merged=save_merged,
        diagnostics=diagnostics,
        loggers=loggers,
    )
    pipeline.run(jobs, datamodule, eval_specialists=eval_specialists, joint=joint, validate=validate)
    pipeline.write_reports()
    table = pipeline.results_table()
    if table.rows:
        text = table.comparison_markdown()
        log.info("\n%s", text)
        print(f"\nComparison ({out_dir}):\n{text}\n", flush=True)
    return pipeline
