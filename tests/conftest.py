"""Test-wide environment: offline hubs, W&B disabled, no albumentations update check.

Set before any test module imports open_clip / wandb / albumentations.
"""

import os
import tempfile

# OpenMP spin-waiting makes CPU torch ~10x slower when other processes share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
_wandb_tmp = tempfile.mkdtemp(prefix="r2m-wandb-")
for _var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ.setdefault(_var, _wandb_tmp)
