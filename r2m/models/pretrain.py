"""Self-supervised base pretraining: a shared θ0 for the built-in benchmark's specialists.

The paper's specialists all start from one pretrained CLIP; offline we cannot download CLIP, so
the built-in benchmark pretrains its small open_clip ViT once on REAL images only, with the
rotation pretext task of Gidaris et al. (ICLR 2018, "Unsupervised representation learning by
predicting image rotations"): every image is shown at 0°, 90°, 180° and 270° and a throwaway
linear head predicts which (4-way cross-entropy). The result is cached as an r2m base file keyed
by a hash of (model spec, pretraining settings, data identity), trained once and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from r2m.checkpoints import BASE_FORMAT, read_metadata, save_base
from r2m.models.backbone import _resolve_model_cfg, build_backbone, to_plain
from r2m.models.preprocess import normalize_images
from r2m.utils import resolve_device

__all__ = ["PRETEXTS", "RealOnly", "pretrain_base", "pretrain_key", "ensure_pretrained_base", "rotation_batch", "random_rotation_batch"]

log = logging.getLogger(__name__)

#: "rotation": every image in all four orientations (4 samples per image); "random_rotation": one
#: random orientation per image (a quarter of the cost per image, same task).
PRETEXTS = ("rotation", "random_rotation")
_ARCH_KEYS = ("model_name", "model_cfg", "image_size", "feature", "pretrained")


def _images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: ``batch["image"]``, ``batch[0]`` or the tensor itself."""
    if isinstance(batch, Mapping):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


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
    """``[B,3,H,W]`` (H = W) → each image rotated by one random k·90° (k drawn per image), labels k.
    A quarter of the cost of :func:`rotation_batch` per image, same pretext task."""
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
) -> tuple[dict[str, torch.Tensor], Any, list[dict[str, float]]]:
    if pretext not in PRETEXTS:
        raise ValueError(f"pretext must be one of {PRETEXTS}, got {pretext!r}")
    arch = _arch(model)
    dev = resolve_device(device)
    torch.manual_seed(seed)  # model init, head init and the loader's shuffling all draw from here
    backbone, info = build_backbone(
        model_name=arch["model_name"], model_cfg=arch["model_cfg"], pretrained=arch["pretrained"],
        image_size=arch["image_size"], feature=arch["feature"] or "pooled",
    )
    head = nn.Linear(info.out_dim, 4)
    net = nn.Sequential(backbone, head).to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    rot_gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(int(epochs)):
        total_loss, correct, seen = 0.0, 0, 0
        for batch in dataloader:
            # uint8 loader batches (the DataModules' contract) → normalised here; float ones pass through
            images = normalize_images(_images_of(batch).to(dev, non_blocking=True), info.mean, info.std)
            images, labels = (rotation_batch(images) if pretext == "rotation"
                              else random_rotation_batch(images, generator=rot_gen))
            logits = net(images)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.detach().argmax(-1) == labels).sum())
            seen += len(labels)
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        if seen == 0:
            raise ValueError("pretrain_base: the dataloader yielded no images")
        history.append({"epoch": epoch, "loss": total_loss / seen, "rotation_acc": correct / seen})
        log.info("pretrain epoch %d: loss %.4f, rotation acc %.3f", epoch, total_loss / seen, correct / seen)
        if max_steps is not None and step >= max_steps:
            break
    state = {k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()}
    return state, info, history


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
) -> dict[str, torch.Tensor]:
    """Pretrain an open_clip visual tower on (real) images with a self-supervised pretext task.

    ``model``: ``model_name``, ``model_cfg``, ``image_size``, ``feature`` (and optionally a
    ``pretrained`` starting point) as for :func:`r2m.models.build_backbone`. ``dataloader`` yields
    ``{"image": [B,3,H,W]}`` batches (tuples / bare tensors work too). Deterministic for a fixed
    seed, dataloader and device. Returns the backbone state on CPU (keys without prefix)."""
    return _pretrain(model, dataloader, epochs, lr, weight_decay, seed, pretext, device, max_steps)[0]


def pretrain_key(model: Mapping[str, Any], settings: Mapping[str, Any], data_identity: Any) -> str:
    """Cache key: sha256 of the canonical JSON of (architecture, pretraining settings, data identity)."""
    arch = _arch(model)
    arch["model_cfg"] = _resolve_model_cfg(arch["model_name"], arch["model_cfg"])
    if arch["image_size"] is not None:
        arch["model_cfg"]["vision_cfg"]["image_size"] = int(arch["image_size"])
    payload = {"model": arch, "pretrain": to_plain(dict(settings)), "data": to_plain(data_identity)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def _file_lock(path: Path):
    """Exclusive lock on ``path`` (POSIX ``flock``; a no-op where unavailable) so concurrent
    processes (e.g. DDP ranks) pretrain once and the others wait for the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
) -> Path:
    """Return ``<cache_dir>/pretrained-<key>.safetensors``, pretraining it first if absent.

    ``dataloader`` may be a callable returning the loader, so data is only touched on a cache
    miss. ``data_identity`` is any JSON-able value that changes when the pretraining images do.
    The file is an r2m base file (``format="r2m-base/1"``), written atomically; its metadata
    records the pretraining settings, the per-epoch history and the data identity."""
    settings = {
        "pretext": pretext, "epochs": int(epochs), "lr": float(lr), "weight_decay": float(weight_decay),
        "seed": int(seed), "max_steps": max_steps,
    }
    key = pretrain_key(model, settings, data_identity)
    path = Path(cache_dir) / f"pretrained-{key}.safetensors"
    if _valid_cached(path):
        return path
    with _file_lock(path.with_name(path.name + ".lock")):
        if _valid_cached(path):  # another process finished it while we waited
            return path
        loader = dataloader() if callable(dataloader) and not hasattr(dataloader, "__iter__") else dataloader
        log.info("pretraining base θ0 (%s, %d epochs) → %s", pretext, epochs, path)
        state, info, history = _pretrain(model, loader, epochs, lr, weight_decay, seed, pretext, device, max_steps)
        meta = {
            "model_name": info.model_name,
            "model_spec": info.spec,
            "base_source": f"pretrain:{pretext}:{key}",
            "feature": info.spec["feature"],
            "image_size": info.spec["image_size"],
            "pretrain": settings,
            "pretrain_history": history,
            "data_identity": to_plain(data_identity),
        }
        save_base(path, state, meta)
    return path
