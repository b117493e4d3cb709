"""Score images, folders and videos with an r2m detector (specialist, joint or merged file).

    python predict.py merged.safetensors photo.jpg clips/ interview.mp4 --out predictions/
    python predict.py logs/.../specialist.safetensors frames/ --out p/ --annotate --all-faces

Writes ``<out>/predictions.json`` (per face, frame and file) and ``<out>/predictions.csv`` (one row
per face), optionally ``<out>/annotated/``. A plain command line rather than Hydra: prediction is
a one-off over paths the shell expands (globs, many files), with nothing to compose or sweep.
Everything happens in :mod:`r2m.predict`.

Exit status: 0 when every file was scored; 1 when some file could not be (missing, unreadable,
broken video, no face — each listed with its reason in the outputs); 2 on usage errors or a
detector file that cannot be loaded.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting on shared CPUs

import argparse  # noqa: E402
import sys  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", help="r2m specialist / joint / merged .safetensors file")
    parser.add_argument("inputs", nargs="+", help="images, videos or folders (searched recursively)")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled uniformly per video (0 = all; DF40: 32)")
    parser.add_argument("--all-faces", action="store_true", help="score every face, not only the largest")
    parser.add_argument("--annotate", action="store_true", help="write annotated images / videos to <out>/annotated")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="face-extraction processes")
    parser.add_argument("--detect-max-side", type=int, default=None,
                        help="downscale frames for detection only (faster on large frames)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from r2m.predict import predict

    try:
        report = predict(args.detector, args.inputs, out_dir=args.out, device=args.device,
                         batch_size=args.batch_size, n_frames=args.frames or None, all_faces=args.all_faces,
                         workers=args.workers, annotate_output=args.annotate,
                         extractor={"detect_max_side": args.detect_max_side}, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    for f in report["files"]:
        score = "" if f["prob"] is None else f"p(fake)={f['prob']:.3f}"
        print(f"{f['status']:<8} {score:<14} faces={f['n_faces']:<3} {f['path']}" + (f"  ({f['reason']})" if f["reason"] else ""))
    print(f"{report['n_ok']}/{report['n_files']} file(s) scored; outputs in {args.out}/predictions.json, .csv")
    if report["n_failed"]:
        print(f"predict: {report['n_failed']} file(s) could not be scored (reasons above and in the outputs)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
