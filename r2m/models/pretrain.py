"""Base pretraining: a shared θ0 for the built-in benchmark's specialists, on REAL images only.

The paper's specialists all start from one pretrained CLIP; offline we cannot download CLIP, so
the built-in benchmark pretrains its small open_clip ViT once, on real crops only, and caches the
result as an r2m base file keyed by a hash of (model spec, pretraining settings, data identity).
Training runs on a Lightning ``Trainer`` (devices, precision, a progress bar).

Pretext tasks (``pretext``):

``none``
    No training: θ0 is the random initialisation drawn from ``pretrain.seed``, written as a base
    file — fixed whatever the fine-tuning seed.
``source``
    Supervised pretext over the real sources: predict which photograph a real crop was cut from
    (6 classes on the benchmark's photo domain; labels = the loader's ``label``). The crops of a
    photograph differ in position, scale, flip and texture, so the model has to learn colour,
    texture and structure statistics of real photographs. A small ViT learns it on a CPU in a few
    hundred steps (its accuracy on the held-out test band of the photographs is recorded as
    ``pretext_eval``), where rotation prediction stayed at chance (0.254 against 0.25).
``noise``
    Noise-level estimation: every real crop gets Gaussian noise of one of 4 levels (0, 3, 6 or 12
    grey levels, drawn per image) and a linear head predicts which (4 classes, chance 0.25). The
    level is only visible in the fine texture, so the encoder has to model the high-frequency
    statistics of real photographs (no forgery operation is used).
``denoise`` (default of the built-in benchmark, see below)
    Denoising (Vincent et al., ICML 2008, denoising autoencoders): Gaussian noise of a per-image
    level σ ∈ [0.02, 0.10] (5–25 grey levels) is added to the real crop, and a linear head on the
    output patch tokens predicts the noise of every pixel (L1). To separate noise from image the
    encoder must model the fine texture of real photographs. Metric: L1 relative to predicting no
    noise (``rel_l1``; 1 = nothing learned, 0 = perfect). The head is zero-initialised, so training
    starts at the baseline (1.0) instead of a random prediction several times worse.
``masked``
    Masked-patch prediction (SimMIM, Xie et al., CVPR 2022): half of the ``patch × patch`` input
    patches are blanked (set to the normalised mean, 0), the encoder sees the rest, and a linear
    head on the output tokens regresses the raw (normalised) pixels of the blanked patches (L1). Its
    metric is the L1 error relative to predicting each blanked patch by the image's visible mean
    colour (``rel_l1``; 1 = no better than that baseline). It keeps fine texture in the features,
    which the artefacts of the forgery families live in.
``rotation`` / ``random_rotation``
    Predict the rotation (0/90/180/270°) of every image (Gidaris et al., ICLR 2018): all four per
    image, or one random one (a quarter of the cost).

The backbone's first linear head is thrown away; only the visual tower becomes θ0.

Measured on the benchmark (tiny64 ViT, 1 600 real crops of the photographs' training band, batch
32, 2-core CPU; 2026-12-02):

* ``denoise``, 6 epochs (300 steps, lr 2e-3, ~40 s; the benchmark's default): held-out L1 0.53 of
  the no-learning baseline; noise-level probes 0.51 / 0.42, source probes 0.78 / 0.73 (archive /
  photo; random init 0.26 / 0.26 and 0.81 / 0.51).
* ``denoise``, 12 epochs (600 steps, lr 2e-3, ~2 min): held-out L1 **0.49** of the no-learning
  baseline (the test band's real crops; 0.66 with a default-initialised head, 1.00 after 3 epochs
  in an earlier run). Linear probes (:mod:`r2m.probe`; frozen pooled features, fitted on one band,
  scored on the other) against the random initialisation of the same seed: sensor-noise level
  (4 classes, chance 0.25) 0.70 vs 0.26 on the archive domain and 0.59 vs 0.26 on the photo
  domain; source photograph 0.61 vs 0.51 (photo, chance 0.21) and 0.78 vs 0.81 (archive, chance
  0.19). So it learns the fine texture of real photographs that the artefacts live in, at a small
  cost in the grey archive domain's content probe.
* ``source`` learns (held-out accuracy 0.54–0.69 against a chance of 0.17) but learns colour
  statistics and *hurts* fine-tuning — an ``upsample`` specialist reached test AUC 0.51–0.55 from
  it against 0.81 from the random initialisation after 6 epochs; ``masked`` (600 steps:
  rel. L1 0.77, default-initialised head) lowered the blend / warp specialists' validation AUC
  (0.86 / 0.90 vs 0.94 / 0.98); ``noise`` and ``random_rotation`` stayed at chance (0.25 / 0.254).
"""

from __future__ import annotations

import hashlib
import json
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from r2m.checkpoints import BASE_FORMAT, read_metadata, save_base
from r2m.models.backbone import _resolve_model_cfg, build_backbone, to_plain
from r2m.utils import resolve_device

__all__ = ["PRETEXTS", "RealOnly", "PretextModule", "pretrain_base", "pretrain_key", "ensure_pretrained_base",
           "pretrain_from_config", "rotation_batch", "random_rotation_batch", "linear_probe", "extract_features"]

log = logging.getLogger(__name__)

PRETEXTS = ("none", "source", "noise", "denoise", "masked", "rotation", "random_rotation")
NOISE_LEVELS = (0.0, 3.0, 6.0, 12.0)  # grey levels of the "noise" pretext's classes
NOISE_SIGMA = (0.02, 0.10)  # per-image noise level, in [0, 1] pixel units
MASK_RATIO = 0.5
# Bumped when the pretraining code changes what the same settings produce (2: zero-initialised
# pixel heads of denoise / masked), so that a cached base of older code is never reused.
PRETRAIN_CODE_VERSION = 2
_ARCH_KEYS = ("model_name", "model_cfg", "image_size", "feature", "pretrained")


def _images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: ``batch["image"]``, ``batch[0]`` or the tensor itself."""
    if isinstance(batch, Mapping):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


def _labels_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, Mapping) and "label" in batch:
        return batch["label"]
    if isinstance(batch, (list, tuple)) and len(batch) > 1:
        return batch[1]
    raise ValueError("pretext 'source' needs labelled batches ({'image', 'label'}: label = source index)")


class RealOnly:
    """Re-iterable view of a labelled loader that keeps only real images (``label == 0``), for
    data modules without a dedicated ``pretrain_dataloader()``."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            real = batch["label"] == 0
            if bool(real.any()):
                yield {"image": batch["image"][real]}


def rotation_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B,3,H,W]`` (H = W) → ``[4B,3,H,W]`` rotated by k·90° (k = 0..3, block-wise) and labels k."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation pretext needs square images, got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


def random_rotation_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B,3,H,W]`` (H = W) → each image rotated by one random k·90° (k drawn per image), labels k."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation pretext needs square images, got {tuple(images.shape[-2:])}")
    labels = torch.randint(0, 4, (images.shape[0],), generator=generator).to(images.device)
    rotated = images.clone()
    for k in range(1, 4):
        sel = labels == k
        if bool(sel.any()):
            rotated[sel] = torch.rot90(images[sel], k, dims=(2, 3))
    return rotated, labels


def _arch(model: Mapping[str, Any]) -> dict[str, Any]:
    model = to_plain(dict(model))
    unknown = set(model) - set(_ARCH_KEYS)
    if unknown:
        raise ValueError(f"model spec: unknown keys {sorted(unknown)} (allowed: {list(_ARCH_KEYS)})")
    return {k: model.get(k) for k in _ARCH_KEYS}


def _as_float(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` / ``[B,H,W,3]`` batches → normalised float (float batches pass through)."""
    if images.dtype != torch.uint8:
        return images.float()
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    x = images.float() / 255.0
    if mean is not None and std is not None:
        m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        x = (x - m) / s
    return x


def _build_lightning_module():
    import lightning as L

    class PretextModule(L.LightningModule):
        """Backbone + a throwaway linear head trained on a pretext task (see module docstring)."""

        def __init__(self, model: Mapping[str, Any], pretext: str, n_classes: int, lr: float,
                     weight_decay: float, seed: int, warmup_ratio: float = 0.05,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
            super().__init__()
            if pretext not in PRETEXTS:
                raise ValueError(f"pretext must be one of {PRETEXTS}, got {pretext!r}")
            arch = _arch(model)
            self.backbone, self.info = build_backbone(
                model_name=arch["model_name"], model_cfg=arch["model_cfg"], pretrained=arch["pretrained"],
                image_size=arch["image_size"], feature=arch["feature"] or "pooled",
            )
            if pretext in ("masked", "denoise"):
                patch = getattr(self.backbone, "patch_size", None)
                if patch is None or not hasattr(self.backbone, "output_tokens"):
                    raise ValueError("pretext 'masked' needs an open_clip VisionTransformer (patch tokens)")
                self.patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
                self.head = nn.Linear(int(self.backbone.transformer.width), 3 * self.patch * self.patch)
                # zero-initialised: the first prediction is "no noise" / "mean 0", i.e. the metric's
                # baseline (rel. L1 = 1), instead of a random one several times worse
                nn.init.zeros_(self.head.weight)
                nn.init.zeros_(self.head.bias)
            else:
                n_out = int(n_classes) if pretext == "source" else 4
                if n_out < 2:
                    raise ValueError(f"pretext {pretext!r}: need at least 2 classes, got {n_out}")
                self.head = nn.Linear(self.info.out_dim, n_out)
            self.pretext, self.lr, self.weight_decay, self.warmup_ratio = pretext, lr, weight_decay, warmup_ratio
            self.mean, self.std = mean, std
            self.rot_gen = torch.Generator().manual_seed(int(seed))
            self.history: list[dict[str, float]] = []
            self._sums = [0.0, 0, 0]
            self._n = 0

        def _inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            images = _as_float(_images_of(batch), self.mean, self.std)
            if self.pretext == "source":
                return images, _labels_of(batch).to(images.device)
            if self.pretext == "noise":
                labels = torch.randint(0, len(NOISE_LEVELS), (images.shape[0],), generator=self.rot_gen)
                levels = torch.tensor(NOISE_LEVELS)[labels].view(-1, 1, 1, 1) / 255.0
                std = torch.tensor(self.std if self.std is not None else (1.0, 1.0, 1.0)).view(1, -1, 1, 1)
                noise = levels / std * torch.randn(images.shape, generator=self.rot_gen)
                return images + noise.to(images.device), labels.to(images.device)
            if self.pretext == "rotation":
                return rotation_batch(images)
            return random_rotation_batch(images, generator=self.rot_gen)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(images))

        def masked_step(self, images: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, float, float]:
            """(loss, L1 of the prediction, L1 of the visible-mean baseline) on blanked patches."""
            b, c, h, w = images.shape
            p = self.patch
            gh, gw = h // p, w // p
            mask = torch.rand(b, gh * gw, generator=generator).to(images.device) < MASK_RATIO
            mask[:, 0] |= ~mask.any(1)  # at least one blanked patch per image
            pix = mask.view(b, 1, gh, gw).repeat_interleave(p, 2).repeat_interleave(p, 3)
            self.backbone.output_tokens = True
            try:
                _, tokens = self.backbone(images.masked_fill(pix, 0.0))
            finally:
                self.backbone.output_tokens = False
            target = images[:, :, : gh * p, : gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
            target = target.reshape(b, gh * gw, c * p * p)
            err = (self.head(tokens) - target).abs().mean(-1)
            loss = err[mask].mean()
            visible = (~pix).float()
            vmean = (images * visible).sum((2, 3)) / visible.sum((2, 3)).clamp_min(1.0)  # [B,C]
            base = (target.view(b, gh * gw, c, p * p) - vmean[:, None, :, None]).abs().mean((-1, -2))
            return loss, float(err[mask].detach().sum()), float(base[mask].detach().sum())

        def denoise_step(self, images: torch.Tensor, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, float, float]:
            """(loss, L1 of the predicted noise, L1 of predicting none) over all pixels."""
            b, c, h, w = images.shape
            p = self.patch
            gh, gw = h // p, w // p
            lo, hi = NOISE_SIGMA
            sigma = lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=generator)
            std = torch.tensor(self.std if self.std is not None else (1.0, 1.0, 1.0)).view(1, -1, 1, 1)
            noise = (sigma / std * torch.randn(images.shape, generator=generator)).to(images.device)
            self.backbone.output_tokens = True
            try:
                _, tokens = self.backbone(images + noise)
            finally:
                self.backbone.output_tokens = False
            target = noise[:, :, : gh * p, : gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
            target = target.reshape(b, gh * gw, c * p * p)
            err = (self.head(tokens) - target).abs()
            return err.mean(), float(err.detach().mean() * b), float(target.abs().mean() * b)

        def pixel_step(self, images: torch.Tensor, generator: torch.Generator | None = None):
            return (self.masked_step if self.pretext == "masked" else self.denoise_step)(images, generator)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.pretext in ("masked", "denoise"):
                images = _as_float(_images_of(batch), self.mean, self.std)
                loss, err, base = self.pixel_step(images, self.rot_gen)
                self._sums[0] += float(loss.detach()) * len(images)
                self._sums[1] += err
                self._sums[2] += base
                self._n += len(images)
                self.log("pretrain/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
                self.log("pretrain/rel_l1", err / max(base, 1e-12), prog_bar=True, on_step=True, on_epoch=False)
                return loss
            images, labels = self._inputs(batch)
            logits = self(images)
            loss = F.cross_entropy(logits, labels)
            correct = int((logits.detach().argmax(-1) == labels).sum())
            self._sums[0] += float(loss.detach()) * len(labels)
            self._sums[1] += correct
            self._sums[2] += len(labels)
            self.log("pretrain/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            self.log("pretrain/acc", correct / max(1, len(labels)), prog_bar=True, on_step=True, on_epoch=False)
            return loss

        def on_train_epoch_end(self) -> None:
            if self.pretext in ("masked", "denoise"):
                total, err, base = self._sums[:3]
                if base == 0:
                    raise ValueError("pretrain_base: the dataloader yielded no images")
                self.history.append({"epoch": int(self.current_epoch), "loss": total / max(1, self._n),
                                     "rel_l1": err / base})
                log.info("pretrain epoch %d: %s L1 / baseline %.3f", self.current_epoch, self.pretext, err / base)
                self._sums, self._n = [0.0, 0, 0], 0
                return
            total, correct, seen = self._sums
            if seen == 0:
                raise ValueError("pretrain_base: the dataloader yielded no images")
            self.history.append({"epoch": int(self.current_epoch), "loss": total / seen, "acc": correct / seen})
            log.info("pretrain epoch %d: loss %.4f, %s acc %.3f", self.current_epoch, total / seen, self.pretext,
                     correct / seen)
            self._sums = [0.0, 0, 0]

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            total = int(self.trainer.estimated_stepping_batches)
            warm = max(1, int(round(self.warmup_ratio * total)))
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [
                torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, total_iters=warm),
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warm)),
            ], milestones=[warm])
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return PretextModule


def PretextModule(*args: Any, **kwargs: Any):  # noqa: N802 - a lazily built LightningModule class
    """``PretextModule(model, pretext, n_classes, lr, weight_decay, seed, ...)`` (Lightning is
    imported on first use)."""
    return _build_lightning_module()(*args, **kwargs)


@torch.no_grad()
def evaluate_pretext(module: Any, loader: Iterable) -> float:
    """Metric of a trained :class:`PretextModule` on ``loader`` (eval mode, no augmentation):
    accuracy, or for ``masked`` the L1 relative to the visible-mean baseline (fixed masks)."""
    module.eval()
    if module.pretext in ("masked", "denoise"):
        gen = torch.Generator().manual_seed(0)
        err = base = 0.0
        for batch in loader:
            images = _as_float(_images_of(batch), module.mean, module.std).to(module.device)
            _, e, b = module.pixel_step(images, gen)
            err, base = err + e, base + b
        if base == 0:
            raise ValueError("evaluate_pretext: the loader yielded no images")
        return err / base
    correct = seen = 0
    for batch in loader:
        images, labels = module._inputs(batch)
        images = images.to(module.device)
        correct += int((module(images).argmax(-1).cpu() == labels.cpu()).sum())
        seen += len(labels)
    if seen == 0:
        raise ValueError("evaluate_pretext: the loader yielded no images")
    return correct / seen


class _Batches(torch.utils.data.IterableDataset):
    """Any re-iterable of ready batches (a list, :class:`RealOnly`, ...) as a dataset that a
    ``DataLoader(batch_size=None)`` passes through unchanged (Lightning would read a plain list
    as several dataloaders)."""

    def __init__(self, batches: Iterable) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _as_loader(loader: Iterable) -> torch.utils.data.DataLoader:
    if isinstance(loader, torch.utils.data.DataLoader):
        return loader
    return torch.utils.data.DataLoader(_Batches(loader), batch_size=None)


def _accelerator(device: str | torch.device | None) -> str:
    dev = resolve_device(device)
    return "gpu" if dev.type == "cuda" else ("mps" if dev.type == "mps" else "cpu")


def _pretrain(
    model: Mapping[str, Any],
    dataloader: Iterable,
    epochs: int,
    lr: float,
    weight_decay: float,
    seed: int,
    pretext: str,
    device: str | torch.device | None,
    max_steps: int | None,
    n_classes: int = 4,
    eval_loader: Iterable | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress_bar: bool = True,
) -> tuple[dict[str, torch.Tensor], Any, list[dict[str, float]], float | None]:
    import lightning as L

    if pretext not in PRETEXTS:
        raise ValueError(f"pretext must be one of {PRETEXTS}, got {pretext!r}")
    L.seed_everything(int(seed), workers=True, verbose=False)  # model init and head init draw from here
    if pretext == "none":  # θ0 = the random initialisation of `seed` (fixed, independent of fine-tuning seeds)
        arch = _arch(model)
        backbone, info = build_backbone(model_name=arch["model_name"], model_cfg=arch["model_cfg"],
                                        pretrained=arch["pretrained"], image_size=arch["image_size"],
                                        feature=arch["feature"] or "pooled")
        return {k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()}, info, [], None
    module = PretextModule(model, pretext, n_classes, lr, weight_decay, seed, mean=mean, std=std)
    trainer = L.Trainer(
        accelerator=_accelerator(device), devices=1, max_epochs=int(epochs),
        max_steps=-1 if max_steps is None else int(max_steps), logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress_bar, num_sanity_val_steps=0,
        limit_val_batches=0, deterministic=False,
    )
    trainer.fit(module, train_dataloaders=_as_loader(dataloader))
    if not module.history:  # max_steps stopped inside the first epoch before its end hook
        module.on_train_epoch_end()
    eval_acc = evaluate_pretext(module, eval_loader) if eval_loader is not None else None
    if eval_acc is not None:
        log.info("pretext %s %s on held-out real crops: %.3f", pretext,
                 "L1 / no-learning baseline" if pretext in ("masked", "denoise") else "accuracy", eval_acc)
    state = {k: v.detach().to("cpu", copy=True) for k, v in module.backbone.state_dict().items()}
    return state, module.info, module.history, eval_acc


def pretrain_base(
    model: Mapping[str, Any],
    dataloader: Iterable,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    pretext: str = "rotation",
    weight_decay: float = 0.05,
    device: str | torch.device | None = "cpu",
    max_steps: int | None = None,
    n_classes: int = 4,
) -> dict[str, torch.Tensor]:
    """Pretrain an open_clip visual tower on (real) images with a pretext task.

    ``model``: ``model_name``, ``model_cfg``, ``image_size``, ``feature`` (and optionally a
    ``pretrained`` starting point) as for :func:`r2m.models.build_backbone`. ``dataloader`` yields
    ``{"image": [B,3,H,W]}`` batches (with ``label`` = class index for ``pretext="source"``,
    ``n_classes`` classes). Deterministic for a fixed seed, dataloader and device. Returns the
    backbone state on CPU (keys without prefix)."""
    return _pretrain(model, dataloader, epochs, lr, weight_decay, seed, pretext, device, max_steps, n_classes)[0]


def pretrain_key(model: Mapping[str, Any], settings: Mapping[str, Any], data_identity: Any) -> str:
    """Cache key: sha256 of the canonical JSON of (architecture, pretraining settings, data identity)."""
    arch = _arch(model)
    arch["model_cfg"] = _resolve_model_cfg(arch["model_name"], arch["model_cfg"])
    if arch["image_size"] is not None:
        arch["model_cfg"]["vision_cfg"]["image_size"] = int(arch["image_size"])
    payload = {"model": arch, "pretrain": to_plain(dict(settings)), "data": to_plain(data_identity),
               "code_version": PRETRAIN_CODE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _valid_cached(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return read_metadata(path).get("format") == BASE_FORMAT
    except ValueError:
        log.warning("ignoring unreadable cached base %s", path)
        return False


def ensure_pretrained_base(
    model: Mapping[str, Any],
    dataloader: Iterable | Callable[[], Iterable],
    cache_dir: str | os.PathLike,
    data_identity: Any,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    pretext: str = "rotation",
    weight_decay: float = 0.05,
    device: str | torch.device | None = "cpu",
    max_steps: int | None = None,
    n_classes: int = 4,
) -> Path:
    """Return ``<cache_dir>/pretrained-<key>.safetensors``, pretraining it first if absent.

    ``dataloader`` may be a callable returning the loader — or a dict ``{"train": loader,
    "eval": held-out loader or None, "n_classes": int, "mean": ..., "std": ...}`` — so data is only
    touched on a cache miss. ``data_identity`` is any JSON-able value that changes when the
    pretraining images do. The file is an r2m base file (``format="r2m-base/1"``), written
    atomically under a file lock (concurrent processes, e.g. DDP ranks, pretrain once); its
    metadata records the settings, the per-epoch history, the held-out pretext accuracy and the
    data identity."""
    from filelock import FileLock

    settings = {
        "pretext": pretext, "epochs": int(epochs), "lr": float(lr), "weight_decay": float(weight_decay),
        "seed": int(seed), "max_steps": max_steps,
    }
    key = pretrain_key(model, settings, data_identity)
    path = Path(cache_dir) / f"pretrained-{key}.safetensors"
    if _valid_cached(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(os.fspath(path.with_name(path.name + ".lock"))):
        if _valid_cached(path):  # another process finished it while we waited
            return path
        if pretext == "none":  # no images needed
            loaded: Any = {"train": []}
        else:
            loaded = dataloader() if callable(dataloader) and not hasattr(dataloader, "__iter__") else dataloader
        parts = loaded if isinstance(loaded, Mapping) else {"train": loaded}
        log.info("pretraining base θ0 (%s, %d epochs) → %s", pretext, epochs, path)
        state, info, history, eval_acc = _pretrain(
            model, parts["train"], epochs, lr, weight_decay, seed, pretext, device, max_steps,
            n_classes=int(parts.get("n_classes", n_classes)), eval_loader=parts.get("eval"),
            mean=parts.get("mean"), std=parts.get("std"))
        n_out = int(parts.get("n_classes", n_classes)) if pretext == "source" else 4
        pixel = pretext in ("masked", "denoise")
        chance = 1.0 if pixel else 1.0 / n_out
        meta = {
            "model_name": info.model_name,
            "model_spec": info.spec,
            "base_source": f"pretrain:{pretext}:{key}",
            "feature": info.spec["feature"],
            "image_size": info.spec["image_size"],
            "pretrain": settings,
            "pretrain_history": history,
            "pretext_eval": {("rel_l1" if pixel else "acc"): eval_acc,
                             ("baseline" if pixel else "chance"): chance,
                             "set": parts.get("eval_name")} if eval_acc is not None else None,
            "data_identity": to_plain(data_identity),
        }
        save_base(path, state, meta)
    return path


def pretrain_from_config(cfg: Any, first_task: str) -> Path:
    """``cfg.pretrain`` (a Hydra run config) → the cached base file.

    Images: the data module's ``pretrain_dataloader(seed=...)`` (the benchmark: real crops labelled
    by source photograph; held-out accuracy on ``pretrain_eval_dataloader()``), else the real
    (label 0) training images of the first task (rotation pretexts only). The data identity is the
    data target's ``pretrain_identity(data_cfg)`` when it defines one (the benchmark: real-data
    keys only, so families, fine-tuning seeds and the carve do not change θ0), else the data config
    without its runtime keys."""
    from hydra.utils import get_method, instantiate
    from omegaconf import OmegaConf

    pre = cfg.pretrain
    model_arch = {k: OmegaConf.to_container(cfg.model, resolve=True).get(k) for k in _ARCH_KEYS}
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    target = data_cfg.get("_target_")
    ident_fn = getattr(get_method(target), "pretrain_identity", None) if target else None
    if ident_fn is not None:
        identity: Any = ident_fn(data_cfg)
    else:
        runtime = {"family", "batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers"}
        identity = {k: v for k, v in data_cfg.items() if k not in runtime}
    settings = OmegaConf.to_container(pre, resolve=True)
    cache_dir = settings.pop("cache_dir", None) or Path(cfg.paths.cache_dir) / "pretrained"
    allowed = [k for k in inspect.signature(ensure_pretrained_base).parameters
               if k not in ("model", "dataloader", "cache_dir", "data_identity", "n_classes")]
    unknown = [k for k in settings if k not in allowed]
    if unknown:
        raise ValueError(f"pretrain: unknown key(s) {unknown}; ensure_pretrained_base takes {allowed}")
    settings.setdefault("pretext", "rotation")
    settings["seed"] = int(settings.get("seed", cfg.get("seed", 0)))
    pretext, seed = settings["pretext"], settings["seed"]

    def loader():
        dm = instantiate(cfg.data, family=first_task)
        dm.prepare_data()
        dm.setup("fit")
        if hasattr(dm, "pretrain_dataloader"):
            parts = {"train": dm.pretrain_dataloader(seed=seed),
                     "n_classes": len(getattr(dm, "pretrain_classes", [])) or 4,
                     "mean": list(dm.mean), "std": list(dm.std)}
            if hasattr(dm, "pretrain_eval_dataloader"):
                parts["eval"] = dm.pretrain_eval_dataloader()
                parts["eval_name"] = "real crops of the test band (held out)"
            return parts
        if pretext == "source":
            raise ValueError(f"pretrain.pretext=source needs a data module with pretrain_dataloader() and "
                             f"pretrain_classes ({type(dm).__name__} has none); use pretext=rotation")
        return {"train": RealOnly(dm.train_dataloader()), "mean": list(dm.mean), "std": list(dm.std)}

    return Path(ensure_pretrained_base(model_arch, loader, cache_dir=cache_dir, data_identity=identity, **settings))


# ------------------------------------------------------------------------------ linear probe


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: Iterable, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen pooled features and labels of every batch of ``loader``."""
    backbone.eval()
    feats, labels = [], []
    for batch in loader:
        feats.append(backbone(_as_float(_images_of(batch), mean, std)).float())
        labels.append(_labels_of(batch))
    return torch.cat(feats), torch.cat(labels)


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 weight_decay: float = 1e-3, steps: int = 200) -> float:
    """Accuracy on ``test`` of a multinomial logistic regression fitted (L-BFGS, standardised
    features, L2 ``weight_decay``) on ``train`` features — the linear probe of a frozen encoder."""
    x, y = train
    xt, yt = test
    mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    x, xt = (x - mu) / sd, (xt - mu) / sd
    n_classes = int(max(int(y.max()), int(yt.max())) + 1)
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(-1) == yt).float().mean())
