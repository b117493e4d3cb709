"""``hydra/launcher=r2m_grouped``: Hydra's basic launcher (jobs one after another in this process),
except that merge jobs differing only in ``merge.*`` hyperparameters run as groups sharing one
``merge_many`` pass (:mod:`r2m.sweeps`). Each job keeps its own job folder, ``.hydra`` files, log,
callbacks and return value; jobs that are not merge jobs run exactly as under the basic launcher.

(No ``from __future__ import annotations``: Hydra loads plugin modules outside ``sys.modules``,
where dataclasses cannot resolve string annotations.)"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class R2MGroupedLauncherConf:
    _target_: str = "hydra_plugins.r2m_launcher.grouped.R2MGroupedLauncher"
    group: bool = True  # false: exactly the basic launcher (one merge per job)


ConfigStore.instance().store(group="hydra/launcher", name="r2m_grouped", node=R2MGroupedLauncherConf,
                             provider="r2m_launcher")


class R2MGroupedLauncher(Launcher):
    def __init__(self, group: bool = True) -> None:
        self.group = group
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from r2m.sweeps import SweepGroup, plan_groups, planned

        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs: List[DictConfig] = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            configs.append(cfg)
        groups = plan_groups(configs) if self.group else [SweepGroup(order=[i]) for i in range(len(configs))]
        n_grouped = sum(len(g.order) for g in groups if g.plan is not None)
        log.info("Launching %d jobs locally (%d in %d merge group(s) sharing one merge_many pass each)",
                 len(configs), n_grouped, sum(g.plan is not None for g in groups))
        results: List[Any] = [None] * len(configs)
        for group in groups:
            with planned(group.plan) as plan:
                for i in group.order:
                    cfg = configs[i]
                    log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])))
                    if plan is not None:
                        from omegaconf import OmegaConf

                        node = OmegaConf.to_container(cfg.merge, resolve=True)
                        node.pop("method", None)
                        node.pop("name", None)
                        plan.skip_to(node)
                    results[i] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                         config=cfg, job_dir_key="hydra.sweep.dir",
                                         job_subdir_key="hydra.sweep.subdir")
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                if plan is not None:
                    log.info("merge group of %d job(s) (%s): %d merge(s) from one merge_many pass, %d separately",
                             len(group.order), plan.method, plan.served, plan.fallbacks)
        return results
