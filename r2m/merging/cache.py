"""Decomposition cache: keep expensive merge statistics between merges (in memory and on disk).

What is cached (entry kinds, each counted in :attr:`DecompositionCache.stats`):

* ``gram_pairs`` — for one unordered pair of specialists (i, j) over one base, the inner products
  ⟨τ_i[l], τ_j[l]⟩ of every tensor l (float64, one value per tensor). Keyed by the base hash and the
  two task hashes only, so adding one specialist to N cached ones computes N + 1 new pairs (N cross
  pairs plus its own diagonal) and reuses the rest.
* ``svd`` — the spectral factors of one matrix: the eigen-decomposition of its small-side Gram
  (XᵀX or XXᵀ), i.e. all K = min(m, n) singular values and the K small-side singular vectors (merges
  with a cache always compute the full spectrum; only cache-less merges use partial ones, see
  :mod:`r2m.merging.linalg`). Together with X (cheap to rebuild from the task vectors) this is the
  full thin SVD; every truncation rank is read from it. The key ends with the spectral route and the
  number of eigenpairs, so entries of different routes never mix. Keyed by whatever determines X:

  - TSV: X = τ_i[l] depends on one task only → reused when a specialist is added.
  - CART: X = τ_i[l] − τ̄[l] depends on the whole task set → recomputed when a specialist is added.
  - R²M: X = ρ_i[l] depends on V_k, i.e. on all tasks and on (k, center, residual, block_weighting)
    → recomputed when a specialist is added or one of these flags changes; reused across ``alpha``,
    ``eta``, ``norm_match`` and ``rank_ratio``.
* ``residual_gram`` — R²M's N×N Gram of the truncated residuals for one rank ratio (cheap, saves a
  pass in α sweeps).

Entries live in a dict (``in_memory=True``) and, when ``directory`` is given, also in one
safetensors file per entry (atomic writes; the file name is a hash of the entry key, the full key
is stored in the file's metadata and checked on read). Entries computed on another device may
differ from a fresh computation in the last bits; keep one cache per device for bit-identical runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

import torch

from r2m.utils import atomic_write

__all__ = ["DecompositionCache"]

log = logging.getLogger(__name__)

_KEY_META = "r2m_cache_key"


class DecompositionCache:
    """In-memory plus optional on-disk store of merge decompositions (see module docstring).

    Args:
        directory: folder for the on-disk copy (created when needed); ``None`` keeps entries in
            memory only.
        in_memory: keep entries in memory as well (default). With ``in_memory=False`` and a
            directory, entries are read back from disk each time (low memory, slower).

    ``stats`` counts per entry kind: ``<kind>_computed`` (entries stored after a miss) and
    ``<kind>_hits`` (entries found), e.g. ``svd_computed``, ``svd_hits``, ``gram_pairs_computed``,
    ``gram_pairs_hits``; ``disk_reads`` / ``disk_writes`` count file operations.
    """

    KINDS = ("svd", "gram_pairs", "residual_gram")

    def __init__(self, directory: str | os.PathLike | None = None, *, in_memory: bool = True) -> None:
        if directory is None and not in_memory:
            raise ValueError("DecompositionCache: in_memory=False needs a directory")
        self.directory = Path(directory) if directory is not None else None
        self.in_memory = in_memory
        self._mem: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.stats: Counter[str] = Counter()
        self.reset_stats()

    # ------------------------------------------------------------------ bookkeeping
    def reset_stats(self) -> None:
        """Set every counter back to 0."""
        self.stats.clear()
        for kind in self.KINDS:
            self.stats[f"{kind}_computed"] = 0
            self.stats[f"{kind}_hits"] = 0
        self.stats["disk_reads"] = 0
        self.stats["disk_writes"] = 0

    def __len__(self) -> int:
        return len(self._mem)

    def __repr__(self) -> str:
        where = f"directory={str(self.directory)!r}" if self.directory else "memory only"
        return f"DecompositionCache({where}, {len(self)} entries in memory)"

    def clear(self, disk: bool = False) -> None:
        """Drop the in-memory entries (and the on-disk files too when ``disk``)."""
        self._mem.clear()
        if disk and self.directory is not None and self.directory.is_dir():
            for kind_dir in self.directory.iterdir():
                if kind_dir.is_dir() and kind_dir.name in self.KINDS:
                    for f in kind_dir.glob("*.safetensors"):
                        f.unlink(missing_ok=True)

    # ------------------------------------------------------------------ entries
    def _path(self, kind: str, key: str) -> Path:
        assert self.directory is not None
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        return self.directory / kind / f"{digest}.safetensors"

    def get(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``(kind, key)`` (CPU), or ``None``; counts a hit."""
        self._check_kind(kind)
        entry = self._mem.get((kind, key))
        if entry is None and self.directory is not None:
            entry = self._read(kind, key)
            if entry is not None and self.in_memory:
                self._mem[(kind, key)] = entry
        if entry is not None:
            self.stats[f"{kind}_hits"] += 1
        return entry

    def put(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` (moved to CPU) under ``(kind, key)``; counts a computation."""
        self._check_kind(kind)
        entry = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        if self.in_memory:
            self._mem[(kind, key)] = entry
        if self.directory is not None:
            self._write(kind, key, entry)
        self.stats[f"{kind}_computed"] += 1

    def _check_kind(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"DecompositionCache: unknown entry kind {kind!r}; valid: {self.KINDS}")

    def _read(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors import safe_open

        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                if (f.metadata() or {}).get(_KEY_META) != key:
                    log.warning("cache file %s belongs to another key; ignored", path)
                    return None
                entry = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # a truncated/corrupt file is a miss, not an error
            log.warning("cache file %s unreadable (%s); recomputing", path, exc)
            return None
        self.stats["disk_reads"] += 1
        return entry

    def _write(self, kind: str, key: str, entry: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self._path(kind, key)
        atomic_write(path, lambda p: save_file(entry, str(p), metadata={_KEY_META: key, "kind": kind}))
        self.stats["disk_writes"] += 1
