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

When a cache pays (:func:`plan_cache`): a merge *with* a cache stores full spectra (so any later
rank is served) and, with a directory, writes every entry to disk; a merge *without* one computes
only the leading eigenpairs it reads (:func:`r2m.merging.linalg.eig_columns`). For one merge that
nothing reuses, the cache is pure cost (measured, ViT-B/16, N = 3, R²M, CPU:
``docs/merge_performance.md``); ``plan_cache("auto", …)`` therefore returns no cache for a single
merge, an in-memory cache for several merges over the same inputs, and the on-disk cache only
when a sweep or a re-merge can reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

import torch

from r2m.utils import atomic_write

__all__ = ["CACHE_POLICIES", "DecompositionCache", "plan_cache"]

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


#: Cache policies understood by :func:`plan_cache`.
CACHE_POLICIES = ("auto", "off", "memory", "disk")


def _has_entries(directory: Path) -> bool:
    return directory.is_dir() and any(
        (directory / kind).is_dir() and any((directory / kind).glob("*.safetensors"))
        for kind in DecompositionCache.KINDS
    )


def plan_cache(
    policy: str = "auto",
    n_jobs: int = 1,
    cache_dir: str | os.PathLike | None = None,
) -> DecompositionCache | None:
    """The decomposition cache for ``n_jobs`` merges over one input set, or ``None`` (no cache).

    Args:
        policy: ``"off"`` — no cache (each merge computes only the eigenpairs it reads);
            ``"memory"`` — an in-memory :class:`DecompositionCache`; ``"disk"`` — in memory plus
            ``cache_dir`` on disk (needs ``cache_dir``); ``"auto"`` (default) — the cheapest that
            loses no reuse:

            * ``n_jobs ≤ 1`` and ``cache_dir`` holds no entries (or is ``None``): no cache — a single
              merge that nothing reuses pays neither full spectra nor disk writes;
            * ``n_jobs ≤ 1`` and ``cache_dir`` already holds entries (an earlier run wrote them; a
              re-merge can reuse them): the on-disk cache;
            * ``n_jobs > 1`` (a sweep, or several methods over the same inputs): the on-disk cache
              when ``cache_dir`` is given (the sweep reuses it now, a later re-merge too), else in
              memory.
        n_jobs: how many merges of cache-using methods (``cart``, ``tsv``, ``r2m``) will run over
            the same base and specialists in this process (a ``merge_many`` grid counts its points).
        cache_dir: the on-disk cache folder (may not exist yet).

    Merges with and without a cache agree to float round-off (partial vs full eigensolver), not
    bit for bit; each policy on its own is bit-identical on re-run.

    Raises:
        ValueError: unknown policy, ``n_jobs < 0``, or ``"disk"`` without ``cache_dir``.
    """
    if policy not in CACHE_POLICIES:
        raise ValueError(f"cache policy must be one of {list(CACHE_POLICIES)}, got {policy!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 0:
        raise ValueError(f"plan_cache: n_jobs must be an integer ≥ 0, got {n_jobs!r}")
    if policy == "off":
        return None
    if policy == "memory":
        return DecompositionCache()
    if policy == "disk":
        if cache_dir is None:
            raise ValueError("cache policy 'disk' needs a cache_dir")
        return DecompositionCache(cache_dir)
    if n_jobs <= 1:
        if cache_dir is not None and _has_entries(Path(cache_dir)):
            return DecompositionCache(cache_dir)
        return None
    return DecompositionCache(cache_dir) if cache_dir is not None else DecompositionCache()
