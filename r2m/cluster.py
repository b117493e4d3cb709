"""Cluster runs through submitit: the work after a sweep runs as its own job, after the sweep's jobs.

    python train.py -m hydra/launcher=slurm experiment=df40_specialist data.family=fs,fr,efs,joint

With the submitit launchers of ``hydra_plugins/r2m_launcher`` (``configs/hydra/launcher/slurm.yaml``)
the launcher submits the training array, writes ``<sweep>/.submitit/r2m_sweep_jobs.json`` (job ids,
folders) and — ``hydra.launcher.wait=false``, the default there — returns at once. The multirun-end
work then does not run in the submitting process: ``MergeOnMultirunEnd`` and ``SweepSummary``
(``merge.py -m``) defer themselves through :func:`defer_to_cluster` (``MergeOnMultirunEnd`` with
``submit_after_sweep=true`` hands its merge request to :func:`submit_after_sweep`); each becomes one submitit job with an ``afterok`` dependency on the
sweep's array (SLURM ``--dependency=afterok:<array id>``), so the merges run on a compute node once
every training job succeeded, and the login session can be left as soon as the command returns. The post-sweep job re-checks every training job's submitit result file before it starts
and fails, naming the job and its log, if one did not succeed (the local executor has no
dependencies: there the post-sweep job waits for these files instead).

Resources of the post-sweep job: the launcher's, with one node and one task (one GPU when the
training jobs had any), updated by ``hydra.launcher.post_sweep`` (e.g. ``{timeout_min: 240}``).
Its submitit folder is ``<sweep>/.submitit/post_sweep/<job id>``; ``<sweep>/.submitit/r2m_post_sweep.json``
names the job. See ``docs/cluster.md``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from r2m.utils import atomic_write_json

log = logging.getLogger(__name__)

__all__ = [
    "SWEEP_MANIFEST",
    "POST_MANIFEST",
    "is_submitit",
    "record_submission",
    "read_submission",
    "submit_post_sweep",
    "submit_after_sweep",
    "defer_to_cluster",
    "check_jobs_succeeded",
]

SWEEP_MANIFEST = "r2m_sweep_jobs.json"
POST_MANIFEST = "r2m_post_sweep.json"
_IN_POST_JOB = "R2M_POST_SWEEP_JOB"  # set inside the post-sweep job: its callbacks run, not defer

# launcher parameters that do not apply to a single post-sweep job
_NOT_FOR_POST = {"array_parallelism", "submitit_folder", "wait", "post_sweep", "_target_"}


def _submitit_dir(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / ".submitit"


def is_submitit(config: Any) -> bool:
    """Whether the multirun ``config`` was launched by one of r2m's submitit launchers
    (``hydra/launcher=slurm``, ``r2m_submitit_slurm``, ``r2m_submitit_local``), which record the
    sweep's job ids. hydra-submitit-launcher's own launchers wait for the jobs and record nothing:
    their callbacks run in the submitting process, as Hydra does it."""
    try:
        target = str(config.hydra.launcher._target_)
    except Exception:
        return False
    return target.startswith("hydra_plugins.r2m_launcher.submitit.")


def executor_kind(config: Any) -> str:
    target = str(config.hydra.launcher._target_).lower()
    return "local" if "local" in target else "slurm"


def record_submission(sweep_dir: str | os.PathLike, kind: str, jobs: Sequence[Any],
                      overrides: Sequence[Sequence[str]]) -> Path:
    """Write ``<sweep>/.submitit/r2m_sweep_jobs.json`` for submitted submitit ``jobs``."""
    entries = []
    for job, ov in zip(jobs, overrides):
        entries.append({"job_id": str(job.job_id), "folder": str(job.paths.folder),
                        "result": str(job.paths.result_pickle), "stderr": str(job.paths.stderr),
                        "overrides": list(ov)})
    return atomic_write_json(_submitit_dir(sweep_dir) / SWEEP_MANIFEST,
                             {"executor": kind, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "jobs": entries})


def read_submission(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest written by :func:`record_submission`; ``FileNotFoundError`` naming it."""
    import json

    path = _submitit_dir(sweep_dir) / SWEEP_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the sweep was not submitted by an r2m submitit launcher "
                                "(hydra/launcher=slurm or r2m_submitit_local), so its job ids are unknown")
    return json.loads(path.read_text())


def check_jobs_succeeded(jobs: Sequence[Mapping[str, Any]], *, wait_s: float = 0.0, poll_s: float = 2.0) -> None:
    """Raise ``RuntimeError`` unless every job's submitit result file says success.

    ``wait_s`` > 0 waits (polling) up to that long for the result files to appear (the local
    executor, which has no dependencies); 0 requires them now (SLURM ``afterok`` already waited)."""
    from submitit.core.utils import pickle_load

    deadline = time.monotonic() + wait_s
    pending = list(jobs)
    while pending:
        still = [j for j in pending if not Path(j["result"]).is_file()]
        for j in pending:
            if j in still:
                continue
            outcome = pickle_load(j["result"])
            if not (isinstance(outcome, tuple) and outcome and outcome[0] == "success"):
                detail = outcome[1] if isinstance(outcome, tuple) and len(outcome) > 1 else outcome
                raise RuntimeError(f"sweep job {j['job_id']} ({' '.join(j.get('overrides', []))}) did not succeed; "
                                   f"log: {j['stderr']}\n{str(detail)[-2000:]}")
        pending = still
        if pending:
            if time.monotonic() >= deadline:
                names = ", ".join(f"{j['job_id']} ({j['result']})" for j in pending)
                raise RuntimeError(f"sweep job(s) without a result file: {names}")
            time.sleep(poll_s)


def _post_params(config: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    params = {k: v for k, v in launcher.items() if k not in _NOT_FOR_POST}
    params.update(nodes=1, tasks_per_node=1)
    if params.get("gpus_per_node"):
        params["gpus_per_node"] = 1
    params["name"] = f"{params.get('name') or 'sweep'}-post"
    post = launcher.get("post_sweep") or {}
    params.update(post)
    return params


def _executor(kind: str, folder: Path, params: Mapping[str, Any], dependency: str | None):
    """A submitit ``AutoExecutor`` set up from launcher-style parameters, the way
    hydra-submitit-launcher does it: its generic names (``timeout_min``, ``mem_gb``, ...) as they
    are, executor-specific ones (``partition``, ``additional_parameters``, ...) prefixed."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = dict(params)
    init = {}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind, **init)
    if dependency:
        extra = dict(params.pop("additional_parameters", None) or {})
        extra["dependency"] = dependency
        params["additional_parameters"] = extra
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in generic else f"{kind}_{k}": v for k, v in params.items()})
    return executor


def _post_sweep_main(jobs: list[dict[str, Any]], wait_s: float, fn: Callable[..., Any], args: tuple,
                     kwargs: dict[str, Any]) -> Any:
    """Body of the post-sweep job: check the sweep's jobs, then run ``fn``."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    check_jobs_succeeded(jobs, wait_s=wait_s)
    os.environ[_IN_POST_JOB] = "1"
    return fn(*args, **kwargs)


def submit_post_sweep(config: Any, fn: Callable[..., Any], *args: Any, local_wait_s: float = 24 * 3600.0,
                      **kwargs: Any) -> Any:
    """Submit ``fn(*args, **kwargs)`` (picklable) as one submitit job that starts after every job of the
    sweep (``config.hydra.sweep.dir``'s manifest) succeeded; returns the submitit job.

    SLURM: ``--dependency=afterok:<array id>[:<array id>...]`` (SLURM starts it; if a training job
    fails, it never starts and shows ``DependencyNeverSatisfied``). Local executor: the job starts
    now and waits up to ``local_wait_s`` for the training jobs' result files. Either way the job
    checks the result files and fails naming a failed training job."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    manifest = read_submission(sweep_dir)
    kind = manifest["executor"]
    jobs = manifest["jobs"]
    if not jobs:
        raise ValueError(f"{sweep_dir}: the sweep manifest lists no jobs")
    dependency = None
    wait_s = 0.0
    if all(Path(j["result"]).is_file() for j in jobs):
        pass  # the launcher waited: every job is over (a dependency on finished jobs may be refused)
    elif kind == "slurm":
        array_ids = sorted({str(j["job_id"]).split("_", 1)[0] for j in jobs})
        dependency = "afterok:" + ":".join(array_ids)
    else:
        wait_s = local_wait_s
    folder = _submitit_dir(sweep_dir) / "post_sweep" / "%j"
    executor = _executor(kind, folder, _post_params(config), dependency)
    job = executor.submit(_post_sweep_main, jobs, wait_s, fn, args, kwargs)
    atomic_write_json(_submitit_dir(sweep_dir) / POST_MANIFEST, {
        "executor": kind, "job_id": str(job.job_id), "folder": str(job.paths.folder),
        "result": str(job.paths.result_pickle), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
        "dependency": dependency, "after": [j["job_id"] for j in jobs], "function": getattr(fn, "__qualname__", str(fn)),
    })
    log.info("submitted post-sweep job %s (%s) after %d sweep job(s)%s; log: %s", job.job_id, kind, len(jobs),
             f", {dependency}" if dependency else "", job.paths.stdout)
    return job


def _run_merge(request: Any, jobs: Sequence[Any], out_dir: str) -> dict[str, Any]:
    from r2m.pipeline import run_merge

    return run_merge(request, jobs, out_dir=out_dir)


def submit_after_sweep(config: Any, request: Any, jobs: Sequence[Any], out_dir: str | os.PathLike) -> Any:
    """``MergeOnMultirunEnd``'s cluster mode: ``run_merge(request, jobs, out_dir=out_dir)`` as a
    post-sweep job (:func:`submit_post_sweep`); returns the submitit job."""
    job = submit_post_sweep(config, _run_merge, request, list(jobs), str(out_dir))
    print(f"MergeOnMultirunEnd: the merge of {len(jobs)} job(s) runs as submitit job {job.job_id} after the sweep "
          f"→ {out_dir} (log: {job.paths.stdout})", flush=True)
    return job


def _run_multirun_end(callback: Any, config: Any) -> None:
    """In the post-sweep job: restore the sweep's Hydra config and run the callback."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)
    callback.on_multirun_end(config=config)


def defer_to_cluster(callback: Any, config: Any) -> bool:
    """Called first in a Hydra ``on_multirun_end``: when the sweep was launched by submitit,
    submit ``callback.on_multirun_end(config)`` as a post-sweep job (:func:`submit_post_sweep`)
    and return ``True`` (the caller returns); otherwise — or inside that job — ``False``."""
    if os.environ.get(_IN_POST_JOB) or not is_submitit(config):
        return False
    from omegaconf import OmegaConf, open_dict

    config = config.copy()
    with open_dict(config):  # pin interpolations that would resolve differently later (${now:...})
        config.hydra.sweep.dir = str(Path(str(config.hydra.sweep.dir)).resolve())
    OmegaConf.set_readonly(config, False)
    try:
        job = submit_post_sweep(config, _run_multirun_end, callback, config)
    except Exception as exc:  # Hydra turns callback exceptions into warnings: exit non-zero instead
        log.exception("%s: submitting the post-sweep job failed", type(callback).__name__)
        raise SystemExit(f"{type(callback).__name__}: submitting the post-sweep job failed: {exc}") from exc
    print(f"{type(callback).__name__}: runs as submitit job {job.job_id} after the sweep "
          f"(log: {job.paths.stdout})", flush=True)
    return True
