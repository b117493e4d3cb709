"""open_clip visual towers: build from a model name or config, load weights from a tag or a file.

The detector's head sits on the *pooled* pre-projection feature by default: ``ln_post`` of the
CLS token, i.e. HuggingFace's ``pooler_output`` (1024-d for ViT-L/14), as in DF40's CLIP detector
(deepfake.md §2.2). ``feature="pooled"`` therefore removes the visual ``proj`` (no ``proj`` key in
the state); ``feature="projected"`` keeps it (the CLIP embedding).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from r2m.utils import to_plain  # noqa: F401 - re-exported (the models' configs and files)

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "FEATURES",
    "BackboneInfo",
    "build_backbone",
    "build_backbone_from_spec",
    "read_weight_file",
    "load_backbone_weights",
    "to_plain",
]

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FEATURES = ("pooled", "projected")
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass
class BackboneInfo:
    """What a built backbone is. ``spec`` (JSON-able) rebuilds the same architecture with
    :func:`build_backbone_from_spec`; ``mean``/``std`` are the input statistics that belong to the
    weights (open_clip's pretrained config for a tag, else OpenAI CLIP's); ``base_source`` is the
    tag or file the weights came from (``None`` for random init)."""

    model_name: str
    spec: dict[str, Any]
    out_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    base_source: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d




def _looks_like_path(pretrained: str) -> bool:
    return pretrained.endswith(_FILE_SUFFIXES) or os.sep in pretrained or Path(pretrained).is_file()


def _resolve_model_cfg(model_name: str | None, model_cfg: Mapping | None) -> dict[str, Any]:
    if model_cfg is not None:
        cfg = copy.deepcopy(to_plain(model_cfg))
    else:
        if not model_name:
            raise ValueError("build_backbone: give a model_name (open_clip model) or a model_cfg")
        import open_clip

        cfg = open_clip.get_model_config(model_name.replace("/", "-"))
        if cfg is None:
            raise ValueError(
                f"unknown open_clip model name {model_name!r}; pass model_cfg for a custom architecture "
                f"(known names: open_clip.list_models())"
            )
        cfg = to_plain(cfg)
    if "vision_cfg" not in cfg or "embed_dim" not in cfg:
        raise ValueError(f"model_cfg for {model_name!r} needs 'embed_dim' and 'vision_cfg' (got keys {sorted(cfg)})")
    cfg.pop("text_cfg", None)  # only the visual tower is built
    cfg.pop("custom_text", None)
    return cfg


def read_weight_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weight file into ``(state_dict, metadata)``.

    ``.safetensors`` via safetensors (metadata decoded when it is an r2m file); ``.pt``/``.pth``/
    ``.bin``/``.ckpt`` via ``torch.load(weights_only=True)`` (``{"state_dict": …}`` wrappers and
    ``module.`` prefixes are unwrapped); a TorchScript archive (OpenAI's original CLIP ``.pt``) via
    ``torch.jit.load`` (no pickled Python is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from r2m.checkpoints import read_metadata
        from safetensors.torch import load_file

        meta = read_metadata(path)
        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:
            raise ValueError(f"{path}: corrupt safetensors file ({err})") from err
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            import zipfile

            if zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist()):
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            else:
                raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True): {err}") from err
        if isinstance(obj, Mapping) and "r2m_meta" in obj:
            meta = dict(obj["r2m_meta"])
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
        state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, meta


def _visual_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the visual tower's tensors: ``visual.*`` of a full CLIP, ``backbone.*`` of an r2m
    file, or the whole dict when it is already visual-only."""
    for prefix in ("visual.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _resize_pos_embed(state: dict[str, torch.Tensor], visual: nn.Module) -> None:
    """Interpolate a checkpoint's position embeddings to this tower's grid (e.g. 224 → 64 px)."""
    pe = state.get("positional_embedding")
    own = getattr(visual, "positional_embedding", None)
    if pe is None or own is None or pe.shape == own.shape:
        return
    from open_clip.model import resize_pos_embed

    wrapped = {"visual.positional_embedding": pe}
    resize_pos_embed(wrapped, SimpleNamespace(visual=visual))
    state["positional_embedding"] = wrapped["visual.positional_embedding"]


def load_backbone_weights(visual: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a visual-tower state strictly; raise ``ValueError`` naming ``source`` and listing the
    missing / unexpected keys (and shape mismatches)."""
    state = dict(state)
    _resize_pos_embed(state, visual)
    own = visual.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        def _short(keys: list[str]) -> str:
            return f"{keys[:8]}{' …(+%d)' % (len(keys) - 8) if len(keys) > 8 else ''}"

        raise ValueError(
            f"weights from {source} do not match the backbone: missing keys {_short(missing)}, "
            f"unexpected keys {_short(unexpected)}, shape mismatches {_short(wrong)}"
        )
    visual.load_state_dict(state, strict=True)


def build_backbone(
    model_name: str | None = "ViT-B-16",
    model_cfg: Mapping | None = None,
    pretrained: str | None = None,
    image_size: int | None = None,
    feature: str = "pooled",
) -> tuple[nn.Module, BackboneInfo]:
    """Build an open_clip visual tower (the text tower is never built) and load its weights.

    Args:
        model_name: an open_clip model name (``ViT-B-16``, ``ViT-L-14-quickgelu``, …); also the
            display name when ``model_cfg`` is given.
        model_cfg: an open_clip CLIP config dict (``embed_dim``, ``vision_cfg``, optional
            ``quick_gelu``; ``text_cfg`` is ignored) for custom / tiny architectures.
        pretrained: ``None`` (random init from the global RNG), an open_clip tag (``"openai"``), or
            a ``.safetensors``/``.pt`` file holding a full CLIP state (``visual.*``), a visual-only
            state, or an r2m base/specialist file (``backbone.*``). Loaded strictly.
        image_size: overrides ``vision_cfg.image_size`` (position embeddings of loaded weights are
            interpolated to the new grid).
        feature: ``"pooled"`` (``ln_post`` of CLS, no ``proj``) or ``"projected"``.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    cfg = _resolve_model_cfg(model_name, model_cfg)
    name = model_name or "custom"
    tag_cfg: dict[str, Any] = {}
    if pretrained is not None:
        pretrained = str(pretrained)
        if _looks_like_path(pretrained):
            if not Path(pretrained).is_file():
                raise FileNotFoundError(f"pretrained weight file not found: {pretrained}")
        else:
            from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

            tag_cfg = dict(get_pretrained_cfg(name, pretrained))
            if not tag_cfg:
                raise ValueError(
                    f"pretrained={pretrained!r} is neither an existing file nor an open_clip tag of model "
                    f"{name!r} (tags: {list_pretrained_tags_by_model(name)})"
                )
            if tag_cfg.get("quick_gelu", False) and not cfg.get("quick_gelu", False):
                log.info("tag %r was trained with QuickGELU: enabling quick_gelu for %s", pretrained, name)
                cfg["quick_gelu"] = True
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = int(image_size)

    from open_clip.model import _build_vision_tower

    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    proj = getattr(visual, "proj", None)
    if feature == "pooled":
        if not isinstance(proj, torch.Tensor):
            raise ValueError(f"feature='pooled' needs an open_clip VisionTransformer with a 'proj' parameter ({name})")
        out_dim = int(proj.shape[0])
        visual.proj = None
    else:
        out_dim = int(proj.shape[1]) if isinstance(proj, torch.Tensor) else int(cfg["embed_dim"])

    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    if pretrained is not None:
        if tag_cfg:
            from open_clip.factory import load_state_dict
            from open_clip.pretrained import download_pretrained

            try:
                checkpoint = download_pretrained(tag_cfg)
            except Exception as err:
                raise RuntimeError(
                    f"could not obtain weights for {name!r} tag {pretrained!r} ({type(err).__name__}: {err}). "
                    "Offline? Point `pretrained` at a local .safetensors/.pt file instead."
                ) from err
            if not checkpoint:
                raise RuntimeError(f"open_clip could not provide weights for {name!r} tag {pretrained!r}")
            state, file_meta = load_state_dict(checkpoint, weights_only=True), {}
            mean = tuple(tag_cfg.get("mean", mean))
            std = tuple(tag_cfg.get("std", std))
        else:
            state, file_meta = read_weight_file(pretrained)
            if file_meta.get("mean") and file_meta.get("std"):
                mean, std = tuple(file_meta["mean"]), tuple(file_meta["std"])
        state = _visual_keys(state)
        if feature == "pooled":
            state.pop("proj", None)
        load_backbone_weights(visual, state, source=f"{name} pretrained={pretrained!r}")

    size = cfg["vision_cfg"].get("image_size", 224)
    spec = {
        "model_name": name,
        "model_cfg": cfg,
        "image_size": list(size) if isinstance(size, (list, tuple)) else int(size),
        "feature": feature,
    }
    info = BackboneInfo(
        model_name=name,
        spec=spec,
        out_dim=out_dim,
        mean=tuple(float(x) for x in mean),
        std=tuple(float(x) for x in std),
        base_source=pretrained,
    )
    return visual, info


def build_backbone_from_spec(spec: Mapping[str, Any], pretrained: str | None = None) -> tuple[nn.Module, BackboneInfo]:
    """Rebuild the architecture described by ``BackboneInfo.spec`` (random init unless ``pretrained``)."""
    spec = to_plain(spec)
    return build_backbone(
        model_name=spec.get("model_name"),
        model_cfg=spec.get("model_cfg"),
        pretrained=pretrained,
        image_size=spec.get("image_size"),
        feature=spec.get("feature", "pooled"),
    )
