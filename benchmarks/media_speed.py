"""Speed of face extraction (frames/s per worker, pool scaling) and of predict (crops/s, end to end).

    python benchmarks/media_speed.py                       # CPU defaults (a few minutes on 2 cores)
    python benchmarks/media_speed.py --device cuda --models tiny vit_b16 vit_l14

Media are generated from skimage's astronaut photograph (one face moving over a canvas), written
with PyAV; detectors are random-init open_clip towers (no download): ``tiny`` (configs/model/tiny.yaml),
``vit_b16`` (ViT-B/16 at 224 px), ``vit_l14`` (ViT-L/14 at 224 px). Prints one table per part.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

MODELS = {
    "tiny": dict(model_name="tiny-vit", image_size=32,
                 model_cfg={"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                            "head_width": 32, "patch_size": 8}}),
    "vit_b16": dict(model_name="ViT-B-16", image_size=224),
    "vit_l14": dict(model_name="ViT-L-14", image_size=224),
}


def make_video(path: Path, width: int, height: int, n: int) -> Path:
    import av
    import cv2
    from skimage import data

    face = data.astronaut()[0:256, 96:352]
    side = int(min(width, height) * 0.6)
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            canvas = np.full((height, width, 3), 110, np.uint8)
            dx = int((width - side) * i / max(1, n - 1))
            dy = int((height - side) * 0.5)
            canvas[dy:dy + side, dx:dx + side] = face
            for p in st.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


def _count(item, extractor):
    from data_modules.faces import extract_file

    path, n_frames = item
    r = extract_file(path, extractor, n_frames)
    return len(r.frames), r.n_faces


def bench_extraction(tmp: Path, sizes, n_frames: int, workers_list, redetect_modes, max_side) -> list[list[str]]:
    from data_modules.faces import extract_many, get_worker_extractor

    rows = []
    for (w, h) in sizes:
        video = make_video(tmp / f"v{w}x{h}.mp4", w, h, n_frames * 3)
        for redetect in redetect_modes:
            for dms in (None, max_side) if max_side else (None,):
                kwargs = dict(redetect=redetect, detect_max_side=dms)
                get_worker_extractor(kwargs)  # model load outside the timing
                t = time.perf_counter()
                n, faces = _count((str(video), n_frames), get_worker_extractor(kwargs))
                dt = time.perf_counter() - t
                rows.append([f"{w}x{h}", str(redetect), str(dms), "1 (in-process)", str(n), str(faces),
                             f"{n / dt:.2f}", f"{n / dt:.2f}"])
        for workers in workers_list:
            if workers <= 1:
                continue
            items = [(str(video), n_frames)] * (2 * workers)
            kwargs = dict(redetect=True, detect_max_side=None)
            list(extract_many(_count, items[:workers], kwargs, workers=workers, progress=False))  # warm-up spawn
            t = time.perf_counter()
            out = list(extract_many(_count, items, kwargs, workers=workers, progress=False))
            dt = time.perf_counter() - t  # includes the pool's start-up (spawn + model load per worker)
            n = sum(o[0] for o in out)
            rows.append([f"{w}x{h}", "True", "None", f"{workers} (pool, incl. start-up)", str(n),
                         str(sum(o[1] for o in out)), f"{n / dt:.2f}", f"{n / dt / workers:.2f}"])
    return rows


def bench_predict(tmp: Path, models, device: str, batch: int, n_frames: int) -> list[list[str]]:
    import torch

    from r2m.models import DeepfakeDetector
    from r2m.predict import Predictor

    rows = []
    video = make_video(tmp / "predict.mp4", 640, 360, n_frames * 2)
    for name in models:
        torch.manual_seed(0)
        model = DeepfakeDetector(pretrained=None, **MODELS[name])
        path = model.export_specialist(tmp / f"{name}.safetensors", task="bench", train_sources=["bench"])
        del model
        pred = Predictor(path, device=device, batch_size=batch, n_frames=n_frames)
        crops = [np.random.default_rng(i).integers(0, 256, (256, 256, 3), dtype=np.uint8) for i in range(batch * 2)]
        pred.score_crops(crops[:batch])  # warm-up
        if pred.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        pred.score_crops(crops)
        if pred.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        t2 = time.perf_counter()
        rec, _ = next(iter(pred.run([str(video)], workers=1, progress=False)))
        e2e = time.perf_counter() - t2
        rows.append([name, str(pred.device), str(batch), f"{len(crops) / dt:.1f}",
                     f"{rec['frames_sampled'] / e2e:.2f}", rec["status"]])
    return rows


def table(head, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    p.add_argument("--sizes", nargs="+", default=["640x360", "1280x720"], help="video sizes WxH")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--max-side", type=int, default=640, help="also time detection on frames downscaled to this")
    p.add_argument("--models", nargs="+", default=["tiny", "vit_b16"], choices=sorted(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, device {args.device}")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_extraction(Path(tmp), sizes, args.frames, args.workers, (True, False), args.max_side)
        print("\nface extraction (decode + HOG x1 upsample + 68 landmarks + align 256; frames/s)")
        print(table(["video", "redetect", "detect_max_side", "workers", "frames", "faces", "frames/s",
                     "frames/s/worker"], rows))
        rows = bench_predict(Path(tmp), args.models, args.device, args.batch_size, args.frames)
        print("\npredict (crops/s = resize + normalise + forward; end to end = extraction + scoring of one video)")
        print(table(["model", "device", "batch", "crops/s", "end-to-end frames/s", "status"], rows))


if __name__ == "__main__":
    main()
