"""``DeepfakeDetector``: an open_clip visual tower + a 2-logit linear head, as a LightningModule.

Recipe defaults follow DF40's CLIP detector (deepfake.md §2.2): full fine-tuning, the head on the
pooled 1024-d (ViT-L/14) feature, cross-entropy; freezing is configurable, and the optimizer and LR
schedule are factories (Hydra ``_partial_: true`` configs, see ``configs/model/*.yaml`` and
:mod:`r2m.models.schedules`). Validation logs, per epoch, ``val/auc``, ``val/ap``, ``val/eer``,
``val/acc`` (and ``val/video_auc``, ``val/video_eer``, ``val/video_acc`` when batches carry
``video_id``) of p(fake) = softmax(logits)[:, 1], computed exactly by
:class:`r2m.evaluation.DetectionMetrics` (the test metrics' code); ``val/auc`` is what checkpointing
monitors. Nothing is logged for the sanity-check pass.

θ0 (the backbone state before any training) is identified by ``base_hash``
(:func:`r2m.utils.state_dict_hash`) computed at construction. For a random init a CPU copy of θ0
is kept so that :meth:`export_base` can write it after training; pretrained weights are instead
re-loaded from their tag/file when the base file is first written (``keep_base_copy=True`` keeps
the copy anyway: 1.2 GB for ViT-L/14 in fp32). The hash travels in Lightning checkpoints
(``checkpoint["r2m_meta"]``) so a resumed run keeps the identity of its original θ0.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from r2m.checkpoints import (
    MERGED_FORMAT,
    SPECIALIST_FORMAT,
    base_filename,
    load_checkpoint,
    save_base,
    save_specialist,
)
from r2m.evaluation.metric import DetectionMetrics
from r2m.models.backbone import build_backbone, load_backbone_weights
from r2m.utils import code_version, state_dict_hash

__all__ = ["DeepfakeDetector", "FINETUNE_MODES", "VAL_METRICS"]

FINETUNE_MODES = ("full", "layernorm", "last_k")
#: validation metrics logged as ``val/<key>`` (video-level ones when batches carry ``video_id``)
VAL_METRICS = ("auc", "ap", "eer", "acc", "video_auc", "video_eer", "video_acc")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class DeepfakeDetector(L.LightningModule):
    """Binary real/fake classifier: ``head(backbone(images))`` → logits ``[B, 2]`` (1 = fake).

    Args (Hydra-instantiable; all but the two factories JSON-able, recorded as hparams):
        model_name, model_cfg, pretrained, image_size, feature: see :func:`r2m.models.build_backbone`.
        mean, std: input statistics (``None`` → those of the weights, ``BackboneInfo.mean/std``);
            recorded in exported files; the data module normalises with them.
        optimizer: ``params → torch.optim.Optimizer`` (a Hydra ``_partial_: true`` config such as
            ``{_target_: torch.optim.AdamW, _partial_: true, lr: 1e-3}``); ``None`` → AdamW, lr 1e-5.
        scheduler: ``(optimizer, total_steps) → LRScheduler`` stepped per optimizer step (e.g.
            :func:`r2m.models.schedules.warmup_cosine` as a ``_partial_``); ``None`` → constant LR.
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
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        finetune: str = "full",
        last_k: int = 1,
        label_smoothing: float = 0.0,
        grad_checkpointing: bool = False,
        keep_base_copy: bool | None = None,
    ) -> None:
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
        for name, factory in (("optimizer", optimizer), ("scheduler", scheduler)):
            if factory is not None and not callable(factory):
                raise TypeError(
                    f"DeepfakeDetector: {name} must be a factory (a Hydra `_partial_: true` config or a "
                    f"functools.partial), got {factory!r}"
                )
        # hparams go into Lightning checkpoints, which are read with torch.load(weights_only=True):
        # plain containers only (Hydra configs instantiate the model with `_convert_: all`)
        if model_cfg is not None and not isinstance(model_cfg, dict):
            raise TypeError(
                f"DeepfakeDetector: model_cfg must be a plain dict, got {type(model_cfg).__name__} "
                "(instantiate the model config with `_convert_: all`)"
            )
        mean = None if mean is None else [float(x) for x in mean]
        std = None if std is None else [float(x) for x in std]
        # the factories are not hyperparameters of the checkpoint (not weights_only-loadable); the
        # resolved run config (exported as specialist metadata) records them
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.optimizer_factory: OptimizerFactory = optimizer or functools.partial(torch.optim.AdamW, lr=1e-5)
        self.scheduler_factory: SchedulerFactory | None = scheduler
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
        self.val_metrics = DetectionMetrics()

        self.task_name: str | None = None
        self.train_sources: list[str] = []
        self.run_config: Any = None  # resolved run config, set by r2m.training, exported as metadata
        self.data_config: dict[str, Any] | None = None  # the data module's resolved config (r2m.training)
        self.run_group: str | None = None  # the W&B / Hydra sweep group of the run (r2m.training)
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
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch["label"]
        logits = self(batch["image"])
        self.val_loss.update(self._loss(logits, labels))
        self.val_metrics.update(logits.float().softmax(-1)[:, 1], labels, batch.get("video_id"))
        if not self._sanity_checking():
            self.log("val/loss", self.val_loss, on_step=False, on_epoch=True)

    def _sanity_checking(self) -> bool:
        return self._trainer is not None and self.trainer.sanity_checking

    def on_validation_epoch_end(self) -> None:
        if self._sanity_checking():  # a few batches, maybe one class: no metrics, nothing logged
            self.val_metrics.reset()
            self.val_loss.reset()
            return
        try:
            metrics = self.val_metrics.compute()  # a collective under DDP: every rank gets the result
        except ValueError as err:
            raise ValueError(f"validation metrics (epoch {self.current_epoch}): {err}") from err
        finally:
            self.val_metrics.reset()
        for key in VAL_METRICS:
            if key in metrics:
                self.log(f"val/{key}", float(metrics[key]), prog_bar=key == "auc", sync_dist=True)

    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters and, with a trainer attached, the per-step
        schedule (a constant one when ``scheduler`` is None) named ``train/lr`` for Lightning's
        ``LearningRateMonitor``. Without a trainer (total steps unknown): the optimizer alone."""
        params = [p for p in self.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params)
        if self._trainer is None:
            return opt
        if self.scheduler_factory is None:
            sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        else:
            sched = self.scheduler_factory(opt, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "train/lr"}}

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
