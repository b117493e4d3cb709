"""The one face-extraction recipe: decode → sample frames → detect → 5 landmarks → align → 256-px crop.

Used by ``python -m data_modules.preprocess`` (raw media → DF40 layout), ``predict.py`` and the demo,
so training crops and inference crops are made the same way. The recipe follows DF40 /
DeepfakeBench preprocessing (``../shared`` reference, deepfake.md §7), written from its description:

* **Frames**: ``n_frames`` (DF40: 32) indices evenly spaced over the whole video,
  ``floor(linspace(0, N−1, n))`` (DF40's integer linspace); every frame when the video is shorter.
  Images are one frame.
* **Detection**: dlib's HOG frontal-face detector with 1 upsampling on the RGB frame; the largest
  box by area (``all_faces=True`` keeps every box, largest first).
* **Landmarks**: dlib's 68-point iBUG shape predictor from the ``face-recognition-models`` package
  (installed with the ``faces`` extra; nothing is downloaded). DF40 uses an 81-point model whose
  first 68 points follow the same iBUG indexing, and takes five of them: 37 and 44 (upper lids of
  the two eyes), 30 (nose tip), 49 and 55 (points next to the mouth corners). The same indices are
  used here, so the only difference is the model that places them (68- vs 81-point training;
  docs/media.md reports the measured effect).
* **Alignment**: a least-squares similarity transform (rotation, uniform scale, translation;
  Umeyama, via ``skimage.transform.SimilarityTransform``) from those five points to the ArcFace
  5-point template (112×112 version: the 96×112 template shifted by 8 px in x), scaled to the crop
  size and shrunk toward the crop centre by ``scale`` = 1.3 (``t' = c + (t − c)/1.3``: more
  context around the face), then ``cv2.warpAffine`` (bilinear) to ``size`` = 256.
* **Re-detection** (``redetect=True``, as DF40): the aligned crop is detected again and its
  68 landmarks recomputed; a frame whose crop has no face is skipped (``reason = "no face after
  alignment"``).

Video decoding uses **PyAV** (FFmpeg bindings) rather than OpenCV's ``VideoCapture``: PyAV raises
an error *with FFmpeg's reason* for zero-byte, truncated or non-video files (``VideoCapture`` just
returns no frames), it gives the stream's frame count from the container, and the same library
writes the test videos and the annotated output video. Frames are decoded sequentially (no seeking:
seeking lands on key frames, which breaks exact indices) and only the sampled ones are kept.

Everything heavy (dlib, PyAV, cv2, skimage) is imported lazily; the module does not import torch.
``extract_many`` runs a function over files in a process pool with a progress bar; each worker
builds its own :class:`FaceExtractor` (dlib objects cannot be pickled).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "ARCFACE_TEMPLATE_112",
    "DF40_FIVE_POINTS",
    "FacesUnavailableError",
    "MediaError",
    "Face",
    "FrameResult",
    "MediaResult",
    "alignment_template",
    "five_points",
    "sample_indices",
    "media_kind",
    "read_video_frames",
    "read_image",
    "predictor_path",
    "FaceExtractor",
    "extract_file",
    "extract_task",
    "extract_many",
    "get_worker_extractor",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

#: ArcFace 5-point template (left eye, right eye, nose, left mouth, right mouth) on a 112×112 crop:
#: the well-known 96×112 template with x shifted by +8.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
#: iBUG-68 indices of the five alignment points of DF40's recipe (left-eye upper lid, right-eye upper
#: lid, nose tip, next to the left / right mouth corner), in template order.
DF40_FIVE_POINTS = (37, 44, 30, 49, 55)

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
NOT_DECODED = "not decoded"


class FacesUnavailableError(ImportError):
    """The face stack (dlib, face-recognition-models, PyAV) is not installed."""


class MediaError(RuntimeError):
    """A media file that cannot be read; ``reason`` is a short human-readable cause."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


# ------------------------------------------------------------------------------------ geometry


def alignment_template(size: int = 256, scale: float = 1.3) -> np.ndarray:
    """The five target points on a ``size``×``size`` crop: the 112-px ArcFace template scaled to
    ``size`` and shrunk toward the crop centre by ``scale`` (``c + (t − c)/scale``, ``c = size/2``)."""
    if size <= 0 or scale <= 0:
        raise ValueError(f"size and scale must be positive, got size={size}, scale={scale}")
    t = ARCFACE_TEMPLATE_112 * (size / 112.0)
    c = size / 2.0
    return c + (t - c) / float(scale)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """The five alignment points (``DF40_FIVE_POINTS``) of a ``68×2`` landmark array."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected 68×2 landmarks, got shape {pts.shape}")
    return pts[list(DF40_FIVE_POINTS)]


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama)."""
    from skimage.transform import SimilarityTransform

    tform = SimilarityTransform.from_estimate(src, dst) if hasattr(SimilarityTransform, "from_estimate") else None
    if tform is None or not bool(tform):
        tform = SimilarityTransform()
        if not tform.estimate(np.asarray(src, np.float64), np.asarray(dst, np.float64)):
            raise ValueError("degenerate landmarks: no similarity transform")
    return np.asarray(tform.params[:2, :], dtype=np.float64)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``N×2`` points through a 2×3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


# ------------------------------------------------------------------------------------ decoding


def sample_indices(n_total: int, n: int | None) -> list[int]:
    """DF40's frame choice: ``floor(linspace(0, n_total−1, n))``; all frames when ``n`` is ``None``
    or ``n >= n_total``. Increasing and distinct."""
    if n_total <= 0:
        return []
    if n is None or n >= n_total:
        return list(range(n_total))
    if n <= 0:
        raise ValueError(f"n_frames must be positive or None, got {n}")
    return [int(i) for i in np.linspace(0, n_total - 1, n).astype(np.int64)]


def media_kind(path: str | os.PathLike) -> str | None:
    """``"video"``, ``"image"`` or ``None`` by file extension."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def _av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - depends on the install
        raise FacesUnavailableError(
            "video decoding needs PyAV: install the face extra, `pip install -e .[faces]`"
        ) from err
    return av


def _count_frames(path: str) -> int:
    """Frames of the first video stream: the container's count, else a demux pass (no decode)."""
    av = _av()
    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def _ffmpeg_reason(err: BaseException) -> str:
    return str(getattr(err, "strerror", None) or err)


def _looks_like_video(path: str) -> bool:
    """Whether the file starts like a video container (MP4/MOV ``ftyp``, AVI ``RIFF``, Matroska/WebM
    EBML, MPEG-PS, FLV): then an FFmpeg failure means a broken file, not a wrong file type."""
    with open(path, "rb") as f:
        head = f.read(12)
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or head[:4] in (b"RIFF", b"\x1aE\xdf\xa3", b"FLV\x01")
            or head[:4] == b"\x00\x00\x01\xba")


@dataclass
class VideoFrames:
    """Sampled frames of a video: ``indices`` asked for, ``frames`` (RGB uint8) of those decoded,
    ``times`` (seconds), ``n_total`` frames in the stream, ``fps``, and ``error`` when decoding
    stopped early (the missing indices are then skipped with that reason)."""

    indices: list[int]
    frames: dict[int, np.ndarray]
    times: dict[int, float]
    n_total: int
    fps: float | None
    error: str | None = None


def read_video_frames(path: str | os.PathLike, n_frames: int | None = 32) -> VideoFrames:
    """Decode ``path`` sequentially and keep the ``sample_indices(n_total, n_frames)`` frames.

    Raises :class:`MediaError` for an empty file, a file FFmpeg cannot open, a file without a video
    stream or with no decodable frame. A decode error after some frames is recorded in ``error``."""
    av = _av()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        n_total = _count_frames(path)
    except IndexError:
        raise MediaError(path, "no video stream in the file") from None
    except (av.error.FFmpegError, OSError, ValueError) as err:
        what = "broken or truncated video" if _looks_like_video(path) else "not a video file"
        raise MediaError(path, f"{what} (FFmpeg: {_ffmpeg_reason(err)})") from None
    if n_total <= 0:
        raise MediaError(path, "the video stream has no frames")
    wanted = sample_indices(n_total, n_frames)
    want = set(wanted)
    frames: dict[int, np.ndarray] = {}
    times: dict[int, float] = {}
    fps: float | None = None
    error: str | None = None
    last = max(wanted)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.thread_count = 1  # one process per file in the pool: no oversubscription
            if stream.average_rate:
                fps = float(stream.average_rate)
            for i, frame in enumerate(container.decode(stream)):
                if i in want:
                    frames[i] = frame.to_ndarray(format="rgb24")
                    times[i] = float(frame.time) if frame.time is not None else (i / fps if fps else float(i))
                if i >= last:
                    break
    except (av.error.FFmpegError, OSError, ValueError) as err:
        error = f"decoding stopped (FFmpeg: {_ffmpeg_reason(err)})"
    if not frames:
        raise MediaError(path, error or "no frame could be decoded")
    if len(frames) < len(wanted) and error is None:
        error = f"the stream ended after fewer frames than its header says ({n_total})"
    return VideoFrames(wanted, frames, times, n_total, fps, error)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB uint8, raising :class:`MediaError` with the reason."""
    from data_modules.image_io import UnreadableImageError, read_rgb

    path = os.fspath(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        return read_rgb(path)
    except UnreadableImageError as err:
        reason = str(err).split(": ", 1)[-1]
        raise MediaError(path, reason) from None


# ----------------------------------------------------------------------------------- detection


def predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat`` inside the installed
    ``face-recognition-models`` package (located without importing it: its ``__init__`` needs
    ``pkg_resources``, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FacesUnavailableError(
            "the 68-point landmark model comes from the `face-recognition-models` package: "
            "install the face extra, `pip install -e .[faces]` (nothing is downloaded at run time)"
        )
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "models" / PREDICTOR_FILE
        if candidate.is_file():
            return candidate
    raise FacesUnavailableError(f"{PREDICTOR_FILE} not found in the face_recognition_models package")


def _dlib():
    try:
        import dlib
    except ImportError as err:
        raise FacesUnavailableError(
            "face detection needs dlib: install the face extra, `pip install -e .[faces]` (dlib-bin wheels)"
        ) from err
    return dlib


@functools.lru_cache(maxsize=1)
def _dlib_models():
    """dlib's HOG detector and the 68-point predictor, loaded once per process (the predictor file
    is ~100 MB) and shared by every :class:`FaceExtractor` of the process (not thread-safe: use
    processes, as :func:`extract_many` does)."""
    dlib = _dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))


@dataclass
class Face:
    """One detected and aligned face.

    ``box`` = ``(x0, y0, x1, y1)`` of the detector in frame pixels (exclusive right/bottom);
    ``landmarks`` 68×2 in the frame; ``points5`` the five alignment points; ``matrix`` the 2×3
    frame→crop transform; ``crop`` ``size×size×3`` RGB uint8; ``crop_landmarks`` 68×2 on the crop
    (from re-detection, else the transformed frame landmarks)."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray
    points5: np.ndarray
    matrix: np.ndarray
    crop: np.ndarray
    crop_landmarks: np.ndarray

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass
class FrameResult:
    """Faces of one frame (``index`` in the video, 0 for an image; ``time`` in seconds) or the
    reason none was kept (``"no face detected"``, ``"no face after alignment"``, a decode error)."""

    index: int
    time: float | None
    faces: list[Face] = field(default_factory=list)
    reason: str | None = None
    frame: np.ndarray | None = None  # the full frame, only with keep_frames=True


@dataclass
class MediaResult:
    """What :func:`extract_file` found in one file: ``kind`` (video/image), ``n_total`` frames in
    the file, the sampled ``frames`` (each with faces or a skip reason), and ``error`` when the file
    could not be read at all (then ``frames`` is empty). ``warning`` notes a partial decode."""

    path: str
    kind: str | None
    n_total: int = 0
    fps: float | None = None
    frames: list[FrameResult] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and any(f.faces for f in self.frames)

    @property
    def n_faces(self) -> int:
        return sum(len(f.faces) for f in self.frames)

    def skipped(self) -> dict[str, int]:
        """Skip reason → number of sampled frames without a kept face."""
        out: dict[str, int] = {}
        for f in self.frames:
            if not f.faces:
                out[f.reason or "unknown"] = out.get(f.reason or "unknown", 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able per-file report: frames read, faces found, frames skipped and why."""
        return {
            "path": self.path, "kind": self.kind, "n_total_frames": self.n_total,
            "frames_sampled": len(self.frames),
            "frames_read": sum(1 for f in self.frames if not (f.reason or "").startswith(NOT_DECODED)),
            "frames_with_face": sum(1 for f in self.frames if f.faces), "faces_found": self.n_faces,
            "skipped": self.skipped(), "error": self.error, "warning": self.warning,
        }


class FaceExtractor:
    """Detect → landmarks → align → crop, DF40's recipe (module docstring).

    Args:
        size: crop size in pixels (DF40: 256).
        scale: context factor of the template (DF40: 1.3).
        upsample: HOG detector upsampling (DF40: 1).
        all_faces: keep every detected face (largest first) instead of only the largest.
        redetect: re-detect on the aligned crop and skip the face when none is found (DF40).
        detect_max_side: downscale the frame so its longer side is at most this before detection
            (``None``: full resolution, as DF40; landmarks and crops always use the full frame).
    """

    def __init__(self, size: int = 256, scale: float = 1.3, upsample: int = 1, all_faces: bool = False,
                 redetect: bool = True, detect_max_side: int | None = None) -> None:
        dlib = _dlib()
        self.size, self.scale, self.upsample = int(size), float(scale), int(upsample)
        self.all_faces, self.redetect = bool(all_faces), bool(redetect)
        self.detect_max_side = None if detect_max_side is None else int(detect_max_side)
        self.template = alignment_template(self.size, self.scale)
        self._detector, self._predictor = _dlib_models()
        self._dlib = dlib

    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes ``(x0, y0, x1, y1)`` in ``image`` pixels, largest first (ties: top-left first)."""
        img = np.ascontiguousarray(image)
        factor = 1.0
        if self.detect_max_side and max(img.shape[:2]) > self.detect_max_side:
            import cv2

            factor = self.detect_max_side / max(img.shape[:2])
            img = cv2.resize(img, (round(img.shape[1] * factor), round(img.shape[0] * factor)),
                             interpolation=cv2.INTER_AREA)
        rects = self._detector(img, self.upsample)
        boxes = [tuple(int(round(v / factor)) for v in (r.left(), r.top(), r.right() + 1, r.bottom() + 1))
                 for r in rects]
        boxes.sort(key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b[1], b[0]))
        return boxes  # type: ignore[return-value]

    def landmarks(self, image: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """68×2 landmarks (float64, pixel coordinates) inside ``box``."""
        x0, y0, x1, y1 = (int(v) for v in box)
        shape = self._predictor(np.ascontiguousarray(image), self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def align(self, image: np.ndarray, points5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(crop, matrix)``: the similarity warp of ``image`` taking ``points5`` to the template."""
        import cv2

        matrix = similarity_matrix(points5, self.template)
        crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, (self.size, self.size), flags=cv2.INTER_LINEAR)
        return crop, matrix

    def faces(self, image: np.ndarray) -> tuple[list[Face], str | None]:
        """All kept faces of one RGB frame and, when there is none, the reason."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got {image.shape} {image.dtype}")
        boxes = self.detect(image)
        if not boxes:
            return [], "no face detected"
        if not self.all_faces:
            boxes = boxes[:1]
        out: list[Face] = []
        for box in boxes:
            lm = self.landmarks(image, box)
            pts = five_points(lm)
            crop, matrix = self.align(image, pts)
            crop_lm = apply_affine(matrix, lm)
            if self.redetect:
                again = self.detect(crop)
                if not again:
                    continue
                crop_lm = self.landmarks(crop, again[0])
            out.append(Face(box=box, landmarks=lm, points5=pts, matrix=matrix, crop=crop, crop_landmarks=crop_lm))
        return out, (None if out else "no face after alignment")


def extract_file(path: str | os.PathLike, extractor: FaceExtractor, n_frames: int | None = 32,
                 keep_frames: bool = False) -> MediaResult:
    """Faces of every sampled frame of one video or image. Never raises for bad media: an
    unreadable file gives ``MediaResult.error`` with the reason."""
    path = os.fspath(path)
    kind = media_kind(path)
    result = MediaResult(path=path, kind=kind)
    if kind is None:
        result.error = f"unsupported file type {Path(path).suffix or '(no extension)'!r}"
        return result
    try:
        if kind == "image":
            frames, times, indices, result.n_total = {0: read_image(path)}, {0: None}, [0], 1
        else:
            video = read_video_frames(path, n_frames)
            frames, times, indices = video.frames, video.times, video.indices
            result.n_total, result.fps, result.warning = video.n_total, video.fps, video.error
    except MediaError as err:
        result.error = err.reason
        return result
    for i in indices:
        if i not in frames:
            result.frames.append(FrameResult(i, None, reason=f"{NOT_DECODED}: {result.warning}"))
            continue
        faces, reason = extractor.faces(frames[i])
        result.frames.append(FrameResult(i, times.get(i), faces, reason, frames[i] if keep_frames else None))
    return result


def extract_task(task: tuple[str, int | None, bool], extractor: FaceExtractor) -> MediaResult:
    """:func:`extract_file` for ``(path, n_frames, keep_frames)``, never raising (pool-friendly):
    an unexpected failure becomes ``MediaResult.error``."""
    path, n_frames, keep_frames = task
    try:
        return extract_file(path, extractor, n_frames, keep_frames=keep_frames)
    except Exception as err:
        return MediaResult(path=os.fspath(path), kind=media_kind(path), error=f"{type(err).__name__}: {err}")


# ------------------------------------------------------------------------------------ parallel

_WORKER: dict[str, Any] = {}


def _init_worker(extractor_kwargs: dict[str, Any]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass
    _WORKER["kwargs"] = dict(extractor_kwargs)
    _WORKER["extractor"] = FaceExtractor(**extractor_kwargs)


def get_worker_extractor(extractor_kwargs: dict[str, Any] | None = None) -> FaceExtractor:
    """The :class:`FaceExtractor` of this process (built once per process and per settings)."""
    kwargs = dict(extractor_kwargs or {})
    if _WORKER.get("extractor") is None or _WORKER.get("kwargs") != kwargs:
        _WORKER["kwargs"] = kwargs
        _WORKER["extractor"] = FaceExtractor(**kwargs)
    return _WORKER["extractor"]


def _call(fn: Callable[..., Any], item: Any) -> Any:
    return fn(item, get_worker_extractor(_WORKER.get("kwargs")))


def extract_many(
    fn: Callable[[Any, FaceExtractor], Any],
    items: Iterable[Any],
    extractor_kwargs: dict[str, Any] | None = None,
    workers: int = 1,
    desc: str = "faces",
    progress: bool = True,
    ordered: bool = True,
) -> Iterator[Any]:
    """Yield ``fn(item, extractor)`` for every item, in a pool of ``workers`` processes (``spawn``:
    safe next to torch/CUDA in the parent) with one :class:`FaceExtractor` each; ``workers <= 1``
    runs in this process. ``fn`` must be a module-level function (picklable). A tqdm bar counts
    files. ``ordered=False`` yields results as they finish. An exception raised by ``fn``
    propagates (``fn`` should catch per-item errors itself)."""
    from tqdm.auto import tqdm

    items = list(items)
    kwargs = dict(extractor_kwargs or {})
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=not progress)
    try:
        if workers <= 1 or len(items) <= 1:
            extractor = get_worker_extractor(kwargs)
            for item in items:
                yield fn(item, extractor)
                bar.update()
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from functools import partial

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(kwargs,)) as pool:
            call = partial(_call, fn)
            if ordered:
                for out in pool.map(call, items):
                    yield out
                    bar.update()
            else:
                futures = [pool.submit(call, item) for item in items]
                for fut in as_completed(futures):
                    yield fut.result()
                    bar.update()
    finally:
        bar.close()
