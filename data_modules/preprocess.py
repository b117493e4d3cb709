"""Raw videos / images of a forgery family (and its reals) → aligned face crops in DF40's folder
layout + a DeepfakeBench / DF40 JSON index that ``train.py`` and the doctor read unchanged.

Usage::

    python -m data_modules.preprocess --fake raw/myswap --real raw/real --name myswap_ff \\
        --out data/df40_local [--json-dir data/df40_local/json] [--split train] [--frames 32] [--workers 4]

Inputs (each ``--fake`` / ``--real`` folder, not recursive): every video file is one video; every
sub-folder of images is one "video" (a bucket of frames, like DF40's EFS folders); a loose image is
a one-frame video. The video folder name is the file / folder name without extension, so name
your files as the source data does: FF++ style (reals ``000``, fakes ``000_003`` made from 000 and
003) and Celeb-DF style (``id0_0001``, ``id0_id1_0001``) names carry the identity pairing that the
leak-free validation carve uses (``data_modules.identities``); other names fall back to one
identity per video folder. When pairing is not in the names, give it explicitly with
``--identities FILE.csv`` (rows ``video,identity[;identity...]``): each JSON video entry then
carries an ``"identities"`` list.

Output (``--out`` = the ``data_root``)::

    <out>/<method>/frames/<video>/<NNN>.png        256×256 aligned crops, NNN = frame index in the video
    <out>/<method>/landmarks/<video>/<NNN>.npy     68×2 landmarks on the crop (float32)
    <out>/<method>/reports/<video>.json            per-video report: frames read, faces found, skipped + why
    <json-dir>/<name>.json                          {name: {<method>_Real|_Fake: {split: {video: {label, frames}}}}}
    <json-dir>/<name>.report.json                   the run's report (every input, its status and reason)

``<method>`` is ``--method`` (default: the ``--fake`` folder's name) for fakes and ``--real-name``
(default: the ``--real`` folder's name) for reals; labels are ``<method>_Fake`` / ``<method>_Real``
(known to the label table through the ``_Real`` / ``_Fake`` suffix rule). JSON frame paths are
relative to ``--out``: use it as ``data_root`` with an empty ``path_remap``.

Resumable and atomic per video: a video's crops are written into a temporary folder renamed into
place, and its report (written last, atomically) marks it finished; a re-run skips finished videos
made with the same settings (and re-does those made with other settings). The JSON is merged into
an existing file of the same name (other splits are kept; a video listed under two splits is an
error) and written atomically at the end.

Exit status: 0 when every input gave at least one face crop; 1 when some input failed (unreadable,
broken, no face) — the JSON then lists only the videos that succeeded and the report says why the
others did not (``--allow-failures`` exits 0); 2 on usage errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_modules.faces import (
    IMAGE_EXTENSIONS,
    FaceExtractor,
    FrameResult,
    MediaError,
    MediaResult,
    extract_file,
    extract_many,
    media_kind,
    read_image,
    sample_indices,
)
from data_modules.index import natural_sorted

__all__ = ["VideoTask", "collect_inputs", "process_video", "build_index", "preprocess", "main"]

REPORT_VERSION = 1


@dataclass(frozen=True)
class VideoTask:
    """One input to preprocess: ``source`` (file or image folder), output ``folder`` (the method
    folder under ``--out``), ``video`` name, ``role`` (real / fake) and the recipe ``settings``."""

    source: str
    folder: str
    video: str
    role: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def report_path(self) -> Path:
        return Path(self.folder) / "reports" / f"{self.video}.json"

    @property
    def frames_dir(self) -> Path:
        return Path(self.folder) / "frames" / self.video

    @property
    def landmarks_dir(self) -> Path:
        return Path(self.folder) / "landmarks" / self.video


def collect_inputs(folder: str | os.PathLike) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(video name, source path), ...], ignored files)`` of one input folder (not recursive):
    video files, image files and sub-folders holding images. Raises ``ValueError`` when two inputs
    map to the same video name."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    found: dict[str, str] = {}
    ignored: list[str] = []
    for entry in natural_sorted(os.listdir(root)):
        if entry.startswith("."):
            continue
        path = root / entry
        if path.is_dir():
            if any(media_kind(p) == "image" for p in os.listdir(path)):
                name = entry
            else:
                ignored.append(str(path))
                continue
        elif media_kind(path) is not None:
            name = path.stem
        else:
            ignored.append(str(path))
            continue
        if name in found:
            raise ValueError(f"{root}: inputs {found[name]!r} and {str(path)!r} both give video name {name!r}")
        found[name] = str(path)
    return sorted(found.items()), ignored


def _folder_result(path: str, extractor: FaceExtractor, n_frames: int | None) -> MediaResult:
    """Faces of an image folder treated as one video (images in natural order, sampled uniformly)."""
    images = natural_sorted(p for p in os.listdir(path) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
    result = MediaResult(path=path, kind="image_folder", n_total=len(images))
    for i in sample_indices(len(images), n_frames):
        try:
            image = read_image(os.path.join(path, images[i]))
        except MediaError as err:
            result.frames.append(FrameResult(i, None, reason=f"not decoded: {err.reason}"))
            continue
        faces, reason = extractor.faces(image)
        result.frames.append(FrameResult(i, None, faces, reason))
    if not result.frames:
        result.error = "no readable image in the folder"
    return result


def _finished(task: VideoTask) -> dict[str, Any] | None:
    """The report of a finished video made with the same settings, when its crops are all there."""
    try:
        report = json.loads(task.report_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if report.get("version") != REPORT_VERSION or report.get("settings") != dict(task.settings):
        return None
    if report.get("status") != "ok" or report.get("source") != task.source:
        return None
    if not all((task.frames_dir / f).is_file() for f in report.get("frames", [])):
        return None
    return report


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def process_video(task: VideoTask, extractor: FaceExtractor) -> dict[str, Any]:
    """Extract, write and report one video (run in a pool worker). Never raises for bad media."""
    done = _finished(task)
    if done is not None:
        return {**done, "resumed": True}
    settings = dict(task.settings)
    try:
        if os.path.isdir(task.source):
            result = _folder_result(task.source, extractor, settings["n_frames"])
        else:
            result = extract_file(task.source, extractor, settings["n_frames"])
    except Exception as err:  # an unexpected failure of one video must not stop the run
        result = MediaResult(path=task.source, kind=media_kind(task.source), error=f"{type(err).__name__}: {err}")
    frames: list[str] = []
    per_frame: list[dict[str, Any]] = []
    if result.ok:
        import cv2
        import numpy as np

        parent = task.frames_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        task.landmarks_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_frames = Path(tempfile.mkdtemp(prefix=f".{task.video}.", suffix=".tmp", dir=parent))
        tmp_lm = Path(tempfile.mkdtemp(prefix=f".{task.video}.", suffix=".tmp", dir=task.landmarks_dir.parent))
        try:
            for fr in result.frames:
                if fr.faces:
                    name = f"{fr.index:03d}"
                    face = fr.faces[0]
                    if not cv2.imwrite(str(tmp_frames / f"{name}.png"), cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR)):
                        raise OSError(f"could not write {tmp_frames / (name + '.png')}")
                    np.save(tmp_lm / f"{name}.npy", face.crop_landmarks.astype(np.float32))
                    frames.append(f"{name}.png")
            _replace_dir(tmp_lm, task.landmarks_dir)
            _replace_dir(tmp_frames, task.frames_dir)
        except BaseException:
            shutil.rmtree(tmp_frames, ignore_errors=True)
            shutil.rmtree(tmp_lm, ignore_errors=True)
            raise
    for fr in result.frames:
        per_frame.append({"index": fr.index, "time": fr.time, "faces": len(fr.faces),
                          "written": bool(fr.faces), "reason": fr.reason})
    summary = result.summary()
    status = "ok" if result.ok else ("failed" if result.error else "no_face")
    reason = result.error if result.error else (None if result.ok else "no face in any sampled frame")
    report = {
        "version": REPORT_VERSION, "video": task.video, "role": task.role, "source": task.source,
        "status": status, "reason": reason, "settings": settings, "frames": frames,
        "n_total_frames": summary["n_total_frames"], "frames_sampled": summary["frames_sampled"],
        "frames_read": summary["frames_read"], "faces_found": summary["faces_found"],
        "frames_written": len(frames), "skipped": summary["skipped"], "warning": summary["warning"],
        "per_frame": per_frame,
    }
    if status == "ok":  # the report marks the video finished: written last
        _atomic_json(task.report_path, report)
    else:  # a failed video leaves nothing behind that could look finished
        task.report_path.unlink(missing_ok=True)
        for d in (task.frames_dir, task.landmarks_dir):
            if d.exists():
                shutil.rmtree(d)
    return {**report, "resumed": False}


def _atomic_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temporary file + rename), as ``r2m.utils.atomic_write_json`` but without
    importing torch into every pool worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_identities(path: str | os.PathLike) -> dict[str, list[str]]:
    """``video,identity[;identity...]`` rows (a header row ``video,...`` is skipped) → mapping."""
    out: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or row[0].strip().startswith("#"):
                continue
            if n == 1 and row[0].strip().lower() == "video":
                continue
            if len(row) < 2 or not row[1].strip():
                raise ValueError(f"{path}:{n}: expected `video,identity[;identity...]`, got {row!r}")
            video = row[0].strip()
            if video in out:
                raise ValueError(f"{path}:{n}: video {video!r} listed twice")
            out[video] = [s.strip() for s in row[1].replace(" ", ";").split(";") if s.strip()]
    return out


def build_index(name: str, split: str, reports: Sequence[dict[str, Any]], out_root: Path,
                labels: dict[str, str], identities: dict[str, list[str]] | None = None,
                existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DeepfakeBench / DF40 JSON object of the finished videos, merged into ``existing``.

    ``labels`` maps role (``real`` / ``fake``) → label string (also the group key)."""
    top: dict[str, Any] = json.loads(json.dumps((existing or {}).get(name, {})))
    for rep in reports:
        if rep["status"] != "ok":
            continue
        label = labels[rep["role"]]
        folder = Path(rep["_folder"])
        for group, splits in top.items():
            for other_split, videos in splits.items():
                if other_split != split and rep["video"] in videos and group == label:
                    raise ValueError(f"video {rep['video']!r} of {label} is already listed under split "
                                     f"{other_split!r} in {name}.json; a video must be in one split")
        rel = folder.relative_to(out_root).as_posix()
        entry: dict[str, Any] = {"label": label,
                                 "frames": [f"{rel}/frames/{rep['video']}/{f}" for f in rep["frames"]]}
        if identities is not None:
            if rep["video"] not in identities:
                raise ValueError(f"--identities has no row for video {rep['video']!r} ({rep['source']})")
            entry["identities"] = identities[rep["video"]]
        top.setdefault(label, {}).setdefault(split, {})[rep["video"]] = entry
    return {name: top}


def _check_conflicts(tasks: Sequence[VideoTask], name: str, split: str, labels: dict[str, str],
                     existing: dict[str, Any] | None) -> None:
    """Before anything is written: a video folder already made from another source, or a video
    already listed under another split of the same JSON, is an error (never overwritten)."""
    top = (existing or {}).get(name, {})
    for task in tasks:
        try:
            old = json.loads(task.report_path.read_text(encoding="utf-8")).get("source")
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and old != task.source:
            raise ValueError(f"{task.frames_dir} already holds crops of {old!r}, not of {task.source!r}: "
                             "rename the input, choose another --method / --real-name, or delete that folder")
        for other, videos in top.get(labels[task.role], {}).items():
            if other != split and task.video in videos:
                raise ValueError(f"video {task.video!r} of {labels[task.role]} is already listed under split "
                                 f"{other!r} in {name}.json; a video must be in one split")


def preprocess(
    name: str,
    out: str | os.PathLike,
    fake: Sequence[str | os.PathLike] = (),
    real: Sequence[str | os.PathLike] = (),
    method: str | None = None,
    real_name: str | None = None,
    json_dir: str | os.PathLike | None = None,
    split: str = "train",
    n_frames: int | None = 32,
    size: int = 256,
    scale: float = 1.3,
    upsample: int = 1,
    redetect: bool = True,
    detect_max_side: int | None = None,
    identities: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole preprocessing (see module docstring); returns the run report (also written
    to ``<json_dir>/<name>.report.json``)."""
    from r2m.utils import atomic_write_json

    if not fake and not real:
        raise ValueError("nothing to do: give --fake and/or --real folders")
    out_root = Path(out).resolve()
    json_dir = Path(json_dir) if json_dir is not None else out_root
    method = method or (Path(fake[0]).resolve().name if fake else None)
    real_name = real_name or (Path(real[0]).resolve().name if real else None)
    prefix = method or real_name
    labels = {"fake": f"{prefix}_Fake", "real": f"{prefix}_Real"}
    id_map = read_identities(identities) if identities is not None else None
    settings = (("n_frames", n_frames), ("size", size), ("scale", scale), ("upsample", upsample),
                ("redetect", redetect), ("detect_max_side", detect_max_side))
    tasks: list[VideoTask] = []
    ignored: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for role, folders, folder_name in (("fake", fake, method), ("real", real, real_name)):
        for src in folders:
            items, skipped = collect_inputs(src)
            ignored += skipped
            for video, path in items:
                key = (role, video)
                if key in seen:
                    raise ValueError(f"{role} video name {video!r} appears in {seen[key]!r} and {path!r}")
                seen[key] = path
                tasks.append(VideoTask(os.path.abspath(path), str(out_root / folder_name), video, role, settings))
    if not tasks:
        raise ValueError(f"no video or image found in {[*map(str, fake), *map(str, real)]}")
    extractor_kwargs = dict(size=size, scale=scale, upsample=upsample, redetect=redetect,
                            detect_max_side=detect_max_side)
    json_path = json_dir / f"{name}.json"
    existing = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else None
    _check_conflicts(tasks, name, split, labels, existing)
    done = {i: _finished(t) for i, t in enumerate(tasks)}  # resume: finished videos never reach the pool
    todo = [t for i, t in enumerate(tasks) if done[i] is None]
    fresh = iter(extract_many(process_video, todo, extractor_kwargs, workers=workers,
                              desc=f"preprocess {name}", progress=progress))
    reports: list[dict[str, Any]] = []
    for i, task in enumerate(tasks):
        rep = {**done[i], "resumed": True} if done[i] is not None else next(fresh)
        rep["_folder"] = task.folder
        reports.append(rep)
    index = build_index(name, split, reports, out_root, labels, id_map, existing)
    failed = [r for r in reports if r["status"] != "ok"]
    run_report = {
        "name": name, "split": split, "labels": labels, "out": str(out_root), "json": str(json_path),
        "settings": dict(settings), "n_inputs": len(reports), "n_ok": len(reports) - len(failed),
        "n_failed": len(failed), "n_resumed": sum(1 for r in reports if r.get("resumed")),
        "ignored_files": ignored,
        "videos": [{k: v for k, v in r.items() if k not in ("per_frame", "_folder")} for r in reports],
    }
    atomic_write_json(json_dir / f"{name}.report.json", run_report)
    if any(r["status"] == "ok" for r in reports) or existing is not None:
        atomic_write_json(json_path, index)
    return run_report


def format_report(report: dict[str, Any]) -> str:
    """One line per video: status, frames read / sampled, faces, written, skip reasons."""
    lines = [f"{'video':<24} {'role':<5} {'status':<8} {'read':>5} {'faces':>5} {'written':>7}  skipped / reason"]
    for v in report["videos"]:
        skipped = ", ".join(f"{k}: {n}" for k, n in v["skipped"].items()) if v.get("skipped") else ""
        why = v["reason"] or skipped
        if v.get("reason") and skipped:
            why = f"{v['reason']} ({skipped})"
        lines.append(f"{v['video'][:24]:<24} {v['role']:<5} {v['status'] + ('*' if v.get('resumed') else ''):<8} "
                     f"{v['frames_read']:>5} {v['faces_found']:>5} {v['frames_written']:>7}  {why}")
    lines.append(f"{report['n_ok']}/{report['n_inputs']} videos ok ({report['n_resumed']} resumed, marked *), "
                 f"{report['n_failed']} failed; JSON: {report['json']}")
    if report["ignored_files"]:
        lines.append(f"ignored (not media): {len(report['ignored_files'])} file(s), e.g. {report['ignored_files'][0]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_modules.preprocess", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="dataset name = JSON file stem and top-level key (e.g. myswap_ff)")
    parser.add_argument("--out", required=True, help="output root (the data_root of the data config)")
    parser.add_argument("--fake", action="append", default=[], help="folder of fake videos/images (repeatable)")
    parser.add_argument("--real", action="append", default=[], help="folder of real videos/images (repeatable)")
    parser.add_argument("--method", help="method folder + label prefix for fakes (default: the --fake folder name)")
    parser.add_argument("--real-name", help="folder name for the reals under --out (default: the --real folder name)")
    parser.add_argument("--json-dir", help="where <name>.json goes (default: --out)")
    parser.add_argument("--split", default="train", help="JSON split of these videos (train | val | test; default train)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video, uniformly (DF40: 32; 0 = all)")
    parser.add_argument("--size", type=int, default=256, help="crop size (DF40: 256)")
    parser.add_argument("--scale", type=float, default=1.3, help="template context scale (DF40: 1.3)")
    parser.add_argument("--upsample", type=int, default=1, help="HOG detector upsampling (DF40: 1)")
    parser.add_argument("--no-redetect", action="store_true", help="keep crops without re-detecting the aligned face")
    parser.add_argument("--detect-max-side", type=int, default=None, help="downscale frames for detection only (speed)")
    parser.add_argument("--identities", help="CSV video,identity[;identity...] → an 'identities' list per JSON entry")
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)), help="processes")
    parser.add_argument("--allow-failures", action="store_true", help="exit 0 even when some inputs failed")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = preprocess(
            args.name, args.out, fake=args.fake, real=args.real, method=args.method, real_name=args.real_name,
            json_dir=args.json_dir, split=args.split, n_frames=args.frames or None, size=args.size,
            scale=args.scale, upsample=args.upsample, redetect=not args.no_redetect,
            detect_max_side=args.detect_max_side, identities=args.identities, workers=args.workers,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"preprocess: error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if report["n_failed"] and not args.allow_failures:
        print(f"preprocess: {report['n_failed']} input(s) failed (see {Path(report['json']).with_suffix('.report.json')});"
              " the JSON lists only the videos that succeeded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
