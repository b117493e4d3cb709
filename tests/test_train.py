"""train.py end to end (subprocesses): tiny experiment, 2-process CPU DDP over two tasks, a killed
run resumed in its own folder, W&B offline runs read back from their .wandb files, struct-mode
errors for unknown config keys, pretraining from the config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wandb_reader import read_run

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1", PYTHONWARNINGS="ignore",
               WANDB_DIR=str(tmp), WANDB_CACHE_DIR=str(tmp), WANDB_CONFIG_DIR=str(tmp), WANDB_DATA_DIR=str(tmp))
    env.pop("LOCAL_RANK", None)
    return env


def _train(tmp: Path, *overrides: str, timeout: int = 600, run_dir: bool = True,
           env: dict | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(TRAIN), *overrides, f"paths.root_dir={tmp}"]
    if run_dir:
        args.append(f"hydra.run.dir={tmp / 'run'}")
    return subprocess.run(args, cwd=tmp, env={**_env(tmp), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


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
    # specialist metadata contract: families, carve, data config as composed, run group
    assert meta["families"] == ["fs"] and meta["run_group"] == "run" and meta["selected"] == "best"
    assert meta["data_config"]["_target_"] == "data_modules.fixtures.fixture_datamodule"
    assert meta["data_config"]["family"] == "fs" and meta["data_config"]["mean"] is not None
    assert "carve" in meta
    # a readable log: no Lightning advert, hardware lines once, train/lr from LearningRateMonitor
    logs = proc.stdout + proc.stderr
    assert "💡" not in logs and "litlogger" not in logs and logs.count("GPU available:") == 1
    header = (run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/lr", "val/auc", "val/ap", "val/eer", "val/acc", "val/video_auc"} <= set(header)


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
    from hydra import compose, initialize_config_dir

    from r2m.checkpoints import read_metadata
    from r2m.training import run_pretraining

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=tiny", f"paths.root_dir={tmp_path}",
            "pretrain={pretext: rotation, epochs: 1, lr: 0.001, seed: 0, max_steps: 2}",
        ])
    path = run_pretraining(cfg, "fs")
    meta = read_metadata(path)
    assert path.parent == tmp_path / ".cache" / "pretrained" and meta["format"] == "r2m-base/1"
    assert meta["data_identity"]["root"] == str(tmp_path / ".cache" / "df40_fixture")
    assert "family" not in meta["data_identity"]
    mtime = path.stat().st_mtime_ns
    assert run_pretraining(cfg, "fr") == path and path.stat().st_mtime_ns == mtime  # same base for every family
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        bad = compose("train", overrides=["experiment=tiny", f"paths.root_dir={tmp_path}", "+pretrain={epochz: 1}"])
    with pytest.raises(ValueError, match=r"pretrain: unknown key\(s\) \['epochz'\]"):
        run_pretraining(bad, "fs")


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
    default_callbacks = ["model_checkpoint", "last_checkpoint", "specialist_export", "lr_monitor", "progress_bar"]
    # the built-in benchmark adds the merge callback, after the export it consumes
    assert list(cfg.callbacks or {}) in ([], default_callbacks, [*default_callbacks, "merge"])
    for node in (cfg.callbacks or {}).values():
        kwargs = {key: str(tmp_path) for key in ("base_dir", "out_dir") if key in node}
        instantiate(node, **kwargs)
    if cfg.trainer.strategy == "ddp":
        assert cfg.trainer.devices >= 2
    if cfg.trainer.accelerator == "gpu":
        assert cfg.trainer.precision == "bf16-mixed"


def test_train_py_is_thin():
    """The glue lives in r2m.training; train.py is a screen long."""
    lines = TRAIN.read_text().splitlines()
    assert len(lines) <= 60 and "r2m.training import train" in TRAIN.read_text()


# ------------------------------------------------------------------------- killed run → resume


def _load_ckpt(path: Path) -> dict | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - being written
        return None


def test_killed_run_resumes_in_its_own_folder(tmp_path, shared_cache):
    """SIGKILL a training run after its first epochs; `resume=<run dir>` continues from last.ckpt (the
    last epoch) in the same folder, where the specialist then appears (so a sweep's merge finds it)."""
    import torch

    common = ["experiment=tiny", "test_after_fit=false", "logger=csv", f"paths.cache_dir={shared_cache}"]
    args = [sys.executable, str(TRAIN), *common, "trainer.max_epochs=200", f"paths.root_dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "logs" / "train" / "runs"
    deadline = time.time() + 300
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            lasts = list(runs.glob("*/checkpoints/last.ckpt")) if runs.is_dir() else []
            ck = _load_ckpt(lasts[0]) if lasts else None
            if ck is not None and ck["epoch"] >= 1:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                killed_at = ck
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_at is not None, (proc.stderr.read() if proc.stderr else "")[-3000:]
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = list(runs.iterdir())
    assert not (run_dir / "specialist.safetensors").exists()
    last = _load_ckpt(run_dir / "checkpoints" / "last.ckpt")  # may be newer than what we saw
    done_epochs = last["epoch"] + 1
    steps_per_epoch = last["global_step"] // done_epochs
    target = done_epochs + 2

    resumed = _train(tmp_path, *common, f"trainer.max_epochs={target}", f"resume={run_dir}", run_dir=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert list(runs.iterdir()) == [run_dir]  # no new run folder
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    final = _load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert final["epoch"] == target - 1 and final["global_step"] == target * steps_per_epoch
    from r2m.checkpoints import read_metadata

    meta = read_metadata(run_dir / "specialist.safetensors")
    assert meta["epochs"] == target and meta["selected"] == "best" and meta["run_group"] == run_dir.name
    best = torch.load(run_dir / "checkpoints" / meta["best_checkpoint"], map_location="cpu", weights_only=True)
    assert best["epoch"] == meta["best_epoch"]
    # the epochs before the kill were not trained again: the resumed CSV log starts after them
    versions = sorted((run_dir / "csv").iterdir())
    import csv

    rows = list(csv.DictReader((versions[-1] / "metrics.csv").open()))
    epochs = {int(r["epoch"]) for r in rows if r.get("epoch")}
    assert min(epochs) >= done_epochs and max(epochs) == target - 1


# ------------------------------------------------------------------------------ W&B offline runs


def _read_run(path: Path) -> dict:
    run = read_run(path)
    return {"config": run.config, "history_keys": run.history_keys, "exit_code": run.exit_code, "name": run.name,
            "group": run.group, "job_type": run.job_type, "run_id": run.run_id}


def test_wandb_training_runs_offline(tmp_path, shared_cache):
    """A 2-job sweep with logger=wandb (offline): one run per job, group = the sweep folder, job_type
    train, name = family, the run config once (no model hparams duplicated), val EER/AP/ACC logged,
    and the group recorded in each specialist's metadata."""
    from r2m.checkpoints import read_metadata

    sweep = tmp_path / "sweep-xyz"
    proc = _train(tmp_path, "-m", "experiment=tiny", "logger=wandb", "data.family=fs,fr", "trainer.max_epochs=1",
                  "test_after_fit=false", f"paths.cache_dir={shared_cache}", f"hydra.sweep.dir={sweep}",
                  "extras.print_config=true", run_dir=False, env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted(p for p in sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2, files
    runs = [_read_run(f) for f in files]
    assert [r["name"] for r in runs] == ["fs", "fr"]
    assert {r["group"] for r in runs} == {"sweep-xyz"} and {r["job_type"] for r in runs} == {"train"}
    assert len({r["run_id"] for r in runs}) == 2 and {r["exit_code"] for r in runs} == {0}
    for run, family in zip(runs, ["fs", "fr"]):
        config = run["config"]
        assert config["data"]["family"] == family and config["model"]["model_name"] == "tiny-vit"
        # save_hyperparameters(logger=False): the model's arguments are not logged a second time
        assert not {"model_name", "model_cfg", "finetune", "label_smoothing"} & set(config), sorted(config)
        assert {"val/auc", "val/ap", "val/eer", "val/acc", "train/lr"} <= run["history_keys"]
    for job, family in (("0", "fs"), ("1", "fr")):
        assert read_metadata(sweep / job / "specialist.safetensors")["run_group"] == "sweep-xyz"
    # the config is printed once per sweep, not once per job
    assert proc.stdout.count("task_name: train") == 1 and "sweep job 1: overrides" in proc.stdout


def test_failed_task_closes_its_wandb_run_and_exits_non_zero(tmp_path, shared_cache):
    """No best checkpoint (the monitoring ModelCheckpoint removed): the export refuses, the process
    exits non-zero with the error, no specialist is written, and the W&B run is finished as failed."""
    proc = _train(tmp_path, "experiment=tiny", "logger=wandb", "trainer.max_epochs=1", "callbacks.model_checkpoint=null",
                  f"paths.cache_dir={shared_cache}", env={"WANDB_MODE": "offline"})
    assert proc.returncode != 0
    assert "no ModelCheckpoint with a monitor" in proc.stderr and "load_best=false" in proc.stderr
    assert not (tmp_path / "run" / "specialist.safetensors").exists()
    (run_file,) = (tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb")
    run = _read_run(run_file)
    assert run["exit_code"] == 1 and run["job_type"] == "train" and run["group"] == "run"


def test_resolve_resume_per_task(tmp_path):
    """resume=<run dir> with several tasks: each task continues from its own last.ckpt; tasks that
    never wrote one start fresh; resume + ckpt_path, a foreign folder or no checkpoint are errors."""
    from omegaconf import OmegaConf

    from r2m.training import resolve_resume

    run = tmp_path / "run"
    (run / "fs" / "checkpoints").mkdir(parents=True)
    (run / "fs" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    cfg = OmegaConf.create({"resume": str(run), "ckpt_path": None})
    assert resolve_resume(cfg, run, ["fs", "fr"]) == {"fs": str(run / "fs" / "checkpoints" / "last.ckpt"), "fr": None}
    with pytest.raises(FileNotFoundError, match="no last.ckpt to resume from"):
        resolve_resume(cfg, run, ["fr"])
    with pytest.raises(ValueError, match="resume continues a single run inside its own folder"):
        resolve_resume(cfg, tmp_path / "other", ["fs", "fr"])
    with pytest.raises(ValueError, match="not both"):
        resolve_resume(OmegaConf.create({"resume": str(run), "ckpt_path": "x.ckpt"}), run, ["fs"])
    with pytest.raises(ValueError, match="ckpt_path resumes one task"):
        resolve_resume(OmegaConf.create({"resume": None, "ckpt_path": "x.ckpt"}), run, ["fs", "fr"])
    assert resolve_resume(OmegaConf.create({"resume": None, "ckpt_path": None}), run, ["fs"]) == {"fs": None}
