"""Training throughput: images/s of DeepfakeDetector training steps, and of the data pipeline alone.

Model mode (forward + cross-entropy + backward + AdamW step on random tensors already on the device):

    python benchmarks/train_throughput.py model --device cuda --model ViT-B-16 --image-size 224 \
        --batch-size 256 --precision bf16-mixed --steps 30
    python benchmarks/train_throughput.py model --device cuda --model ViT-L-14 --batch-size 128 --steps 20
    python benchmarks/train_throughput.py model --device cpu --model tiny64 --image-size 64 --batch-size 32

Data mode (PNG decode + the DeepfakeBench training augmentation + normalise, as in the DataModules;
synthetic 256-px PNG face-crop stand-ins written to a temporary folder):

    python benchmarks/train_throughput.py data --image-size 224 --workers 16 --images 2048

``all`` runs both. On CUDA, TF32 matmuls are enabled; ``--precision bf16-mixed`` autocasts to bf16
(fp32 master weights, as Lightning's ``bf16-mixed``). ``--compile`` (torch.compile) and
``--channels-last`` are off by default. Targets (one H100): ViT-B/16 @224 ≥ 3,000 img/s,
ViT-L/14 ≥ 800 img/s, and the data pipeline able to feed that from 16 workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py: no spinning OpenMP threads on a shared CPU

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_CONFIGS = {
    "tiny": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}},
    "tiny64": {"embed_dim": 128, "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8}},
}


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} (torch {torch.__version__})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# ------------------------------------------------------------------------------------ model mode


def bench_model(args: argparse.Namespace) -> list[str]:
    from r2m.models.detector import DeepfakeDetector

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model_cfg = TINY_CONFIGS.get(args.model)
    model = DeepfakeDetector(
        model_name=args.model, model_cfg=model_cfg, image_size=args.image_size, finetune=args.finetune,
        grad_checkpointing=args.grad_checkpointing, keep_base_copy=False,
    ).to(device)
    model.train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        model = model.to(memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=device.type == "cuda")
    size = args.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if args.precision == "bf16-mixed" else contextlib.nullcontext()
    )

    def step() -> torch.Tensor:
        with autocast:
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step_fn = torch.compile(step) if args.compile else step
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step_fn()
    _sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step_fn()
    _sync(device)
    elapsed = time.perf_counter() - t0
    assert torch.isfinite(loss).item(), "non-finite loss"
    n_params = sum(p.numel() for p in params)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "-"
    rows = [[
        args.model, str(size), str(args.batch_size), args.precision, "yes" if args.compile else "no",
        "yes" if args.channels_last else "no", f"{n_params / 1e6:.1f}", str(args.steps),
        f"{elapsed / args.steps * 1000:.1f}", _rate(args.batch_size * args.steps / elapsed), peak, f"{warm_s:.1f}",
    ]]
    header = ["model", "px", "batch", "precision", "compile", "channels_last", "trainable M", "steps",
              "ms/step", "img/s", "peak GiB", "warmup s"]
    out = [f"training steps on {_machine(device)}", _table(header, rows)]
    print("\n".join(out), flush=True)
    return out


# ------------------------------------------------------------------------------------- data mode


def write_synthetic_pngs(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """``n`` smooth colour images with texture and a face-like ellipse, saved as PNG (≈ face crops)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        base = np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * 60 + 128 for _ in range(3)], -1)
        mask = ((xx - 0.5) ** 2 / 0.09 + (yy - 0.5) ** 2 / 0.16) < 1
        base[mask] = base[mask] * 0.4 + np.array(rng.uniform(120, 220, 3), dtype=np.float32) * 0.6
        noise = rng.normal(0, 6, (size, size, 3))
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"frame_{i:05d}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


class _PngDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], image_size: int, augment: bool) -> None:
        self.paths, self.image_size, self.augment = paths, image_size, augment
        self.transform = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from data_modules.image_io import read_rgb
        from data_modules.transforms import build_transform

        if self.transform is None:  # built lazily inside each worker
            self.transform = build_transform(True, self.augment, self.image_size, seed=i)
        return self.transform(image=read_rgb(self.paths[i]))["image"]


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _loader_rate(paths: list[Path], args: argparse.Namespace, workers: int) -> tuple[float, int]:
    """Images/s over one pass, after the first batch (worker start-up is not timed)."""
    ds = _PngDataset(paths, args.image_size, augment=not args.no_augment)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.data_batch_size, num_workers=workers, shuffle=True,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    next(it)
    n = 0
    t0 = time.perf_counter()
    for batch in it:
        n += batch.shape[0]
    elapsed = time.perf_counter() - t0
    if n == 0:
        raise ValueError("--images must exceed --data-batch-size")
    return n / elapsed, n


def _stage_rates(paths: list[Path], image_size: int) -> list[list[str]]:
    """Single-process img/s of decode alone, decode + eval transform, decode + train augmentation."""
    from data_modules.image_io import read_rgb
    from data_modules.transforms import eval_transform, train_transform

    stages = [("decode (cv2 PNG)", None), ("decode + resize/normalise", eval_transform(image_size)),
              ("decode + DeepfakeBench augment", train_transform(image_size, seed=0))]
    rows = []
    for name, transform in stages:
        t0 = time.perf_counter()
        for path in paths:
            img = read_rgb(path)
            if transform is not None:
                transform(image=img)
        rate = len(paths) / (time.perf_counter() - t0)
        rows.append([name, str(len(paths)), _rate(rate), f"{1000 / rate:.2f}"])
    return rows


def bench_data(args: argparse.Namespace) -> list[str]:
    import cv2

    cv2.setNumThreads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="r2m-bench-png-") as tmp:
        t0 = time.perf_counter()
        paths = write_synthetic_pngs(Path(tmp), args.images, size=args.source_size)
        write_s = time.perf_counter() - t0
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        for workers in sorted({0, args.workers}):
            rate, n = _loader_rate(paths, args, workers)
            label = "1 (main process)" if workers == 0 else str(workers)
            per_worker = rate / max(1, workers)
            rows.append([label, str(n), _rate(rate), _rate(per_worker)])
        stage_rows = _stage_rates(paths[: min(len(paths), 256)], args.image_size)
    header = ["workers", "images", "img/s", "img/s per worker"]
    aug = "none (resize+normalise)" if args.no_augment else "DeepfakeBench recipe"
    out = [
        f"data pipeline on {os.cpu_count()} CPU cores: {args.source_size}px PNG ({kb:.0f} KiB avg, "
        f"{args.images} files written in {write_s:.1f}s) → {args.image_size}px, augmentation: {aug}",
        _table(header, rows),
        "per stage, one process:",
        _table(["stage", "images", "img/s", "ms/img"], stage_rows),
    ]
    print("\n".join(out), flush=True)
    return out


# -------------------------------------------------------------------------------------------- cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="model", choices=["model", "data", "all"])
    g = p.add_argument_group("model mode")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name, or tiny / tiny64")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--precision", default=None, choices=["32-true", "bf16-mixed"],
                   help="default: bf16-mixed on CUDA, 32-true on CPU")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--warmup", type=int, default=3)
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--finetune", default="full", choices=["full", "layernorm", "last_k"])
    g = p.add_argument_group("data mode")
    g.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    g.add_argument("--images", type=int, default=512, help="synthetic PNGs to write")
    g.add_argument("--source-size", type=int, default=256)
    g.add_argument("--data-batch-size", type=int, default=64)
    g.add_argument("--no-augment", action="store_true")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16-mixed" if args.device.startswith("cuda") else "32-true"
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {' '.join(sys.argv)}")
    if args.mode in ("model", "all"):
        bench_model(args)
    if args.mode in ("data", "all"):
        bench_data(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
