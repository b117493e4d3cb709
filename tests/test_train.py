"""train.py end to end (subprocesses): tiny experiment, 2-process CPU DDP over two tasks,
struct-mode errors for unknown config keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1", PYTHONWARNINGS="ignore",
               WANDB_DIR=str(tmp), WANDB_CACHE_DIR=str(tmp), WANDB_CONFIG_DIR=str(tmp), WANDB_DATA_DIR=str(tmp))
    env.pop("LOCAL_RANK", None)
    return env


def _train(tmp: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    args = [sys.executable, str(TRAIN), *overrides, f"paths.root_dir={tmp}", f"hydra.run.dir={tmp / 'run'}"]
    return subprocess.run(args, cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_cache):
    tmp = tmp_path_factory.mktemp("tiny")
    proc = _train(tmp, "experiment=tiny", "trainer.max_epochs=1", f"paths.cache_dir={shared_cache}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, proc


def test_train_tiny_writes_specialist_and_results(tiny_run, shared_cache):
    from r2m.checkpoints import base_filename, load_checkpoint, read_metadata

    tmp, proc = tiny_run
    run = tmp / "run"
    path = run / "specialist.safetensors"
    assert path.is_file(), proc.stdout[-2000:]
    meta = read_metadata(path)
    assert meta["format"] == "r2m-specialist/1" and meta["task"] == "fs" and meta["train_sources"] == ["FSAll_ff"]
    assert meta["config"]["data"]["family"] == "fs" and meta["config"]["model"]["model_name"] == "tiny-vit"
    assert meta["config"]["paths"]["output_dir"] == str(run)
    base = load_checkpoint(shared_cache / "bases" / base_filename(meta["base_hash"]))
    assert base.meta["base_hash"] == meta["base_hash"]
    for name in ("results.md", "results.csv", "results.json", "checkpoints/last.ckpt", ".hydra/config.yaml"):
        assert (run / name).exists(), name
    assert "FSAll_ff" in (run / "results.md").read_text()
    assert f"[r2m] fs: specialist {path}" in proc.stdout


def test_train_ddp_cpu_two_tasks(tmp_path, tiny_run, shared_cache):
    """2 processes (gloo) × 2 tasks in one run; every specialist starts from the same θ0."""
    from r2m.checkpoints import read_metadata

    proc = _train(tmp_path, "experiment=tiny", "trainer=ddp_cpu", "tasks=[fs,fr]", "trainer.max_epochs=1",
                  "test_after_fit=false", "logger=none", f"paths.cache_dir={shared_cache}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    metas = {t: read_metadata(tmp_path / "run" / t / "specialist.safetensors") for t in ("fs", "fr")}
    assert metas["fs"]["task"] == "fs" and metas["fr"]["task"] == "fr"
    assert metas["fr"]["train_sources"] == ["FRAll_ff"]
    single = read_metadata(tiny_run[0] / "run" / "specialist.safetensors")
    assert metas["fs"]["base_hash"] == metas["fr"]["base_hash"] == single["base_hash"]
    logs = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in logs and "distributed_backend=gloo" in logs  # two processes over gloo
    assert (tmp_path / "run" / "train_ddp_process_1.log").exists()  # the re-launched rank-1 process


@pytest.mark.parametrize("override, key", [("foo=1", "foo"), ("model.nonexistent=1", "model.nonexistent"),
                                           ("trainer.max_epoch=1", "trainer.max_epoch")])
def test_unknown_config_key_is_an_error(tmp_path, override, key):
    proc = _train(tmp_path, "experiment=tiny", override, timeout=120)
    assert proc.returncode != 0
    assert key in proc.stderr and "not in struct" in proc.stderr
    assert not (tmp_path / "run" / "specialist.safetensors").exists()


def test_pretraining_from_config(tmp_path):
    """cfg.pretrain → a cached base file (real fixture images; reused on the second call)."""
    import importlib.util

    from hydra import compose, initialize_config_dir

    from r2m.checkpoints import read_metadata

    spec = importlib.util.spec_from_file_location("r2m_train_entry", TRAIN)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=tiny", f"paths.root_dir={tmp_path}",
            "pretrain={pretext: rotation, epochs: 1, lr: 0.001, seed: 0, max_steps: 2}",
        ])
    path = entry.run_pretraining(cfg, "fs")
    meta = read_metadata(path)
    assert path.parent == tmp_path / ".cache" / "pretrained" and meta["format"] == "r2m-base/1"
    assert meta["data_identity"]["root"] == str(tmp_path / ".cache" / "df40_fixture")
    assert "family" not in meta["data_identity"]
    mtime = path.stat().st_mtime_ns
    assert entry.run_pretraining(cfg, "fr") == path and path.stat().st_mtime_ns == mtime  # same base for every family


@pytest.mark.parametrize("overrides", [
    ["experiment=tiny"],
    ["experiment=df40_specialist"],
    ["experiment=benchmark"],
    ["model=vit_b16", "trainer=gpu", "logger=wandb", "callbacks=none"],
    ["model=tiny64", "trainer=ddp", "trainer.devices=8", "logger=none"],
    ["model=vit_l14", "trainer=ddp_cpu", "data=df40", "data.family=efs"],
])
def test_config_groups_compose(tmp_path, overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.root_dir={tmp_path}"])
    assert OmegaConf.is_struct(cfg)
    for key in ("image_size", "mean", "std", "model_name", "pretrained", "feature"):
        assert key in cfg.model, key
    assert cfg.data.image_size == cfg.model.image_size
    default_callbacks = ["model_checkpoint", "specialist_export", "progress_bar"]
    # the built-in benchmark adds the merge callback, after the export it consumes
    assert list(cfg.callbacks or {}) in ([], default_callbacks, [*default_callbacks, "merge"])
    for node in (cfg.callbacks or {}).values():
        kwargs = {key: str(tmp_path) for key in ("base_dir", "out_dir") if key in node}
        instantiate(node, **kwargs)
    if cfg.trainer.strategy == "ddp":
        assert cfg.trainer.devices >= 2
    if cfg.trainer.accelerator == "gpu":
        assert cfg.trainer.precision == "bf16-mixed"
