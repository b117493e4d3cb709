"""Identities of training videos and the leak-free validation carve.

Deepfake data is paired: a fake is made *from* real videos (FF++ ``000_003`` from the reals ``000``
and ``003``; Celeb-DF ``id0_id1_0000`` from ``id0`` and ``id1``), so a carve by video puts fakes in
validation whose real sources are in training, and the reverse. Here every video carries the set of
**identities** it was made from, and the carve assigns *identities* to validation:

* identity ``i`` is a validation identity iff ``u(seed, i) < val_fraction``, with ``u`` the first
  8 bytes of ``sha256("r2m-carve-v1|<seed>|<identity>")`` read as a uniform number in ``[0, 1)``;
* a video is **validation** when all its identities are, **training** when none are, and **left
  out** (neither) when they are split.

The carve never looks at which JSONs or families are loaded, so the validation set of every
specialist, and the joint model's (= their union), are identity-disjoint from the training videos of
every specialist of a sweep, and the order in which real frames are de-duplicated does not matter.

Default identity rules (the folder names DeepfakeBench / DF40 users have on disk; deepfake.md §8),
applied to the video folder name, first match wins; identities are namespaced by source dataset:

============== ===================================== ====================================
rule           real video                            fake video → identities
============== ===================================== ====================================
``ff++``       ``NNN`` → ``ff++:NNN``                ``NNN_MMM`` → ``ff++:NNN``, ``ff++:MMM``
``celeb-df``   ``idA_NNNN`` → ``celeb-df:idA``        ``idA_idB_NNNN`` → ``celeb-df:idA``, ``celeb-df:idB``
``dfd``        ``NN__scene`` → ``dfd:NN``             ``NN_MM__scene__x`` → ``dfd:NN``, ``dfd:MM``
``youtube``    ``NNNNN`` under ``YouTube-real/``      (Celeb-DF's YouTube reals, no fakes)
               → ``celeb-df-youtube:NNNNN``
``fallback``   anything else → ``folder:<frame folder relative to data_root>`` (no pairing detected)
============== ===================================== ====================================

DF40's FF-domain FS/FR fakes use FF++ names, its CDF-domain fakes Celeb-DF names, and its EFS
"videos" are buckets of generated images named after the real video ids, which the FF++ / Celeb-DF
rules give the mirrored real identity (conservative: they stay on the side of that real).

Users add rules in the data config (``identity_rule``): a regular expression matched
(``re.fullmatch``) against the video folder name — each captured group is one identity (the whole
name without groups), namespaced ``user:`` — or a callable ``f(record) -> iterable[str] | None``
(e.g. a Hydra ``_target_`` with ``_partial_: true``). User rules are tried first, then the defaults
(``identity_rule: none`` disables the defaults: only the user rule, then the fallback).

``identity_groups`` merges identities that must stay together although no single video name
says so. ``auto`` (the DF40 default) groups the identities of every multi-identity training video
of *every* family of the data config (not only the families being trained, so every specialist of a
sweep sees the same groups): an FF++ pair ``000``/``003`` becomes one group, and pair fakes are carved
at ``val_fraction`` instead of ``val_fraction²`` (the identities of a fake must all be validation).
Alternatively give files, e.g. the FF++ official split files (lists of pairs ``[["071", "054"], ...]``: a pair covers
both reals and both fakes ``071_054`` / ``054_071``). With them an FF++ pair goes to validation as
a whole, so pair fakes are carved at ``val_fraction`` instead of ``val_fraction²``. Bare ids in a
group file are FF++ ids; write ``namespace:id`` for others.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_modules.index import VideoRecord

__all__ = [
    "CARVE_SCHEME",
    "DEFAULT_RULES",
    "IdentityResolver",
    "Carve",
    "carve_by_identity",
    "identity_uniform",
    "load_identity_groups",
    "auto_groups",
    "video_key_str",
    "keys_sha256",
]

CARVE_SCHEME = "identity-sha256-v1"

_FFPP = re.compile(r"(\d{3})(?:_(\d{3}))?")
_CDF = re.compile(r"(id\d+)(?:_(id\d+))?_(\d{4})")
_DFD = re.compile(r"(\d{2})(?:_(\d{2}))?__.+")
_YT = re.compile(r"\d{5}")


def _rule_ffpp(video: str, folder: str) -> list[str] | None:
    m = _FFPP.fullmatch(video)
    return None if m is None else [f"ff++:{g}" for g in m.groups() if g is not None]


def _rule_cdf(video: str, folder: str) -> list[str] | None:
    m = _CDF.fullmatch(video)
    return None if m is None else [f"celeb-df:{g}" for g in m.groups()[:2] if g is not None]


def _rule_dfd(video: str, folder: str) -> list[str] | None:
    m = _DFD.fullmatch(video)
    return None if m is None else [f"dfd:{g}" for g in m.groups() if g is not None]


def _rule_youtube(video: str, folder: str) -> list[str] | None:
    if _YT.fullmatch(video) and "YouTube-real" in folder.split("/"):
        return [f"celeb-df-youtube:{video}"]
    return None


#: name → rule(video folder name, frame folder path) → identities or None (no match).
DEFAULT_RULES: dict[str, Callable[[str, str], list[str] | None]] = {
    "ff++": _rule_ffpp,
    "celeb-df": _rule_cdf,
    "dfd": _rule_dfd,
    "youtube": _rule_youtube,
}
FALLBACK = "fallback"


def _callable_name(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    mod = getattr(inner, "__module__", None) or "?"
    return f"{mod}.{getattr(inner, '__qualname__', type(inner).__name__)}"


def load_identity_groups(spec: Any) -> dict[str, str]:
    """``identity_groups`` (a JSON file path, an inline list of groups, or a list of either) →
    ``{identity: group identity}``. A group is a list of identities (bare ids = FF++ ids); groups
    sharing an identity are merged. The group identity is ``group:`` + the sorted members."""
    if spec is None:
        return {}
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    groups: list[list[str]] = []
    # a single inline group list like [["071", "054"], ...] is a list of lists of str
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"identity_groups: cannot read {str(path)!r}: {exc}") from exc
            where = str(path)
        else:
            obj, where = [item] if item and all(isinstance(x, str) for x in item) else item, "identity_groups"
        if not isinstance(obj, list) or not all(
                isinstance(g, (list, tuple)) and all(isinstance(x, (str, int)) for x in g) for g in obj):
            raise ValueError(f"{where}: expected a list of groups (lists of identity strings), e.g. [[\"071\", \"054\"]]")
        groups += [[str(x) if ":" in str(x) else f"ff++:{x}" for x in g] for g in obj]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in groups:
        for x in g[1:]:
            ra, rb = find(g[0]), find(x)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        if g:
            find(g[0])
    members: dict[str, list[str]] = defaultdict(list)
    for x in parent:
        members[find(x)].append(x)
    out: dict[str, str] = {}
    for ms in members.values():
        if len(ms) > 1:
            gid = "group:" + "+".join(sorted(ms))
            out.update(dict.fromkeys(ms, gid))
    return out


class IdentityResolver:
    """Maps a :class:`~data_modules.index.VideoRecord` to its identities (see module docstring).

    ``rule``: ``"default"`` / ``None`` (built-in rules), ``"none"`` (no built-in rules), a regex
    string, a callable, or a list of these (tried in order; ``"default"`` marks where the built-in
    rules go; when absent they are appended unless ``"none"`` is given)."""

    def __init__(self, rule: Any = "default", data_root: str | os.PathLike = ".",
                 groups: Any = None, groups_label: str = "groups") -> None:
        self.data_root = os.fspath(data_root).replace("\\", "/").rstrip("/")
        specs = list(rule) if isinstance(rule, (list, tuple)) else [rule]
        rules: list[tuple[str, Callable[[VideoRecord, str], list[str] | None]]] = []
        desc: list[str] = []
        use_defaults = True
        for spec in specs:
            if spec is None or spec == "default":
                if not any(n in DEFAULT_RULES for n, _ in rules):
                    rules += [(n, self._wrap_default(f)) for n, f in DEFAULT_RULES.items()]
                    desc.append("default")
            elif spec == "none":
                use_defaults = False
            elif isinstance(spec, str):
                try:
                    pattern = re.compile(spec)
                except re.error as exc:
                    raise ValueError(f"identity_rule: invalid regular expression {spec!r}: {exc}") from exc
                rules.append((f"regex:{spec}", self._wrap_regex(pattern)))
                desc.append(f"regex:{spec}")
            elif callable(spec):
                rules.append((f"callable:{_callable_name(spec)}", self._wrap_callable(spec)))
                desc.append(f"callable:{_callable_name(spec)}")
            else:
                raise ValueError(f"identity_rule: expected 'default', 'none', a regex string or a callable, got {spec!r}")
        if use_defaults and "default" not in desc:
            rules += [(n, self._wrap_default(f)) for n, f in DEFAULT_RULES.items()]
            desc.append("default")
        self.rules = rules
        self.groups = load_identity_groups(groups)
        self.description = "+".join(desc) or "none"
        if self.groups:
            blob = json.dumps(sorted(self.groups.items())).encode()
            self.description += f"+{groups_label}:{hashlib.sha256(blob).hexdigest()[:16]}"
        self._cache: dict[tuple, tuple[tuple[str, ...], str]] = {}
        self._raw: dict[tuple, tuple[str, ...]] = {}

    @staticmethod
    def _wrap_default(f: Callable[[str, str], list[str] | None]):
        return lambda rec, folder: f(rec.video, folder)

    @staticmethod
    def _wrap_regex(pattern: re.Pattern):
        def rule(rec: VideoRecord, folder: str) -> list[str] | None:
            m = pattern.fullmatch(rec.video)
            if m is None:
                return None
            groups = [g for g in m.groups() if g]
            return [f"user:{g}" for g in (groups or [m.group(0)])]
        return rule

    @staticmethod
    def _wrap_callable(fn: Callable):
        def rule(rec: VideoRecord, folder: str) -> list[str] | None:
            out = fn(rec)
            if out is None:
                return None
            if isinstance(out, str):
                out = [out]
            ids = [str(x) for x in out]
            if not ids or not all(ids):
                raise ValueError(f"identity_rule {_callable_name(fn)} returned no identity for video {rec.key}")
            return ids
        return rule

    def folder(self, rec: VideoRecord) -> str:
        """The video's frame folder, relative to ``data_root`` when under it."""
        first = (rec.frames[0] if rec.frames else rec.video).replace("\\", "/")
        folder = first.rpartition("/")[0] or first
        root = self.data_root
        if root and root != "." and folder.startswith(root + "/"):
            folder = folder[len(root) + 1:]
        return folder

    def resolve(self, rec: VideoRecord) -> tuple[tuple[str, ...], str]:
        """``(identities, rule name)`` of a video; rule ``"fallback"`` = no pairing detected."""
        folder = self.folder(rec)
        hit = self._cache.get((rec.key, folder))
        if hit is not None:
            return hit
        ids: list[str] | None = None
        name = FALLBACK
        for rule_name, rule in self.rules:
            ids = rule(rec, folder)
            if ids:
                name = rule_name
                break
        if not ids:
            ids = [f"folder:{folder}"]
        raw = tuple(sorted(set(ids)))
        if self.groups:
            ids = [self.groups.get(i, i) for i in ids]
        out = (tuple(sorted(set(ids))), name)
        self._cache[(rec.key, folder)] = out
        self._raw[(rec.key, folder)] = raw
        return out

    def raw(self, rec: VideoRecord) -> tuple[str, ...]:
        """The identities of a video before ``identity_groups`` are applied."""
        self.resolve(rec)
        return self._raw[(rec.key, self.folder(rec))]

    def __call__(self, rec: VideoRecord) -> tuple[str, ...]:
        return self.resolve(rec)[0]


def auto_groups(records: Iterable[VideoRecord], resolver: IdentityResolver) -> list[list[str]]:
    """``identity_groups: auto``: the identity sets of every multi-identity video (e.g. the FF++ pair of a
    fake ``000_003``) of ``records`` — all training videos of every family in the data config, so the
    groups, and with them the carve, are the same for every specialist of a sweep."""
    out: dict[tuple[str, ...], None] = {}
    for rec in records:
        ids = resolver(rec)
        if len(ids) > 1:
            out[ids] = None
    return [list(g) for g in out]


def identity_uniform(seed: int, identity: str) -> float:
    """Deterministic uniform number in ``[0, 1)`` from ``(seed, identity)``."""
    digest = hashlib.sha256(f"r2m-carve-v1|{int(seed)}|{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def video_key_str(key: Sequence[str]) -> str:
    return "/".join(key)


def keys_sha256(keys: Iterable[Sequence[str]]) -> str:
    """64-hex sha256 of ``"\\n".join(sorted(<dataset>/<method>/<video>))``."""
    return hashlib.sha256("\n".join(sorted(video_key_str(k) for k in keys)).encode()).hexdigest()


@dataclass
class Carve:
    """Outcome of :func:`carve_by_identity` (records in input order)."""

    train: list[VideoRecord]
    val: list[VideoRecord]
    left_out: list[VideoRecord]
    identities: dict[tuple[str, str, str], tuple[str, ...]]
    rules: Counter = field(default_factory=Counter)           # rule name → videos
    unmatched: list[tuple[str, str, str]] = field(default_factory=list)  # fallback videos

    def side_identities(self, side: str) -> frozenset[str]:
        recs = {"train": self.train, "val": self.val, "left_out": self.left_out}[side]
        return frozenset(i for r in recs for i in self.identities[r.key])


def carve_by_identity(records: Sequence[VideoRecord], fraction: float, seed: int,
                      resolver: IdentityResolver | None = None) -> Carve:
    """Split videos into training / validation / left out by their identities (module docstring)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    resolver = resolver or IdentityResolver()
    is_val: dict[str, bool] = {}
    out = Carve([], [], [], {})
    for rec in records:
        ids, rule = resolver.resolve(rec)
        if rec.key not in out.identities:
            out.rules[rule] += 1
            if rule == FALLBACK:
                out.unmatched.append(rec.key)
        out.identities[rec.key] = ids
        flags = []
        for i in ids:
            v = is_val.get(i)
            if v is None:
                v = is_val[i] = fraction > 0 and identity_uniform(seed, i) < fraction
            flags.append(v)
        (out.val if all(flags) else out.train if not any(flags) else out.left_out).append(rec)
    return out
