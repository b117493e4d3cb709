"""Write the built-in benchmark to disk once, in the DF40 / DeepfakeBench JSON + PNG format.

Layout (``<root>/<real hash>/``): the real crops once, and every forgery family in its own folder,
generated the first time a configuration names it::

    manifest.json                                 real data: config, every real video's source region
    real/<domain>/<split>/<video>/<frame>.png     real crops (train / test bands, pretraining crops)
    families/<family>-<key>/family.json           one family: version, datasets, forged crop → source
    families/<family>-<key>/json/<family>_<domain>.json      DF40-format index
    families/<family>-<key>/frames/<domain>/<split>/<video>/<frame>.png

``<real hash>`` hashes only what the real crops depend on (seed, sizes, counts, domains, this
generator's code) — not the families, not ``strength``. ``<key>`` hashes the family's name,
version, ``strength`` and the real hash. So adding or editing a family generates that family's
folder only; the real crops, every other family's files, the pretraining crops (hence θ0) and the
validation carve stay byte-for-byte the same.

Datasets (DF40 analogues in brackets), one JSON per family and domain:

* ``F_photo``   (``FSAll_ff``)  ``train`` + ``test`` splits, reals and ``F``-fakes of the photo domain;
* ``F_archive`` (``FSAll_cdf``) ``test`` only, reals and ``F``-fakes of the archive domain.

Each JSON is ``{name: {"<F>_Real": {split: {video: {"label": "<F>_Real", "frames": [...]}}},
"<F>_Fake": {...}}}`` with paths relative to the benchmark folder. Fake video ``i`` is the family
applied to every frame of real video ``i`` of the same domain/split (as DF40 fakes are made from FF++
/ Celeb-DF reals); ``family.json`` records, for every forged video, its source real video, source
frames, source photograph and source region (its *identity*). Like DF40, the family files repeat
the same real videos (the data module dedupes them by path). Every family is written for every
domain and split, whatever its role (training or unseen), so its files do not depend on the role.

Test splits (built by the data module): ``in_distribution`` = ``F_photo`` for every training family,
``cross_dataset`` = ``F_archive``, ``unseen`` = ``U_photo`` of the unseen families.

Source regions: the photo domain's ``train`` band (left 70 % of each photograph) and ``test`` band
(right 30 %) are disjoint; each band is cut into disjoint regions (:func:`~data_modules.benchmark.
sources.regions`) and every real video lies in one region. The data module's validation carve
assigns whole regions to validation, so training, validation and test never share a source region.

Pretraining reals: ``n_pretrain`` extra real frames of the photo domain's training band (never a
test region, never the archive domain), listed in the manifest under ``pretrain_frames`` with
their source photograph (``pretrain_sources``), for the pretraining of the shared base θ0.

Determinism: every real video and every fake frame draws from its own generator
(:func:`~data_modules.benchmark.sources.item_rng`), PNGs are encoded by OpenCV at a fixed
compression level, JSON is written with sorted keys; the same configuration therefore gives
byte-identical files (on the same numpy / OpenCV build — manifests record their versions and a
``content_sha256``). Every folder is written into a temporary sibling and renamed into place
(atomic: a crash never leaves a half-written folder; concurrent generators race harmlessly).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.benchmark import sources as _sources
from data_modules.benchmark.families import apply_family, get_family
from data_modules.benchmark.sources import DOMAINS, item_rng, sample_video_info

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_FORMAT",
    "encode_png",
    "BenchmarkConfig",
    "generate_benchmark",
    "ensure_benchmark",
    "ensure_family",
    "family_dir",
    "read_manifest",
    "read_family",
    "verify_benchmark",
]

log = logging.getLogger(__name__)

#: Bump when the on-disk layout or the meaning of a configuration field changes.
GENERATOR_VERSION = "2"
MANIFEST_FORMAT = "r2m-benchmark"
_PNG_LEVEL = 3  # fixed zlib level → byte-identical files


def encode_png(img: np.ndarray) -> bytes:
    """RGB uint8 image → PNG bytes (OpenCV, compression level 3)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to generate. Counts are images per set (half real, half fake), rounded down to whole
    videos of ``frames_per_video`` frames; ``n_pretrain`` is a number of real frames; ``strength``
    scales every family's change (see :func:`~data_modules.benchmark.families.apply_family`)."""

    seed: int = 0
    image_size: int = 64
    frames_per_video: int = 4
    n_train: int = 800
    n_test: int = 320
    n_pretrain: int = 1600
    strength: float = 1.0
    families_train: tuple[str, ...] = ("blend", "warp", "upsample")
    families_unseen: tuple[str, ...] = ("diffusion", "edit", "fingerprint", "resave")
    train_domain: str = "photo"
    cross_domain: str = "archive"

    def __post_init__(self) -> None:
        for name in ("families_train", "families_unseen"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        for name in ("seed", "image_size", "frames_per_video", "n_train", "n_test", "n_pretrain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"benchmark config: {name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float, np.floating)):
            raise ValueError(f"benchmark config: strength must be a number, got {self.strength!r}")
        object.__setattr__(self, "strength", float(self.strength))

    # -------------------------------------------------------------- checks and derived values
    def validate(self, families: bool = True) -> None:
        """Raise ``ValueError`` naming the field at fault (``families=False``: the real-data fields only)."""
        if self.image_size < 16:
            raise ValueError(f"benchmark config: image_size must be >= 16, got {self.image_size}")
        if self.frames_per_video < 1:
            raise ValueError(f"benchmark config: frames_per_video must be >= 1, got {self.frames_per_video}")
        for name in ("n_train", "n_test"):
            if self.videos(name) < 1:
                raise ValueError(
                    f"benchmark config: {name}={getattr(self, name)} is smaller than one real and one fake "
                    f"video of frames_per_video={self.frames_per_video} frames"
                )
        if not (np.isfinite(self.strength) and self.strength > 0):
            raise ValueError(f"benchmark config: strength must be a positive number, got {self.strength}")
        if self.n_pretrain < 0:
            raise ValueError(f"benchmark config: n_pretrain must be >= 0, got {self.n_pretrain}")
        if families and not self.families_train:
            raise ValueError("benchmark config: families_train is empty (at least one family trains a specialist)")
        both = set(self.families_train) & set(self.families_unseen)
        if both:
            raise ValueError(f"benchmark config: families {sorted(both)} are both trained on and unseen")
        for seq_name in ("families_train", "families_unseen"):
            seq = getattr(self, seq_name)
            if len(set(seq)) != len(seq):
                raise ValueError(f"benchmark config: {seq_name} lists a family twice: {list(seq)}")
            for fam in seq if families else ():
                get_family(fam)  # ValueError naming the unknown family
        for dom_name in ("train_domain", "cross_domain"):
            if getattr(self, dom_name) not in DOMAINS:
                raise ValueError(
                    f"benchmark config: {dom_name}={getattr(self, dom_name)!r} is not a domain; known: {sorted(DOMAINS)}"
                )
        if self.train_domain == self.cross_domain:
            raise ValueError("benchmark config: train_domain and cross_domain must differ")

    def videos(self, count_field: str) -> int:
        """Videos per class (real / fake) for ``n_train`` or ``n_test``."""
        return getattr(self, count_field) // (2 * self.frames_per_video)

    def dataset_name(self, family: str, domain: str) -> str:
        return f"{family}_{domain}"

    @property
    def families(self) -> dict[str, list[str]]:
        """DataModule ``families``: each training family → its training JSON; ``joint`` → all."""
        out = {f: [self.dataset_name(f, self.train_domain)] for f in self.families_train}
        out["joint"] = [self.dataset_name(f, self.train_domain) for f in self.families_train]
        return out

    @property
    def test_splits(self) -> dict[str, list[str]]:
        """DataModule ``test_splits`` (DF40 protocols P1, P2, P3)."""
        splits = {
            "in_distribution": [self.dataset_name(f, self.train_domain) for f in self.families_train],
            "cross_dataset": [self.dataset_name(f, self.cross_domain) for f in self.families_train],
        }
        if self.families_unseen:
            splits["unseen"] = [self.dataset_name(f, self.train_domain) for f in self.families_unseen]
        return splits

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["families_train"] = list(self.families_train)
        out["families_unseen"] = list(self.families_unseen)
        return out

    def real_config(self) -> dict[str, Any]:
        """The fields the real crops depend on (not the families, not ``strength``)."""
        out = self.to_dict()
        for key in ("families_train", "families_unseen", "strength"):
            out.pop(key)
        return out

    def identity(self) -> dict[str, Any]:
        """Everything the real crops' bytes depend on (hashed into the folder name)."""
        return {
            "format": MANIFEST_FORMAT,
            "generator_version": GENERATOR_VERSION,
            "code_sha256": _code_hash(),
            "config": self.real_config(),
        }

    def config_hash(self, length: int = 16) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]

    def family_key(self, family: str) -> str:
        """Folder name of ``family``'s files: name + hash of (version, strength, real data)."""
        payload = {"family": family, "version": get_family(family).version, "strength": self.strength,
                   "real": self.config_hash(), "generator_version": GENERATOR_VERSION}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:12]
        return f"{family}-{digest}"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "BenchmarkConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown benchmark config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(values))


def _code_hash() -> str:
    """sha256 of the generator code (sources + this module); families are versioned separately."""
    h = hashlib.sha256()
    for module in (_sources, sys.modules[__name__]):
        try:
            h.update(inspect.getsource(module).encode("utf-8"))
        except (OSError, TypeError):  # pragma: no cover - frozen installs without sources
            h.update(module.__name__.encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ writing


@dataclass
class _Writer:
    """Encodes PNGs into a folder and keeps a running content hash (paths relative to ``prefix``)."""

    root: Path
    prefix: str = ""
    files: dict[str, str] = field(default_factory=dict)  # relative path → sha256 of bytes

    def png(self, rel: str, img: np.ndarray) -> str:
        self._write(rel, encode_png(img))
        return self.prefix + rel

    def text(self, rel: str, text: str) -> None:
        self._write(rel, text.encode("utf-8"))

    def _write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[rel] = hashlib.sha256(data).hexdigest()

    def content_hash(self) -> str:
        return _content_hash(self.files)


def _content_hash(files: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode("utf-8"))
        h.update(files[rel].encode("ascii"))
    return h.hexdigest()


def _video_name(i: int) -> str:
    return f"{i:04d}"


#: (domain role, split, band) of every real set: photo train / test bands, archive test (all).
def _real_sets(cfg: BenchmarkConfig) -> list[tuple[str, str, str, int]]:
    n_tr, n_te = cfg.videos("n_train"), cfg.videos("n_test")
    return [(cfg.train_domain, "train", "train", n_tr), (cfg.train_domain, "test", "test", n_te),
            (cfg.cross_domain, "test", "all", n_te)]


def _atomic_dir(out: Path, build) -> Path:
    """Build a folder in a temporary sibling (``build(tmp)``), then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, out)
        except OSError:
            if out.is_dir():  # lost a race against a concurrent generator: keep the winner's
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_real(root: Path, cfg: BenchmarkConfig) -> dict[str, Any]:
    """The real crops into ``root``; returns the manifest (without the completion marker)."""
    started = time.perf_counter()
    writer = _Writer(root)
    videos: dict[str, dict[str, dict[str, Any]]] = {}
    for domain, split, band, n in _real_sets(cfg):
        bucket = videos.setdefault(domain, {}).setdefault(split, {})
        for i in range(n):
            name = _video_name(i)
            frames, info = sample_video_info(domain, split, i, seed=cfg.seed, n_frames=cfg.frames_per_video,
                                             size=cfg.image_size, band=band)
            rels = [writer.png(f"real/{domain}/{split}/{name}/{j:03d}.png", img) for j, img in enumerate(frames)]
            bucket[name] = {**info, "frames": rels}
    pretrain, pretrain_sources = [], []
    n_pre_videos = -(-cfg.n_pretrain // cfg.frames_per_video) if cfg.n_pretrain else 0
    a = cfg.train_domain
    for i in range(n_pre_videos):
        frames, info = sample_video_info(a, "pretrain", i, seed=cfg.seed, n_frames=cfg.frames_per_video,
                                         size=cfg.image_size, band="train")
        for j, img in enumerate(frames):
            if len(pretrain) < cfg.n_pretrain:
                pretrain.append(writer.png(f"real/{a}/pretrain/{_video_name(i)}/{j:03d}.png", img))
                pretrain_sources.append(info["source"])

    import cv2
    import skimage

    manifest = {
        **cfg.identity(),
        "config_hash": cfg.config_hash(),
        "data_root": ".",
        "domains": {d: {"sources": list(DOMAINS[d].sources), "description": DOMAINS[d].description}
                    for d in (cfg.train_domain, cfg.cross_domain)},
        "real_videos": videos,
        "pretrain_frames": pretrain,
        "pretrain_sources": pretrain_sources,
        "n_files": len(writer.files),
        "content_sha256": writer.content_hash(),
        "library_versions": {"numpy": np.__version__, "opencv": cv2.__version__, "scikit-image": skimage.__version__},
    }
    log.info("generated benchmark reals %s: %d files in %.1f s", manifest["config_hash"], len(writer.files),
             time.perf_counter() - started)
    return manifest


def _write_family(root: Path, rel_root: str, cfg: BenchmarkConfig, manifest: Mapping[str, Any],
                  family: str) -> dict[str, Any]:
    """One family's fakes, JSON indexes and ``family.json`` into ``root`` (= ``<bench>/<rel_root>``)."""
    started = time.perf_counter()
    writer = _Writer(root, prefix=rel_root + "/")
    fam = get_family(family)
    datasets: dict[str, Any] = {}
    sources: dict[str, dict[str, dict[str, Any]]] = {}
    for domain, split, _band, _n in _real_sets(cfg):
        name = cfg.dataset_name(family, domain)
        real_label, fake_label = f"{family}_Real", f"{family}_Fake"
        entry = datasets.setdefault(name, {"family": family, "domain": domain, "splits": {},
                                           "index": {real_label: {}, fake_label: {}}})
        reals = manifest["real_videos"][domain][split]
        real_entries, fake_entries, src_entries = {}, {}, {}
        for video, rec in reals.items():
            rels = []
            for j, rel in enumerate(rec["frames"]):
                img = _read_png(root.parent.parent / rel)
                fake = apply_family(family, img, item_rng(cfg.seed, "fake", family, domain, split, video, j),
                                    strength=cfg.strength)
                rels.append(writer.png(f"frames/{domain}/{split}/{video}/{j:03d}.png", fake))
            real_entries[video] = {"label": real_label, "frames": list(rec["frames"])}
            fake_entries[video] = {"label": fake_label, "frames": rels}
            src_entries[video] = {"source_video": f"real/{domain}/{split}/{video}", "source_frames": list(rec["frames"]),
                                  "source": rec["source"], "region": rec["region"], "identity": rec["identity"]}
        entry["index"][real_label][split] = real_entries
        entry["index"][fake_label][split] = fake_entries
        entry["splits"][split] = {"real_videos": len(real_entries), "fake_videos": len(fake_entries),
                                  "frames": 2 * len(fake_entries) * cfg.frames_per_video}
        sources.setdefault(domain, {})[split] = src_entries
    for name, entry in datasets.items():
        index = entry.pop("index")
        writer.text(f"json/{name}.json", json.dumps({name: index}, indent=1, sort_keys=True) + "\n")
    info = {
        "format": FAMILY_FORMAT,
        "family": family,
        "key": cfg.family_key(family),
        "version": fam.version,
        "imitates": fam.imitates,
        "description": fam.description,
        "strength": cfg.strength,
        "real_config_hash": cfg.config_hash(),
        "datasets": datasets,
        "fake_sources": sources,
        "n_files": len(writer.files),
        "content_sha256": writer.content_hash(),
    }
    log.info("generated benchmark family %s: %d files in %.1f s", info["key"], len(writer.files),
             time.perf_counter() - started)
    return info


def _read_png(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"unreadable benchmark PNG {path}")
    return np.ascontiguousarray(img[:, :, ::-1])


FAMILY_FORMAT = "r2m-benchmark-family"


def generate_benchmark(out_dir: str | os.PathLike, config: BenchmarkConfig | None = None,
                       overwrite: bool = False, real_only: bool = False) -> Path:
    """Generate the real crops and every family named by ``config`` into ``out_dir`` (each folder
    atomically: temp sibling, then rename). Existing complete folders are kept (``overwrite=False``)
    or replaced."""
    cfg = config or BenchmarkConfig()
    cfg.validate(families=not real_only)
    out = Path(out_dir)
    if overwrite and out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
        shutil.rmtree(old, ignore_errors=True)
    if not (out / "manifest.json").is_file():
        def build(tmp: Path) -> None:
            manifest = _write_real(tmp, cfg)
            # written last: marks completeness
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")

        if out.exists():  # a folder without manifest: an interrupted run of an older layout
            raise FileExistsError(f"{out} exists but has no manifest.json; remove it to regenerate")
        _atomic_dir(out, build)
    for family in () if real_only else list(cfg.families_train) + list(cfg.families_unseen):
        ensure_family(out, cfg, family)
    return out


def family_dir(bench_dir: str | os.PathLike, config: BenchmarkConfig, family: str) -> Path:
    """Folder of ``family``'s files in the benchmark ``bench_dir`` (it may not exist yet)."""
    return Path(bench_dir) / "families" / config.family_key(family)


def ensure_family(bench_dir: str | os.PathLike, config: BenchmarkConfig, family: str) -> Path:
    """``family``'s folder, generated first if absent (the other families are not touched)."""
    bench = Path(bench_dir)
    out = family_dir(bench, config, family)
    if (out / "family.json").is_file():
        return out
    manifest = read_manifest(bench)
    rel_root = out.relative_to(bench).as_posix()

    def build(tmp: Path) -> None:
        # write into tmp but compute paths as if at `out`: real frames are read from the bench root
        info = _write_family(tmp, rel_root, config, manifest, family)
        (tmp / "family.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

    log.info("generating benchmark family %r into %s (once; cached afterwards)", family, out)
    return _atomic_dir(out, build)


def read_manifest(bench_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a generated benchmark; ``FileNotFoundError`` naming the folder if absent."""
    path = Path(bench_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark manifest at {path} (generate it with "
                                f"`python -m data_modules.benchmark generate {Path(bench_dir).parent}`)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT or "real_videos" not in manifest:
        raise ValueError(f"{path}: not an r2m benchmark manifest of generator version {GENERATOR_VERSION} "
                         f"(format={manifest.get('format')!r}); remove the folder to regenerate it")
    return manifest


def read_family(family_folder: str | os.PathLike) -> dict[str, Any]:
    """``family.json`` of a generated family folder."""
    path = Path(family_folder) / "family.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark family record at {path}")
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format") != FAMILY_FORMAT:
        raise ValueError(f"{path}: not an r2m benchmark family record (format={info.get('format')!r})")
    return info


def ensure_benchmark(root: str | os.PathLike, config: BenchmarkConfig | None = None,
                     real_only: bool = False) -> Path:
    """``<root>/<real hash>`` with the real crops and (unless ``real_only``) every family of
    ``config``, generating what is missing (only that)."""
    cfg = config or BenchmarkConfig()
    cfg.validate(families=not real_only)
    bench = Path(root) / cfg.config_hash()
    if (bench / "manifest.json").is_file():
        manifest = read_manifest(bench)
        if manifest.get("config_hash") != cfg.config_hash():
            raise ValueError(f"{bench}/manifest.json has config_hash {manifest.get('config_hash')!r}, "
                             f"expected {cfg.config_hash()!r}; remove the folder to regenerate it")
    else:
        log.info("generating the built-in benchmark reals into %s (once; cached afterwards)", bench)
    return generate_benchmark(bench, cfg, real_only=real_only)


def _verify_folder(folder: Path, record: Mapping[str, Any], skip: set[str]) -> list[str]:
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in skip:
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    problems = []
    if len(files) != record.get("n_files"):
        problems.append(f"{folder}: {len(files)} files on disk, its record lists {record.get('n_files')}")
    if _content_hash(files) != record.get("content_sha256"):
        problems.append(f"{folder}: content hash differs from its record (files changed or corrupted)")
    return problems


def verify_benchmark(bench_dir: str | os.PathLike) -> list[str]:
    """Re-hash every file of a generated benchmark (reals and every family folder); returns a list of
    problems (empty = intact)."""
    bench = Path(bench_dir)
    manifest = read_manifest(bench)
    families = bench / "families"
    problems = _verify_folder(bench, manifest, {"manifest.json"} | {
        p.relative_to(bench).as_posix() for p in families.rglob("*")} if families.exists() else {"manifest.json"})
    if families.exists():
        for folder in sorted(p for p in families.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                problems += _verify_folder(folder, read_family(folder), {"family.json"})
            except (FileNotFoundError, ValueError) as exc:
                problems.append(str(exc))
    return problems
