"""Apply an r2m detector (specialist, joint or merged file) to images, folders and videos.

The faces come from :mod:`data_modules.faces` — the same decode / detect / align / crop recipe as
``python -m data_modules.preprocess`` and DF40's crops. Each 256-px crop is resized to the
detector's input size (bicubic, like the evaluation transform) and normalised with the mean/std
recorded in the detector file; p(fake) = softmax(logits)[:, 1]. Per file:

* a face: its fake-probability; a frame: the largest of its faces' (one face per frame unless
  ``all_faces``, then a frame is as fake as its most fake face);
* a video: the mean of its frame probabilities — :func:`r2m.evaluation.functional.video_scores`,
  the aggregation of the evaluation module; an image: its frame's probability.

Files that cannot be scored (missing, unreadable, broken video, no face in any sampled frame)
get ``status`` ``failed`` / ``no_face`` and a ``reason``; they never stop the batch.
Outputs (``out_dir``): ``predictions.json`` (everything, per face/frame/file), ``predictions.csv``
(one row per face; one row with the reason for a file without any), ``annotated/`` (optional:
boxes and scores drawn on images, an annotated video of the sampled frames).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Predictor", "collect_media", "predict", "write_outputs", "CSV_FIELDS"]

CSV_FIELDS = ("path", "kind", "status", "reason", "frame", "time", "face", "x0", "y0", "x1", "y1",
              "prob_fake", "frame_prob", "file_prob")


def collect_media(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files to score, in order: given files as they are (any extension: a wrong one is reported
    per file), folders walked recursively for video / image extensions (naturally sorted).
    A path that does not exist is kept, to be reported as such."""
    from data_modules.faces import media_kind
    from data_modules.index import natural_sorted

    out: list[str] = []
    for item in inputs:
        path = os.fspath(item)
        if os.path.isdir(path):
            found = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                     if not f.startswith(".") and media_kind(f) is not None]
            out.extend(natural_sorted(found))
        else:
            out.append(path)
    return list(dict.fromkeys(out))


@dataclass
class _Pending:
    record: dict[str, Any]
    result: Any
    left: int


class Predictor:
    """A loaded detector + face extraction settings.

    Args:
        detector: a specialist / joint / merged r2m file (safetensors, loaded strictly).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        batch_size: face crops per forward pass (batches span files).
        n_frames: frames sampled uniformly per video (DF40: 32; ``None`` = all).
        all_faces: score every detected face, not only the largest.
        extractor: :class:`data_modules.faces.FaceExtractor` keyword arguments (size, scale, ...).
    """

    def __init__(self, detector: str | os.PathLike, device: str | None = "auto", batch_size: int = 64,
                 n_frames: int | None = 32, all_faces: bool = False,
                 extractor: dict[str, Any] | None = None) -> None:
        from r2m.checkpoints import MERGED_FORMAT, SPECIALIST_FORMAT, read_metadata
        from r2m.models import DeepfakeDetector
        from r2m.utils import resolve_device

        self.path = Path(detector)
        meta = read_metadata(self.path)
        if meta.get("format") not in (SPECIALIST_FORMAT, MERGED_FORMAT):
            raise ValueError(f"{self.path}: format {meta.get('format')!r} is not a detector "
                             f"(expected {SPECIALIST_FORMAT} or {MERGED_FORMAT}; a base file has no head)")
        self.device = resolve_device(device)
        self.model = DeepfakeDetector.from_file(self.path).to(self.device).eval()
        self.meta = self.model.source_meta
        self.image_size = int(self.model.info.spec["image_size"])
        self.mean = torch.tensor(self.model.input_mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.model.input_std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.n_frames = n_frames
        self.extractor_kwargs = {**dict(extractor or {}), "all_faces": bool(all_faces)}

    def describe(self) -> dict[str, Any]:
        """The detector's identity for the output (format, merge method, task, families, hashes)."""
        m = self.meta
        return {"path": str(self.path), "format": m.get("format"), "method": m.get("method"), "task": m.get("task"),
                "families": m.get("families"), "model_name": m.get("model_name"), "base_hash": m.get("base_hash"),
                "image_size": self.image_size, "mean": list(self.model.input_mean), "std": list(self.model.input_std),
                "device": str(self.device)}

    # ------------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Fake-probabilities of ``size×size×3`` uint8 RGB crops (batched)."""
        import cv2

        out: list[np.ndarray] = []
        s = self.image_size
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            arr = np.stack([c if c.shape[:2] == (s, s) else cv2.resize(c, (s, s), interpolation=cv2.INTER_CUBIC)
                            for c in chunk])
            x = torch.from_numpy(arr).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self.mean) / self.std
            probs = self.model(x).float().softmax(-1)[:, 1]
            out.append(probs.cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0)

    # ---------------------------------------------------------------------------- per file
    @staticmethod
    def _record(result) -> dict[str, Any]:
        rec: dict[str, Any] = {"path": result.path, "kind": result.kind, "status": None, "reason": result.error,
                               "n_total_frames": result.n_total, "fps": result.fps,
                               "frames_sampled": len(result.frames), "n_faces": result.n_faces,
                               "warning": result.warning, "prob": None, "frames": []}
        for fr in result.frames:
            rec["frames"].append({"index": fr.index, "time": fr.time, "prob": None, "reason": fr.reason,
                                  "faces": [{"box": list(f.box), "prob": None} for f in fr.faces]})
        return rec

    @staticmethod
    def _finish(rec: dict[str, Any]) -> dict[str, Any]:
        from r2m.evaluation.functional import video_scores

        scored = [fr for fr in rec["frames"] if fr["faces"]]
        for fr in scored:
            fr["prob"] = max(f["prob"] for f in fr["faces"])
        if rec["reason"] is not None:
            rec["status"] = "failed"
        elif not scored:
            rec["status"], rec["reason"] = "no_face", "no face in any sampled frame"
        else:
            rec["status"] = "ok"
            probs = np.array([fr["prob"] for fr in scored], dtype=np.float64)
            _, mean, _ = video_scores(probs, np.zeros(len(probs), np.int64), np.zeros(len(probs), np.int64))
            rec["prob"] = float(mean[0])
        return rec

    def run(self, paths: Sequence[str], workers: int = 1, progress: bool = True,
            keep_frames: bool = False) -> Iterator[tuple[dict[str, Any], Any]]:
        """Yield ``(record, MediaResult)`` per file, in input order; faces are scored in batches that
        span files. ``keep_frames`` keeps the full sampled frames in the results (for annotation)."""
        from data_modules.faces import extract_many, extract_task

        tasks = [(p, self.n_frames, keep_frames) for p in paths]
        queue: list[_Pending] = []
        crops: list[np.ndarray] = []
        slots: list[tuple[_Pending, dict[str, Any]]] = []

        def flush() -> None:
            if crops:
                for (pending, face), p in zip(slots, self.score_crops(crops)):
                    face["prob"] = float(p)
                    pending.left -= 1
                crops.clear()
                slots.clear()

        def ready() -> Iterator[tuple[dict[str, Any], Any]]:
            while queue and queue[0].left == 0:
                done = queue.pop(0)
                yield self._finish(done.record), done.result

        for result in extract_many(extract_task, tasks, self.extractor_kwargs, workers=workers,
                                   desc="predict", progress=progress):
            rec = self._record(result)
            pending = _Pending(rec, result, result.n_faces)
            queue.append(pending)
            for fr, frec in zip(result.frames, rec["frames"]):
                for face, face_rec in zip(fr.faces, frec["faces"]):
                    crops.append(face.crop)
                    slots.append((pending, face_rec))
            if len(crops) >= self.batch_size:
                flush()
            yield from ready()
        flush()
        yield from ready()


# --------------------------------------------------------------------------------- outputs


def _label(prob: float) -> tuple[str, tuple[int, int, int]]:
    return (f"fake {prob:.2f}", (230, 40, 40)) if prob > 0.5 else (f"real {prob:.2f}", (40, 200, 60))


def annotate_frame(frame: np.ndarray, faces: Iterable[dict[str, Any]]) -> np.ndarray:
    """A copy of an RGB frame with each face's box and p(fake) drawn (red > 0.5 ≥ green)."""
    import cv2

    img = np.ascontiguousarray(frame.copy())
    thick = max(2, round(max(img.shape[:2]) / 300))
    for face in faces:
        x0, y0, x1, y1 = face["box"]
        text, color = _label(face["prob"])
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), color, thick)
        fs = max(0.5, (x1 - x0) / 160)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, thick)
        ty = max(th + base, y0 - 4)
        cv2.rectangle(img, (x0, ty - th - base), (x0 + tw, ty + base - 2), color, -1)
        cv2.putText(img, text, (x0, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), thick, cv2.LINE_AA)
    return img


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 2.0) -> Path:
    """Write RGB frames as an H.264 mp4 (PyAV), atomically; odd sizes are padded to even."""
    from r2m.utils import atomic_write

    import av

    h = max(f.shape[0] for f in frames) + 1 & ~1
    w = max(f.shape[1] for f in frames) + 1 & ~1

    def writer(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=max(1, round(fps)))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for f in frames:
                canvas = np.zeros((h, w, 3), np.uint8)
                canvas[:f.shape[0], :f.shape[1]] = f
                for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write(path, writer)


def annotate(record: dict[str, Any], result: Any, out_dir: Path, index: int) -> str | None:
    """Write the annotated image (``.png``) or video of the sampled frames (``.mp4``); returns its path."""
    import cv2

    from r2m.utils import atomic_write

    frames = {fr.index: fr.frame for fr in result.frames if fr.frame is not None}
    if record["status"] != "ok" or not frames:
        return None
    stem = f"{index:04d}_{Path(record['path']).stem}"
    drawn = [annotate_frame(frames[fr["index"]], fr["faces"]) for fr in record["frames"] if fr["index"] in frames]
    if record["kind"] == "image":
        path = out_dir / f"{stem}.png"
        ok, buf = cv2.imencode(".png", cv2.cvtColor(drawn[0], cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"could not encode {path}")
        atomic_write(path, lambda tmp: tmp.write_bytes(buf.tobytes()))
    else:
        path = out_dir / f"{stem}.mp4"
        write_video(path, drawn, fps=2.0)
    return str(path)


def csv_rows(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One row per face; a file without any face gets one row with its status and reason."""
    for rec in records:
        base = {"path": rec["path"], "kind": rec["kind"], "status": rec["status"], "reason": rec["reason"] or "",
                "file_prob": rec["prob"]}
        any_face = False
        for fr in rec["frames"]:
            for k, face in enumerate(fr["faces"]):
                any_face = True
                x0, y0, x1, y1 = face["box"]
                yield {**base, "frame": fr["index"], "time": fr["time"], "face": k, "x0": x0, "y0": y0, "x1": x1,
                       "y1": y1, "prob_fake": face["prob"], "frame_prob": fr["prob"]}
        if not any_face:
            yield base


def write_outputs(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``predictions.json`` and ``predictions.csv`` in ``out_dir`` (atomic writes)."""
    from r2m.utils import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    json_path = atomic_write_json(out / "predictions.json", report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(report["files"]):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    csv_path = atomic_write_text(out / "predictions.csv", buf.getvalue())
    return json_path, csv_path


def predict(
    detector: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    device: str | None = "auto",
    batch_size: int = 64,
    n_frames: int | None = 32,
    all_faces: bool = False,
    workers: int = 1,
    annotate_output: bool = False,
    extractor: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every file of ``inputs``; returns the report (written to ``out_dir`` when given)."""
    predictor = Predictor(detector, device=device, batch_size=batch_size, n_frames=n_frames,
                          all_faces=all_faces, extractor=extractor)
    paths = collect_media(inputs)
    if not paths:
        raise ValueError(f"no media files found in {[os.fspath(p) for p in inputs]}")
    if annotate_output and out_dir is None:
        raise ValueError("annotate_output needs out_dir")
    files: list[dict[str, Any]] = []
    for i, (record, result) in enumerate(predictor.run(paths, workers=workers, progress=progress,
                                                       keep_frames=annotate_output)):
        if annotate_output:
            record["annotated"] = annotate(record, result, Path(out_dir) / "annotated", i)
        files.append(record)
    n_ok = sum(1 for f in files if f["status"] == "ok")
    report = {
        "detector": predictor.describe(),
        "settings": {"n_frames": n_frames, "all_faces": all_faces, "batch_size": batch_size,
                     "extractor": predictor.extractor_kwargs,
                     "frame_prob": "max over the frame's faces", "file_prob": "mean over frames (r2m.evaluation)"},
        "n_files": len(files), "n_ok": n_ok, "n_failed": len(files) - n_ok,
        "files": files,
    }
    if out_dir is not None:
        write_outputs(report, out_dir)
    return report
