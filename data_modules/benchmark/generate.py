"""Write the built-in benchmark to disk once, in the DF40 / DeepfakeBench JSON + PNG format.

Layout of one generated benchmark (``<root>/<config hash>/``)::

    manifest.json                      configuration, hashes, datasets, families, splits, pretrain frames
    json/<family>_<domain>.json        one DF40-format index per dataset
    frames/real/<domain>/<split>/<video>/<frame>.png
    frames/<family>/<domain>/<split>/<video>/<frame>.png

Datasets (DF40 analogues in brackets), with ``F`` a training family and ``U`` an unseen one:

* ``F_photo``   (``FSAll_ff``)  ``train`` + ``test`` splits, reals and ``F``-fakes of the photo domain;
* ``F_archive`` (``FSAll_cdf``) ``test`` only, reals and ``F``-fakes of the archive domain;
* ``U_photo``   (unknown sets)  ``test`` only, photo-domain reals and ``U``-fakes.

Each JSON is ``{name: {"<F>_Real": {split: {video: {"label": "<F>_Real", "frames": [...]}}},
"<F>_Fake": {...}}}`` with paths relative to the benchmark folder. Fake video ``i`` is the family
applied to every frame of real video ``i`` of the same domain/split (as DF40 fakes are made from FF++
/ Celeb-DF reals), so a detector must find the artefact, not the content. Like DF40, the family files
repeat the same real videos (the data module dedupes them by path).

Test splits: ``in_distribution`` = ``F_photo`` for every training family, ``cross_dataset`` =
``F_archive``, ``unseen`` = ``U_photo``. Families: one per training family plus ``joint`` (all;
after deduplication of the shared reals it holds one real per fake of each family, i.e. 1 : 3 for
three families, as DF40's joint training set).

Default size (``BenchmarkConfig()``): 100 real + 100 fake training videos of 4 frames per training
family, 40 + 40 test videos per test set, 1600 pretraining crops — 4 808 PNGs of 64 px (~40 MB),
generated in about 10 s of CPU time.

Pretraining reals: ``n_pretrain`` extra real frames of the photo domain's training band (never a
test region, never the archive domain), listed in the manifest under ``pretrain_frames``, for the
self-supervised pretraining of the shared base θ0.

Determinism and caching: every real video and every fake frame draws from its own generator
(:func:`~data_modules.benchmark.sources.item_rng`), PNGs are encoded by OpenCV at a fixed
compression level, JSON is written with sorted keys; the same configuration therefore gives
byte-identical files (on the same numpy / OpenCV build — the manifest records their versions and a
``content_sha256`` over all files). The folder name is a hash of the configuration, the generator
version, a hash of this package's generator code and each family's version, so a change of any of
them generates a new folder. Generation writes into a temporary sibling folder and renames it into
place (atomic: a crash never leaves a half-written benchmark; concurrent generators race harmlessly).
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
from data_modules.benchmark.sources import DOMAINS, item_rng, sample_video

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_FORMAT",
    "encode_png",
    "BenchmarkConfig",
    "generate_benchmark",
    "ensure_benchmark",
    "read_manifest",
    "verify_benchmark",
]

log = logging.getLogger(__name__)

#: Bump when the on-disk layout or the meaning of a configuration field changes.
GENERATOR_VERSION = "1"
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
    families_unseen: tuple[str, ...] = ("diffusion", "edit")
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
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field at fault."""
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
        if not self.families_train:
            raise ValueError("benchmark config: families_train is empty (at least one family trains a specialist)")
        both = set(self.families_train) & set(self.families_unseen)
        if both:
            raise ValueError(f"benchmark config: families {sorted(both)} are both trained on and unseen")
        for seq_name in ("families_train", "families_unseen"):
            seq = getattr(self, seq_name)
            if len(set(seq)) != len(seq):
                raise ValueError(f"benchmark config: {seq_name} lists a family twice: {list(seq)}")
            for fam in seq:
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

    def identity(self) -> dict[str, Any]:
        """Everything the generated bytes depend on (hashed into the folder name)."""
        fams = list(self.families_train) + list(self.families_unseen)
        return {
            "format": MANIFEST_FORMAT,
            "generator_version": GENERATOR_VERSION,
            "code_sha256": _code_hash(),
            "config": self.to_dict(),
            "family_versions": {f: get_family(f).version for f in fams},
        }

    def config_hash(self, length: int = 16) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]

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
    """Encodes PNGs into a folder and keeps a running content hash."""

    root: Path
    files: dict[str, str] = field(default_factory=dict)  # relative path → sha256 of bytes

    def png(self, rel: str, img: np.ndarray) -> str:
        self._write(rel, encode_png(img))
        return rel

    def text(self, rel: str, text: str) -> None:
        self._write(rel, text.encode("utf-8"))

    def _write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[rel] = hashlib.sha256(data).hexdigest()

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for rel in sorted(self.files):
            h.update(rel.encode("utf-8"))
            h.update(self.files[rel].encode("ascii"))
        return h.hexdigest()


def _frame_rel(kind: str, domain: str, split: str, video: str, frame: int) -> str:
    return f"frames/{kind}/{domain}/{split}/{video}/{frame:03d}.png"


def _video_name(i: int) -> str:
    return f"{i:04d}"


def _real_videos(writer: _Writer, cfg: BenchmarkConfig, domain: str, split: str, n_videos: int,
                 band: str) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Write ``n_videos`` real videos; return video name → [(relative path, image)]."""
    out = {}
    for i in range(n_videos):
        name = _video_name(i)
        frames = sample_video(domain, split, i, seed=cfg.seed, n_frames=cfg.frames_per_video,
                              size=cfg.image_size, band=band)
        out[name] = [(writer.png(_frame_rel("real", domain, split, name, j), img), img) for j, img in enumerate(frames)]
    return out


def _fake_videos(writer: _Writer, cfg: BenchmarkConfig, family: str, domain: str, split: str,
                 reals: Mapping[str, list[tuple[str, np.ndarray]]]) -> dict[str, list[str]]:
    out = {}
    for name, frames in reals.items():
        rels = []
        for j, (_, img) in enumerate(frames):
            fake = apply_family(family, img, item_rng(cfg.seed, "fake", family, domain, split, name, j),
                                strength=cfg.strength)
            rels.append(writer.png(_frame_rel(family, domain, split, name, j), fake))
        out[name] = rels
    return out


def _split_entries(label: str, videos: Mapping[str, list[str]]) -> dict[str, Any]:
    return {name: {"label": label, "frames": list(frames)} for name, frames in videos.items()}


def _write_tree(root: Path, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Generate everything into ``root`` (an empty folder); return the manifest."""
    started = time.perf_counter()
    writer = _Writer(root)
    a, b = cfg.train_domain, cfg.cross_domain
    n_tr, n_te = cfg.videos("n_train"), cfg.videos("n_test")
    reals = {
        (a, "train"): _real_videos(writer, cfg, a, "train", n_tr, band="train"),
        (a, "test"): _real_videos(writer, cfg, a, "test", n_te, band="test"),
        (b, "test"): _real_videos(writer, cfg, b, "test", n_te, band="all"),
    }
    real_rels = {k: {name: [rel for rel, _ in frames] for name, frames in v.items()} for k, v in reals.items()}

    datasets: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, str, tuple[str, ...]]] = [(f, a, ("train", "test")) for f in cfg.families_train]
    plan += [(f, b, ("test",)) for f in cfg.families_train]
    plan += [(f, a, ("test",)) for f in cfg.families_unseen]
    for family, domain, splits in plan:
        name = cfg.dataset_name(family, domain)
        real_label, fake_label = f"{family}_Real", f"{family}_Fake"
        index: dict[str, dict[str, Any]] = {real_label: {}, fake_label: {}}
        counts = {}
        for split in splits:
            fakes = _fake_videos(writer, cfg, family, domain, split, reals[(domain, split)])
            index[real_label][split] = _split_entries(real_label, real_rels[(domain, split)])
            index[fake_label][split] = _split_entries(fake_label, fakes)
            counts[split] = {"real_videos": len(real_rels[(domain, split)]), "fake_videos": len(fakes),
                             "frames": 2 * len(fakes) * cfg.frames_per_video}
        writer.text(f"json/{name}.json", json.dumps({name: index}, indent=1, sort_keys=True) + "\n")
        datasets[name] = {"family": family, "domain": domain, "splits": counts}

    pretrain = []
    n_pre_videos = -(-cfg.n_pretrain // cfg.frames_per_video) if cfg.n_pretrain else 0
    for i in range(n_pre_videos):
        frames = sample_video(a, "pretrain", i, seed=cfg.seed, n_frames=cfg.frames_per_video,
                              size=cfg.image_size, band="train")
        for j, img in enumerate(frames):
            if len(pretrain) < cfg.n_pretrain:
                pretrain.append(writer.png(_frame_rel("real", a, "pretrain", _video_name(i), j), img))

    import cv2
    import skimage

    fam_names = list(cfg.families_train) + list(cfg.families_unseen)
    manifest = {
        **cfg.identity(),
        "config_hash": cfg.config_hash(),
        "json_dir": "json",
        "data_root": ".",
        "families": cfg.families,
        "test_splits": cfg.test_splits,
        "family_info": {f: {"imitates": get_family(f).imitates, "description": get_family(f).description}
                        for f in fam_names},
        "domains": {d: {"sources": list(DOMAINS[d].sources), "description": DOMAINS[d].description}
                    for d in (a, b)},
        "datasets": datasets,
        "pretrain_frames": pretrain,
        "n_files": len(writer.files),
        "content_sha256": writer.content_hash(),
        "library_versions": {"numpy": np.__version__, "opencv": cv2.__version__, "scikit-image": skimage.__version__},
    }
    log.info("generated benchmark %s: %d files in %.1f s", manifest["config_hash"], len(writer.files),
             time.perf_counter() - started)
    return manifest


def generate_benchmark(out_dir: str | os.PathLike, config: BenchmarkConfig | None = None,
                       overwrite: bool = False) -> Path:
    """Generate the benchmark into ``out_dir`` (atomically: temp sibling folder, then rename).

    An existing complete benchmark at ``out_dir`` is kept (``overwrite=False``) or replaced."""
    cfg = config or BenchmarkConfig()
    cfg.validate()
    out = Path(out_dir)
    if (out / "manifest.json").is_file() and not overwrite:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _write_tree(tmp, cfg)
        text = json.dumps(manifest, indent=1) + "\n"  # insertion order: splits stay in protocol order
        (tmp / "manifest.json").write_text(text, encoding="utf-8")  # written last: marks completeness
        if out.exists():
            if (out / "manifest.json").is_file() and not overwrite:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if (out / "manifest.json").is_file():  # lost a race against a concurrent generator
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(bench_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a generated benchmark; ``FileNotFoundError`` naming the folder if absent."""
    path = Path(bench_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark manifest at {path} (generate it with "
                                f"`python -m data_modules.benchmark generate {Path(bench_dir).parent}`)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not an r2m benchmark manifest (format={manifest.get('format')!r})")
    return manifest


def ensure_benchmark(root: str | os.PathLike, config: BenchmarkConfig | None = None) -> Path:
    """``<root>/<config hash>``, generated there first if it is not complete yet."""
    cfg = config or BenchmarkConfig()
    cfg.validate()
    bench = Path(root) / cfg.config_hash()
    if (bench / "manifest.json").is_file():
        manifest = read_manifest(bench)
        if manifest.get("config_hash") != cfg.config_hash():
            raise ValueError(f"{bench}/manifest.json has config_hash {manifest.get('config_hash')!r}, "
                             f"expected {cfg.config_hash()!r}; remove the folder to regenerate it")
        return bench
    log.info("generating the built-in benchmark into %s (once; cached afterwards)", bench)
    return generate_benchmark(bench, cfg)


def _iter_files(bench: Path) -> Iterable[Path]:
    for path in sorted(bench.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            yield path


def verify_benchmark(bench_dir: str | os.PathLike) -> list[str]:
    """Re-hash every file of a generated benchmark; returns a list of problems (empty = intact)."""
    bench = Path(bench_dir)
    manifest = read_manifest(bench)
    writer = _Writer(bench)
    for path in _iter_files(bench):
        writer.files[path.relative_to(bench).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    problems = []
    if len(writer.files) != manifest.get("n_files"):
        problems.append(f"{bench}: {len(writer.files)} files on disk, manifest lists {manifest.get('n_files')}")
    if writer.content_hash() != manifest.get("content_sha256"):
        problems.append(f"{bench}: content hash differs from the manifest (files changed or corrupted)")
    return problems
