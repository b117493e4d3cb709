"""``DeepfakeDetector``: an open_clip visual tower + a 2-logit linear head, as a LightningModule.

Recipe defaults follow DF40's CLIP detector (deepfake.md §2.2): full fine-tuning, the head on the
pooled 1024-d (ViT-L/14) feature, cross-entropy; the optimizer, LR schedule and freezing are
configurable. Validation logs ``val/auc`` (torchmetrics ``BinaryAUROC`` on p(fake) =
softmax(logits)[:, 1]) per epoch, which checkpointing monitors.

θ0 (the backbone state before any training) is identified by ``base_hash``
(:func:`r2m.utils.state_dict_hash`) computed at construction. For a random init a CPU copy of θ0
is kept so that :meth:`export_base` can write it after training; pretrained weights are instead
re-loaded from their tag/file when the base file is first written (``keep_base_copy=True`` keeps
the copy anyway: 1.2 GB for ViT-L/14 in fp32). The hash travels in Lightning checkpoints
(``checkpoint["r2m_meta"]``) so a resumed run keeps the identity of its original θ0.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from r2m.checkpoints import (
    MERGED_FORMAT,
    SPECIALIST_FORMAT,
    base_filename,
    load_checkpoint,
    save_base,
    save_specialist,
)
from r2m.models.backbone import to_plain, build_backbone, load_backbone_weights
from r2m.utils import code_version, state_dict_hash

__all__ = ["DeepfakeDetector", "WarmupSchedule", "FINETUNE_MODES"]

FINETUNE_MODES = ("full", "layernorm", "last_k")
OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("constant", "cosine")


class WarmupSchedule:
    """LR multiplier per optimizer step: linear warmup ``(s+1)/w`` for ``s < w``, then constant 1
    or a cosine decay ``m + (1-m)·½(1+cos(π·p))`` with progress ``p = (s-w)/(T-w)`` ∈ [0, 1] and
    floor ``m = min_lr_ratio`` (Loshchilov & Hutter, SGDR, 2017). A callable object (not a
    lambda) so ``LambdaLR`` can save and restore it."""

    def __init__(self, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> None:
        if kind not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {kind!r}")
        self.kind, self.warmup_steps, self.total_steps, self.min_lr_ratio = kind, int(warmup_steps), int(total_steps), float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class DeepfakeDetector(L.LightningModule):
    """Binary real/fake classifier: ``head(backbone(images))`` → logits ``[B, 2]`` (1 = fake).

    Args (all JSON-able, Hydra-instantiable):
        model_name, model_cfg, pretrained, image_size, feature: see :func:`r2m.models.build_backbone`.
        mean, std: input statistics (``None`` → those of the weights, ``BackboneInfo.mean/std``);
            recorded in exported files; the data module normalises with them.
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"adam"`` (L2 weight decay, DF40's).
        lr, weight_decay, betas, eps: optimizer settings.
        scheduler: ``"constant"`` or ``"cosine"`` (per step), after ``warmup_steps`` linear warmup
            steps, or ``warmup_ratio`` × total steps when ``warmup_ratio`` is set.
        min_lr_ratio: cosine floor as a fraction of ``lr``.
        finetune: ``"full"``; ``"layernorm"`` (only LayerNorm weights/biases + head train);
            ``"last_k"`` (the last ``last_k`` transformer blocks, ``ln_post`` (and ``proj``) + head).
        label_smoothing: cross-entropy label smoothing.
        grad_checkpointing: activation checkpointing in the transformer (memory for compute).
        keep_base_copy: keep a CPU copy of θ0 for :meth:`export_base`; ``None`` (auto) keeps it
            only for a random init (``pretrained=None``), otherwise θ0 is re-loaded from
            ``pretrained`` (and checked against ``base_hash``) when the base file is first written.
    """

    def __init__(
        self,
        model_name: str | None = "ViT-B-16",
        model_cfg: Mapping | None = None,
        pretrained: str | None = None,
        image_size: int | None = None,
        feature: str = "pooled",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        scheduler: str = "constant",
        warmup_steps: int = 0,
        warmup_ratio: float | None = None,
        min_lr_ratio: float = 0.0,
        finetune: str = "full",
        last_k: int = 1,
        label_smoothing: float = 0.0,
        grad_checkpointing: bool = False,
        keep_base_copy: bool | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
        # plain containers (not OmegaConf nodes) so hparams pickle under torch.load(weights_only=True)
        model_cfg = to_plain(model_cfg)
        mean = None if mean is None else [float(x) for x in mean]
        std = None if std is None else [float(x) for x in std]
        betas = [float(b) for b in betas]
        self.save_hyperparameters()
        self.backbone, self.info = build_backbone(
            model_name=model_name, model_cfg=model_cfg, pretrained=pretrained, image_size=image_size, feature=feature
        )
        self.head = nn.Linear(self.info.out_dim, 2)
        self.input_mean = tuple(float(x) for x in (mean if mean is not None else self.info.mean))
        self.input_std = tuple(float(x) for x in (std if std is not None else self.info.std))
        if grad_checkpointing and hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(True)

        base_state = self.backbone.state_dict()
        self.base_hash: str = state_dict_hash(base_state)
        if keep_base_copy is None:
            keep_base_copy = pretrained is None
        self._theta0: dict[str, torch.Tensor] | None = (
            {k: v.detach().to("cpu", copy=True) for k, v in base_state.items()} if keep_base_copy else None
        )
        self._apply_finetune(finetune, last_k)

        self.train_loss = MeanMetric()
        self.train_acc = BinaryAccuracy()
        self.val_loss = MeanMetric()
        self.val_acc = BinaryAccuracy()
        self.val_auc = BinaryAUROC()

        self.task_name: str | None = None
        self.train_sources: list[str] = []
        self.run_config: Any = None  # resolved run config, set by train.py, exported as metadata
        self.test_results = None  # r2m.evaluation.EvalResult after trainer.test
        self.evaluator = None
        self.exported_specialist_path: Path | None = None
        self.exported_base_path: Path | None = None
        self.source_meta: dict[str, Any] = {}
        self._test_sets: tuple[list[str], dict[str, list[str]]] | None = None

    # ------------------------------------------------------------------------------ model parts

    def _apply_finetune(self, mode: str, last_k: int) -> None:
        """Set ``requires_grad`` per the fine-tuning mode; the head always trains."""
        for p in self.backbone.parameters():
            p.requires_grad = mode == "full"
        if mode == "layernorm":
            for module in self.backbone.modules():
                if isinstance(module, nn.LayerNorm):
                    for p in module.parameters():
                        p.requires_grad = True
        elif mode == "last_k":
            blocks = getattr(getattr(self.backbone, "transformer", None), "resblocks", None)
            if blocks is None:
                raise ValueError("finetune='last_k' needs a transformer with .transformer.resblocks")
            if not 0 <= last_k <= len(blocks):
                raise ValueError(f"last_k must be in [0, {len(blocks)}], got {last_k}")
            trainable = list(blocks)[len(blocks) - last_k:] if last_k else []
            if last_k:
                trainable.append(self.backbone.ln_post)
            for module in trainable:
                for p in module.parameters():
                    p.requires_grad = True
            if last_k and isinstance(getattr(self.backbone, "proj", None), nn.Parameter):
                self.backbone.proj.requires_grad = True
        for p in self.head.parameters():
            p.requires_grad = True

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Model input on the device: a uint8 ``batch["image"]`` (what the DataModules yield) is
        normalised with this detector's ``input_mean`` / ``input_std``
        (:func:`r2m.models.preprocess.normalize_images`); a float one is already normalised."""
        if isinstance(batch, Mapping) and isinstance(batch.get("image"), torch.Tensor):
            from r2m.models.preprocess import normalize_images

            batch = dict(batch)
            batch["image"] = normalize_images(batch["image"], self.input_mean, self.input_std)
        return batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """Current backbone state on CPU (keys without prefix)."""
        return {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()}

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.head.state_dict().items()}

    # ------------------------------------------------------------------------------- training

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=float(self.hparams.label_smoothing))

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels = batch["label"]
        logits = self(batch["image"])
        loss = self._loss(logits, labels)
        self.train_loss.update(loss.detach())
        self.train_acc.update(logits.detach().argmax(-1), labels)
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch["label"]
        logits = self(batch["image"])
        self.val_loss.update(self._loss(logits, labels))
        probs = logits.float().softmax(-1)[:, 1]
        self.val_auc.update(probs, labels)
        self.val_acc.update(logits.argmax(-1), labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True)
        self.log("val/auc", self.val_auc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        kwargs = dict(lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay)
        opt = torch.optim.AdamW(params, **kwargs) if hp.optimizer == "adamw" else torch.optim.Adam(params, **kwargs)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        warmup = int(round(hp.warmup_ratio * total)) if hp.warmup_ratio is not None else int(hp.warmup_steps)
        if hp.scheduler == "constant" and warmup == 0:
            return opt
        schedule = WarmupSchedule(hp.scheduler, warmup, total, hp.min_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    def setup(self, stage: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            self.task_name = getattr(dm, "task_name", None) or self.task_name
            self.train_sources = list(getattr(dm, "train_sources", None) or self.train_sources)

    # ---------------------------------------------------------------------------------- testing

    def set_test_sets(self, names: Sequence[str], splits: Mapping[str, Sequence[str]] | None = None) -> None:
        """Name the test dataloaders when they are passed to ``trainer.test`` directly (no datamodule)."""
        self._test_sets = (list(names), {k: list(v) for k, v in (splits or {}).items()})

    def _resolve_test_sets(self) -> tuple[list[str], dict[str, list[str]]]:
        if self._test_sets is not None:
            return self._test_sets
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, "test_set_names", None)
        if not names:
            raise RuntimeError(
                "DeepfakeDetector.test: no test set names; use a datamodule with test_set_names or call "
                "detector.set_test_sets(names, splits) before trainer.test"
            )
        return list(names), {k: list(v) for k, v in (getattr(dm, "test_splits", None) or {}).items()}

    def on_test_start(self) -> None:
        from r2m.evaluation import SplitEvaluator

        names, splits = self._resolve_test_sets()
        self.evaluator = SplitEvaluator(names, splits).to(self.device)
        self.test_results = None

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        probs = self(batch["image"]).float().softmax(-1)[:, 1]
        self.evaluator.update(dataloader_idx, probs, batch["label"], batch.get("video_id"))

    def on_test_epoch_end(self) -> None:
        result = self.evaluator.compute()  # a collective under DDP: every rank gets the result
        self.evaluator.reset()
        self.test_results = result
        for name, metrics in result.per_set.items():
            for key in ("auc", "video_auc"):
                if key in metrics:
                    self.log(f"test/{name}/{key}", float(metrics[key]), add_dataloader_idx=False, sync_dist=True)
        for split, metrics in result.per_split.items():
            if "auc" in metrics:
                self.log(f"test/split/{split}/auc", float(metrics["auc"]), add_dataloader_idx=False, sync_dist=True)

    # ------------------------------------------------------------------------- checkpoint hooks

    def file_meta(self) -> dict[str, Any]:
        """Metadata shared by specialist/base files: identity of the architecture and of θ0."""
        return {
            "model_name": self.info.model_name,
            "model_spec": self.info.spec,
            "base_hash": self.base_hash,
            "base_source": self.info.base_source,
            "feature": self.info.spec["feature"],
            "image_size": self.info.spec["image_size"],
            "mean": list(self.input_mean),
            "std": list(self.input_std),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = self.file_meta()
        meta.update(format=SPECIALIST_FORMAT, task=self.task_name or "unknown", train_sources=self.train_sources)
        checkpoint["r2m_meta"] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("r2m_meta") or {}
        stored = meta.get("base_hash")
        if stored and stored != self.base_hash:
            warnings.warn(
                f"resumed checkpoint's θ0 (base_hash {stored}) differs from the freshly built backbone's "
                f"({self.base_hash}); keeping {stored}. The in-memory θ0 copy is dropped, so the base file "
                "must already exist (it is written by the original run).",
                stacklevel=2,
            )
            self.base_hash = stored
            self._theta0 = None
        self.task_name = meta.get("task", self.task_name)

    # ---------------------------------------------------------------------------------- export

    def export_specialist(
        self,
        path: str | os.PathLike,
        task: str,
        train_sources: Sequence[str],
        config: Any = None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the specialist file (backbone + head + metadata, docs/architecture.md §2)."""
        meta = self.file_meta()
        meta.update(task=task, train_sources=list(train_sources), config=config, code_version=code_version())
        meta.update(dict(extra_meta or {}))
        return save_specialist(path, self.backbone_state(), self.head_state(), meta)

    def base_state(self) -> dict[str, torch.Tensor]:
        """θ0: the in-memory copy, else re-loaded from ``base_source`` (checked against ``base_hash``)."""
        if self._theta0 is not None:
            return self._theta0
        source = self.info.base_source
        if source is None:
            raise RuntimeError(
                f"θ0 (base_hash {self.base_hash}) is not available: it came from a random init and "
                "keep_base_copy=False (or the run was resumed); use the base file written by the original run"
            )
        with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the global RNG
            visual, _ = build_backbone(
                model_name=self.info.model_name, model_cfg=self.info.spec["model_cfg"], pretrained=source,
                image_size=self.info.spec["image_size"], feature=self.info.spec["feature"],
            )
        state = {k: v.detach().cpu() for k, v in visual.state_dict().items()}
        if state_dict_hash(state) != self.base_hash:
            raise RuntimeError(f"re-loaded {source} hashes to {state_dict_hash(state)}, not base_hash {self.base_hash}")
        return state

    def export_base(self, path: str | os.PathLike | None = None, base_dir: str | os.PathLike | None = None) -> Path:
        """Write θ0 as an r2m base file (``path``, or ``<base_dir>/base-<base_hash>.safetensors``;
        an existing file of that name is kept, since its name is its content hash)."""
        if path is None:
            if base_dir is None:
                raise ValueError("export_base: give path or base_dir")
            path = Path(base_dir) / base_filename(self.base_hash)
            if path.is_file():
                return path
        meta = {k: v for k, v in self.file_meta().items() if k != "base_hash"}
        meta["base_hash"] = self.base_hash
        return save_base(path, self.base_state(), meta)

    @classmethod
    def from_file(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> "DeepfakeDetector":
        """Rebuild a detector from a specialist or merged file: architecture from ``model_spec``,
        backbone and head loaded strictly, ``base_hash`` from the metadata. ``overrides`` are
        passed to the constructor (e.g. optimizer settings for further training)."""
        ck = load_checkpoint(path, formats=(SPECIALIST_FORMAT, MERGED_FORMAT))
        if ck.head is None:
            raise ValueError(f"{path}: no head tensors; cannot build a detector")
        spec = ck.meta["model_spec"]
        kwargs: dict[str, Any] = dict(
            model_name=spec.get("model_name"), model_cfg=spec.get("model_cfg"), pretrained=None,
            image_size=spec.get("image_size"), feature=spec.get("feature", "pooled"),
            mean=ck.meta.get("mean"), std=ck.meta.get("std"), keep_base_copy=False,
        )
        kwargs.update(overrides)
        model = cls(**kwargs)
        load_backbone_weights(model.backbone, ck.backbone, source=str(path))
        try:
            model.head.load_state_dict(ck.head, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: head tensors do not match the model: {err}") from err
        model.base_hash = ck.meta["base_hash"]
        model.info.base_source = ck.meta.get("base_source")
        model.task_name = ck.meta.get("task")
        model.train_sources = list(ck.meta.get("train_sources") or [])
        model.source_meta = ck.meta
        return model.to(map_location)
