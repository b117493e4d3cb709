"""Small shared utilities: atomic writes, content hashes, code version, seeding.

Nothing here imports Lightning, Hydra or the rest of the project.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "tensor_hash",
    "state_dict_hash",
    "file_sha256",
    "code_version",
    "resolve_device",
]


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``writer(tmp_path)`` fills a temporary file in the same
    folder, which is then renamed over ``path``. On any error the temporary file is removed
    and ``path`` is left as it was (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file (UTF-8)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (non-finite floats are written as ``null``-safe strings
    are not attempted: pass plain data)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def tensor_hash(t: torch.Tensor, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    """Feed dtype, shape and raw bytes of ``t`` into a sha256 object (created if ``h`` is None)."""
    h = h or hashlib.sha256()
    t = t.detach().contiguous().cpu()
    h.update(str(t.dtype).encode())
    h.update(json.dumps(list(t.shape)).encode())
    if t.numel():
        flat = t.reshape(-1)
        # hash the tensor's memory in place (no bytes copy)
        h.update((flat.view(torch.uint8) if flat.dtype != torch.bool else flat).numpy().data)
    return h


def state_dict_hash(state: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """Content hash of a state dict: sha256 over sorted keys, dtypes, shapes and bytes.

    Independent of key order and of the device the tensors live on; ``length`` hex digits."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        tensor_hash(state[key], h)
    return h.hexdigest()[:length]


def file_sha256(path: str | os.PathLike, length: int = 16, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (streamed), ``length`` hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:length]


def code_version() -> str:
    """The r2m version plus the git commit of the source tree when available (``0.1.0+abc1234``,
    ``+dirty`` when the tree has uncommitted changes)."""
    from r2m import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return __version__
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5,
        )
        suffix = "+dirty" if dirty.stdout.strip() else ""
        return f"{__version__}+{sha.stdout.strip()}{suffix}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; anything else → ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
