"""Specialist, base and merged model files: safetensors + string metadata (docs/architecture.md §2).

Tensor keys are ``backbone.<open_clip visual-tower key>`` and, for specialists and merged models,
``head.weight`` / ``head.bias``. Every metadata value is stored JSON-encoded (``json.dumps``), so
numbers, lists and dicts survive the round trip; :func:`read_metadata` decodes them.

Only safetensors is written. ``.pt``/``.pth``/``.ckpt`` inputs are read with
``torch.load(weights_only=True)`` (a Lightning checkpoint of :class:`r2m.models.DeepfakeDetector`
carries its r2m metadata under ``checkpoint["r2m_meta"]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from r2m.utils import atomic_write, code_version, file_sha256, state_dict_hash  # noqa: F401  (file_sha256: 64 hex)

__all__ = [
    "SPECIALIST_FORMAT",
    "BASE_FORMAT",
    "MERGED_FORMAT",
    "REQUIRED_KEYS",
    "LoadedCheckpoint",
    "save_specialist",
    "save_base",
    "save_merged",
    "read_metadata",
    "load_checkpoint",
    "verify_specialists",
    "find_base",
    "base_filename",
    "file_sha256",
    "file_kind",
    "file_families",
]

SPECIALIST_FORMAT = "r2m-specialist/1"
BASE_FORMAT = "r2m-base/1"
MERGED_FORMAT = "r2m-merged/1"
BACKBONE_PREFIX = "backbone."
HEAD_PREFIX = "head."

#: metadata keys every file of a format must carry
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    SPECIALIST_FORMAT: ("format", "model_name", "model_spec", "base_hash", "task"),
    BASE_FORMAT: ("format", "model_name", "model_spec", "base_hash"),
    MERGED_FORMAT: ("format", "model_name", "model_spec", "base_hash"),
}
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


@dataclass
class LoadedCheckpoint:
    """A file read by :func:`load_checkpoint`: decoded metadata, backbone state (keys without the
    ``backbone.`` prefix) and head state (``{"weight", "bias"}``) or ``None`` for a base file."""

    path: Path
    meta: dict[str, Any]
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.path)


def base_filename(base_hash: str) -> str:
    """File name of a saved base θ0: ``base-<base_hash>.safetensors``."""
    return f"base-{base_hash}.safetensors"


def file_families(meta: Mapping[str, Any]) -> list[str]:
    """Families a file was trained on: metadata ``families``; for files written before that key,
    ``config.data.family`` / ``task`` (``joint`` → the config's family table, else one family)."""
    fams = meta.get("families")
    if isinstance(fams, (list, tuple)) and fams:
        return [str(f) for f in fams]
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    family = data.get("family") or meta.get("task")
    if family == "joint":
        table = data.get("families") if isinstance(data.get("families"), Mapping) else {}
        return sorted(k for k in table if k != "joint") or ["joint"]
    return [str(family)] if family else []


def file_kind(meta: Mapping[str, Any]) -> str:
    """``specialist`` | ``joint`` | ``merged`` | ``base`` | ``unknown`` from a file's metadata."""
    fmt = meta.get("format")
    if fmt == MERGED_FORMAT or meta.get("kind") == "merged":
        return "merged"
    if fmt == BASE_FORMAT:
        return "base"
    if fmt != SPECIALIST_FORMAT:
        return "unknown"
    if meta.get("kind") in ("specialist", "joint"):
        return str(meta["kind"])
    fams = file_families(meta)
    if len(fams) > 1 or fams == ["joint"] or meta.get("task") == "joint":
        return "joint"
    return "specialist"



# ------------------------------------------------------------------------------------- writing


def _encode_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in meta.items():
        try:
            out[str(key)] = json.dumps(value, sort_keys=True, allow_nan=True)
        except TypeError as err:
            raise TypeError(f"metadata key {key!r}: value of type {type(value).__name__} is not JSON-able") from err
    return out


def _tensors_for_file(
    backbone_state: Mapping[str, torch.Tensor], head_state: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, value in backbone_state.items():
        if key.startswith(BACKBONE_PREFIX):
            raise ValueError(f"backbone_state key {key!r} already carries the {BACKBONE_PREFIX!r} prefix; pass keys without it")
        tensors[BACKBONE_PREFIX + key] = value
    for key, value in (head_state or {}).items():
        tensors[HEAD_PREFIX + key] = value
    # safetensors needs contiguous CPU tensors that do not share storage
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _complete_meta(meta: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    full = dict(meta)
    if full.get("format", fmt) != fmt:
        raise ValueError(f"metadata format {full['format']!r} does not match the writer ({fmt!r})")
    full["format"] = fmt
    full.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    full.setdefault("code_version", code_version())
    missing = [k for k in REQUIRED_KEYS[fmt] if full.get(k) is None]
    if missing:
        raise ValueError(f"cannot write a {fmt} file: metadata keys missing: {missing}")
    if isinstance(full.get("model_spec"), str):  # accept a JSON string too
        full["model_spec"] = json.loads(full["model_spec"])
    return full


def _save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    encoded = _encode_meta(meta)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=encoded))


def save_specialist(
    path: str | os.PathLike,
    backbone_state: Mapping[str, torch.Tensor],
    head_state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> Path:
    """Atomically write a specialist file (``format="r2m-specialist/1"``).

    ``meta`` must hold at least ``model_name``, ``model_spec``, ``base_hash`` and ``task``;
    ``created`` and ``code_version`` are filled in when absent."""
    if not head_state:
        raise ValueError(f"{path}: a specialist needs a head state (head.weight / head.bias)")
    return _save(path, _tensors_for_file(backbone_state, head_state), _complete_meta(meta, SPECIALIST_FORMAT))


def save_merged(
    path: str | os.PathLike,
    backbone_state: Mapping[str, torch.Tensor],
    head_state: Mapping[str, torch.Tensor] | None,
    meta: Mapping[str, Any],
) -> Path:
    """Atomically write a merged model (``format="r2m-merged/1"``)."""
    return _save(path, _tensors_for_file(backbone_state, head_state), _complete_meta(meta, MERGED_FORMAT))


def save_base(path: str | os.PathLike, backbone_state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Atomically write a base θ0 (``format="r2m-base/1"``, backbone only).

    ``base_hash`` is computed from ``backbone_state``; a ``base_hash`` given in ``meta`` must agree."""
    digest = state_dict_hash(backbone_state)
    given = meta.get("base_hash")
    if given is not None and given != digest:
        raise ValueError(f"{path}: meta base_hash {given!r} differs from the hash of the given state ({digest!r})")
    full = dict(meta)
    full["base_hash"] = digest
    return _save(path, _tensors_for_file(backbone_state, None), _complete_meta(full, BASE_FORMAT))


# ------------------------------------------------------------------------------------- reading


def _decode_meta(raw: Mapping[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value  # a foreign file with plain-string metadata
    return out


def _check_meta(path: Path, meta: Mapping[str, Any], formats: Iterable[str] | None) -> None:
    fmt = meta.get("format")
    if fmt not in REQUIRED_KEYS:
        raise ValueError(
            f"{path}: not an r2m model file (metadata 'format' is {fmt!r}; expected one of {sorted(REQUIRED_KEYS)})"
        )
    if formats is not None and fmt not in set(formats):
        raise ValueError(f"{path}: wrong format {fmt!r}; expected one of {sorted(formats)}")
    missing = [k for k in REQUIRED_KEYS[fmt] if meta.get(k) is None]
    if missing:
        raise ValueError(f"{path}: metadata keys missing for {fmt}: {missing}")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Decoded metadata of a safetensors file (no tensors are read).

    Raises ``FileNotFoundError`` or ``ValueError`` (file named) for a missing, non-safetensors or
    corrupt file. No format check: use :func:`load_checkpoint` for that."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return _decode_meta(f.metadata())
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err


def _split_state(path: Path, state: Mapping[str, torch.Tensor]):
    backbone, head, extra = {}, {}, {}
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIX):
            backbone[key[len(BACKBONE_PREFIX):]] = value
        elif key.startswith(HEAD_PREFIX):
            head[key[len(HEAD_PREFIX):]] = value
        else:
            extra[key] = value
    if not backbone:
        raise ValueError(f"{path}: no '{BACKBONE_PREFIX}*' tensors found")
    return backbone, (head or None), extra


def _load_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True): {err}") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    meta = dict(obj.get("r2m_meta") or {})
    state = obj.get("state_dict", obj)
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not meta:
        raise ValueError(f"{path}: no r2m metadata ('r2m_meta') in this torch checkpoint")
    return state, meta


def load_checkpoint(
    path: str | os.PathLike, formats: Iterable[str] | None = None, map_location: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Read a specialist / base / merged file (safetensors; or a DeepfakeDetector Lightning
    checkpoint via ``torch.load(weights_only=True)``).

    ``formats`` restricts the accepted ``format`` values. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix in _TORCH_SUFFIXES:
        state, meta = _load_torch_file(path)
    else:
        from safetensors.torch import load_file

        meta = read_metadata(path)
        try:
            state = load_file(str(path), device=str(map_location))
        except Exception as err:
            raise ValueError(f"{path}: corrupt safetensors file ({type(err).__name__}: {err})") from err
    _check_meta(path, meta, formats)
    if isinstance(meta.get("model_spec"), str):
        meta["model_spec"] = json.loads(meta["model_spec"])
    backbone, head, extra = _split_state(path, state)
    if meta["format"] == SPECIALIST_FORMAT and head is None:
        raise ValueError(f"{path}: a specialist file without '{HEAD_PREFIX}*' tensors")
    if map_location != "cpu":
        backbone = {k: v.to(map_location) for k, v in backbone.items()}
        head = {k: v.to(map_location) for k, v in head.items()} if head else head
    return LoadedCheckpoint(path=path, meta=meta, backbone=backbone, head=head, extra=extra)


# -------------------------------------------------------------------------------- verification


def _as_loaded(item: str | os.PathLike | LoadedCheckpoint) -> LoadedCheckpoint:
    return item if isinstance(item, LoadedCheckpoint) else load_checkpoint(item)


def _check_finite(name: str, part: str, state: Mapping[str, torch.Tensor]) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: tensor {part}{key} has non-finite values (NaN/Inf)")


def _compare_states(ref_name: str, name: str, part: str, ref: Mapping, other: Mapping) -> None:
    missing = sorted(set(ref) - set(other))
    unexpected = sorted(set(other) - set(ref))
    if missing or unexpected:
        raise ValueError(
            f"{name}: {part}keys differ from {ref_name}: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    for key in ref:
        a, b = ref[key], other[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{name}: tensor {part}{key} is {tuple(b.shape)} {b.dtype}, but {ref_name} has {tuple(a.shape)} {a.dtype}"
            )


def verify_specialists(
    paths_or_loaded: Sequence[str | os.PathLike | LoadedCheckpoint],
    base: str | os.PathLike | LoadedCheckpoint | Mapping[str, torch.Tensor] | None = None,
) -> list[LoadedCheckpoint]:
    """Check that specialists can be merged: same ``model_name`` and ``model_spec``, same
    ``base_hash``, identical backbone/head keys, shapes and dtypes, all tensors finite; with
    ``base`` (file, loaded file or backbone state dict) also that its content hash equals the
    specialists' ``base_hash`` and its keys/shapes match. Raises ``ValueError`` naming the file and
    key at fault; returns the loaded checkpoints."""
    if not paths_or_loaded:
        raise ValueError("verify_specialists: no specialists given")
    loaded = [_as_loaded(p) for p in paths_or_loaded]
    ref = loaded[0]
    for ck in loaded:
        _check_finite(ck.name, BACKBONE_PREFIX, ck.backbone)
        _check_finite(ck.name, HEAD_PREFIX, ck.head or {})
    for ck in loaded[1:]:
        for key in ("model_name", "model_spec", "base_hash"):
            if ck.meta.get(key) != ref.meta.get(key):
                raise ValueError(
                    f"{ck.name}: metadata {key!r} = {ck.meta.get(key)!r} differs from {ref.name} ({ref.meta.get(key)!r})"
                )
        _compare_states(ref.name, ck.name, BACKBONE_PREFIX, ref.backbone, ck.backbone)
        if (ref.head is None) != (ck.head is None):
            raise ValueError(f"{ck.name}: head presence differs from {ref.name}")
        if ref.head is not None:
            _compare_states(ref.name, ck.name, HEAD_PREFIX, ref.head, ck.head)
    if base is not None:
        if isinstance(base, Mapping):
            base_name, base_state = "base state", dict(base)
        else:
            base_ck = _as_loaded(base)
            base_name, base_state = base_ck.name, base_ck.backbone
        _check_finite(base_name, BACKBONE_PREFIX, base_state)
        _compare_states(ref.name, base_name, BACKBONE_PREFIX, ref.backbone, base_state)
        digest = state_dict_hash(base_state)
        for ck in loaded:
            if ck.meta.get("base_hash") != digest:
                raise ValueError(
                    f"{ck.name}: metadata 'base_hash' = {ck.meta.get('base_hash')!r} but the base "
                    f"({base_name}) hashes to {digest!r}"
                )
    return loaded


def find_base(specialist_meta: Mapping[str, Any], search_dirs: Iterable[str | os.PathLike]) -> Path | None:
    """Locate the base θ0 of a specialist: ``<dir>/base-<base_hash>.safetensors`` in the first of
    ``search_dirs`` that has it; else ``base_source`` when it is an r2m base file with the same
    hash; else ``None``."""
    base_hash = specialist_meta.get("base_hash")
    if not base_hash:
        raise ValueError("find_base: specialist metadata has no 'base_hash'")
    for directory in search_dirs:
        if directory is None:
            continue
        candidate = Path(directory) / base_filename(base_hash)
        if candidate.is_file():
            return candidate
    source = specialist_meta.get("base_source")
    if isinstance(source, str) and source.endswith(".safetensors") and Path(source).is_file():
        try:
            meta = read_metadata(source)
        except ValueError:
            return None
        if meta.get("format") == BASE_FORMAT and meta.get("base_hash") == base_hash:
            return Path(source)
    return None

