"""Merge-library speed / memory / accuracy benchmark (not a test; prints Markdown tables).

For ViT-shaped random inputs (open_clip visual-tower keys, task vectors ~1e-3 of the weights'
RMS) it times every method of ``r2m.merging`` next to the straightforward reference route of
``tests/merging/merge_reference.py`` run in float32 (N×D task matrix + direct SVD, full per-matrix
``torch.linalg.svd``), and reports the max relative difference between the two, the peak memory,
and an R²M (rank_ratio × alpha) sweep served from a warm :class:`DecompositionCache`.

    python benchmarks/merge_speed.py --model ViT-B-16 --n 3 6 --device cpu --threads 1
    python benchmarks/merge_speed.py --device cuda --model ViT-L-14 --n 3 --methods r2m
    python benchmarks/merge_speed.py --quick --threads 1   # 2 blocks, N = 3: ~5 min on 2 CPU cores

Peak memory: CPU = peak resident set size during the call minus the RSS before it (sampled every
2 ms), plus the N + 1 input backbones the process already holds; CUDA = peak allocated device
memory during the call. Both in units of one backbone (D float32 parameters).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

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


def bench_setting(args, model: str, n: int, device: torch.device, reference) -> None:
    """Print the table for one (model, N, device) setting, row by row."""
    dims = dict(MODELS[model])
    if args.layers is not None:
        dims["layers"] = args.layers
    shapes = vit_shapes(**dims)
    base, specs = make_inputs(shapes, n, seed=args.seed)
    numel = sum(v.numel() for v in base.values())
    backbone = numel * 4
    depth = "" if args.layers is None else f" ({dims['layers']} blocks)"
    threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    for line in [
        f"\n### {model}{depth}, N = {n}, device {device}{threads}",
        f"D = {numel / 1e6:.1f} M parameters, backbone = {backbone / 2**20:.0f} MiB; peak memory in "
        f"backbones ({'inputs N+1 on the host + extra host RSS' if device.type == 'cpu' else 'device allocations'}).\n",
        "| method | ours (s) | reference (s) | speed-up | ours peak | ref peak | max rel diff θ* | max rel diff θ*−θ0 "
        "| rel diff θ*−θ0, whole model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]:
        print(line, flush=True)
    if device.type == "cuda":
        ref_base = {k: v.to(device) for k, v in base.items()}
        ref_specs = [{k: v.to(device) for k, v in s.items()} for s in specs]
    else:
        ref_base, ref_specs = base, specs
    host = n + 1 if device.type == "cpu" else 0
    results, exact = {}, {}
    for method in args.methods:
        merge(method, *(make_inputs(vit_shapes(**MODELS["tiny"]), n, seed=1)), device=device)  # warm-up
        ours, t_ours, m_ours = timed(lambda: merge(method, base, specs, device=device), device)
        results[method] = t_ours
        if args.no_reference:
            print(f"| {method} | {t_ours:.2f} | – | – | {host + m_ours / backbone:.2f} | – | – | – | – |", flush=True)
            continue
        ref_fn = reference.REFERENCES[method]
        ref, t_ref, m_ref = timed(lambda: ref_fn(ref_base, ref_specs, dtype=torch.float32), device)
        d_t, d_u, d_g, _ = rel_diffs(ours, ref, base)
        print(
            f"| {method} | {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.1f}× | {host + m_ours / backbone:.2f} "
            f"| {host + m_ref / backbone:.2f} | {d_t:.1e} | {d_u:.1e} | {d_g:.1e} |",
            flush=True,
        )
        if method in args.check64:
            ref64 = ref_fn(ref_base, ref_specs, dtype=torch.float64)
            exact[method] = (rel_diffs(ours, ref64, base), rel_diffs(ref, ref64, base))
            del ref64
        del ours, ref
        gc.collect()
    for method, ((o_t, o_u, o_g, o_k), (r_t, r_u, r_g, r_k)) in exact.items():
        print(
            f"\n{method} vs the float64 reference: ours (float32) max rel diff θ* {o_t:.1e}, θ*−θ0 {o_u:.1e} "
            f"(worst tensor {o_k}), whole-model update {o_g:.1e}; the float32 reference route: θ* {r_t:.1e}, "
            f"θ*−θ0 {r_u:.1e} (worst tensor {r_k}), whole-model update {r_g:.1e}.",
            flush=True,
        )
    if "r2m" in args.methods and not args.no_sweep:
        for line in sweep_lines(base, specs, device, results["r2m"]):
            print(line, flush=True)


SWEEP = [{"rank_ratio": r, "alpha": a} for r in (0.05, 0.1, 0.2) for a in (0.4, 0.6, 0.8)]


def sweep_lines(base, specs, device, t_cold: float) -> list[str]:
    """R²M 3×3 sweep three ways: merge_many from a warm cache, merge_many from a cold cache, and
    nine separate merge() calls on a warm cache (content hashes passed in)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    base_hash = state_dict_hash(base)
    task_hashes = [state_dict_hash(s) for s in specs]
    t_hash = time.perf_counter() - t0
    ids = dict(base_hash=base_hash, task_hashes=task_hashes)
    warm = DecompositionCache()
    sync()
    t0 = time.perf_counter()
    merge("r2m", base, specs, device=device, cache=warm, **ids)
    sync()
    t_fill = time.perf_counter() - t0
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
    return [
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
    ap.add_argument("--check64", nargs="*", default=[], choices=list(METHODS),
                    help="also compare these methods with the float64 reference (the exact answer)")
    ap.add_argument("--keep-malloc", action="store_true",
                    help="keep glibc's default mmap threshold (RSS then includes allocator retention)")
    ap.add_argument("--eigh-batched", choices=["auto", "on", "off"], default="auto",
                    help="decompose stacks of Grams in one batched eigh call (auto: library default per device)")
    ap.add_argument("--cpu-route", choices=["lapack", "torch"], default=linalg.CPU_ROUTE,
                    help="spectral route of the library on CPU (r2m.merging.linalg.CPU_ROUTE)")
    ap.add_argument("--partial-fraction", type=float, default=None,
                    help="r2m.merging.linalg.PARTIAL_FRACTION (0: always the full spectrum)")
    ap.add_argument("--kernels", action="store_true", help="only time the spectral kernels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
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
    print(f"glibc mmap threshold fixed at 64 KiB for exact RSS accounting: {mallopt}")
    print(f"batched eigh per device (torch route): {linalg.BATCHED_EIGH}; CPU spectral route: {linalg.spectral_route('cpu')}")
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
