"""Train deepfake-detection specialists: data + model + trainer from Hydra configs → fit → export.

    python train.py experiment=tiny
    python train.py -m experiment=df40_specialist data.family=fs,fr,efs
    python train.py experiment=df40_specialist trainer=ddp trainer.devices=8
    python train.py experiment=tiny resume=<run dir>          # continue a killed run in its folder

Everything happens in :func:`r2m.training.train` (docs/training.md).
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# OpenMP threads sleep instead of spinning while they wait. Must be set before torch is imported.
# On a CPU shared with other processes, spinning threads made training steps ~10× slower (measured
# on the 2-core development machine: 2.1-3.3 s vs 0.29 s per tiny64 step); GPU runs are unaffected.
# Export OMP_WAIT_POLICY=ACTIVE to restore OpenMP's default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402  (neither imports torch)
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from r2m.training import train

    return train(cfg)


if __name__ == "__main__":
    main()
