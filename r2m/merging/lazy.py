"""Lazily loaded, read-only state dicts over safetensors files.

:class:`LazySafetensors` reads one tensor at a time through ``safetensors.safe_open``, so a merge
can stream ViT-L/14 × N specialists without holding them in memory. Shapes and dtypes are read
from the file header without loading any tensor data (used by the up-front validation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from r2m.utils import state_dict_hash

__all__ = ["LazySafetensors", "tensor_info", "content_hash"]

# safetensors dtype strings → torch dtypes (the header stores these names).
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# Content hashes of files already hashed in this process, keyed by the file's identity
# (real path, inode, size, mtime in ns) and the key prefix: a file rewritten in place gets a new
# mtime/size and is hashed again.
_HASH_MEMO: dict[tuple, str] = {}


class LazySafetensors(Mapping[str, torch.Tensor]):
    """Read-only ``Mapping[str, Tensor]`` over the tensors of a safetensors file whose names start
    with ``prefix`` (the prefix is stripped from the exposed keys).

    Each ``mapping[key]`` opens the file with ``safe_open`` and loads that one tensor (CPU);
    nothing is kept in memory. Keys keep the file's order.

    Example: ``LazySafetensors("fs.safetensors", prefix="backbone.")`` exposes
    ``transformer.resblocks.0.attn.in_proj_weight`` etc. and hides ``head.*``.
    """

    def __init__(self, path: str | os.PathLike, prefix: str = "") -> None:
        from safetensors import safe_open

        self.path = Path(path)
        self.prefix = prefix
        if not self.path.is_file():
            raise ValueError(f"LazySafetensors: no such file: {self.path}")
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                names = list(f.keys())
                self._info: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
                for name in names:
                    if not name.startswith(prefix):
                        continue
                    sl = f.get_slice(name)
                    st_dtype = sl.get_dtype()
                    if st_dtype not in _ST_DTYPES:
                        raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {st_dtype}")
                    self._info[name[len(prefix):]] = (tuple(sl.get_shape()), _ST_DTYPES[st_dtype])
                self.metadata: dict[str, str] = dict(f.metadata() or {})
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"LazySafetensors: cannot read {self.path}: {exc}") from exc
        self._keys = list(self._info)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._info:
            raise KeyError(key)
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt", device="cpu") as f:
            return f.get_tensor(self.prefix + key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._info

    def __repr__(self) -> str:
        return f"LazySafetensors({str(self.path)!r}, prefix={self.prefix!r}, {len(self)} tensors)"

    def tensor_info(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """``(shape, dtype)`` of ``key`` from the file header, without loading the tensor."""
        return self._info[key]

    def content_hash(self) -> str:
        """``r2m.utils.state_dict_hash`` of the exposed tensors (reads the file once per process;
        memoised by file identity: path, inode, size and modification time)."""
        st = self.path.stat()
        memo_key = (str(self.path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, self.prefix)
        if memo_key not in _HASH_MEMO:
            _HASH_MEMO[memo_key] = state_dict_hash(self)
        return _HASH_MEMO[memo_key]


def tensor_info(mapping: Mapping[str, torch.Tensor], key: str) -> tuple[tuple[int, ...], torch.dtype]:
    """``(shape, dtype)`` of ``mapping[key]``; from the header when the mapping is lazy."""
    info = getattr(mapping, "tensor_info", None)
    if callable(info):
        shape, dtype = info(key)
        return tuple(shape), dtype
    t = mapping[key]
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"value of {key!r} is a {type(t).__name__}, not a torch.Tensor")
    return tuple(t.shape), t.dtype


def content_hash(mapping: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict (memoised for :class:`LazySafetensors`)."""
    fn = getattr(mapping, "content_hash", None)
    if callable(fn):
        return fn()
    return state_dict_hash(mapping)
