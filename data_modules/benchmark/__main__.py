"""Command line of the built-in benchmark.

    python -m data_modules.benchmark generate ROOT [--seed 0 --n-train 800 ...]   # → ROOT/<config hash>
    python -m data_modules.benchmark show OUT.png [--n 8 --diff]                  # contact sheet
    python -m data_modules.benchmark info                                          # families, domains
    python -m data_modules.benchmark verify ROOT/<config hash>                     # re-hash all files
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import numpy as np

__all__ = ["contact_sheet", "main"]


def contact_sheet(n: int = 8, seed: int = 0, families: Sequence[str] | None = None, image_size: int = 64,
                  diff: bool = False, scale: int = 2, strength: float = 1.0) -> np.ndarray:
    """An RGB uint8 grid: rows real photo (test band), real archive, then each family applied to
    the photo row (and, with ``diff``, ×4 absolute differences under each family); ``n`` columns,
    nearest-neighbour enlarged ``scale`` times, row names in a left margin."""
    import cv2

    from data_modules.benchmark.families import FAMILIES, apply_family
    from data_modules.benchmark.sources import item_rng, sample_video

    names = list(families) if families is not None else list(FAMILIES)
    photo = [sample_video("photo", "test", i, seed=seed, n_frames=1, size=image_size)[0] for i in range(n)]
    archive = [sample_video("archive", "test", i, seed=seed, n_frames=1, size=image_size, band="all")[0]
               for i in range(n)]
    rows: list[tuple[str, list[np.ndarray]]] = [("real photo", photo), ("real archive", archive)]
    for name in names:
        fakes = [apply_family(name, img, item_rng(seed, "fake", name, "photo", "test", f"{i:04d}", 0), strength)
                 for i, img in enumerate(photo)]
        rows.append((name, fakes))
        if diff:
            rows.append((f"|{name}-real|x4", [
                np.clip(np.abs(f.astype(np.int16) - r.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
                for f, r in zip(fakes, photo)]))
    margin, gap = 130, 2
    cell = image_size * scale
    height = len(rows) * (cell + gap) + gap
    width = margin + n * (cell + gap) + gap
    sheet = np.full((height, width, 3), 255, np.uint8)
    for r, (label, images) in enumerate(rows):
        y = gap + r * (cell + gap)
        cv2.putText(sheet, label, (4, y + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for c, img in enumerate(images):
            x = margin + gap + c * (cell + gap)
            sheet[y : y + cell, x : x + cell] = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_NEAREST)
    return sheet


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_modules.benchmark", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write the benchmark under ROOT/<config hash> (cached)")
    gen.add_argument("root")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--image-size", type=int, default=64)
    gen.add_argument("--video-frames", type=int, default=4)
    gen.add_argument("--n-train", type=int, default=800)
    gen.add_argument("--n-test", type=int, default=320)
    gen.add_argument("--n-pretrain", type=int, default=1600)
    gen.add_argument("--strength", type=float, default=1.0, help="scales every family's change")
    gen.add_argument("--families-train", type=_csv, default=("blend", "warp", "upsample"))
    gen.add_argument("--families-unseen", type=_csv, default=("diffusion", "edit", "fingerprint", "resave"))
    gen.add_argument("--family-module", action="append", default=[],
                     help="module or .py file to import first (registers user families); repeatable")

    show = sub.add_parser("show", help="save a contact sheet PNG (rows: reals, then each family)")
    show.add_argument("out_png")
    show.add_argument("--n", type=int, default=8)
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--image-size", type=int, default=64)
    show.add_argument("--scale", type=int, default=2)
    show.add_argument("--families", type=_csv, default=None)
    show.add_argument("--diff", action="store_true", help="add ×4 |fake − real| rows")
    show.add_argument("--strength", type=float, default=1.0)
    show.add_argument("--family-module", action="append", default=[])

    sub.add_parser("info", help="list registered families and real domains")
    ver = sub.add_parser("verify", help="re-hash a generated benchmark folder against its manifest")
    ver.add_argument("bench_dir")


    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from data_modules.benchmark.families import load_family_modules

    load_family_modules(getattr(args, "family_module", []))

    if args.command == "generate":
        from data_modules.benchmark.generate import BenchmarkConfig, ensure_benchmark

        cfg = BenchmarkConfig(seed=args.seed, image_size=args.image_size, frames_per_video=args.video_frames,
                              n_train=args.n_train, n_test=args.n_test, n_pretrain=args.n_pretrain,
                              strength=args.strength,
                              families_train=args.families_train, families_unseen=args.families_unseen)
        print(ensure_benchmark(args.root, cfg))
    elif args.command == "show":
        from data_modules.benchmark.generate import encode_png
        from r2m.utils import atomic_write

        sheet = contact_sheet(args.n, args.seed, args.families, args.image_size, args.diff, args.scale,
                              args.strength)
        data = encode_png(sheet)
        atomic_write(args.out_png, lambda p: p.write_bytes(data))
        print(args.out_png)
    elif args.command == "info":
        from data_modules.benchmark.families import FAMILIES
        from data_modules.benchmark.sources import DOMAINS

        for fam in FAMILIES.values():
            print(f"{fam.name:10s} {fam.imitates}  [version {fam.version}]")
        for dom in DOMAINS.values():
            print(f"domain {dom.name}: {dom.description}; sources {', '.join(dom.sources)}")
    elif args.command == "verify":
        from data_modules.benchmark.generate import verify_benchmark

        problems = verify_benchmark(args.bench_dir)
        for p in problems:
            print(p, file=sys.stderr)
        print("ok" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
