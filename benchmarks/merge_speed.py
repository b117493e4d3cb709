"""Merge-library speed / memory / accuracy benchmark (not a test; prints Markdown tables).

For ViT-shaped random inputs (open_clip visual-tower keys, task vectors ~1e-3 of the weights'
RMS) it times every method of ``r2m.merging`` ("ours") next to

* ``ref`` — the straightforward route of ``tests/merging/merge_reference.py`` run in float32 (N×D
  task matrix, full per-matrix ``torch.linalg.svd``, TIES threshold by ``torch.kthvalue``): what a
  competent engineer writes without care for memory;
* ``peer`` — FusionBench 0.2.33's own algorithm classes (``TaskSingularVectorMerging``,
  ``TiesMergingAlgorithm``, ``IsotropicMergingIn…``, ``DareTaskArithmetic``, …; float32) when
  ``fusion_bench`` is installed (optional: ``pip install fusion-bench==0.2.33``; imported only
  inside this script's worker processes);

each in a fresh process (peak memory of that process, inputs included), ``--repeat`` times (median
time). ``--check64`` adds the error of each against the exact float64 answer, streamed one tensor
at a time (see :data:`PER_TENSOR`), and the R²M section measures what a decomposition cache costs
a single merge and what it saves a sweep.

    python benchmarks/merge_speed.py --model ViT-B-16 --n 3 --device cpu --threads 1 --check64
    python benchmarks/merge_speed.py --device cuda --model ViT-L-14 --n 3 --methods r2m --check64
    python benchmarks/merge_speed.py --quick --threads 1 --check64   # 2 blocks, N = 3

Peak memory, in backbones (D float32 parameters): CPU = the worker's sampled RSS peak minus its RSS
before it built the inputs (so the N + 1 inputs count; freed pages are returned first, glibc's mmap
threshold is fixed unless ``--keep-malloc``); CUDA = peak allocated device memory of the call.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r2m.merging import METHODS, DecompositionCache, linalg, merge, merge_many  # noqa: E402
from r2m.utils import state_dict_hash  # noqa: E402

#: open_clip vision-tower dimensions: width, layers, patch, image size, output dim
MODELS = {
    "tiny": dict(width=64, layers=2, patch=16, image=64, out_dim=32),
    "ViT-B-16": dict(width=768, layers=12, patch=16, image=224, out_dim=512),
    "ViT-L-14": dict(width=1024, layers=24, patch=14, image=224, out_dim=768),
}


def vit_shapes(width: int, layers: int, patch: int, image: int, out_dim: int, mlp_ratio: int = 4) -> dict:
    """Keys and shapes of an open_clip ``VisionTransformer`` state dict (its key order)."""
    tokens = (image // patch) ** 2 + 1
    shapes = {
        "class_embedding": (width,),
        "positional_embedding": (tokens, width),
        "proj": (width, out_dim),
        "conv1.weight": (width, 3, patch, patch),
        "ln_pre.weight": (width,),
        "ln_pre.bias": (width,),
    }
    hidden = mlp_ratio * width
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        shapes.update({
            p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
            p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
            p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
            p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
            p + "mlp.c_fc.weight": (hidden, width), p + "mlp.c_fc.bias": (hidden,),
            p + "mlp.c_proj.weight": (width, hidden), p + "mlp.c_proj.bias": (width,),
        })
    shapes.update({"ln_post.weight": (width,), "ln_post.bias": (width,)})
    return shapes


def make_inputs(shapes: dict, n: int, seed: int = 0, rel: float = 1e-3):
    """θ0 with CLIP-like scales and N specialists θ0 + τ_i, τ_i = rel·rms(θ0)·(0.5·shared + own)."""
    g = torch.Generator().manual_seed(seed)
    base = {}
    for key, shape in shapes.items():
        if key.endswith(".weight") and len(shape) == 1:  # LayerNorm gains around 1
            base[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            base[key] = 0.02 * torch.randn(shape, generator=g)
    shared = {k: torch.randn(v.shape, generator=g) for k, v in base.items()}
    specs = []
    for _ in range(n):
        spec = {}
        for key, v in base.items():
            rms = float(v.pow(2).mean().sqrt())
            spec[key] = v + rel * rms * (0.5 * shared[key] + torch.randn(v.shape, generator=g))
        specs.append(spec)
    return base, specs


def exact_rss_accounting() -> bool:
    """Make glibc return freed large blocks to the OS at once (fixed 64 KiB mmap threshold, no
    dynamic raise), so sampled RSS reflects live memory rather than allocator retention."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 16)) and bool(libc.mallopt(m_trim_threshold, 1 << 16))
    except (OSError, AttributeError):
        return False


def load_reference():
    path = ROOT / "tests" / "merging" / "merge_reference.py"
    spec = importlib.util.spec_from_file_location("merge_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PeakMemory:
    """Peak extra memory (bytes) during a ``with`` block: CUDA allocator peak or sampled RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self._rss()
            self._stop = threading.Event()
            self._max = self.start

            def sample():
                while not self._stop.is_set():
                    self._max = max(self._max, self._rss())
                    time.sleep(0.002)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self.start
        return False


def timed(fn, device: torch.device):
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return out, seconds, mem.peak


def rel_diffs(ours: dict, ref: dict, base: dict) -> tuple[float, float, float, str]:
    """(max_l ‖a−b‖/‖b‖ over θ*, max_l ‖a−b‖/‖b−θ0‖ over the merge update, the same over the whole
    model's update ‖Δa − Δb‖/‖Δb‖ with every tensor concatenated, the tensor l of the worst update)."""
    worst_t, worst_u, worst_key = 0.0, 0.0, ""
    num2, den2 = 0.0, 0.0
    for key in base:
        a, b, z = ours[key].double().cpu(), ref[key].double().cpu(), base[key].double()
        num = float((a - b).norm())
        worst_t = max(worst_t, num / max(float(b.norm()), 1e-300))
        upd = float((b - z).norm())
        rel = num / upd if upd > 0 else num
        if rel > worst_u:
            worst_u, worst_key = rel, key
        num2 += num * num
        den2 += upd * upd
    return worst_t, worst_u, (num2 / den2) ** 0.5 if den2 > 0 else num2**0.5, worst_key


# ---------------------------------------------------------------------------------------------
# one measurement per fresh process
# ---------------------------------------------------------------------------------------------

#: FusionBench 0.2.33 algorithm classes (the peer column), constructed with each method's r2m
#: defaults; imported lazily inside the worker only (never by r2m).
PEER_METHODS = ("average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts")


def _peer_algorithm(method: str):
    if method == "average":
        from fusion_bench.method import SimpleAverageAlgorithm

        return SimpleAverageAlgorithm()
    if method == "task_arithmetic":
        from fusion_bench.method import TaskArithmeticAlgorithm

        return TaskArithmeticAlgorithm(scaling_factor=0.3)
    if method == "ties":
        from fusion_bench.method import TiesMergingAlgorithm

        return TiesMergingAlgorithm(scaling_factor=1.0, threshold=20, remove_keys=[], merge_func="mean")
    if method == "dare":
        from fusion_bench.method import DareTaskArithmetic

        return DareTaskArithmetic(scaling_factor=0.3, sparsity_ratio=0.5, only_on_linear_weights=False, rescale=True)
    if method == "tsv":
        from fusion_bench.method import TaskSingularVectorMerging

        return TaskSingularVectorMerging(alpha=1.0)
    if method == "iso_c":
        from fusion_bench.method import IsotropicMergingInCommonSubspace

        return IsotropicMergingInCommonSubspace(scaling_factor=1.0)
    if method == "iso_cts":
        from fusion_bench.method import IsotropicMergingInCommonAndTaskSubspace

        return IsotropicMergingInCommonAndTaskSubspace(scaling_factor=1.0, common_space_fraction=0.8)
    raise ValueError(f"no FusionBench peer for {method}")


def peer_available() -> str | None:
    """FusionBench's version when it is importable (the optional peer column), else ``None``."""
    if importlib.util.find_spec("fusion_bench") is None:
        return None
    from importlib.metadata import version

    return version("fusion-bench")


def _as_module(state: dict, trainable: bool = False):
    """An ``nn.Module`` whose ``state_dict()`` is ``state`` (parameters share its tensors;
    ``trainable``: marked as requiring grad, which FusionBench's DARE selects them by)."""
    from torch import nn

    root = nn.Module()
    for key, t in state.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(t, requires_grad=trainable))
    return root


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def worker(job: dict) -> dict:
    """Run one (method, implementation) merge in this (fresh) process; returns the measurements.

    The peak counts everything the merge holds: inputs included (CPU: sampled RSS minus the RSS
    before the inputs were built, freed pages returned with ``malloc_trim`` first; CUDA: allocator
    peak of the call)."""
    import json

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if job.get("exact_rss", True):
        exact_rss_accounting()
    linalg.CPU_ROUTE = job.get("cpu_route", linalg.CPU_ROUTE)
    if job.get("partial_fraction") is not None:
        linalg.PARTIAL_FRACTION = job["partial_fraction"]
    device = torch.device(job["device"])
    method, impl = job["method"], job["impl"]
    dims = dict(MODELS[job["model"]])
    if job.get("layers") is not None:
        dims["layers"] = job["layers"]
    tiny = make_inputs(vit_shapes(**MODELS["tiny"]), job["n"], seed=1)
    base = specs = None  # built after the warm-up (imports and kernels), so rss0 excludes them
    if impl == "ours":
        merge(method, *tiny, device=device)  # warm-up (kernels, imports)
        fn = lambda: merge(method, base, specs, device=device)  # noqa: E731
        prep = None
    elif impl == "ref":
        ref_fn = load_reference().REFERENCES[method]
        ref_fn(*tiny, dtype=torch.float32)
        held = {}

        def prep():
            held["b"], held["s"] = base, specs
            if device.type == "cuda":
                held["b"] = {k: v.to(device) for k, v in base.items()}
                held["s"] = [{k: v.to(device) for k, v in s.items()} for s in specs]

        fn = lambda: ref_fn(held["b"], held["s"], dtype=torch.float32)  # noqa: E731
    elif impl == "peer":
        import logging

        logging.disable(logging.WARNING)
        from fusion_bench.modelpool import BaseModelPool

        def run_peer(b, ss):
            tr = method == "dare"
            pool = BaseModelPool({"_pretrained_": _as_module(dict(b), tr),
                                  **{f"task{i}": _as_module(dict(x), tr) for i, x in enumerate(ss)}})
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # FusionBench prints per tensor
                model = _peer_algorithm(method).run(pool)
            return {k: v.detach() for k, v in model.state_dict().items()}

        run_peer({k: v.clone() for k, v in tiny[0].items()}, tiny[1])
        held = {}

        def prep():
            # FusionBench merges into the pretrained module in place: give it its own copy of θ0
            # (created before the measurement, like the inputs)
            held["b"] = {k: v.clone() for k, v in base.items()}

        fn = lambda: run_peer(held["b"], specs)  # noqa: E731
    else:
        raise ValueError(impl)
    gc.collect()
    _malloc_trim()
    rss0 = PeakMemory._rss()
    base, specs = make_inputs(vit_shapes(**dims), job["n"], seed=job["seed"])
    backbone = 4 * sum(v.numel() for v in base.values())
    if prep is not None:
        prep()
    gc.collect()
    _malloc_trim()
    call_start = PeakMemory._rss()
    out, seconds, extra = timed(fn, device)
    if device.type == "cuda":
        peak = extra / backbone
    else:  # everything above the bare interpreter: inputs, the peer's module copies, the call's peak
        peak = (call_start - rss0 + extra) / backbone
    result = {"method": method, "impl": impl, "seconds": seconds, "peak": peak}
    if job.get("save"):
        from safetensors.torch import save_file

        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}, job["save"])
    print("RESULT " + json.dumps(result), flush=True)
    return result


def run_worker(job: dict, timeout: float | None = None) -> dict:
    """:func:`worker` in a fresh Python process; its measurements (``RuntimeError`` on failure)."""
    import json
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {job['method']}/{job['impl']} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------------
# the exact (float64) answer, streamed one tensor at a time
# ---------------------------------------------------------------------------------------------

class Float64View(Mapping):
    """Read-only float64 view of a state dict: each tensor is converted when read (so a float64
    merge streams one tensor at a time and its output is float64, unrounded)."""

    def __init__(self, state):
        self.state = state

    def __getitem__(self, key):
        return self.state[key].to(torch.float64)

    def __iter__(self):
        return iter(self.state)

    def __len__(self):
        return len(self.state)

    def tensor_info(self, key):
        return tuple(self.state[key].shape), torch.float64


#: Methods whose float64 answer is computed by the independent reference, one tensor at a time
#: (each tensor's update depends on that tensor only). TIES (one global threshold per task) and
#: R²M (a Real subspace over all tensors) need every tensor at once: their float64 answer is the
#: library in float64 on float64 views, streamed — equal to the independent float64 reference on
#: the test models (``tests/merging/test_reference.py``), without the reference's N×D float64 SVD
#: that does not fit in 24 GiB for ViT-B/16.
PER_TENSOR = ("average", "task_arithmetic", "dare", "cart", "tsv", "iso_c", "iso_cts")


def exact_updates(method: str, base: dict, specs: list, reference,
                  device: torch.device | str = "cpu") -> Iterator[tuple[str, Tensor]]:
    """``(key, Δ_exact[key])`` in float64 for every tensor, generated one tensor at a time, computed
    on ``device`` (float64 SVDs on a GPU take seconds where the CPU takes minutes)."""
    if method in PER_TENSOR:
        ref_fn = reference.REFERENCES[method]
        for key in base:
            if method == "dare":  # the mask is a function of the stored (float32) tensor
                from r2m.merging.methods.dare import dare_mask

                b = base[key].double()
                total = sum((s[key].double() - b) * dare_mask(s[key], key, 0, 0.5) for s in specs)
                yield key, 0.3 / 0.5 * total
                continue
            b64 = base[key].to(device, torch.float64)
            one = ref_fn({key: b64}, [{key: s[key].to(device, torch.float64)} for s in specs], dtype=torch.float64)
            yield key, (one[key] - b64).cpu()
        return
    merged = merge(method, Float64View(base), [Float64View(s) for s in specs], device=device, dtype=torch.float64)
    for key in base:
        yield key, merged.pop(key) - base[key].double()


def update_errors(results: dict[str, Mapping], base: dict, exact: Iterator[tuple[str, Tensor]]) -> dict:
    """Per implementation: (max over tensors of ‖Δ − Δ_exact‖/‖Δ_exact‖, that tensor, the same over
    the whole model's update)."""
    acc = {name: [0.0, "", 0.0] for name in results}
    den2 = 0.0
    for key, d_exact in exact:
        den = float(d_exact.norm())
        den2 += den * den
        for name, res in results.items():
            num = float((res[key].double() - base[key].double() - d_exact).norm())
            rel = num / den if den > 0 else num
            if rel > acc[name][0]:
                acc[name][0], acc[name][1] = rel, key
            acc[name][2] += num * num
    return {name: (w, k, (n2 / den2) ** 0.5 if den2 > 0 else n2**0.5) for name, (w, k, n2) in acc.items()}


def bench_setting(args, model: str, n: int, device: torch.device, reference) -> None:
    """Print the table for one (model, N, device) setting, row by row: every implementation of a
    method runs in its own fresh process (``--repeat`` times: median time)."""
    import statistics
    import tempfile

    dims = dict(MODELS[model])
    if args.layers is not None:
        dims["layers"] = args.layers
    shapes = vit_shapes(**dims)
    numel = sum(math.prod(s) for s in shapes.values())
    backbone = numel * 4
    depth = "" if args.layers is None else f" ({dims['layers']} blocks)"
    threads = f", {args.threads or torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    peer = peer_available() if not args.no_peer else None
    impls = ["ours"] + ([] if args.no_reference else ["ref"]) + (["peer"] if peer else [])
    where = "all memory of the call, inputs (N + 1) included" if device.type == "cpu" else "device allocations of the call"
    acc_cols = " | error vs float64: ours | ref | peer (worst tensor) | whole-model update: ours / ref / peer"
    for line in [
        f"\n### {model}{depth}, N = {n}, device {device}{threads}",
        f"D = {numel / 1e6:.1f} M parameters, backbone = {backbone / 2**20:.0f} MiB; peak memory in backbones "
        f"({where}; a fresh process per cell; target N + 3 = {n + 3}); reference = the straightforward float32 route "
        f"of tests/merging/merge_reference.py; peer = FusionBench {peer or 'not installed'} (float32). "
        f"Times: median of {args.repeat}.\n",
        "| method | ours (s) | ref (s) | peer (s) | ref / ours | peer / ours | ours peak | ref peak | peer peak"
        + (acc_cols if args.check64 else "") + " |",
        "|---|---|---|---|---|---|---|---|---" + ("|---|---|---|---" if args.check64 else "") + "|",
    ]:
        print(line, flush=True)
    base = specs = None
    tmp = tempfile.TemporaryDirectory(prefix="merge_speed_")
    for method in args.methods:
        rows = {}
        for impl in impls:
            if impl == "peer" and method not in PEER_METHODS:
                continue
            save = str(Path(tmp.name) / f"{impl}.safetensors") if method in args.check64 else None
            job = dict(method=method, impl=impl, model=model, layers=args.layers, n=n, seed=args.seed,
                       device=str(device), threads=args.threads, exact_rss=not args.keep_malloc,
                       cpu_route=args.cpu_route, partial_fraction=args.partial_fraction)
            runs = []
            for r in range(args.repeat):
                try:
                    runs.append(run_worker({**job, "save": save if r == 0 else None}))
                except Exception as exc:  # a failing peer/reference is reported, not fatal
                    print(f"<!-- {method}/{impl}: {str(exc).strip().splitlines()[-1][:300]} -->", flush=True)
                    break
            if runs:
                rows[impl] = dict(seconds=statistics.median(x["seconds"] for x in runs),
                                  peak=runs[0]["peak"], save=save)
        t = {k: v["seconds"] for k, v in rows.items()}
        pk = {k: v["peak"] for k, v in rows.items()}

        def cell(d, k, fmt):
            return fmt.format(d[k]) if k in d else "–"

        ratio = lambda k: f"{t[k] / t['ours']:.2f}×" if k in t and "ours" in t else "–"  # noqa: E731
        line = (f"| {method} | {cell(t, 'ours', '{:.2f}')} | {cell(t, 'ref', '{:.2f}')} | {cell(t, 'peer', '{:.2f}')} "
                f"| {ratio('ref')} | {ratio('peer')} | {cell(pk, 'ours', '{:.2f}')} | {cell(pk, 'ref', '{:.2f}')} "
                f"| {cell(pk, 'peer', '{:.2f}')}")
        if method in args.check64:
            if base is None:
                base, specs = make_inputs(shapes, n, seed=args.seed)
            from r2m.merging import LazySafetensors

            saved = {k: LazySafetensors(v["save"]) for k, v in rows.items() if v["save"]}
            if method == "dare":  # FusionBench draws other random masks: no common exact answer
                saved.pop("peer", None)
            errs = update_errors(saved, base, exact_updates(method, base, specs, reference, device))
            fmt = lambda k: f"{errs[k][0]:.1e} (`{errs[k][1]}`)" if k in errs else "–"  # noqa: E731
            whole = " / ".join(f"{errs[k][2]:.1e}" if k in errs else "–" for k in ("ours", "ref", "peer"))
            line += f" | {fmt('ours')} | {fmt('ref')} | {fmt('peer')} | {whole}"
            for v in rows.values():
                if v["save"]:
                    Path(v["save"]).unlink(missing_ok=True)
        print(line + " |", flush=True)
    tmp.cleanup()
    if "r2m" in args.methods and not args.no_sweep:
        if base is None:
            base, specs = make_inputs(shapes, n, seed=args.seed)
        for line in sweep_lines(base, specs, device, None):
            print(line, flush=True)


SWEEP = [{"rank_ratio": r, "alpha": a} for r in (0.05, 0.1, 0.2) for a in (0.4, 0.6, 0.8)]


def sweep_lines(base, specs, device, t_cold: float | None = None) -> list[str]:
    """R²M cache costs and the 3×3 sweep, side by side in this process: one merge without a cache
    (what ``plan_cache("auto", 1, …)`` gives a single merge), into an empty in-memory cache, into an
    empty on-disk cache; then ``merge_many`` from a warm cache, from a cold cache, and nine separate
    ``merge()`` calls on a warm cache (content hashes passed in)."""
    import shutil
    import tempfile

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    base_hash = state_dict_hash(base)
    task_hashes = [state_dict_hash(s) for s in specs]
    t_hash = time.perf_counter() - t0
    ids = dict(base_hash=base_hash, task_hashes=task_hashes)
    merge("r2m", *(make_inputs(vit_shapes(**MODELS["tiny"]), len(specs), seed=1)), device=device)  # warm-up
    sync()
    t0 = time.perf_counter()
    merge("r2m", base, specs, device=device, **ids)
    sync()
    t_cold = time.perf_counter() - t0
    disk_dir = tempfile.mkdtemp(prefix="r2m_cache_")
    disk = DecompositionCache(disk_dir)
    sync()
    t0 = time.perf_counter()
    merge("r2m", base, specs, device=device, cache=disk, **ids)
    sync()
    t_disk = time.perf_counter() - t0
    written = sum(f.stat().st_size for f in Path(disk_dir).rglob("*.safetensors"))
    shutil.rmtree(disk_dir, ignore_errors=True)
    del disk
    warm = DecompositionCache()
    sync()
    t0 = time.perf_counter()
    merge("r2m", base, specs, device=device, cache=warm, **ids)
    sync()
    t_fill = time.perf_counter() - t0
    cache_lines = [
        "",
        "R²M, one merge that nothing reuses (same process, one after the other):",
        f"- no cache (`plan_cache('auto', 1, dir)` → None; partial eigensolver): {t_cold:.2f} s;",
        f"- into an empty in-memory cache (full spectra stored): {t_fill:.2f} s = {t_fill / t_cold:.2f}×;",
        f"- into an empty on-disk cache (full spectra, {written / 2**20:.0f} MiB written): {t_disk:.2f} s = "
        f"{t_disk / t_cold:.2f}×.",
    ]
    warm.reset_stats()
    sync()
    t0 = time.perf_counter()
    for _ in merge_many("r2m", base, specs, SWEEP, device=device, cache=warm, **ids):
        pass
    sync()
    t_many_warm = time.perf_counter() - t0
    cold = DecompositionCache()
    t0 = time.perf_counter()
    for _ in merge_many("r2m", base, specs, SWEEP, device=device, cache=cold, **ids):
        pass
    sync()
    t_many_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for point in SWEEP:
        merge("r2m", base, specs, device=device, cache=warm, **ids, **point)
    sync()
    t_calls = time.perf_counter() - t0
    return cache_lines + [
        "",
        f"R²M 3×3 sweep (rank_ratio ∈ {{0.05, 0.1, 0.2}} × alpha ∈ {{0.4, 0.6, 0.8}}), one cold merge = {t_cold:.2f} s "
        f"(no cache; one merge into an empty cache, which stores full spectra: {t_fill:.2f} s):",
        f"- `merge_many`, cache filled by one earlier merge: {t_many_warm:.2f} s = {t_many_warm / t_cold:.2f}× one merge "
        f"(SVDs recomputed: {warm.stats['svd_computed']}, Gram pairs recomputed: {warm.stats['gram_pairs_computed']});",
        f"- `merge_many` from an empty cache (each SVD computed once inside the sweep): {t_many_cold:.2f} s = "
        f"{t_many_cold / t_cold:.2f}× one merge (SVDs computed: {cold.stats['svd_computed']});",
        f"- nine separate `merge()` calls on the warm cache: {t_calls:.2f} s = {t_calls / t_cold:.2f}× one merge "
        f"(each call re-validates and, on CUDA, re-uploads the inputs);",
        f"- content hashes of the N + 1 inputs (`state_dict_hash`, computed once and passed in): {t_hash:.2f} s.",
    ]


def kernel_lines(device: torch.device) -> list[str]:
    """Timings of the spectral kernels behind the SVD-based merges, one K×K problem at a time."""

    def clock(fn, repeats=3):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats

    g = torch.Generator().manual_seed(0)
    lines = [f"\n### spectral kernels, device {device} (seconds per matrix)\n",
             "| K | Gram fp64 (4K×K) | eigh fp64 | eigh fp64, batch of 12 (per matrix) | eigh fp32 | svd fp32 (4K×K) |",
             "|---|---|---|---|---|---|"]
    for k in (768, 1024):
        x = torch.randn(4 * k, k, generator=g).to(device)
        x64 = x.double()
        gram = x64.mT @ x64
        batch = gram.expand(12, k, k).contiguous()
        t_gram = clock(lambda: x64.mT @ x64)
        t_eigh = clock(lambda: torch.linalg.eigh(gram))
        t_batch = clock(lambda: torch.linalg.eigh(batch), 1) / 12
        t_eigh32 = clock(lambda: torch.linalg.eigh(gram.float()))
        t_svd = clock(lambda: torch.linalg.svd(x, full_matrices=False))
        lines.append(f"| {k} | {t_gram:.4f} | {t_eigh:.4f} | {t_batch:.4f} | {t_eigh32:.4f} | {t_svd:.4f} |")
        if device.type == "cuda":
            from concurrent.futures import ThreadPoolExecutor

            streams = [torch.cuda.Stream() for _ in range(4)]

            def one(i):
                with torch.cuda.stream(streams[i % 4]):
                    torch.linalg.eigh(gram)

            def concurrent():
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(one, range(12)))

            t_conc = clock(concurrent, 1) / 12
            prev = torch.backends.cuda.preferred_linalg_library()
            try:
                torch.backends.cuda.preferred_linalg_library("magma")
                t_magma = clock(lambda: torch.linalg.eigh(gram))
            except Exception as exc:  # MAGMA not built in
                t_magma = float("nan")
                print(f"magma unavailable: {exc}")
            finally:
                torch.backends.cuda.preferred_linalg_library(prev)
            lines.append(f"|  | eigh fp64 on 4 threads/streams: {t_conc:.4f} per matrix; MAGMA eigh fp64: {t_magma:.4f} | | | | |")
    if device.type == "cpu" and linalg.spectral_route(device) == "cpu-lapack":
        lines += ["\nCPU LAPACK route (SciPy / OpenBLAS, BLAS threads = torch threads), same matrices:\n",
                  "| K | Gram dsyrk (4K×K) | dsyevd (all) | dsyevr top ⌈K/8⌉ | gram_eigh, rank ⌊0.1K⌋ | gram_eigh, all |",
                  "|---|---|---|---|---|---|"]
        for k in (768, 1024):
            x = torch.randn(4 * k, k, generator=g)
            gram = x.double().mT @ x.double()
            top = linalg.eig_columns(k, int(0.1 * k), device)
            t_syrk = clock(lambda: linalg._gram_np(x, "right"))
            t_evd = clock(lambda: linalg._eigh_np_desc(gram.numpy().copy(order="F"), None, lower=True))
            t_evr = clock(lambda: linalg._eigh_np_desc(gram.numpy().copy(order="F"), top, lower=True))
            t_part = clock(lambda: linalg.gram_eigh(x, int(0.1 * k)))
            t_full = clock(lambda: linalg.gram_eigh(x))
            lines.append(f"| {k} | {t_syrk:.4f} | {t_evd:.4f} | {t_evr:.4f} | {t_part:.4f} | {t_full:.4f} |")
    return lines


def agreement_lines(args) -> list[str]:
    """CPU vs CUDA: every method merged on both devices (float32, no cache), the difference of the
    updates relative to the CPU update (max over tensors and whole model)."""
    model = args.model[0]
    dims = dict(MODELS[model])
    dims["layers"] = args.layers if args.layers is not None else 2
    base, specs = make_inputs(vit_shapes(**dims), args.n[0], seed=args.seed)
    lines = [f"\n### CPU vs CUDA agreement, {model} ({dims['layers']} blocks), N = {args.n[0]}, float32\n",
             "| method | max rel diff θ*−θ0 (worst tensor) | whole-model update |", "|---|---|---|"]
    for method in args.methods:
        a = merge(method, base, specs, device="cpu")
        b = merge(method, base, specs, device="cuda")
        worst, wk, num2, den2 = 0.0, "", 0.0, 0.0
        for key in base:
            u = a[key].double() - base[key].double()
            d = float((b[key].double() - a[key].double()).norm())
            den = float(u.norm())
            if (d / den if den else d) > worst:
                worst, wk = d / den if den else d, key
            num2, den2 = num2 + d * d, den2 + den * den
        lines.append(f"| {method} | {worst:.1e} (`{wk}`) | {(num2 / den2) ** 0.5 if den2 else num2 ** 0.5:.1e} |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["ViT-B-16"], choices=sorted(MODELS))
    ap.add_argument("--n", nargs="+", type=int, default=None, help="numbers of specialists (default 3 6; --quick: 3)")
    ap.add_argument("--device", nargs="+", default=["auto"], help="cpu, cuda, or auto (cpu + cuda if present)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--layers", type=int, default=None, help="override the number of transformer blocks")
    ap.add_argument("--quick", action="store_true", help="2 transformer blocks (a few minutes on 2 CPU cores)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-reference", action="store_true", help="skip the straightforward reference route")
    ap.add_argument("--no-sweep", action="store_true", help="skip the R²M cache sweep")
    ap.add_argument("--check64", nargs="*", default=None, choices=list(METHODS),
                    help="error columns against the exact float64 answer, streamed one tensor at a time "
                         "(no names: every method in --methods)")
    ap.add_argument("--no-peer", action="store_true", help="skip the FusionBench peer column even when installed")
    ap.add_argument("--repeat", type=int, default=1, help="fresh-process runs per cell (median time)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--keep-malloc", action="store_true",
                    help="keep glibc's default mmap threshold (RSS then includes allocator retention)")
    ap.add_argument("--eigh-batched", choices=["auto", "on", "off"], default="auto",
                    help="decompose stacks of Grams in one batched eigh call (auto: library default per device)")
    ap.add_argument("--cpu-route", choices=["lapack", "torch"], default=linalg.CPU_ROUTE,
                    help="spectral route of the library on CPU (r2m.merging.linalg.CPU_ROUTE)")
    ap.add_argument("--partial-fraction", type=float, default=None,
                    help="r2m.merging.linalg.PARTIAL_FRACTION (0: always the full spectrum)")
    ap.add_argument("--kernels", action="store_true", help="only time the spectral kernels")
    ap.add_argument("--agreement", action="store_true",
                    help="only compare CPU and CUDA merges of every method (2 blocks unless --layers)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.worker is not None:
        import json

        worker(json.loads(args.worker))
        return
    if args.check64 is None:
        args.check64 = []
    elif not args.check64:
        args.check64 = list(args.methods)
    if args.quick and args.layers is None:
        args.layers = 2
    if args.n is None:
        args.n = [3] if args.quick else [3, 6]
    if args.threads:
        torch.set_num_threads(args.threads)
    mallopt = exact_rss_accounting() if not args.keep_malloc else False
    devices = []
    for d in args.device:
        if d == "auto":
            devices += ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        else:
            devices.append(d)
    linalg.CPU_ROUTE = args.cpu_route
    if args.partial_fraction is not None:
        linalg.PARTIAL_FRACTION = args.partial_fraction
    if args.eigh_batched != "auto":
        for kind in linalg.BATCHED_EIGH:
            linalg.BATCHED_EIGH[kind] = args.eigh_batched == "on"
    reference = load_reference()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"## merge_speed — {_dt.datetime.now().isoformat(timespec='minutes')}")
    print(f"machine: {platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
          f"GPU {gpu} · torch {torch.__version__} · python {platform.python_version()}")
    print(f"command: python benchmarks/merge_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"glibc mmap threshold fixed at 64 KiB for exact RSS accounting: {mallopt}; "
          f"FusionBench peer: {peer_available() or 'not installed'}")
    print(f"batched eigh per device (torch route): {linalg.BATCHED_EIGH}; CPU spectral route: {linalg.spectral_route('cpu')}")
    if args.agreement:
        for line in agreement_lines(args):
            print(line, flush=True)
        return
    for device in devices:
        if args.kernels:
            for line in kernel_lines(torch.device(device)):
                print(line, flush=True)
            continue
        for model in args.model:
            for n in args.n:
                bench_setting(args, model, n, torch.device(device), reference)


if __name__ == "__main__":
    main()
