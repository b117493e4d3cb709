"""Hyperparameter search over a merge method's space with current Optuna (TPE), in one process.

    python merge.py hparams_search=r2m_optuna specialists=<folder>            # 20 TPE trials
    python merge.py hparams_search=r2m_optuna specialists=<folder> search.n_trials=40   # resume, 20 more

Every trial merges the specialists with the trial's hyperparameters *in this process*, from the
warm :class:`~r2m.merging.DecompositionCache` (the SVDs of the first trial serve all later ones),
and is scored on the **validation AUC** of the merged model (the carved validation videos of the
training families — never a test set). The study lives in an Optuna storage (SQLite through
SQLAlchemy by default, any SQLAlchemy URL, or a journal file), so re-running the same command
resumes it: ``search.n_trials`` is the number of *complete* trials the study should end with.

Outputs in ``search.dir``: ``study.db`` (default storage), ``trials.csv`` (one row per trial, read
from the storage after every trial, so it always matches it), ``trials/<number>/`` (each trial's
tables), ``best.json`` (the trial with the highest validation AUC, its full hyperparameters and —
``search.test_best`` — the test metrics of that one point) and ``best/`` (its merged file and
tables). With ``logger=wandb`` every trial is one W&B run (:class:`~r2m.report.MergeReport`:
``job_type=merge``, the training sweep's group — else ``search-<study>`` —, tag ``study=<name>``,
the same ``val/auc`` / ``test/...`` keys as every merge run), the best point's run has the test
metrics, and the trial table goes to one ``merge-summary`` run.

Determinism: trial ``n`` is sampled by a TPE sampler seeded with ``seed + n`` over the trials
stored so far, so a search stopped after 5 trials and resumed to 10 samples the same points as an
uninterrupted 10-trial search. One process per study: trials another process left ``RUNNING`` are
marked failed when a search resumes.

The Optuna part (:func:`parse_search`, :func:`run_search`) only needs a ``runner`` (see
:class:`TrialRunner`); :class:`PipelineRunner` is the one that merges and evaluates.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from r2m.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "Param",
    "SearchSpec",
    "TrialOutcome",
    "TrialRunner",
    "parse_search",
    "open_storage",
    "run_search",
    "run_search_from_config",
]

_SPACE_ATTR = "r2m_search_identity"


# --------------------------------------------------------------------------------------------
# the search space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: ``kind`` is ``choice`` (``choices``), ``float`` or ``int``
    (``low``/``high``, optional ``log`` scale and ``step``)."""

    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        out: dict[str, Any] = {"interval" if self.kind == "float" else "int": [self.low, self.high]}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpec:
    """A parsed ``search:`` block (see ``configs/hparams_search/r2m_optuna.yaml``)."""

    method: str
    params: tuple[Param, ...]
    fixed: Mapping[str, Any]
    study_name: str
    directory: Path
    storage: str | None = None
    n_trials: int = 20
    seed: int = 1024
    n_startup_trials: int = 5
    multivariate: bool = True
    test_best: bool = True
    save_best: bool = True

    def space(self) -> dict[str, Any]:
        return {p.name: p.describe() for p in self.params}


def _num(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"search.params.{key}: bounds must be finite numbers, got {value!r}")
    return value


def parse_param(name: str, entry: Any) -> Param:
    """``{choice: [...]}``, ``{interval: [lo, hi], log?: bool, step?: float}`` or
    ``{int: [lo, hi], log?: bool, step?: int}``; ``ValueError`` naming ``search.params.<name>``."""
    where = f"search.params.{name}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping {{choice: [...]}} / {{interval: [lo, hi]}} / {{int: [lo, hi]}}, "
                         f"got {entry!r}")
    kinds = [k for k in ("choice", "interval", "int") if k in entry]
    extra = sorted(set(entry) - {"choice", "interval", "int", "log", "step"})
    if len(kinds) != 1 or extra:
        raise ValueError(f"{where}: give exactly one of choice / interval / int (and optionally log, step); got keys "
                         f"{sorted(entry)}")
    kind = kinds[0]
    if kind == "choice":
        choices = entry["choice"]
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or len(choices) == 0:
            raise ValueError(f"{where}.choice: expected a non-empty list, got {choices!r}")
        if "log" in entry or "step" in entry:
            raise ValueError(f"{where}: log / step apply to interval and int ranges only")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"{where}.choice: duplicate values in {list(choices)!r}")
        return Param(name, "choice", choices=tuple(choices))
    bounds = entry[kind]
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise ValueError(f"{where}.{kind}: expected [low, high], got {bounds!r}")
    low, high = (_num(name, b) for b in bounds)
    if not low < high:
        raise ValueError(f"{where}.{kind}: low must be < high, got [{low}, {high}]")
    log_scale = bool(entry.get("log", False))
    if log_scale and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got {low}")
    step = entry.get("step")
    if step is not None:
        step = _num(name, step)
        if step <= 0 or log_scale:
            raise ValueError(f"{where}.step: must be > 0 and cannot be combined with log, got {step}")
    if kind == "int" and not all(float(b).is_integer() for b in (low, high)):
        raise ValueError(f"{where}.int: bounds must be integers, got [{low}, {high}]")
    return Param(name, "float" if kind == "interval" else "int", low=low, high=high, log=log_scale, step=step)


def parse_search(search: Mapping[str, Any], method: str, fixed: Mapping[str, Any]) -> SearchSpec:
    """Validate a ``search:`` block against ``method``'s hyperparameters before any work.

    ``fixed`` are the method's other hyperparameters (the ``merge:`` config); every corner of the
    space is checked with the method's own value checks, so an impossible range fails here."""
    from r2m.merging.registry import method_defaults, resolve_hparams

    known = {"study_name", "dir", "storage", "n_trials", "seed", "sampler", "params", "test_best", "save_best"}
    unknown = sorted(set(search) - known)
    if unknown:
        raise ValueError(f"search: unknown key(s) {unknown}; valid: {sorted(known)}")
    params_cfg = search.get("params") or {}
    if not isinstance(params_cfg, Mapping) or not params_cfg:
        raise ValueError("search.params: give at least one hyperparameter to search")
    defaults = method_defaults(method)
    params = []
    for name, entry in params_cfg.items():
        if name not in defaults:
            raise ValueError(f"search.params.{name}: {method} has no hyperparameter {name!r}; valid: "
                             f"{', '.join(defaults)}")
        params.append(parse_param(str(name), entry))
    fixed = {k: v for k, v in dict(fixed).items() if k not in params_cfg}
    for p in params:  # every end of every range must be a valid value for the method
        values = list(p.choices) if p.kind == "choice" else [p.low, p.high]
        if p.kind == "int":
            values = [int(v) for v in values]
        for v in values:
            try:
                resolve_hparams(method, {**fixed, p.name: v})
            except ValueError as exc:
                raise ValueError(f"search.params.{p.name}: value {v!r} is not valid: {exc}") from None
    n_trials = search.get("n_trials", 20)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"search.n_trials: expected an integer ≥ 1, got {n_trials!r}")
    sampler = dict(search.get("sampler") or {})
    bad = sorted(set(sampler) - {"seed", "n_startup_trials", "multivariate"})
    if bad:
        raise ValueError(f"search.sampler: unknown key(s) {bad}; valid: seed, n_startup_trials, multivariate")
    seed = sampler.get("seed", search.get("seed", 1024))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"search.sampler.seed: expected an integer, got {seed!r}")
    study_name = search.get("study_name")
    if not study_name or not isinstance(study_name, str):
        raise ValueError(f"search.study_name: expected a non-empty string, got {study_name!r}")
    if not search.get("dir"):
        raise ValueError("search.dir: the folder of the study's outputs is not set")
    return SearchSpec(
        method=method,
        params=tuple(params),
        fixed=fixed,
        study_name=study_name,
        directory=Path(str(search["dir"])),
        storage=search.get("storage"),
        n_trials=n_trials,
        seed=seed,
        n_startup_trials=int(sampler.get("n_startup_trials", 5)),
        multivariate=bool(sampler.get("multivariate", True)),
        test_best=bool(search.get("test_best", True)),
        save_best=bool(search.get("save_best", True)),
    )


# --------------------------------------------------------------------------------------------
# storage and the study
# --------------------------------------------------------------------------------------------


def open_storage(storage: str | None, directory: Path) -> Any:
    """An Optuna storage: ``None`` → SQLite ``<directory>/study.db``; ``journal:<file>`` (or a
    ``.log``/``.jsonl`` file) → a journal file; anything else is an SQLAlchemy URL."""
    import optuna

    if storage is None:
        directory.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(f"sqlite:///{(directory / 'study.db').resolve()}")
    text = str(storage)
    if text.startswith("journal:") or text.endswith((".log", ".jsonl")):
        from optuna.storages.journal import JournalFileBackend

        path = Path(text.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in text:
        raise ValueError(f"search.storage: {text!r} is neither an SQLAlchemy URL (sqlite:///file.db, "
                         "postgresql://...) nor a journal file (journal:<file>)")
    if text.startswith("sqlite:///"):
        Path(text.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(text)


def _fail_stale(study: Any) -> list[int]:
    """Mark trials left RUNNING by an earlier (crashed / killed) process as failed."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("search: trial %d was left RUNNING by an earlier process; marked FAIL", t.number)
    return [t.number for t in stale]


def _sampler(spec: SearchSpec, number: int) -> Any:
    import warnings

    import optuna

    with warnings.catch_warnings():  # multivariate TPE is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.seed + number, n_startup_trials=spec.n_startup_trials,
                                          multivariate=spec.multivariate)


# --------------------------------------------------------------------------------------------
# trials
# --------------------------------------------------------------------------------------------


@dataclass
class TrialOutcome:
    """What a runner returns for one point: the validation AUC it is chosen on, and the test
    metrics per split when the point was tested."""

    val_auc: float
    test: dict[str, dict[str, float]] | None = None
    merged_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TrialRunner(Protocol):
    """Merges and evaluates one point; the search calls it once per trial, in process."""

    def identity(self) -> dict[str, Any]:
        """What the study's numbers depend on besides the space (specialists, base, data), stored
        with the study; a resume with a different identity is refused."""

    def run(self, name: str, hparams: Mapping[str, Any], out_dir: Path, *, test: bool, save: bool,
            context: Mapping[str, Any]) -> TrialOutcome:
        """Merge with ``hparams`` (the method's full hyperparameters), evaluate on the validation
        split (and the test sets when ``test``), write tables into ``out_dir`` (``context``: facts
        to record with the trial, e.g. its number)."""


def trial_name(spec: SearchSpec, number: int, hparams: Mapping[str, Any]) -> str:
    from r2m.merging.jobs import job_display_name

    return f"{spec.study_name}-{number:03d} {job_display_name(spec.method, hparams)}"


def _trial_rows(study: Any, spec: SearchSpec) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "val_auc": t.value if t.values else None,
            **{f"param/{p.name}": t.params.get(p.name) for p in spec.params},
            "name": t.user_attrs.get("name"),
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
            "dir": t.user_attrs.get("dir"),
        }
        rows.append(row)
    return rows


def write_trials_table(study: Any, spec: SearchSpec) -> Path:
    rows = _trial_rows(study, spec)
    columns = list(rows[0]) if rows else ["number", "state", "val_auc"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return atomic_write_text(spec.directory / "trials.csv", buf.getvalue())


@dataclass
class SearchResult:
    study: Any
    best: dict[str, Any]
    ran: list[int]


def run_search(spec: SearchSpec, runner: TrialRunner) -> SearchResult:
    """Run (or resume) the study until it holds ``spec.n_trials`` complete trials, then write
    ``best.json`` (and evaluate the best point on the test sets when ``spec.test_best``).

    A failing trial is stored as FAIL, the tables are written, and the error propagates."""
    import optuna
    from optuna.trial import TrialState

    from r2m.merging.registry import resolve_hparams

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec.directory.mkdir(parents=True, exist_ok=True)
    storage = open_storage(spec.storage, spec.directory)
    study = optuna.create_study(study_name=spec.study_name, storage=storage, direction="maximize",
                                load_if_exists=True, sampler=_sampler(spec, 0))
    identity = {"method": spec.method, "space": spec.space(), "fixed": dict(spec.fixed), **runner.identity()}
    identity = json.loads(json.dumps(identity, default=str))
    stored = study.user_attrs.get(_SPACE_ATTR)
    if stored is None:
        study.set_user_attr(_SPACE_ATTR, identity)
    elif stored != identity:
        diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        raise ValueError(f"search: study {spec.study_name!r} in {spec.storage or spec.directory / 'study.db'} was "
                         f"created with a different {', '.join(diff)}; resume it with the same settings or choose "
                         "a new search.study_name")
    _fail_stale(study)

    def n_complete() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    done = n_complete()
    if done:
        log.info("search: resuming study %r with %d complete trial(s)", spec.study_name, done)
    ran: list[int] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=spec.n_trials, initial=min(done, spec.n_trials), desc=f"search {spec.study_name}", unit="trial")
    try:
        while n_complete() < spec.n_trials:
            number = len(study.get_trials(deepcopy=False))
            study.sampler = _sampler(spec, number)
            trial = study.ask()
            point = {p.name: p.suggest(trial) for p in spec.params}
            hparams = resolve_hparams(spec.method, {**spec.fixed, **point})
            name = trial_name(spec, trial.number, hparams)
            out_dir = spec.directory / "trials" / f"{trial.number:04d}"
            trial.set_user_attr("name", name)
            trial.set_user_attr("dir", str(out_dir))
            trial.set_user_attr("hparams", json.loads(json.dumps(hparams, default=str)))
            try:
                outcome = runner.run(name, hparams, out_dir, test=False, save=False,
                                     context={"search/study": spec.study_name, "search/trial": trial.number})
                if not math.isfinite(outcome.val_auc):
                    raise ValueError(f"search: trial {trial.number} ({name}) gave validation AUC {outcome.val_auc}")
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            study.tell(trial, outcome.val_auc)
            ran.append(trial.number)
            bar.update(1)
            bar.set_postfix(best=f"{study.best_value:.4f}")
            write_trials_table(study, spec)
    finally:
        bar.close()
        if study.get_trials(deepcopy=False):
            write_trials_table(study, spec)
    best = _write_best(study, spec, runner)
    log_trials = getattr(runner, "log_trials", None)
    if log_trials is not None:
        log_trials(_trial_rows(study, spec), spec.directory)
    return SearchResult(study=study, best=best, ran=ran)


def _write_best(study: Any, spec: SearchSpec, runner: TrialRunner) -> dict[str, Any]:
    bt = study.best_trial  # highest validation AUC; ties → the earliest trial
    hparams = dict(bt.user_attrs["hparams"])
    best: dict[str, Any] = {
        "chosen_on": "val_auc",
        "study_name": spec.study_name,
        "number": bt.number,
        "name": bt.user_attrs.get("name"),
        "val_auc": bt.value,
        "params": dict(bt.params),
        "method": spec.method,
        "hparams": hparams,
        "n_complete": len([t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]),
        "test": None,
        "merged_path": None,
    }
    if spec.test_best or spec.save_best:
        name = f"{spec.study_name}-best {str(bt.user_attrs.get('name', '')).split(' ', 1)[-1]}"
        outcome = runner.run(name, hparams, spec.directory / "best", test=spec.test_best, save=spec.save_best,
                             context={"search/study": spec.study_name, "search/trial": bt.number, "search/best": True})
        if outcome.val_auc != bt.value:
            log.warning("search: re-merging trial %d gave validation AUC %r, the study stored %r: the merge or "
                        "the evaluation is not deterministic on this device", bt.number, outcome.val_auc, bt.value)
            best["val_auc_rerun"] = outcome.val_auc
        best["test"] = outcome.test
        best["merged_path"] = str(outcome.merged_path) if outcome.merged_path else None
    atomic_write_json(spec.directory / "best.json", _jsonable(best))
    log.info("search: best trial %d (%s) val AUC %.4f", bt.number, best["name"], bt.value)
    print(f"Best of {best['n_complete']} trials (chosen on validation AUC = {bt.value:.4f}): {best['name']}",
          flush=True)
    return best


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------------------------
# the runner: merge + evaluate in this process (r2m.pipeline's pieces, prepared once)
# --------------------------------------------------------------------------------------------


class PipelineRunner:
    """Merges and evaluates points on one checked specialist pool, one prepared data module and
    one warm decomposition cache (all built once, reused by every trial). Every trial is one
    :class:`~r2m.report.MergeReport` (tables, ``summary.json``, one W&B run when W&B is on)."""

    def __init__(self, cfg: Any, method: str, study_name: str) -> None:
        from r2m import pipeline
        from r2m.evaluation.evaluator import Evaluator
        from r2m.merging import merge_heads
        from r2m.merging.jobs import MergeJob
        from r2m.utils import resolve_device

        request = pipeline.request_from_config(cfg)
        if not request.validate:
            raise ValueError("search: eval.validate=false, but trials are chosen on validation AUC")
        self.method = method
        self.study_name = study_name
        self.request = request
        # every check (specialists, θ0, data, validation carve) once, before the first trial
        self.pool, self.datamodule, self.data_info = pipeline._prepare(request, [MergeJob(method, method)])
        self.head = merge_heads(self.pool.heads())
        self.cache = pipeline.shared_cache(request.cache_dir)
        self.device = resolve_device(request.device)
        self.evaluators = {test: Evaluator(self.datamodule, self.pool.paths[0], accelerator=request.accelerator,
                                           precision=request.precision, validate=True, test=test,
                                           progress=request.progress) for test in (False, True)}
        wandb = request.wandb
        if wandb is not None:
            from dataclasses import replace

            groups = self.pool.run_groups
            wandb = replace(wandb, group=wandb.group or (groups[0] if len(groups) == 1 else f"search-{study_name}"),
                            tags=[*wandb.tags, f"study={study_name}"])
        self.wandb = wandb
        carve = (self.data_info.get("carve") or {}).get("carve") or {}
        self._identity = {
            "specialists": [e.sha256 for e in self.pool.entries],
            "base_hash": self.pool.base_hash,
            "data": {"target": self.data_info.get("target"), "family": self.data_info.get("family"),
                     "val_videos_sha256": carve.get("val_videos_sha256")},
        }

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def run(self, name: str, hparams: Mapping[str, Any], out_dir: Path, *, test: bool, save: bool,
            context: Mapping[str, Any]) -> TrialOutcome:
        from dataclasses import replace

        from r2m import pipeline
        from r2m.merging import merge
        from r2m.merging.jobs import MergeJob
        from r2m.report import MergeReport

        job = MergeJob(name=name, method=self.method, hparams=dict(hparams))
        wandb = replace(self.wandb, dir=str(out_dir)) if self.wandb is not None else None
        report = MergeReport(out_dir, pool_info=self.pool.describe(), wandb=wandb,
                             context={**context, "data": self.data_info})
        report.start()
        t0 = time.perf_counter()
        try:
            report.begin_job(job)
            backbone = merge(self.method, self.pool.base(), self.pool.backbones(), device=self.device,
                             cache=self.cache, names=self.pool.names, progress=False, **dict(hparams))
            path = pipeline._write_merged(Path(out_dir), self.pool, job, backbone, self.head) if save else None
            ev = self.evaluators[test].evaluate_state(name, backbone, self.head, group="merge", path=path,
                                                      extra={"method": self.method, **job.full_hparams()})
            del backbone
            report.add(ev)
            images = report.roc_images([ev], Path(out_dir)) if (wandb is not None and ev.result is not None) else []
            report.end_job(job, ev, images)
            report.context["seconds"] = round(time.perf_counter() - t0, 3)
            report.complete()
        except BaseException as err:
            report.fail(err)
            raise
        return TrialOutcome(val_auc=float(ev.val_auc),
                            test=dict(ev.result.per_split) if ev.result is not None else None,
                            merged_path=path, extra={"seconds": time.perf_counter() - t0})

    def log_trials(self, rows: Sequence[Mapping[str, Any]], directory: Path) -> None:
        """The study's trial table as one W&B ``merge-summary`` run (when W&B is on)."""
        if self.wandb is None:
            return
        from dataclasses import replace

        from r2m.report import log_sweep_table

        log_sweep_table(replace(self.wandb, dir=str(directory)),
                        [dict(r) for r in rows], name=f"{self.study_name} trials ({len(rows)})")


def run_search_from_config(cfg: Any) -> float:
    """``merge.py`` with a ``search:`` block: run / resume the study; returns the best validation AUC."""
    from omegaconf import OmegaConf

    merge_cfg = OmegaConf.to_container(cfg.merge, resolve=True)
    method = merge_cfg.pop("method", None)
    merge_cfg.pop("name", None)
    if cfg.get("extra_methods"):
        raise ValueError("search: extra_methods is not used by a search; set extra_methods=[]")
    search = OmegaConf.to_container(cfg.search, resolve=True)
    spec = parse_search(search, method, merge_cfg)  # the space is checked before anything is loaded
    runner = PipelineRunner(cfg, method, spec.study_name)
    result = run_search(spec, runner)
    return float(result.best["val_auc"])
