"""The benchmark's base θ0 learns real images: the default pretext (denoising) on the benchmark's
real crops, on a short CPU run, beats its no-learning baseline on held-out crops, and the linear
texture probe of the result beats the random initialisation (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_modules.benchmark import benchmark_datamodule
from r2m.models.pretrain import ensure_pretrained_base

ROOT = Path(__file__).resolve().parents[2]


def _tiny64() -> dict:
    cfg = OmegaConf.load(ROOT / "configs" / "model" / "tiny64.yaml")
    return {"model_name": cfg.model_name, "model_cfg": OmegaConf.to_container(cfg.model_cfg),
            "image_size": 64, "feature": "pooled"}


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_pretrain")
    return benchmark_datamodule(str(root), family="blend", image_size=64, video_frames=2, n_train=16, n_test=40,
                                n_pretrain=480, batch_size=32, eval_batch_size=64)


def test_default_pretext_is_denoise_and_learns_on_real_crops(dm, tmp_path):
    bench = OmegaConf.load(ROOT / "configs" / "experiment" / "benchmark.yaml")
    assert bench.pretrain.pretext == "denoise"
    model = _tiny64()
    loader = dm.pretrain_dataloader(seed=0)
    held_out = dm.pretrain_eval_dataloader()
    path = ensure_pretrained_base(model, {"train": loader, "eval": held_out, "mean": list(dm.mean),
                                          "std": list(dm.std)}, cache_dir=tmp_path, data_identity="test",
                                  epochs=12, lr=2e-3, seed=0, pretext="denoise", weight_decay=0.05, max_steps=180)
    from r2m.checkpoints import read_metadata
    from r2m.probe import probe_base

    meta = read_metadata(path)
    history, held = meta["pretrain_history"], meta["pretext_eval"]
    # rel. L1 = 1: the zero-initialised head predicts "no noise"; below it = the noise is modelled
    assert history and history[-1]["rel_l1"] < history[0]["rel_l1"]
    assert held["baseline"] == 1.0 and held["rel_l1"] < 0.85, held

    # the texture probe (sensor-noise level of held-out real crops) beats the random initialisation
    res = probe_base(path, n_train=120, n_test=80)
    assert set(res) == {"archive_source", "archive_noise", "photo_source", "photo_noise"}
    noise = res["photo_noise"]
    assert noise["chance"] == pytest.approx(0.25)
    assert noise["random_init"] < 0.4  # the random features do not see sensor-noise levels linearly
    assert noise["theta0"] > noise["random_init"] + 0.1, noise
