"""Small shared utilities: atomic writes, content hashes, code version, device choice.

Nothing here imports Lightning, Hydra or the rest of the project; torch is imported only by the
tensor helpers (so that e.g. preprocessing workers can use the atomic writes without torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "remove_stale_temps",
    "tensor_hash",
    "state_dict_hash",
    "file_sha256",
    "code_version",
    "resolve_device",
    "to_plain",
]


_TMP_SUFFIX = ".r2m-tmp"
_cleaned_dirs: set[str] = set()


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` left in ``folder`` by killed processes:
    ``.<name>.<host>.<pid>.<token>.r2m-tmp`` whose host is this machine and whose process is gone.
    Temporaries of other hosts (shared file systems) and of live processes are kept; ``recursive``
    also searches the sub-folders. Returns the removed paths."""
    folder = Path(folder)
    host = _host()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if recursive and entry.is_dir(follow_symlinks=False):
            removed += remove_stale_temps(entry.path, recursive=True)
            continue
        if not (name.startswith(".") and name.endswith(_TMP_SUFFIX)):
            continue
        parts = name[: -len(_TMP_SUFFIX)].rsplit(".", 3)
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        _, tmp_host, pid, _ = parts
        if tmp_host != host or _pid_alive(int(pid)):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass
    return removed


def _temp_path(path: Path) -> Path:
    """Create (``O_EXCL``, mode ``0o666`` & ~umask, like any new file) and return a temporary file
    next to ``path``, named after this host and process so that a later run can tell it is stale."""
    host = _host()
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{host}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``writer(tmp_path)`` fills a temporary file in the same
    folder, which is then renamed over ``path``. On any error the temporary file is removed
    and ``path`` is left as it was (never half-written).

    The file gets the permissions of any new file (``0o666`` minus the umask). Temporaries that a
    killed process left in the folder (same host, process gone) are removed on the first write
    into that folder by a later process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.parent.resolve())
    if key not in _cleaned_dirs:
        remove_stale_temps(path.parent)
        _cleaned_dirs.add(key)
    tmp_path = _temp_path(path)
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
    import torch

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


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (streamed): the full 64 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_plain(obj: Any) -> Any:
    """OmegaConf containers / tuples → plain dicts and lists (JSON-able)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
