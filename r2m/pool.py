"""The specialist pool: which files are merged, what they are, and θ0 — files only, no Lightning.

    pool = SpecialistPool.collect(["logs/train/multiruns/<sweep>"], add=["new/specialist.safetensors"])
    pool.verify()                      # same architecture / base / keys / shapes, finite tensors
    base = pool.base()                 # θ0, found by hash or rebuilt from base_source, hash-checked
    pool.backbones(), pool.heads()     # lazy tensors straight from the files

A file's *kind* comes from its metadata (:func:`file_kind`): ``specialist`` (trained on one
family), ``joint`` (several families), ``merged`` or ``base``. Sources:

- an explicit file must be a specialist (a joint or merged file is an error naming it);
- a folder is searched recursively for ``specialist.safetensors``, a glob is expanded: from these,
  specialists are taken, every other file is skipped with a log line saying why; a single joint
  model found this way is offered as :attr:`SpecialistPool.joint` (the merge evaluates it
  alongside, it is never merged).

Errors name the files: an empty source list, a source that matches nothing, the same file twice
(by path or by content sha256), ``add`` of a file already in the set or of a non-specialist.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2m.checkpoints import file_families, file_kind, file_sha256, find_base, read_metadata, verify_specialists

log = logging.getLogger(__name__)

SPECIALIST_FILENAME = "specialist.safetensors"

__all__ = ["SPECIALIST_FILENAME", "PoolEntry", "SpecialistPool", "file_kind", "file_families", "expand_source"]


@dataclass(frozen=True)
class PoolEntry:
    """One specialist of the pool: its file, decoded metadata, display name and content sha256."""

    path: Path
    meta: Mapping[str, Any]
    name: str
    sha256: str

    @property
    def kind(self) -> str:
        return file_kind(self.meta)

    @property
    def families(self) -> list[str]:
        return file_families(self.meta)


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_source(source: str | Path) -> tuple[list[Path], bool]:
    """Files of one source and whether it was explicit (a file) rather than a folder/glob."""
    text = str(source)
    if not text.strip():
        raise ValueError("empty specialist source ('' — an unset shell variable?): name files, folders or globs")
    path = Path(text)
    if _is_glob(text):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [m if m.is_file() else m / SPECIALIST_FILENAME for m in matches]
        files = [f for f in files if f.is_file()]
        if not files:
            raise FileNotFoundError(f"specialist glob {text!r} matches no file (nor folder with {SPECIALIST_FILENAME})")
        return files, False
    if path.is_dir():
        files = sorted(path.rglob(SPECIALIST_FILENAME))
        if not files:
            raise FileNotFoundError(f"no specialist files ({SPECIALIST_FILENAME}) under {text}")
        return files, False
    if path.is_file():
        return [path], True
    raise FileNotFoundError(f"specialist source not found: {text}")


def as_list(value: Any) -> list[Any]:
    """``None`` → ``[]``, one path or string → ``[it]``, any other iterable → a list (config values)."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


@dataclass
class SpecialistPool:
    """The specialists to merge (sorted by path), the joint model found beside them (if any) and
    what was skipped, with the reason. Build with :meth:`collect`."""

    entries: list[PoolEntry]
    joint: PoolEntry | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    base_path: Path | None = None
    base_dirs: list[Path] = field(default_factory=list)
    _base_state: Any = field(default=None, repr=False)
    base_source: str | None = None

    # ----------------------------------------------------------------------------- collect
    @classmethod
    def collect(
        cls,
        sources: Any,
        *,
        add: Any = None,
        joint: str | Path | None = None,
        base: str | Path | None = None,
        base_dirs: Sequence[str | Path] = (),
    ) -> SpecialistPool:
        """Collect specialists from ``sources`` (file, folder, glob or a list) plus ``add``
        (explicit files, composable re-merge). ``joint``: an explicit joint model file (else one
        found among folder/glob sources is used). See the module docstring for the rules."""
        srcs = as_list(sources)
        if not srcs:
            raise ValueError(
                "no specialists given (specialists is empty): pass specialists=<file|folder|glob|[files]>"
            )
        chosen: dict[Path, tuple[Mapping[str, Any], bool]] = {}
        joints: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        for src in srcs:
            files, explicit = expand_source(src)
            for f in files:
                key = f.resolve()
                if key in chosen:
                    if explicit:
                        raise ValueError(f"specialist {f} is given twice (same file as {key})")
                    continue  # overlapping folders / globs
                meta = read_metadata(f)
                kind = file_kind(meta)
                if kind == "specialist":
                    chosen[key] = (meta, explicit)
                elif explicit:
                    raise ValueError(
                        f"{f}: is a {kind} model (families {file_families(meta)}), not a specialist; "
                        + ("pass it as eval.joint=<file> to evaluate it alongside" if kind == "joint" else
                           "only specialists can be merged")
                    )
                else:
                    why = f"{kind} model (families {file_families(meta)})" if kind == "joint" else f"{kind} file"
                    skipped.append((f, why))
                    if kind == "joint":
                        joints.append(key)
        for extra in as_list(add):
            f = Path(str(extra))
            if not f.is_file():
                raise FileNotFoundError(f"+add: file not found: {f}")
            key = f.resolve()
            if key in chosen:
                raise ValueError(f"+add={f}: already in the specialist set")
            meta = read_metadata(f)
            kind = file_kind(meta)
            if kind != "specialist":
                raise ValueError(f"+add={f}: is a {kind} model, not a specialist; only specialists can be added")
            chosen[key] = (meta, True)
        for path, why in skipped:
            log.info("specialists: skipped %s (%s)", path, why)
        if not chosen:
            raise ValueError(
                f"no specialist among {[str(s) for s in srcs]}: skipped "
                + ", ".join(f"{p} ({w})" for p, w in skipped)
            )
        entries = cls._entries(chosen)
        joint_entry = None
        if joint:
            jpath = Path(str(joint))
            jmeta = read_metadata(jpath)
            if file_kind(jmeta) == "merged":
                raise ValueError(f"eval.joint={jpath}: is a merged model, not a joint model")
            joint_entry = PoolEntry(jpath.resolve(), jmeta, "joint", file_sha256(jpath))
        elif len(joints) == 1:
            joint_entry = PoolEntry(joints[0], read_metadata(joints[0]), "joint", file_sha256(joints[0]))
            log.info("specialists: the joint model %s is evaluated alongside (not merged)", joints[0])
        elif len(joints) > 1:
            log.warning("specialists: %d joint models found (%s); none evaluated — pass eval.joint=<file>",
                        len(joints), ", ".join(map(str, joints)))
        pool = cls(entries=entries, joint=joint_entry, skipped=skipped,
                   base_path=Path(str(base)) if base else None, base_dirs=[Path(str(d)) for d in base_dirs])
        return pool

    @staticmethod
    def _entries(chosen: Mapping[Path, tuple[Mapping[str, Any], bool]]) -> list[PoolEntry]:
        paths = sorted(chosen, key=str)
        shas = {p: file_sha256(p) for p in paths}
        by_sha: dict[str, list[Path]] = {}
        for p in paths:
            by_sha.setdefault(shas[p], []).append(p)
        dupes = [ps for ps in by_sha.values() if len(ps) > 1]
        if dupes:
            raise ValueError(
                "the same specialist is given twice (identical content, sha256): "
                + "; ".join(" = ".join(map(str, ps)) for ps in dupes)
            )
        by_family: dict[tuple[str, ...], list[Path]] = {}
        for p in paths:
            by_family.setdefault(tuple(file_families(chosen[p][0])), []).append(p)
        for fams, ps in by_family.items():
            if len(ps) > 1 and fams:
                log.warning("specialists: %d files trained on the same family %s are merged as separate tasks: %s",
                            len(ps), list(fams), ", ".join(map(str, ps)))
        names = [str(chosen[p][0].get("task") or p.parent.name) for p in paths]
        clash = {n for n in names if names.count(n) > 1}
        names = [f"{n}@{p.parent.name}" if n in clash else n for n, p in zip(names, paths)]
        return [PoolEntry(p, chosen[p][0], n, shas[p]) for p, n in zip(paths, names)]

    # ------------------------------------------------------------------------------- views
    @property
    def paths(self) -> list[Path]:
        return [e.path for e in self.entries]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def metas(self) -> list[Mapping[str, Any]]:
        return [e.meta for e in self.entries]

    @property
    def base_hash(self) -> str | None:
        return self.entries[0].meta.get("base_hash")

    @property
    def run_groups(self) -> list[str]:
        """Distinct W&B / sweep groups recorded by the training runs (metadata ``run_group``)."""
        groups = [e.meta.get("run_group") for e in [*self.entries, *([self.joint] if self.joint else [])]]
        return sorted({str(g) for g in groups if g})

    def require_merge(self, method: str | None = None) -> None:
        """A merge needs at least two specialists."""
        if len(self.entries) < 2:
            what = f"merge method {method!r}" if method else "a merge"
            raise ValueError(
                f"{what} needs at least two specialists; got {len(self.entries)}: {', '.join(map(str, self.paths))}"
                + (f" (skipped: {', '.join(f'{p} ({w})' for p, w in self.skipped)})" if self.skipped else "")
            )

    def describe(self) -> dict[str, Any]:
        """JSON-able account of the pool (for summaries and W&B config)."""
        return {
            "specialists": [{"task": e.name, "path": str(e.path), "sha256": e.sha256,
                             "families": e.families} for e in self.entries],
            "joint": ({"path": str(self.joint.path), "sha256": self.joint.sha256} if self.joint else None),
            "skipped": [{"path": str(p), "why": w} for p, w in self.skipped],
            "base_hash": self.base_hash,
        }

    # ------------------------------------------------------------------------ verification
    def verify(self) -> None:
        """Same model spec / base hash / keys / shapes / dtypes, finite tensors (specialists and
        the joint model), and θ0 found with the right hash. Raises naming the file at fault."""
        verify_specialists([*self.paths, *([self.joint.path] if self.joint else [])])
        self.base()

    # ------------------------------------------------------------------------------ tensors
    def backbones(self) -> list[Mapping[str, Any]]:
        from r2m.merging import LazySafetensors

        return [LazySafetensors(str(p), prefix="backbone.") for p in self.paths]

    def heads(self) -> list[dict[str, Any]]:
        from r2m.merging import LazySafetensors

        out = []
        for p in self.paths:
            lazy = LazySafetensors(str(p), prefix="head.")
            out.append({k: lazy[k] for k in lazy})
        return out

    def base(self) -> Mapping[str, Any]:
        """θ0: ``base`` if given, else ``base-<base_hash>.safetensors`` in ``base_dirs`` / beside the
        specialists, else rebuilt from the specialists' ``base_source``; its content hash must equal
        the specialists' ``base_hash``."""
        if self._base_state is not None:
            return self._base_state
        from r2m.merging import LazySafetensors
        from r2m.utils import state_dict_hash

        meta0 = self.entries[0].meta
        expected = meta0.get("base_hash")
        dirs = [*self.base_dirs, *dict.fromkeys(p.parent for p in self.paths),
                *dict.fromkeys(p.parent.parent for p in self.paths)]
        path = self.base_path or find_base(meta0, dirs)
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"base file not found: {path}")
            meta = read_metadata(path)
            prefix = "backbone." if str(meta.get("format", "")).startswith("r2m-") else ""
            state: Mapping[str, Any] = LazySafetensors(str(path), prefix=prefix)
            source = str(path)
        else:
            source = meta0.get("base_source")
            if not source:
                raise FileNotFoundError(
                    f"no base file base-{expected}.safetensors in {[str(d) for d in dirs]} and "
                    f"{self.paths[0]} names no base_source: pass base=<file>"
                )
            from r2m.models.backbone import build_backbone  # files only: builds a plain nn.Module

            spec = meta0.get("model_spec") or {}
            log.info("rebuilding base θ0 from %s", source)
            module, _ = build_backbone(model_name=spec.get("model_name"), model_cfg=spec.get("model_cfg"),
                                       pretrained=source, image_size=spec.get("image_size"),
                                       feature=spec.get("feature", "pooled"))
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        actual = getattr(state, "content_hash", None)
        actual = actual() if callable(actual) else state_dict_hash(state)
        if expected and actual != expected:
            raise ValueError(
                f"base {source} has content hash {actual}, but the specialists "
                f"({', '.join(map(str, self.paths))}) were fine-tuned from base_hash {expected}"
            )
        self._base_state = state
        self.base_source = source
        return state
