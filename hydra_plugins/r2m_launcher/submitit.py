"""Submitit launchers that record the sweep's job ids and may return without waiting.

Registered only when hydra-submitit-launcher is installed (``pip install "r2m[slurm]"``).
(No ``from __future__ import annotations``: Hydra loads plugin modules outside ``sys.modules``,
where dataclasses cannot resolve string annotations.)"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # the optional extra is not installed: nothing to register
    SlurmLauncher = LocalLauncher = None  # type: ignore[assignment,misc]


if SlurmLauncher is not None:

    class _Recording:
        """Mixin over hydra-submitit-launcher's launchers: ``wait`` (wait for the jobs and return
        their results, as the plugin does, or return right after submission) and ``post_sweep``
        (resources of the post-sweep job, read by :mod:`r2m.cluster`)."""

        _EXECUTOR: str

        def __init__(self, wait: bool = True, post_sweep: Optional[Dict[str, Any]] = None, **params: Any) -> None:
            super().__init__(**params)  # type: ignore[call-arg]
            self.wait = bool(wait)
            self.post_sweep = dict(post_sweep or {})

        def _build_executor(self) -> Any:
            import submitit
            from omegaconf import OmegaConf

            params = dict(self.params)  # type: ignore[attr-defined]
            init = {"folder": params.pop("submitit_folder")}
            if "max_num_timeout" in params:
                init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
            generic = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in generic else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
            return executor

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from r2m.cluster import record_submission

            config = self.config  # type: ignore[attr-defined]
            assert config is not None and len(job_overrides) > 0
            executor = self._build_executor()
            sweep_dir = Path(str(config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            log.info("submitit '%s' sweep output dir: %s", self._EXECUTOR, sweep_dir)
            job_params: List[Any] = []
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            jobs = executor.map_array(self, *zip(*job_params))
            manifest = record_submission(sweep_dir, self._EXECUTOR, jobs, job_overrides)
            if self.wait:
                return [j.results()[0] for j in jobs]
            ids = ", ".join(str(j.job_id) for j in jobs)
            log.info("submitted %d job(s) [%s]; not waiting (hydra.launcher.wait=false). Job ids: %s", len(jobs), ids,
                     manifest)
            print(f"Submitted {len(jobs)} job(s) ({ids}); outputs will appear in {sweep_dir}", flush=True)
            return [JobReturn(overrides=list(ov), status=JobStatus.COMPLETED, _return_value=None,
                              working_dir=str(sweep_dir), task_name=str(config.hydra.job.name))
                    for ov in job_overrides]

    class R2MSlurmLauncher(_Recording, SlurmLauncher):
        _EXECUTOR = "slurm"

    class R2MLocalLauncher(_Recording, LocalLauncher):
        _EXECUTOR = "local"

    @dataclass
    class R2MSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.r2m_launcher.submitit.R2MSlurmLauncher"
        wait: bool = False
        post_sweep: Dict[str, Any] = field(default_factory=dict)

    @dataclass
    class R2MLocalConf(LocalQueueConf):
        _target_: str = "hydra_plugins.r2m_launcher.submitit.R2MLocalLauncher"
        wait: bool = False
        post_sweep: Dict[str, Any] = field(default_factory=dict)

    ConfigStore.instance().store(group="hydra/launcher", name="r2m_submitit_slurm", node=R2MSlurmConf(),
                                 provider="r2m_launcher")
    ConfigStore.instance().store(group="hydra/launcher", name="r2m_submitit_local", node=R2MLocalConf(),
                                 provider="r2m_launcher")
