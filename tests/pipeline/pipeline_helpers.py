"""Tiny specialists for the pipeline tests: a shared random-init θ0 plus per-task perturbations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY_CFG = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}}


def tiny_detector(seed: int = 0):
    from r2m.models.detector import DeepfakeDetector

    torch.manual_seed(seed)
    return DeepfakeDetector(model_name="tiny-vit", model_cfg=TINY_CFG, image_size=32)


def make_specialists(root: Path, tasks=("fs", "fr", "efs"), seed: int = 0, scale: float = 0.02) -> dict[str, Path]:
    """Write ``root/base/base-<hash>.safetensors`` and ``root/<task>/specialist.safetensors``.

    Each specialist = θ0 + a shared component + its own component (so R²M has a real "Real" core)."""
    det = tiny_detector(seed)
    base = {k: v.clone() for k, v in det.backbone.state_dict().items()}
    det.export_base(base_dir=root / "base")
    gen = torch.Generator().manual_seed(seed + 1)
    shared = {k: torch.randn(v.shape, generator=gen) * scale for k, v in base.items()}
    paths = {}
    for i, task in enumerate(tasks):
        own = {k: torch.randn(v.shape, generator=gen) * scale for k, v in base.items()}
        det.backbone.load_state_dict({k: base[k] + shared[k] + own[k] for k in base})
        with torch.no_grad():
            det.head.weight.normal_(generator=gen)
            det.head.bias.normal_(generator=gen)
        paths[task] = det.export_specialist(root / task / "specialist.safetensors", task=task,
                                            train_sources=[f"{task.upper()}All_ff"])
    det.backbone.load_state_dict(base)
    return paths


def run_script(script: str, args: list[str], cwd: Path, timeout: int = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
