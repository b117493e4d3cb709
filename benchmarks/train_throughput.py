"""Training throughput: the training run itself (``e2e``), its raw step, and the data loader.

``e2e`` — the training benchmark is the training run. It composes ``configs/train.yaml`` exactly as
``train.py`` does (``experiment=df40_specialist`` by default: the configured model variant
(``-quickgelu`` for OpenAI weights), optimizer (``configure_optimizers``: DF40's non-fused Adam),
batch 32, precision from ``trainer=gpu`` (bf16-mixed) or ``trainer=cpu``, ``data=df40`` with its
workers / pin_memory), writes a DF40-format fixture of 256-px PNG crops to a temporary folder, and
runs ``r2m.training.train_task`` — the real DataModule, the Lightning fit loop, host→device copy and the
detector's on-device normalisation. It reports img/s over the timed steps and, beside it, the raw
step of the *same* model, optimizer and precision on random tensors already on the device, so the
gap (loader, copy, Lightning) is visible. Weights are random (``model.pretrained=null``; no
download); the speed is that of the pretrained model.

    python benchmarks/train_throughput.py e2e --model vit_b16 --device cuda --steps 30
    python benchmarks/train_throughput.py e2e --model vit_l14 --device cuda --steps 20
    python benchmarks/train_throughput.py e2e --model tiny64 --device cpu --steps 20   # same flags on CPU

``--model`` is a ``configs/model`` name (``tiny``, ``tiny64`` — the built-in benchmark's model —,
``vit_b16``, ``vit_l14``); extra Hydra overrides go after ``--``, e.g. ``-- data.batch_size=64``.

``loader`` — the former loader path against today's, side by side in one run (interleaved rounds,
medians): ``float`` = albumentations Normalize + ToTensorV2 in the worker and a float collate (the
path before the uint8 batches), ``uint8`` = the DataModule's loader (uint8 collate into shared
memory; with the normalisation timed on ``--device`` — in the main process on CPU — and without it:
on a GPU it runs on the device, not on the loader's cores), the same on
LitData packed shards (``packed-original``: the PNG bytes; ``packed-raw``: decoded pixels), plus a
one-process table of decode routes (cv2 file, cv2 from memory, PIL, raw) with the augmentation.

    python benchmarks/train_throughput.py loader --workers 2 --images 1536 --rounds 3
    python benchmarks/train_throughput.py loader --workers 16 --images 8192 --rounds 3   # GPU host

``raw`` — only the raw step (same composition as ``e2e``, no data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py: no spinning OpenMP threads on a shared CPU
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the folder names df40.yaml's path_remap expects under paths.df40_root → the fixture's folders
DF40_FOLDERS = {"DF40": "df40_test", "DF40_train": "df40_train", "FaceForensics++": "ffpp_real",
                "Celeb-DF-v2": "celebdf_real"}


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads "
            f"(torch {torch.__version__})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# --------------------------------------------------------------------------------- fixture data


def _face_crop(rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A smooth colour field with texture, a face-like ellipse and sensor noise (PNG ≈ a face crop's size)."""
    base = np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * 60 + 128 for _ in range(3)], -1)
    mask = ((xx - 0.5) ** 2 / 0.09 + (yy - 0.5) ** 2 / 0.16) < 1
    base[mask] = base[mask] * 0.4 + np.array(rng.uniform(120, 220, 3), dtype=np.float32) * 0.6
    return np.clip(base + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)


def write_fixture(root: Path, frames_needed: int, frames_per_video: int = 8, size: int = 256, seed: int = 0) -> dict:
    """A DF40-format dataset for the FS family with at least ``frames_needed`` training frames of
    ``size``-px PNG crops (FF++ reals + simswap fakes in ``FSAll_ff.json``'s train split), the
    fixture's small test JSONs, and the folder names ``df40.yaml`` remaps (symlinks)."""
    import cv2

    from data_modules.fixtures import FIXTURE_REMAP, write_df40_fixture

    info = write_df40_fixture(root / "fixture", n_videos=8, frames_per_video=2, image_size=16)
    n_videos = max(8, math.ceil(frames_needed / (2 * frames_per_video * 0.85)))
    n_videos += n_videos % 2  # FF++-style disjoint pairs (000_001, 001_000, ...): the identity carve keeps both sides
    json_path = Path(info["json_dir"]) / "FSAll_ff.json"
    obj = json.loads(json_path.read_text())
    P = "deepfakes_detection_datasets"
    groups = {"simswap_Real": ("FSAll_Real", f"{P}/FaceForensics++/original_sequences/youtube/c23/frames/{{v}}"),
              "simswap_Fake": ("FSAll_Fake", f"{P}/DF40_train/simswap/ff/frames/{{v}}")}
    remap = sorted(FIXTURE_REMAP.items(), key=lambda kv: -len(kv[0]))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for group, (label, pattern) in groups.items():
        videos = {}
        for i in range(n_videos):
            vid = f"{i:03d}" if label.endswith("Real") else f"{i:03d}_{i ^ 1:03d}"
            frames = [f"{pattern.format(v=vid)}/{k:03d}.png" for k in range(frames_per_video)]
            for f in frames:
                prefix, folder = next((p, d) for p, d in remap if f.startswith(p + "/"))
                path = Path(info["data_root"]) / folder / f[len(prefix) + 1:]
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), _face_crop(rng, size, xx, yy))
            videos[vid] = {"label": label, "frames": frames}
        obj["FSAll_ff"].setdefault(group, {})["train"] = videos
    json_path.write_text(json.dumps(obj))
    for name, folder in DF40_FOLDERS.items():
        (root / name).symlink_to(Path(info["data_root"]) / folder, target_is_directory=True)
    info["df40_root"] = str(root)
    return info


# ----------------------------------------------------------------------------- e2e and raw step


class StepTimer:
    """Lightning callback: wall time from the end of step ``warmup`` to the end of the last step
    (CUDA synchronised at both ends only), epochs crossed, GPU utilisation samples; JSON to ``out``."""

    def __new__(cls, *args, **kwargs):  # a Lightning Callback built lazily (no lightning import at module load)
        from lightning.pytorch.callbacks import Callback

        class _StepTimer(Callback):
            def __init__(self, out: str, warmup: int, batch_size: int) -> None:
                self.out, self.warmup, self.batch_size = out, int(warmup), int(batch_size)
                self.t0 = self.t_first = None
                self.steps = self.images = 0
                self.epochs = set()
                self.util: list[float] = []
                self._stop = threading.Event()

            def _poll_util(self, device) -> None:
                while not self._stop.wait(0.25):
                    try:
                        self.util.append(float(torch.cuda.utilization(device)))
                    except Exception:  # pynvml missing: gpu_suite.sh samples nvidia-smi instead
                        return

            def on_train_start(self, trainer, pl_module):
                self.t_first = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                step = trainer.global_step  # optimizer steps done
                if step == self.warmup:
                    _sync(pl_module.device)
                    self.t0 = time.perf_counter()
                    if pl_module.device.type == "cuda":
                        threading.Thread(target=self._poll_util, args=(pl_module.device,), daemon=True).start()
                elif step > self.warmup:
                    self.steps += 1
                    self.images += int(batch["label"].shape[0])
                    self.epochs.add(trainer.current_epoch)

            def on_train_end(self, trainer, pl_module):
                _sync(pl_module.device)
                t1 = time.perf_counter()
                self._stop.set()
                from r2m.utils import atomic_write_json

                atomic_write_json(self.out, {
                    "steps": self.steps, "images": self.images, "seconds": t1 - self.t0 if self.t0 else None,
                    "startup_s": (self.t0 or t1) - self.t_first, "epochs_in_window": len(self.epochs),
                    "gpu_util": self.util, "peak_gib": (torch.cuda.max_memory_allocated() / 2**30
                                                         if pl_module.device.type == "cuda" else None),
                })

        return _StepTimer(*args, **kwargs)


def compose_cfg(args: argparse.Namespace, fixture: dict | None, timer_out: str | None):
    from hydra import compose, initialize_config_dir

    cuda = args.device.startswith("cuda")
    over = [f"experiment={args.experiment}", f"model={args.model}", "model.pretrained=null",
            f"trainer={'gpu' if cuda else 'cpu'}", "logger=none", "callbacks=none", "test_after_fit=false",
            "extras.print_config=false"]
    if fixture is not None:
        over += [f"paths.df40_root={fixture['df40_root']}", f"paths.df40_json_dir={fixture['json_dir']}",
                 "data.test_splits.in_distribution=[FSAll_ff]",
                 "data.test_splits.cross_dataset=[FSAll_cdf]", "data.test_splits.unseen=[deepfacelab,heygen]",
                 "data.family=fs", "data.val_fraction=0.5"]
    steps = args.warmup + args.steps
    over += [f"trainer.max_steps={steps}", "trainer.max_epochs=1000", "trainer.limit_val_batches=0",
             "trainer.num_sanity_val_steps=0", "+trainer.enable_checkpointing=false",
             "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    if args.precision:
        over.append(f"trainer.precision={args.precision}")
    if args.workers is not None:
        over.append(f"data.num_workers={args.workers}")
    over += list(args.overrides)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=over)
    if timer_out is not None:
        from omegaconf import OmegaConf, open_dict

        with open_dict(cfg):
            cfg.callbacks = OmegaConf.create({"step_timer": {
                "_target_": "benchmarks.train_throughput.StepTimer", "out": timer_out, "warmup": args.warmup,
                "batch_size": int(cfg.data.batch_size)}})
    return cfg


def raw_step(cfg, device: torch.device, steps: int, warmup: int) -> dict:
    """The composed model's training step on random tensors already on the device: the same model,
    ``configure_optimizers`` optimizer, batch and precision (bf16 autocast as Lightning's bf16-mixed)."""
    import contextlib

    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model).to(device)
    model.train()
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    b, s = int(cfg.data.batch_size), int(cfg.model.image_size)
    images = torch.randn(b, 3, s, s, device=device)
    labels = torch.randint(0, 2, (b,), device=device)
    precision = str(cfg.trainer.precision)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision.startswith("bf16")
                else contextlib.nullcontext())

    def step():
        with autocast:
            logits = model(images)
        loss = model._loss(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    elapsed = time.perf_counter() - t0
    if not torch.isfinite(loss).item():
        raise RuntimeError("raw step: non-finite loss")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"img_s": b * steps / elapsed, "ms_step": elapsed / steps * 1000, "params": n_params,
            "optimizer": type(opt).__name__ + ("(fused)" if opt.defaults.get("fused") else ""),
            "model_name": cfg.model.model_name, "precision": precision, "batch": b, "px": s}


def bench_e2e(args: argparse.Namespace, with_fit: bool = True) -> list[str]:
    from omegaconf import OmegaConf

    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="r2m-bench-e2e-") as tmp:
        tmp = Path(tmp)
        fixture = None
        cfg0 = compose_cfg(args, None, None)
        batch = int(cfg0.data.batch_size)
        if cfg0.get("matmul_precision"):
            torch.set_float32_matmul_precision(cfg0.matmul_precision)
        if with_fit:
            t0 = time.perf_counter()
            fixture = write_fixture(tmp, batch * (args.warmup + args.steps + 2), size=args.source_size)
            fixture_s = time.perf_counter() - t0
            timer = str(tmp / "timer.json")
            cfg = compose_cfg(args, fixture, timer)
            from r2m.training import train_task

            t0 = time.perf_counter()
            model, trainer = train_task(cfg, "fs", tmp / "run", ["fs"], {}, {"benchmark": True}, None)
            fit_s = time.perf_counter() - t0
            res = json.loads(Path(timer).read_text())
            if not res["seconds"] or res["steps"] != args.steps:
                raise RuntimeError(f"e2e: timed {res['steps']} steps, expected {args.steps} ({res})")
            n_train = len(trainer.datamodule.table("train"))
            util = res["gpu_util"]
            e2e_rate = res["images"] / res["seconds"]
            rows.append(["train.py fit (e2e)", f"{e2e_rate:,.1f}", f"{res['seconds'] / res['steps'] * 1000:.1f}",
                         f"{statistics.mean(util):.0f} % (n={len(util)})" if util else "-",
                         f"{res['peak_gib']:.1f}" if res["peak_gib"] else "-"])
        raw = raw_step(cfg0, device, args.steps, args.warmup)
        rows.append(["raw step (random tensors on device)", f"{raw['img_s']:,.1f}", f"{raw['ms_step']:.1f}", "-",
                     f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "-"])
    data = cfg0.data
    head = (f"e2e training on {_machine(device)}: model={args.model} ({raw['model_name']}, "
            f"{raw['params'] / 1e6:.1f} M trainable), {raw['px']} px, batch {raw['batch']}, {raw['precision']}, "
            f"optimizer {raw['optimizer']}, experiment={args.experiment}, data: {OmegaConf.select(data, '_target_')} "
            f"num_workers={data.num_workers} pin_memory={data.get('pin_memory')} augment={data.get('augment')}; "
            f"{args.steps} timed steps after {args.warmup}")
    out = [head]
    if with_fit:
        out.append(f"fixture: {n_train} training frames of {args.source_size}-px PNG ({fixture_s:.0f} s to write); "
                   f"fit {fit_s:.1f} s incl. {res['startup_s']:.1f} s start-up + warmup; epochs in the timed window: "
                   f"{res['epochs_in_window']}")
    out.append(_table(["path", "img/s", "ms/step", "GPU util", "peak GiB"], rows))
    if with_fit:
        out.append(f"e2e / raw = {e2e_rate / raw['img_s']:.2f}")
    print("\n".join(out), flush=True)
    return out


# ----------------------------------------------------------------------------------- loader mode


def _old_loader(table, args, workers: int, mean, std):
    """The loader as it was before uint8 batches: Normalize + ToTensorV2 in the worker, float collate."""
    from torch.utils.data import DataLoader

    from data_modules.dataset import FrameDataset, collate_frames
    from data_modules.transforms import build_transform

    ds = FrameDataset(table, build_transform(True, True, args.image_size, mean, std, seed=1024, output="float"))
    return DataLoader(ds, batch_size=args.data_batch_size, shuffle=True, generator=torch.Generator().manual_seed(1024),
                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                      collate_fn=partial(collate_frames, image_shape=(3, args.image_size, args.image_size)))


def _pass_rate(loader, device: torch.device, normalize=None) -> tuple[float, int]:
    """img/s over one pass after the first batch (worker start-up not timed); batches are moved to
    ``device`` (and normalised there by ``normalize``) as in training."""
    it = iter(loader)
    next(it)
    n = 0
    t0 = time.perf_counter()
    for batch in it:
        x = batch["image"].to(device, non_blocking=True)
        if normalize is not None:
            x = normalize(x)
        n += x.shape[0]
    _sync(device)
    elapsed = time.perf_counter() - t0
    if n == 0:
        raise ValueError("--images must exceed --data-batch-size")
    return n / elapsed, n


def _decode_rows(paths: list[str], image_size: int, raw_pack, orig_pack) -> list[list[str]]:
    import cv2

    from data_modules.image_io import decode_rgb, read_rgb, read_rgb_pil
    from data_modules.transforms import train_transform

    blobs = [Path(p).read_bytes() for p in paths]
    routes = [
        ("cv2.imread (read_rgb, today)", lambda i: read_rgb(paths[i])),
        ("cv2.imread IMREAD_COLOR", lambda i: cv2.cvtColor(cv2.imread(paths[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)),
        ("PIL open + convert", lambda i: read_rgb_pil(paths[i])),
        ("cv2.imdecode from memory", lambda i: decode_rgb(blobs[i])),
        ("packed original (litdata + imdecode)", lambda i: orig_pack.read(i)[0]),
        ("packed raw (litdata, no decode)", lambda i: raw_pack.read(i)[0]),
    ]
    aug = train_transform(image_size, seed=0, output="uint8")
    rows = []
    for name, fn in routes:
        fn(0)
        t0 = time.perf_counter()
        for i in range(len(paths)):
            fn(i)
        dec = (time.perf_counter() - t0) / len(paths) * 1000
        t0 = time.perf_counter()
        for i in range(len(paths)):
            aug(image=fn(i))
        full = (time.perf_counter() - t0) / len(paths) * 1000
        rows.append([name, f"{dec:.2f}", f"{full:.2f}", _rate(1000 / full)])
    return rows


def bench_loader(args: argparse.Namespace) -> list[str]:
    from data_modules.fixtures import fixture_datamodule  # noqa: F401  (import check)
    from data_modules.df40 import DF40DataModule
    from data_modules.packed import PackedDataModule, pack_datamodule
    from data_modules.transforms import resolve_mean_std
    from r2m.models.preprocess import normalize_images

    device = torch.device(args.device)
    mean, std = resolve_mean_std(None, None)
    workers = args.workers
    with tempfile.TemporaryDirectory(prefix="r2m-bench-loader-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        info = write_fixture(tmp, args.images, size=args.source_size)
        write_s = time.perf_counter() - t0
        common = dict(json_dir=info["json_dir"], data_root=info["data_root"], families=info["families"],
                      test_splits={"in_distribution": ["FSAll_ff"]}, path_remap=info["path_remap"],
                      frames_per_video=None, image_size=args.image_size, batch_size=args.data_batch_size,
                      num_workers=workers, pin_memory=True, mean=mean, std=std, val_fraction=0.1, seed=1024)
        dm = DF40DataModule(family="fs", **common)
        dm.setup("fit")
        table = dm.table("train")
        kb = sum(os.path.getsize(table.path(i)) for i in range(len(table))) / len(table) / 1024
        t0 = time.perf_counter()
        packs = {}
        for enc in ("original", "raw"):
            out = pack_datamodule(dm, tmp / f"pack-{enc}", encoding=enc, splits=["train", "val"], progress=False)
            packs[enc] = PackedDataModule(out, image_size=args.image_size, mean=mean, std=std,
                                          batch_size=args.data_batch_size, num_workers=workers, pin_memory=True)
        pack_s = time.perf_counter() - t0
        sizes = {enc: sum(f.stat().st_size for f in (tmp / f"pack-{enc}" / "train").glob("*.bin")) / 2**20
                 for enc in packs}
        norm = partial(normalize_images, mean=mean, std=std)
        paths = {
            "float (before: normalise in worker, float collate)": lambda: _pass_rate(_old_loader(table, args, workers, mean, std), device),
            "uint8 (DataModule) + normalise on this device": lambda: _pass_rate(dm.train_dataloader(), device, norm),
            "uint8 (DataModule), loader only": lambda: _pass_rate(dm.train_dataloader(), device),
            "uint8 packed-original (litdata PNG bytes)": lambda: _pass_rate(packs["original"].train_dataloader(), device, norm),
            "uint8 packed-raw (litdata pixels)": lambda: _pass_rate(packs["raw"].train_dataloader(), device, norm),
        }
        rates: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):  # interleaved rounds: a load change on the shared CPU hits every path
            for name, fn in paths.items():
                rates[name].append(fn()[0])
        base = rates[next(iter(paths))]
        ratios = {k: statistics.median([r / b for r, b in zip(v, base)]) for k, v in rates.items()}
        rows = [[k, _rate(statistics.median(v)), _rate(statistics.median(v) / max(1, workers)),
                 " ".join(_rate(x) for x in v), f"{ratios[k]:.2f}"] for k, v in rates.items()]
        orig_ds = packs["original"].dataset("train", train=False)
        raw_ds = packs["raw"].dataset("train", train=False)
        n_dec = min(len(table), args.decode_images)
        decode_rows = _decode_rows([table.path(i) for i in range(n_dec)], args.image_size, raw_ds, orig_ds)
    out = [
        f"loader on {_machine(device)}: {len(table)} training frames, {args.source_size}-px PNG ({kb:.0f} KiB avg; "
        f"written in {write_s:.0f} s; packed in {pack_s:.0f} s: original {sizes['original']:.0f} MiB, raw "
        f"{sizes['raw']:.0f} MiB) → {args.image_size} px, DeepfakeBench augmentation, batch {args.data_batch_size}, "
        f"{workers} workers, {args.rounds} interleaved rounds (medians; ratio = median of per-round ratios to float)",
        _table(["path", "img/s", "img/s per worker", "rounds", "× float"], rows),
        f"decode routes, one process, {n_dec} frames (ms/img; + aug = decode + the uint8 augmentation):",
        _table(["route", "decode ms", "+ aug ms", "img/s"], decode_rows),
    ]
    print("\n".join(out), flush=True)
    return out


# -------------------------------------------------------------------------------------------- cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["e2e", "raw", "loader"])
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = p.add_argument_group("e2e / raw")
    g.add_argument("--model", default="vit_b16", help="configs/model name: tiny | tiny64 | vit_b16 | vit_l14")
    g.add_argument("--experiment", default="df40_specialist")
    g.add_argument("--precision", default=None, help="default: the composed trainer's (gpu: bf16-mixed, cpu: 32-true)")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--warmup", type=int, default=3)
    g.add_argument("--workers", type=int, default=None, help="e2e: data.num_workers (default: the config's); "
                   "loader: DataLoader workers (default 2)")
    g = p.add_argument_group("loader")
    g.add_argument("--images", type=int, default=1536, help="training frames to generate")
    g.add_argument("--source-size", type=int, default=256)
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--data-batch-size", type=int, default=64)
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--decode-images", type=int, default=128)
    args = p.parse_args(argv)
    if args.mode == "loader" and args.workers is None:
        args.workers = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {' '.join(sys.argv)}", flush=True)
    if args.mode in ("e2e", "raw"):
        bench_e2e(args, with_fit=args.mode == "e2e")
    else:
        bench_loader(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
