"""A small synthetic dataset in DF40 / DeepfakeBench format, for tests and the tiny training run.

Layout written under ``root``::

    json/    FSAll_ff.json FRAll_ff.json EFSAll_ff.json      (train + test)
             FSAll_cdf.json FRAll_cdf.json EFSAll_cdf.json   (test)
             deepfacelab.json heygen.json                    (test, "unseen")
    data/    ffpp_real/ celebdf_real/ df40_train/ df40_test/  (PNG crops)
    ffpp_splits/ train.json test.json                        (FF++-style pair lists: identity_groups)
    fixture.json                                             (manifest, written last)

(``layout="df40"``: the README's layout instead — ``dataset_json/`` and ``DF40/ DF40_train/
FaceForensics++/ Celeb-DF-v2/`` under ``root``, all nine DF40 unseen sets.)

Identities follow FF++ / Celeb-DF naming: training / test reals ``000``..., consecutive reals form
FF++-style pairs whose fakes are ``000_001`` and ``001_000`` (an odd last video joins the last pair);
EFS buckets mirror the real ids; CDF-domain test videos are ``idA_NNNN`` / ``idA_idB_NNNN``.
:func:`fixture_datamodule` groups the pairs with the ``ffpp_splits`` files (``identity_groups``), as
a user with the FF++ split files would.

JSON paths use the DF40 prefixes ``deepfakes_detection_datasets/{DF40,DF40_train,FaceForensics++,
Celeb-DF-v2}``, which the returned ``path_remap`` maps to the folders under ``data/`` (so remapping
is exercised). Real videos are repeated for every method of a family JSON and shared by the three
FF-domain family JSONs (dedupe is exercised). FS/FR frames are named ``NNN.png``; EFS images
``seedNNNN.png``; frame lists in the JSONs are shuffled (natural sort is exercised).

Images: a smooth per-video colour field with mild noise; fakes add a family-specific artefact that a
tiny model can learn — FS: a bright square, FR: horizontal stripes over the lower half, EFS: a
coarse checkerboard (block = size/8, so it survives a 2x downscale). The cross-dataset (CDF) domain has a different tint; unseen sets are twice the size.
Content depends only on ``seed`` and the file path, so the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_df40_fixture", "ensure_fixture", "fixture_datamodule", "break_image", "BROKEN_KINDS",
           "DEFAULT_METHODS", "FIXTURE_REMAP"]

DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "fs": ("simswap", "fsgan"),
    "fr": ("fomm", "wav2lip"),
    "efs": ("StyleGAN3", "ddim"),
}
UNSEEN_SETS: dict[str, str] = {"deepfacelab": "fs", "heygen": "fr"}  # set → artefact family
#: layout="df40": all nine DF40 P3 sets (the test_splits of configs/data/df40.yaml)
DF40_UNSEEN_SETS: dict[str, str] = {"deepfacelab": "fs", "heygen": "fr", "whichisreal": "efs", "MidJourney": "efs",
                                    "stargan": "fs", "starganv2": "fr", "styleclip": "efs", "e4e": "fs",
                                    "CollabDiff": "efs"}
FAMILY_JSON = {"fs": "FSAll", "fr": "FRAll", "efs": "EFSAll"}
P = "deepfakes_detection_datasets"
#: JSON prefix → folder under ``data/``.
FIXTURE_REMAP: dict[str, str] = {
    f"{P}/DF40": "df40_test",
    f"{P}/DF40_train": "df40_train",
    f"{P}/FaceForensics++": "ffpp_real",
    f"{P}/Celeb-DF-v2": "celebdf_real",
}
MANIFEST = "fixture.json"
FORMAT = "r2m-df40-fixture-v2"          # v2: FF++-style pairs, ffpp_splits/, layout
OLD_FORMATS = ("r2m-df40-fixture-v1",)


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _image(seed: int, path: str, size: int, kind: str, domain: str) -> np.ndarray:
    """RGB uint8 image; ``kind`` in real/fs/fr/efs, ``domain`` in ff/cdf/unseen."""
    video = os.path.dirname(path)
    base_rng, rng = _rng(seed, "video", video), _rng(seed, "frame", path)
    colour = base_rng.integers(70, 170, size=3).astype(np.float32)
    if domain == "cdf":
        colour = colour + np.array([35.0, -10.0, -20.0], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    slope = base_rng.uniform(-25, 25, size=(2, 3)).astype(np.float32)
    img = colour + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    img = img + rng.normal(0.0, 4.0, size=img.shape).astype(np.float32)
    if kind == "fs":
        side = max(2, size // 4)
        y0, x0 = rng.integers(0, size - side + 1, size=2)
        img[y0:y0 + side, x0:x0 + side] = 250.0
    elif kind == "fr":
        band = max(1, size // 16)  # stripes of `band` rows every 2·band rows, lower half only
        rows = (np.arange(size) // band) % 2 == 0
        rows[: size // 2] = False
        img[rows] += 70.0
    elif kind == "efs":
        block = max(1, size // 8)  # coarse enough to survive a 2x downscale
        checker = (((np.indices((size, size)) // block).sum(axis=0) % 2) * 2 - 1).astype(np.float32)
        img = img + 35.0 * checker[..., None]
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _pairs(videos: Sequence[str]) -> dict[str, str]:
    """FF++-style pairing: consecutive videos form a pair; with an odd count the last video is the
    partner of the first of the last pair (a group of three)."""
    out: dict[str, str] = {}
    for i in range(0, len(videos) - 1, 2):
        out[videos[i]], out[videos[i + 1]] = videos[i + 1], videos[i]
    if len(videos) % 2:
        out[videos[-1]] = videos[-3] if len(videos) >= 3 else videos[-1]
    return out


def _frame_names(seed: int, video: str, n: int, efs: bool) -> list[str]:
    rng = _rng(seed, "names", video)
    if efs:
        return [f"seed{k:04d}.png" for k in sorted(rng.choice(10000, size=n, replace=False))]
    return [f"{k:03d}.png" for k in sorted(rng.choice(300, size=n, replace=False))]


class _Builder:
    def __init__(self, seed: int, frames_per_video: int, image_size: int, with_compression: bool) -> None:
        self.seed, self.fpv, self.size, self.comp = seed, frames_per_video, image_size, with_compression
        self.files: dict[str, tuple[str, str, int]] = {}  # JSON path → (kind, domain, size)
        self.jsons: dict[str, dict] = {}

    def video(self, folder: str, kind: str, domain: str, efs_names: bool = False, size: int | None = None) -> list[str]:
        names = _frame_names(self.seed, folder, self.fpv, efs_names)
        paths = [f"{folder}/{n}" for n in names]
        for p in paths:
            self.files[p] = (kind, domain, size or self.size)
        order = _rng(self.seed, "order", folder).permutation(len(paths))
        return [paths[i] for i in order]  # JSON order shuffled on purpose

    def add(self, json_name: str, group: str, split: str, video: str, label: str, frames: list[str]) -> None:
        node = self.jsons.setdefault(json_name, {json_name: {}})[json_name].setdefault(group, {}).setdefault(split, {})
        if self.comp and json_name.endswith("_ff"):  # only FF-domain files, as FF++ files in DeepfakeBench
            node = node.setdefault("c23", {})
        node[video] = {"label": label, "frames": frames}


def write_df40_fixture(
    root: str | os.PathLike,
    *,
    n_videos: int = 4,
    frames_per_video: int = 4,
    image_size: int = 32,
    methods: Mapping[str, Sequence[str]] | None = None,
    with_compression: bool = False,
    seed: int = 0,
    missing: int = 0,
    corrupt: int = 0,
    layout: str = "fixture",
) -> dict[str, Any]:
    """Write the fixture under ``root`` (see module docstring) and return its description:
    ``root, json_dir, data_root, path_remap, families, test_splits, methods, missing, corrupt``
    (``missing``/``corrupt``: JSON-listed paths of frames not written / written as garbage bytes).

    ``layout="fixture"``: JSONs in ``json/``, frames under ``data/{df40_test,df40_train,ffpp_real,
    celebdf_real}`` (remapped); ``layout="df40"``: the README's / configs/data/df40.yaml's layout —
    JSONs in ``dataset_json/``, frames under ``<root>/{DF40,DF40_train,FaceForensics++,Celeb-DF-v2}``
    (``data_root`` = ``root``, ``path_remap`` = ``data_modules.df40.DEFAULT_PATH_REMAP``).

    ``n_videos`` real and fake videos per method and split; ``with_compression`` nests the splits of
    the FF-domain family JSONs under a ``c23`` level, as DeepfakeBench's FF++ files do.
    """
    if layout not in ("fixture", "df40"):
        raise ValueError(f"layout must be 'fixture' or 'df40', got {layout!r}")
    if n_videos < 1 or frames_per_video < 1 or image_size < 4:
        raise ValueError("n_videos and frames_per_video must be >= 1 and image_size >= 4")
    methods = {k: tuple(v) for k, v in (methods or DEFAULT_METHODS).items()}
    unknown = set(methods) - set(FAMILY_JSON)
    if unknown:
        raise ValueError(f"methods: unknown families {sorted(unknown)} (known: {sorted(FAMILY_JSON)})")
    root = Path(root)
    b = _Builder(seed, frames_per_video, image_size, with_compression)
    ff_real = f"{P}/FaceForensics++/original_sequences/youtube/c23/frames"
    cdf_real = f"{P}/Celeb-DF-v2/Celeb-real/frames"
    vids = {"train": [f"{i:03d}" for i in range(n_videos)],
            "test": [f"{i:03d}" for i in range(n_videos, 2 * n_videos)]}
    real_frames = {s: {v: b.video(f"{ff_real}/{v}", "real", "ff") for v in vs} for s, vs in vids.items()}
    cdf_ids = [f"id{i}_{i:04d}" for i in range(n_videos)]
    cdf_real_frames = {v: b.video(f"{cdf_real}/{v}", "real", "cdf") for v in cdf_ids}

    # FF++-style pairs (000↔001, 002↔003, ...; an odd last video joins the previous pair): a pair
    # gives the fakes a_b and b_a, as in FF++ / DF40's FF-domain FS and FR sets.
    partner = {s: _pairs(vs) for s, vs in vids.items()}
    for fam, fam_methods in methods.items():
        ff_json, cdf_json = f"{FAMILY_JSON[fam]}_ff", f"{FAMILY_JSON[fam]}_cdf"
        real_label, fake_label = f"{FAMILY_JSON[fam]}_Real", f"{FAMILY_JSON[fam]}_Fake"
        for m in fam_methods:
            for split, vs in vids.items():
                root_name = "DF40_train" if split == "train" else "DF40"
                for v in vs:
                    b.add(ff_json, f"{m}_Real", split, v, real_label, list(real_frames[split][v]))
                    target = partner[split][v]
                    if fam == "efs":
                        folder, name = f"{P}/{root_name}/{m}/ff/{v}", v
                    else:
                        name = f"{v}_{target}"
                        folder = f"{P}/{root_name}/{m}/ff/frames/{name}"
                    b.add(ff_json, f"{m}_Fake", split, name, fake_label, b.video(folder, fam, "ff", fam == "efs"))
            for j, v in enumerate(cdf_ids):
                b.add(cdf_json, f"{m}_Real", "test", v, real_label, list(cdf_real_frames[v]))
                if fam == "efs":
                    folder, name = f"{P}/DF40/{m}/cdf/Fake_from_Celeb-real/{v}", v
                else:
                    name = f"id{j}_id{(j + 1) % n_videos}_{j:04d}"
                    folder = f"{P}/DF40/{m}/cdf/frames/{name}"
                b.add(cdf_json, f"{m}_Fake", "test", name, fake_label, b.video(folder, fam, "cdf", fam == "efs"))
    unseen_sets = DF40_UNSEEN_SETS if layout == "df40" else UNSEEN_SETS
    for unseen, fam in unseen_sets.items():
        for v in (f"{i:04d}" for i in range(n_videos)):
            for kind, sub, label in (("real", "real", "_Real"), (fam, "fake", "_Fake")):
                frames = b.video(f"{P}/DF40/{unseen}/{sub}/{v}", kind, "unseen", size=2 * image_size)
                b.add(unseen, f"{unseen}{label}", "test", v, f"{unseen}{label}", frames)

    all_paths = sorted(b.files)
    pick = _rng(seed, "broken").permutation(len(all_paths))
    if missing + corrupt > len(all_paths):
        raise ValueError(f"missing + corrupt ({missing + corrupt}) exceeds the {len(all_paths)} frames")
    missing_paths = sorted(all_paths[i] for i in pick[:missing])
    corrupt_paths = sorted(all_paths[i] for i in pick[missing:missing + corrupt])

    import cv2

    if layout == "df40":
        from data_modules.index import DEFAULT_PATH_REMAP

        rel_json, rel_data, remap = "dataset_json", ".", dict(DEFAULT_PATH_REMAP)
    else:
        rel_json, rel_data, remap = "json", "data", dict(FIXTURE_REMAP)
    json_dir, data_root = root / rel_json, root / rel_data
    by_len = sorted(remap.items(), key=lambda kv: -len(kv[0]))
    skip = set(missing_paths)
    broken = set(corrupt_paths)
    for p in all_paths:
        if p in skip:
            continue
        prefix, repl = next((k, v) for k, v in by_len if p.startswith(k + "/"))
        dest = data_root / repl / p[len(prefix) + 1:]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if p in broken:
            dest.write_bytes(b"\x89PNG not really" + _rng(seed, "junk", p).bytes(32))
            continue
        kind, domain, size = b.files[p]
        rgb = _image(seed, p, size, kind, domain)
        if not cv2.imwrite(str(dest), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"could not write {dest}")
    json_dir.mkdir(parents=True, exist_ok=True)
    for name, obj in b.jsons.items():
        (json_dir / f"{name}.json").write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    splits_dir = root / "ffpp_splits"  # FF++ official split files: lists of [target, source] pairs
    splits_dir.mkdir(parents=True, exist_ok=True)
    for split, vs in vids.items():
        pairs = sorted({tuple(sorted((v, partner[split][v]))) for v in vs if partner[split][v] != v})
        (splits_dir / f"{split}.json").write_text(json.dumps([list(p) for p in pairs]) + "\n", encoding="utf-8")

    fams = [f for f in ("fs", "fr", "efs") if f in methods]
    info: dict[str, Any] = {
        "format": FORMAT,
        "params": {"n_videos": n_videos, "frames_per_video": frames_per_video, "image_size": image_size,
                   "methods": {k: list(v) for k, v in methods.items()}, "with_compression": with_compression,
                   "layout": layout,
                   "seed": seed, "missing": missing, "corrupt": corrupt},
        "json_dir": rel_json,
        "data_root": rel_data,
        "identity_groups": [f"ffpp_splits/{s}.json" for s in vids],
        "path_remap": remap,
        "families": {**{f: [f"{FAMILY_JSON[f]}_ff"] for f in fams}, "joint": [f"{FAMILY_JSON[f]}_ff" for f in fams]},
        "test_splits": {
            "in_distribution": [f"{FAMILY_JSON[f]}_ff" for f in fams],
            "cross_dataset": [f"{FAMILY_JSON[f]}_cdf" for f in fams],
            "unseen": list(unseen_sets),
        },
        "methods": {k: list(v) for k, v in methods.items()},
        "missing": missing_paths,
        "corrupt": corrupt_paths,
    }
    (root / MANIFEST).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return _absolute(root, info)


BROKEN_KINDS = ("truncated", "zero-byte", "bit-flipped", "text")


def break_image(path: str | os.PathLike, kind: str, seed: int = 0) -> None:
    """Damage an image file in place, the ways files break on disk: ``truncated`` (first half kept),
    ``zero-byte``, ``bit-flipped`` (one bit flipped in the compressed image data, headers intact) or
    ``text`` (a text file under the image's name)."""
    path = Path(path)
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "bit-flipped":
        start = data.find(b"IDAT")
        if start < 0:
            raise ValueError(f"{path}: no IDAT chunk to flip a bit in (not a PNG?)")
        length = int.from_bytes(data[start - 4:start], "big")
        pos = start + 4 + int(_rng(seed, "flip", str(path)).integers(2, max(3, length - 1)))
        buf = bytearray(data)
        buf[pos] ^= 1 << int(_rng(seed, "bit", str(path)).integers(0, 8))
        path.write_bytes(bytes(buf))
    elif kind == "text":
        path.write_text("this is not an image\n", encoding="utf-8")
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {BROKEN_KINDS}")


def _absolute(root: Path, info: dict[str, Any]) -> dict[str, Any]:
    out = dict(info)
    out["root"] = str(root)
    out["json_dir"] = str(root / info["json_dir"])
    out["data_root"] = str(root) if info["data_root"] == "." else str(root / info["data_root"])
    out["identity_groups"] = [str(root / p) for p in info.get("identity_groups", [])]
    return out


def ensure_fixture(root: str | os.PathLike, **params: Any) -> dict[str, Any]:
    """Write the fixture at ``root`` unless a complete one is there (idempotent, safe when several
    processes race: written to a temporary sibling folder, then renamed). Existing fixtures written
    with other ``params`` raise ``ValueError``."""
    root = Path(root)
    wanted = _normalised_params(params)
    manifest = root / MANIFEST
    if manifest.is_file() and _format(manifest) in OLD_FORMATS:  # a cache written by an older r2m: replace it
        import warnings

        warnings.warn(f"{root}: replacing a fixture written by an older r2m ({_format(manifest)})", stacklevel=2)
        stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale-", dir=root.parent))
        try:
            os.rename(root, stale / "old")
        except OSError:
            pass  # another process replaced it first
        shutil.rmtree(stale, ignore_errors=True)
    if not manifest.is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            write_df40_fixture(tmp, **params)
            try:
                os.rename(tmp, root)
            except OSError:
                if root.is_dir() and not any(root.iterdir()):
                    root.rmdir()
                    os.rename(tmp, root)
                elif not manifest.is_file():
                    raise FileExistsError(f"{root} exists and is not a DF40 fixture (no {MANIFEST})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads(manifest.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ValueError(f"{manifest}: not a {FORMAT} manifest")
    if info["params"] != wanted:
        raise ValueError(f"{root} holds a fixture written with {info['params']}, not {wanted}; "
                         "delete it or choose another root")
    return _absolute(root, info)


def _format(manifest: Path) -> str | None:
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _normalised_params(params: Mapping[str, Any]) -> dict[str, Any]:
    import inspect

    sig = inspect.signature(write_df40_fixture)
    out = {k: p.default for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = set(params) - set(out)
    if unknown:
        raise TypeError(f"unknown fixture parameters {sorted(unknown)}")
    out.update(params)
    methods = out["methods"] or DEFAULT_METHODS
    out["methods"] = {k: list(v) for k, v in methods.items()}
    return out


def fixture_datamodule(root: str | os.PathLike, family: str = "fs", fixture: Mapping[str, Any] | None = None,
                       **kwargs: Any):
    """Ensure the fixture at ``root`` (``fixture`` = :func:`write_df40_fixture` parameters) and return a
    :class:`~data_modules.df40.DF40DataModule` for it (families fs/fr/efs/joint, splits
    in_distribution/cross_dataset/unseen, the fixture's path_remap). ``kwargs`` override the
    DataModule defaults here (all frames per video, 25 % validation, 32 px, no workers)."""
    from data_modules.df40 import DF40DataModule

    info = ensure_fixture(root, **dict(fixture or {}))
    args: dict[str, Any] = {
        "json_dir": info["json_dir"],
        "data_root": info["data_root"],
        "families": info["families"],
        "test_splits": info["test_splits"],
        "path_remap": info["path_remap"],
        "identity_groups": info["identity_groups"],
        "frames_per_video": None,
        "val_fraction": 0.25,
        "image_size": 32,
        "batch_size": 16,
        "eval_batch_size": 32,
        "num_workers": 0,
    }
    args.update(kwargs)
    return DF40DataModule(family=family, **args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_modules.fixtures",
                                     description="Write a small synthetic DF40-format dataset.")
    parser.add_argument("out_dir")
    parser.add_argument("--missing", type=int, default=0, help="frames listed in the JSONs but not written")
    parser.add_argument("--corrupt", type=int, default=0, help="frames written as undecodable bytes")
    parser.add_argument("--n-videos", type=int, default=4)
    parser.add_argument("--frames-per-video", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--with-compression", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("fixture", "df40"), default="fixture",
                        help="df40 = the README's layout: dataset_json/ + DF40/ DF40_train/ FaceForensics++/ Celeb-DF-v2/")
    args = parser.parse_args(argv)
    info = write_df40_fixture(args.out_dir, n_videos=args.n_videos, frames_per_video=args.frames_per_video,
                              image_size=args.image_size, with_compression=args.with_compression,
                              seed=args.seed, missing=args.missing, corrupt=args.corrupt, layout=args.layout)
    print(f"wrote DF40 fixture: json_dir={info['json_dir']} data_root={info['data_root']}")
    print("path_remap: " + ", ".join(f"{k}={v}" for k, v in info["path_remap"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
