"""DeepfakeDetector: training on the generated fixture, specialist export (best epoch, metadata),
last / best checkpoints, resume, validation metrics, freezing, optimizer / LR-schedule factories,
the test loop, rebuilding from a file."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from models_helpers import TINY_CFG
from r2m.checkpoints import BASE_FORMAT, base_filename, load_checkpoint, read_metadata
from r2m.models import DeepfakeDetector, SpecialistExport
from r2m.models.schedules import warmup_constant, warmup_cosine
from r2m.utils import code_version, state_dict_hash

REPO = Path(__file__).resolve().parents[2]


def _model(seed: int = 0, lr: float = 1e-3, warmup_steps: int | None = None, **kw) -> DeepfakeDetector:
    L.seed_everything(seed, verbose=False)
    args = dict(model_name="tiny", model_cfg=TINY_CFG, optimizer=functools.partial(torch.optim.AdamW, lr=lr))
    if warmup_steps is not None:
        args["scheduler"] = functools.partial(warmup_cosine, warmup_steps=warmup_steps)
    args.update(kw)
    return DeepfakeDetector(**args)


def _datamodule(root: Path, family: str = "fs"):
    from data_modules.fixtures import fixture_datamodule

    return fixture_datamodule(root, family=family, image_size=32, batch_size=16, augment=False)


def _checkpoints(run_dir: Path) -> list[ModelCheckpoint]:
    """As configs/callbacks/default.yaml: the best epoch by val/auc, and last.ckpt = the last epoch."""
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val/auc", mode="max", save_last=False,
                           filename="best-epoch{epoch:02d}-auc{val/auc:.4f}", auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=None, filename="last", save_top_k=1,
                           enable_version_counter=False)
    return [best, last]


class _SanityProbe(Callback):
    """Records the validation metrics present right after the sanity check."""

    def on_sanity_check_end(self, trainer, pl_module):
        self.keys = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
        self.logged = sorted(k for k in trainer.logged_metrics if k.startswith("val/"))


def _trainer(run_dir: Path, max_epochs: int, base_dir: Path, extra=(), export=None, **kw) -> L.Trainer:
    kw.setdefault("num_sanity_val_steps", 0)
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(run_dir),
                     callbacks=[*_checkpoints(run_dir), export or SpecialistExport(base_dir=base_dir), *extra], **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fixture_root):
    """One 2-epoch fit (with a 2-batch sanity check), shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run")
    base_dir = run_dir / "bases"
    model = _model(warmup_steps=2)
    model.data_config = {"_target_": "data_modules.fixtures.fixture_datamodule", "family": "fs"}
    model.run_group = "sweep-A"
    theta0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    dm = _datamodule(fixture_root)
    probe = _SanityProbe()
    trainer = _trainer(run_dir, 2, base_dir, extra=[probe], num_sanity_val_steps=2)
    trainer.fit(model, datamodule=dm)
    return {"model": model, "trainer": trainer, "dm": dm, "theta0": theta0, "run_dir": run_dir,
            "base_dir": base_dir, "probe": probe}


def test_fit_exports_specialist_with_metadata(trained):
    model, trainer, dm = trained["model"], trained["trainer"], trained["dm"]
    path = trained["run_dir"] / "specialist.safetensors"
    assert model.exported_specialist_path == path and path.is_file()
    meta = read_metadata(path)
    assert meta["format"] == "r2m-specialist/1" and meta["task"] == "fs" == dm.task_name
    assert meta["train_sources"] == list(dm.train_sources) == ["FSAll_ff"]
    assert meta["base_hash"] == state_dict_hash(trained["theta0"]) == model.base_hash
    assert meta["code_version"] == code_version()
    assert meta["model_spec"] == model.info.spec and meta["model_name"] == "tiny"
    assert meta["feature"] == "pooled" and meta["image_size"] == 32 and len(meta["mean"]) == 3
    # specialist metadata contract (HELPERS.md #2)
    assert meta["families"] == ["fs"] and meta["run_group"] == "sweep-A"
    assert meta["data_config"] == {"_target_": "data_modules.fixtures.fixture_datamodule", "family": "fs"}
    assert "carve" in meta
    if hasattr(dm, "carve_record"):
        assert meta["carve"] == dm.carve_record()
    ckpt_cb = trainer.checkpoint_callback
    assert ckpt_cb.monitor == "val/auc"
    assert math.isclose(meta["val_auc"], float(ckpt_cb.best_model_score))
    assert meta["best_checkpoint"] == Path(ckpt_cb.best_model_path).name and meta["selected"] == "best"
    best_ckpt = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=True)
    assert meta["best_epoch"] == best_ckpt["epoch"]
    # the exported weights are the best checkpoint's, and training changed them
    best = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    loaded = load_checkpoint(path)
    for key, value in loaded.backbone.items():
        assert torch.equal(value, best[f"backbone.{key}"]), key
    assert torch.equal(loaded.head["weight"], best["head.weight"])
    assert state_dict_hash(loaded.backbone) != meta["base_hash"]


def test_base_file_holds_theta0(trained):
    model = trained["model"]
    base_path = trained["base_dir"] / base_filename(model.base_hash)
    assert model.exported_base_path == base_path and base_path.is_file()
    base = load_checkpoint(base_path)
    assert base.meta["format"] == BASE_FORMAT and base.meta["base_hash"] == model.base_hash
    assert all(torch.equal(base.backbone[k], v) for k, v in trained["theta0"].items())
    mtime = base_path.stat().st_mtime_ns
    assert model.export_base(base_dir=trained["base_dir"]) == base_path and base_path.stat().st_mtime_ns == mtime


def test_last_ckpt_is_the_last_epoch_and_best_is_separate(trained):
    trainer = trained["trainer"]
    ckpt_dir = trained["run_dir"] / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == trainer.global_step  # epoch 1 of 0..1
    for key, value in trained["model"].state_dict().items():
        if key.startswith("head."):  # the module now holds the best epoch's weights (exported)
            best = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
            assert torch.equal(value, best["state_dict"][key])
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert len(names) == 2 and "last.ckpt" in names and names[0].startswith("best-epoch")
    # the hyperparameters in checkpoints are plain (weights_only), without the optimizer factories
    assert "optimizer" not in last["hyper_parameters"] and last["hyper_parameters"]["model_name"] == "tiny"


def test_logs_train_and_val_metrics(trained):
    metrics = trained["trainer"].callback_metrics
    for key in ("train/loss", "train/acc", "val/loss", "val/auc", "val/ap", "val/eer", "val/acc",
                "val/video_auc", "val/video_eer", "val/video_acc"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    assert "train/lr" not in metrics  # LearningRateMonitor's job (needs a logger)
    # the sanity check ran validation batches but logged no metric
    assert trained["probe"].keys == [] and trained["probe"].logged == []


def test_val_metrics_equal_the_evaluation_functions(trained, fixture_root):
    """val/* = r2m.evaluation.compute_metrics of the module's own probabilities on the val loader."""
    from r2m.evaluation import compute_metrics

    model, dm = trained["model"].eval(), trained["dm"]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(model, datamodule=dm, verbose=False)[0]
    probs, labels, vids = [], [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            batch = model.on_after_batch_transfer(batch, 0) if hasattr(model, "on_after_batch_transfer") else batch
            probs.append(model(batch["image"]).float().softmax(-1)[:, 1])
            labels.append(batch["label"])
            vids.append(batch["video_id"])
    ref = compute_metrics(torch.cat(probs), torch.cat(labels), torch.cat(vids))
    for key in ("auc", "ap", "eer", "acc", "video_auc", "video_eer", "video_acc"):
        assert math.isclose(logged[f"val/{key}"], ref[key], rel_tol=1e-6, abs_tol=1e-7), key


def test_export_without_best_checkpoint_is_an_error(fixture_root, tmp_path):
    """No monitoring ModelCheckpoint: load_best refuses to export the last weights silently."""
    model = _model()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                        enable_checkpointing=False, callbacks=[SpecialistExport(base_dir=tmp_path)],
                        limit_train_batches=1)
    with pytest.raises(RuntimeError, match="no ModelCheckpoint with a monitor.*load_best=false"):
        trainer.fit(model, datamodule=_datamodule(fixture_root))
    assert not (tmp_path / "specialist.safetensors").exists()
    # explicitly allowed: the last weights, marked as such
    model = _model()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                        enable_checkpointing=False, limit_train_batches=1,
                        callbacks=[SpecialistExport(base_dir=tmp_path, allow_last=True)])
    trainer.fit(model, datamodule=_datamodule(fixture_root))
    meta = read_metadata(tmp_path / "specialist.safetensors")
    assert meta["selected"] == "last" and meta["best_epoch"] is None and meta["best_checkpoint"] is None


def test_from_file_reproduces_logits(trained):
    model = trained["model"].eval()
    rebuilt = DeepfakeDetector.from_file(trained["run_dir"] / "specialist.safetensors").eval()
    assert rebuilt.base_hash == model.base_hash and rebuilt.task_name == "fs"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="wrong format"):
        DeepfakeDetector.from_file(trained["base_dir"] / base_filename(model.base_hash))


def test_resume_continues_global_step(trained, fixture_root, tmp_path):
    first = trained["trainer"]
    steps_per_epoch = first.global_step // 2
    last = trained["run_dir"] / "checkpoints" / "last.ckpt"
    model = _model(warmup_steps=2)  # same seed → same θ0
    trainer = _trainer(tmp_path, 3, tmp_path / "bases")
    trainer.fit(model, datamodule=_datamodule(fixture_root), ckpt_path=str(last))
    assert trainer.global_step == 3 * steps_per_epoch and trainer.current_epoch == 3
    assert model.base_hash == trained["model"].base_hash

    # a resumed module built from another init keeps the checkpoint's θ0 identity (with a warning)
    other = _model(seed=7)
    assert other.base_hash != trained["model"].base_hash
    with pytest.warns(UserWarning, match="differs from the freshly built"):
        other.on_load_checkpoint(torch.load(last, map_location="cpu", weights_only=True))
    assert other.base_hash == trained["model"].base_hash
    with pytest.raises(RuntimeError, match="not available"):
        other.base_state()


def _trainable(model: DeepfakeDetector) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_finetune_modes():
    full = _trainable(_model(finetune="full"))
    assert full == {n for n, _ in _model().named_parameters()}
    ln = _trainable(_model(finetune="layernorm"))
    assert ln and all(".ln_" in f".{n}" or n.startswith("head.") for n in ln)
    assert {"backbone.ln_pre.weight", "backbone.transformer.resblocks.0.ln_1.bias", "backbone.ln_post.weight",
            "head.weight"} <= ln
    assert "backbone.transformer.resblocks.0.attn.in_proj_weight" not in ln
    last = _trainable(_model(finetune="last_k", last_k=1))
    assert all(n.startswith(("backbone.transformer.resblocks.1.", "backbone.ln_post.", "head.")) for n in last)
    assert "backbone.transformer.resblocks.1.mlp.c_fc.weight" in last and "backbone.ln_post.bias" in last
    assert _trainable(_model(finetune="last_k", last_k=0)) == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="last_k must be in"):
        _model(finetune="last_k", last_k=3)
    with pytest.raises(ValueError, match="finetune must be one of"):
        _model(finetune="lora")
    # the optimizer only sees trainable parameters
    m = _model(finetune="layernorm")
    opt = m.configure_optimizers()  # no trainer attached: a plain optimizer
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in m.parameters() if p.requires_grad)


def _old_multiplier(kind: str, step: int, warmup: int, total: int, floor: float) -> float:
    """The LR multiplier of the former hand-written WarmupSchedule (LambdaLR), as a reference."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    p = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _lrs(factory, total: int, lr: float = 0.01) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    sched = factory(opt, total_steps=total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total, warmup, floor", [(20, 4, 0.1), (20, 0, 0.0), (7, 1, 0.0), (50, 10, 0.2), (5, 5, 0.0)])
def test_torch_schedules_equal_the_former_warmup_schedule(total, warmup, floor):
    """LR of every optimizer step: SequentialLR(LinearLR, CosineAnnealingLR) / LinearLR = the old values."""
    cos = _lrs(functools.partial(warmup_cosine, warmup_steps=warmup, min_lr_ratio=floor), total)
    const = _lrs(functools.partial(warmup_constant, warmup_steps=warmup), total)
    for step in range(total):
        assert math.isclose(cos[step], 0.01 * _old_multiplier("cosine", step, warmup, total, floor),
                            rel_tol=1e-9, abs_tol=1e-15), step
        assert math.isclose(const[step], 0.01 * _old_multiplier("constant", step, warmup, total, floor),
                            rel_tol=1e-9), step
    # warmup_ratio: round(ratio × total) steps
    assert _lrs(functools.partial(warmup_cosine, warmup_ratio=0.2), 20) == _lrs(
        functools.partial(warmup_cosine, warmup_steps=4), 20)
    with pytest.raises(ValueError, match="warmup_ratio"):
        _lrs(functools.partial(warmup_cosine, warmup_ratio=1.5), 10)


@pytest.mark.parametrize("overrides, opt_cls, lr, wd, sched_cls", [
    ([], torch.optim.AdamW, 1e-3, 0.0, "CosineAnnealingLR"),
    (["model/optimizer=adam", "model.optimizer.lr=0.01", "model.optimizer.weight_decay=0.5",
      "model.scheduler.warmup_steps=3"], torch.optim.Adam, 0.01, 0.5, "SequentialLR"),
    (["model/scheduler=constant"], torch.optim.AdamW, 1e-3, 0.0, "ConstantLR"),
    (["model.scheduler=null", "+model.optimizer.momentum=0.9", "model.optimizer._target_=torch.optim.SGD",
      "~model.optimizer.betas", "~model.optimizer.eps"], torch.optim.SGD, 1e-3, 0.0, "ConstantLR"),
])
def test_optimizer_and_scheduler_partials_from_config(overrides, opt_cls, lr, wd, sched_cls):
    """configs/model: Hydra `_partial_` factories → the optimizer over trainable parameters + schedule."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny", "paths.root_dir=.", *overrides])
    model = instantiate(cfg.model)
    assert isinstance(model.hparams.model_cfg, dict)  # _convert_: all → plain containers
    assert type(model.configure_optimizers()) is opt_cls  # no trainer: the optimizer alone

    class _T:  # what configure_optimizers reads from a trainer
        estimated_stepping_batches = 12

    model._trainer = _T()
    out = model.configure_optimizers()
    model._trainer = None
    opt, sched = out["optimizer"], out["lr_scheduler"]
    assert type(opt) is opt_cls and opt.defaults["lr"] == lr and opt.defaults["weight_decay"] == wd
    assert type(sched["scheduler"]).__name__ == sched_cls
    assert sched["interval"] == "step" and sched["name"] == "train/lr"
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)


def test_bad_factories_and_containers_are_errors():
    with pytest.raises(TypeError, match="optimizer must be a factory"):
        _model(optimizer="adamw")
    from omegaconf import OmegaConf

    with pytest.raises(TypeError, match="_convert_: all"):
        _model(model_cfg=OmegaConf.create(TINY_CFG))


def _auc_reference(scores: list[float], labels: list[int]) -> float:
    """Mann–Whitney AUC in float64: P(score_fake > score_real) + ½ P(tie)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_test_loop_with_direct_dataloaders():
    model = _model().eval()
    g = torch.Generator().manual_seed(0)
    loaders, expected = [], []
    for n in (12, 10):
        images = torch.randn(n, 3, 32, 32, generator=g)
        labels = torch.tensor([i % 2 for i in range(n)])
        samples = [{"image": images[i], "label": labels[i], "video_id": torch.tensor(i)} for i in range(n)]
        loaders.append(torch.utils.data.DataLoader(samples, batch_size=4))
        with torch.no_grad():
            probs = model(images).double().softmax(-1)[:, 1].tolist()
        expected.append(_auc_reference(probs, labels.tolist()))
    model.set_test_sets(["set_a", "set_b"], {"split": ["set_a", "set_b"]})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(model, dataloaders=loaders)
    result = model.test_results
    assert list(result.per_set) == ["set_a", "set_b"]
    for name, ref in zip(["set_a", "set_b"], expected):
        assert math.isclose(result.per_set[name]["auc"], ref, rel_tol=1e-6), name
    assert math.isclose(result.per_split["split"]["auc"], sum(expected) / 2, rel_tol=1e-6)


def test_base_is_reloaded_from_pretrained_file(tmp_path):
    from r2m.checkpoints import save_base

    source = _model(seed=11)
    path = save_base(tmp_path / "theta0.safetensors", source.backbone.state_dict(),
                     {"model_name": "tiny", "model_spec": source.info.spec})
    model = _model(seed=12, pretrained=str(path))  # auto: no in-memory copy for pretrained weights
    assert model._theta0 is None and model.base_hash == source.base_hash
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)  # "training"
    rng_before = torch.random.get_rng_state()
    out = model.export_base(base_dir=tmp_path / "bases")
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    saved = load_checkpoint(out)
    assert saved.meta["base_hash"] == source.base_hash
    assert all(torch.equal(saved.backbone[k], v) for k, v in source.backbone.state_dict().items())
    # the source file changed since: the re-loaded weights no longer match θ0's hash
    save_base(path, {k: v + 1 for k, v in source.backbone.state_dict().items()},
              {"model_name": "tiny", "model_spec": source.info.spec})
    with pytest.raises(RuntimeError, match="not base_hash"):
        model.export_base(tmp_path / "again.safetensors")
