"""Task-vector streaming, input validation and tensor selection shared by every merge method.

:class:`TaskSet` wraps θ0 and the N specialists (plain dicts or lazy mappings such as
:class:`~r2m.merging.lazy.LazySafetensors`). It validates keys, shapes and dtypes up front from
metadata, then hands out task vectors τ_i[l] = θ_i[l] − θ0[l] one tensor l at a time, checking
each loaded tensor for NaN/Inf. A method therefore holds at most the N slices of the tensor being
processed plus its own small statistics.

Tensor classes (open_clip visual-tower keys, no prefix):

* *matrix tensors*: every 2-D tensor (attention/MLP weights, ``positional_embedding``, ``proj``).
* *block matrices*: the 2-D tensors whose key matches ``block_pattern``; by default the four
  transformer-block weights ``transformer.resblocks.<i>.attn.in_proj_weight``,
  ``…attn.out_proj.weight``, ``…mlp.c_fc.weight``, ``…mlp.c_proj.weight`` (the CART rule of
  "2-D ``attn``/``mlp`` weights, no LayerNorm, no bias"). Override with any regular expression
  (``re.search`` semantics), e.g. for other naming schemes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from r2m.merging.lazy import content_hash, tensor_info
from r2m.utils import resolve_device

__all__ = ["DEFAULT_BLOCK_PATTERN", "TaskSet"]

DEFAULT_BLOCK_PATTERN = (
    r"^transformer\.resblocks\.\d+\.(attn\.in_proj_weight|attn\.out_proj\.weight"
    r"|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$"
)

_MAX_LISTED = 5


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")


class TaskSet:
    """Validated θ0 + N specialists; streams task vectors per tensor (see module docstring).

    Args:
        base: θ0, mapping key → tensor.
        specialists: N ≥ 1 mappings with the same keys, shapes and dtypes.
        names: human-readable specialist names for error messages (default ``specialist[i]``).
        device: where the arithmetic runs (default: CUDA when available).
        dtype: working dtype of the element-wise arithmetic (float32 or float64).
        block_pattern: regular expression selecting the block matrices (default
            :data:`DEFAULT_BLOCK_PATTERN`).
        progress: show a progress bar per pass (tqdm).
        resident: keep θ0 and the task-vector slices on the device after their first load
            (saves host→device copies in multi-pass methods). ``None``: only on CUDA and only when
            they fit in half of the free device memory.
        base_hash, task_hashes: content identities used as cache keys; computed when needed
            (``r2m.utils.state_dict_hash``) if not given.
    """

    def __init__(
        self,
        base: Mapping[str, Tensor],
        specialists: Sequence[Mapping[str, Tensor]],
        *,
        names: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        block_pattern: str | None = None,
        progress: bool = False,
        resident: bool | None = None,
        base_hash: str | None = None,
        task_hashes: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(base, Mapping):
            raise ValueError(f"base must be a mapping name → tensor, got {type(base).__name__}")
        if isinstance(specialists, Mapping) or not isinstance(specialists, Sequence):
            raise ValueError("specialists must be a sequence of mappings (one per specialist)")
        self.n = len(specialists)
        if self.n == 0:
            raise ValueError("need at least one specialist (N = 0)")
        if names is None:
            names = [f"specialist[{i}]" for i in range(self.n)]
        elif isinstance(names, str) or len(names) != self.n:
            raise ValueError(f"names must list one name per specialist ({self.n}), got {names!r}")
        self.names = [str(x) for x in names]
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.dtype = dtype
        self.device = resolve_device(device)
        self.base = base
        self.specialists = list(specialists)
        for i, sp in enumerate(self.specialists):
            if not isinstance(sp, Mapping):
                raise ValueError(f"{self.label(i)} is a {type(sp).__name__}, not a mapping name → tensor")
        self.progress = progress
        self._validate_metadata()
        pattern = DEFAULT_BLOCK_PATTERN if block_pattern is None else block_pattern
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"block_pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        self.block_pattern = pattern
        self.block_keys = [k for k in self.keys if rx.search(k)]
        bad = [k for k in self.block_keys if len(self.shapes[k]) != 2]
        if bad:
            raise ValueError(f"block_pattern {pattern!r} selects non-matrix tensors: {_listing(bad)}")
        self._block_set = set(self.block_keys)
        self._checked: set[tuple[int, str]] = set()
        if resident is None:
            resident = self.device.type == "cuda" and self._fits_on_device()
        self.resident = resident
        self._resident_base: dict[str, Tensor] = {}
        self._resident_tasks: dict[str, Tensor] = {}
        self._scratch: dict[tuple[str, torch.dtype], Tensor] = {}
        self._resident_specs: dict[tuple[int, str], Tensor] = {}
        if task_hashes is not None and (isinstance(task_hashes, str) or len(task_hashes) != self.n):
            raise ValueError(f"task_hashes must list one hash per specialist ({self.n})")
        self._base_hash = base_hash
        self._task_hashes = list(task_hashes) if task_hashes is not None else None

    # ------------------------------------------------------------------ validation
    def label(self, i: int) -> str:
        """Name of input ``i`` for messages: ``base`` for -1, else the specialist's name."""
        if i < 0:
            return "base"
        name = self.names[i]
        return name if name == f"specialist[{i}]" else f"specialist {name!r} (#{i})"

    def _validate_metadata(self) -> None:
        self.keys: list[str] = list(self.base.keys())
        if not self.keys:
            raise ValueError("base has no tensors")
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for key in self.keys:
            shape, dt = tensor_info(self.base, key)
            if not dt.is_floating_point:
                raise ValueError(f"base: tensor {key!r} has non-floating dtype {dt}; only floating tensors are merged")
            self.shapes[key], self.dtypes[key] = shape, dt
        base_keys = set(self.keys)
        for i, sp in enumerate(self.specialists):
            keys = set(sp.keys())
            missing, extra = base_keys - keys, keys - base_keys
            if missing:
                raise ValueError(f"{self.label(i)}: missing tensors present in base: {_listing(missing)}")
            if extra:
                raise ValueError(f"{self.label(i)}: extra tensors not in base: {_listing(extra)}")
            for key in self.keys:
                shape, dt = tensor_info(sp, key)
                if shape != self.shapes[key]:
                    raise ValueError(
                        f"{self.label(i)}: tensor {key!r} has shape {tuple(shape)}, base has {self.shapes[key]}"
                    )
                if dt != self.dtypes[key]:
                    raise ValueError(f"{self.label(i)}: tensor {key!r} has dtype {dt}, base has {self.dtypes[key]}")

    def _fits_on_device(self) -> bool:
        try:
            free, _ = torch.cuda.mem_get_info(self.device)
        except Exception:
            return False
        numel = sum(self.numel(k) for k in self.keys)
        return (self.n + 1) * numel * torch.finfo(self.dtype).bits // 8 < 0.5 * free

    # ------------------------------------------------------------------ tensor classes
    def numel(self, key: str) -> int:
        n = 1
        for d in self.shapes[key]:
            n *= d
        return n

    @property
    def total_numel(self) -> int:
        """D: the number of merged parameters."""
        return sum(self.numel(k) for k in self.keys)

    def is_matrix(self, key: str) -> bool:
        return len(self.shapes[key]) == 2

    def is_block(self, key: str) -> bool:
        return key in self._block_set

    def require_blocks(self, method: str) -> None:
        """Raise when ``block_pattern`` selects nothing (likely a naming mismatch)."""
        if not self.block_keys:
            raise ValueError(
                f"{method}: block_pattern {self.block_pattern!r} matches no 2-D tensor of the base "
                f"(keys look like {_listing(self.keys)}); pass block_pattern= for other naming schemes"
            )

    # ------------------------------------------------------------------ streaming
    def keys_loop(self, keys: Iterable[str] | None = None, desc: str = "") -> Iterator[str]:
        keys = list(self.keys if keys is None else keys)
        if not self.progress:
            return iter(keys)
        from tqdm.auto import tqdm

        return iter(tqdm(keys, desc=desc, leave=False))

    def _load(self, i: int, key: str, check: bool = True) -> Tensor:
        src = self.base if i < 0 else self.specialists[i]
        t = src[key]
        if not isinstance(t, Tensor):
            raise ValueError(f"{self.label(i)}: value of {key!r} is a {type(t).__name__}, not a tensor")
        t = t.to(device=self.device, dtype=self.dtype)
        if check and (i, key) not in self._checked:
            # a sum is finite only if every entry is (NaN/Inf propagate); exact check if it is not
            if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{self.label(i)}: tensor {key!r} contains NaN or Inf")
            self._checked.add((i, key))
        return t

    def _recheck(self, key: str) -> None:
        """Check every input's ``key`` for NaN/Inf (base first, then the specialists in order, as
        :meth:`task_vectors` loads them): raises naming the first offender, else marks them checked."""
        for i in range(-1, self.n):
            self._load(i, key)

    def scratch(self, slot: str, numel: int, dtype: torch.dtype | None = None) -> Tensor:
        """A 1-D work buffer of ``numel`` entries on the device, reused across calls with the same
        ``slot`` (grown when too small; contents undefined). Saves the page faults of a fresh
        allocation per tensor; a caller must not hold two views of one slot at once."""
        dtype = self.dtype if dtype is None else dtype
        buf = self._scratch.get((slot, dtype))
        if buf is None or buf.numel() < numel:
            self._scratch.pop((slot, dtype), None)
            buf = torch.empty(numel, dtype=dtype, device=self.device)
            self._scratch[(slot, dtype)] = buf
        return buf[:numel]

    def release_scratch(self) -> None:
        """Drop the :meth:`scratch` buffers."""
        self._scratch.clear()

    def specialist_tensor(self, i: int, key: str) -> Tensor:
        """θ_i[key] on the device in the working dtype (checked for NaN/Inf). May share memory with
        the input: never modify it in place. Kept on the device when ``resident``."""
        t = self._resident_specs.get((i, key))
        if t is None:
            t = self._load(i, key)
            if self.resident:
                self._resident_specs[(i, key)] = t
        return t

    def base_tensor(self, key: str) -> Tensor:
        """θ0[key] on the device in the working dtype. May share memory with the input: never
        modify it in place."""
        if key in self._resident_base:
            return self._resident_base[key]
        t = self._load(-1, key)
        if self.resident:
            self._resident_base[key] = t
        return t

    def task_vectors(self, key: str, scratch: bool = False) -> Tensor:
        """Stack of τ_i[key] = θ_i[key] − θ0[key], shape (N, *shape), working dtype, device.
        ``scratch``: written into a reused buffer (:meth:`scratch`, slot ``"task_vectors"``), valid
        until the next such call — for a caller that only reads it before asking for the next key."""
        if key in self._resident_tasks:
            return self._resident_tasks[key]
        base = self.base_tensor(key)
        if scratch and not self.resident:
            taus = self.scratch("task_vectors", self.n * base.numel()).view(self.n, *base.shape)
        else:
            taus = torch.empty((self.n, *base.shape), dtype=self.dtype, device=self.device)
        for i in range(self.n):
            torch.sub(self._load(i, key), base, out=taus[i])
        if self.resident:
            self._resident_tasks[key] = taus
        return taus

    def task_vector_sum(self, key: str) -> Tensor:
        """Σ_i τ_i[key] as a fresh tensor the caller owns (working dtype, device): summed in the order
        i = 0, 1, …, N − 1, so bit-identical to ``task_vectors(key).sum(0)`` on CPU, without the
        N-stack (one reused scratch buffer for the τ_i after the first).

        The NaN/Inf check of the N + 1 inputs is fused into one check of the sum: a non-finite
        entry in any input makes that entry of the sum non-finite (NaN and ±Inf propagate,
        Inf − Inf is NaN), so a finite sum proves every input finite. Only when the sum is not
        finite are the inputs re-scanned one by one, raising ``ValueError`` naming the first
        offending checkpoint and the tensor, exactly as the per-input check does (a sum that
        overflowed from finite inputs is returned as is, as before)."""
        if self.resident or key in self._resident_tasks:
            return self.task_vectors(key).sum(0)
        checked = all((i, key) in self._checked for i in range(-1, self.n))
        base = self._load(-1, key, check=False)
        acc = torch.empty(base.shape, dtype=self.dtype, device=self.device)
        torch.sub(self._load(0, key, check=False), base, out=acc)
        if self.n > 1:
            tmp = self.scratch("task_vector_sum", acc.numel()).view(acc.shape)
            for i in range(1, self.n):
                torch.sub(self._load(i, key, check=False), base, out=tmp)
                acc.add_(tmp)
        if not checked:
            if bool(torch.isfinite(acc.sum())) or bool(torch.isfinite(acc).all()):
                self._checked.update((i, key) for i in range(-1, self.n))
            else:
                self._recheck(key)
        return acc

    def task_vector_into(self, i: int, key: str, out: Tensor) -> Tensor:
        """τ_i[key], flattened, written into ``out`` (``numel(key)`` entries); returns ``out``."""
        if key in self._resident_tasks:
            return out.copy_(self._resident_tasks[key][i].reshape(-1))
        return torch.sub(self.specialist_tensor(i, key).reshape(-1), self.base_tensor(key).reshape(-1), out=out)

    def task_vector(self, i: int, key: str) -> Tensor:
        """τ_i[key] alone (for methods that process one task at a time)."""
        if key in self._resident_tasks:
            return self._resident_tasks[key][i]
        return self._load(i, key) - self.base_tensor(key)

    def raw_specialist(self, i: int, key: str) -> Tensor:
        """θ_i[key] as stored (CPU, original dtype), e.g. for per-tensor content hashes."""
        return self.specialists[i][key]

    def output(self, key: str, delta: Tensor, owned: bool = False) -> Tensor:
        """θ*[key] = θ0[key] + delta as a CPU tensor in the base dtype. ``owned``: ``delta`` is a
        fresh working-dtype tensor of the caller's, overwritten with the sum (no new allocation;
        the same value, addition commutes)."""
        if owned and delta.dtype == self.dtype and delta.shape == self.shapes[key]:
            out = delta.add_(self.base_tensor(key))
        else:
            out = self.base_tensor(key) + delta
        return self.finish(key, out)

    def finish(self, key: str, merged: Tensor) -> Tensor:
        """θ*[key] given in the working dtype on the device, as a CPU tensor in the base dtype."""
        return merged.reshape(self.shapes[key]).to(dtype=self.dtypes[key]).cpu().contiguous()

    # ------------------------------------------------------------------ identities
    def base_hash(self) -> str:
        if self._base_hash is None:
            self._base_hash = content_hash(self.base)
        return self._base_hash

    def task_hashes(self) -> list[str]:
        if self._task_hashes is None:
            self._task_hashes = [content_hash(sp) for sp in self.specialists]
        return self._task_hashes
