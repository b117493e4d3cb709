"""Merge specialists and evaluate the merged detector.

    python merge.py specialists=logs/train/runs/<run>          # R²M with the paper's defaults
    python merge.py -m merge=r2m,average,task_arithmetic,ties,cart,tsv,iso_c specialists=...
    python merge.py -m merge=r2m merge.rank_ratio=0.05,0.1,0.2 merge.alpha=0.4,0.6,0.8 specialists=...
    python merge.py specialists=... +add=<new specialist file>  # composable re-merge

Everything happens in :func:`r2m.pipeline.run_merge_from_config`.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting on shared CPUs

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="merge")
def main(cfg: DictConfig) -> float:
    if cfg.get("search") is not None:  # hparams_search=<...>: an Optuna study run in this process
        from r2m.search import run_search_from_config

        return run_search_from_config(cfg)
    from r2m.pipeline import run_merge_from_config

    return run_merge_from_config(cfg)


if __name__ == "__main__":
    main()
