"""DeepfakeDetector: training on the generated fixture, specialist export, resume, freezing,
LR schedule, the test loop, rebuilding from a file."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from models_helpers import TINY_CFG
from r2m.checkpoints import BASE_FORMAT, base_filename, load_checkpoint, read_metadata
from r2m.models import DeepfakeDetector, SpecialistExport
from r2m.models.detector import WarmupSchedule
from r2m.utils import code_version, state_dict_hash


def _model(seed: int = 0, **kw) -> DeepfakeDetector:
    L.seed_everything(seed, verbose=False)
    args = dict(model_name="tiny", model_cfg=TINY_CFG, lr=1e-3)
    args.update(kw)
    return DeepfakeDetector(**args)


def _datamodule(root: Path, family: str = "fs"):
    from data_modules.fixtures import fixture_datamodule

    return fixture_datamodule(root, family=family, image_size=32, batch_size=16, augment=False)


def _trainer(run_dir: Path, max_epochs: int, base_dir: Path, **kw) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val/auc", mode="max", save_last=True,
                           filename="epoch{epoch:02d}-auc{val/auc:.4f}", auto_insert_metric_name=False)
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(run_dir),
                     callbacks=[ckpt, SpecialistExport(base_dir=base_dir)], **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fixture_root):
    """One 2-epoch fit, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run")
    base_dir = run_dir / "bases"
    model = _model(scheduler="cosine", warmup_steps=2)
    theta0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    dm = _datamodule(fixture_root)
    trainer = _trainer(run_dir, 2, base_dir)
    trainer.fit(model, datamodule=dm)
    return {"model": model, "trainer": trainer, "dm": dm, "theta0": theta0, "run_dir": run_dir, "base_dir": base_dir}


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
    ckpt_cb = trainer.checkpoint_callback
    assert math.isclose(meta["val_auc"], float(ckpt_cb.best_model_score))
    assert meta["best_checkpoint"] == Path(ckpt_cb.best_model_path).name
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


def test_logs_train_and_val_metrics(trained):
    metrics = trained["trainer"].callback_metrics
    for key in ("train/loss", "train/acc", "val/auc", "val/loss", "val/acc"):
        assert key in metrics and math.isfinite(float(metrics[key])), key


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
    model = _model(scheduler="cosine", warmup_steps=2)  # same seed → same θ0
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


def test_warmup_cosine_schedule_matches_reference():
    total, warmup, floor = 20, 4, 0.1
    sched = WarmupSchedule("cosine", warmup, total, floor)
    for step in range(total + 3):
        if step < warmup:
            ref = (step + 1) / warmup
        else:
            p = min(1.0, (step - warmup) / (total - warmup))
            ref = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
        assert math.isclose(sched(step), ref, rel_tol=1e-12), step
    const = WarmupSchedule("constant", 3, 10)
    assert [const(s) for s in range(5)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0]


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
