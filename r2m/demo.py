"""A small web page to look at a detector: drop an image or a short video, see the faces found,
their fake-probabilities and, for a video, the score over time.

    python -m r2m.demo merged.safetensors [--port 7860] [--host 127.0.0.1] [--frames 32]

Gradio (the ``demo`` install extra) serves the page; the scoring is :class:`r2m.predict.Predictor`,
so the numbers are those ``predict.py`` writes. Nothing is fetched from the internet (analytics off,
no share link).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["analyse", "build_demo", "score_plot", "main"]

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def score_plot(record: dict[str, Any]):
    """Matplotlib figure of p(fake) per sampled frame against time (frame index for images)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    frames = [fr for fr in record["frames"] if fr["prob"] is not None]
    if frames:
        use_time = all(fr["time"] is not None for fr in frames)
        xs = [fr["time"] if use_time else fr["index"] for fr in frames]
        ys = [fr["prob"] for fr in frames]
        ax.plot(xs, ys, marker="o", color="#c0392b")
        ax.set_xlabel("time (s)" if use_time else "frame")
        if record.get("prob") is not None:
            ax.axhline(record["prob"], color="#555", ls="--", lw=1, label=f"mean {record['prob']:.2f}")
            ax.legend(loc="upper right", fontsize=8)
    ax.axhline(0.5, color="#999", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("p(fake)")
    ax.set_title("score over time")
    fig.tight_layout()
    return fig


def analyse(predictor, path: str | None) -> tuple[str, list, Any, list[list[Any]]]:
    """``(verdict markdown, gallery items, plot, table rows)`` for one uploaded file."""
    if not path:
        return "Drop an image or a short video.", [], None, []
    record, result = next(iter(predictor.run([path], workers=1, progress=False)))
    name = os.path.basename(path)
    if record["status"] != "ok":
        return f"**{name}**: not scored — {record['reason']}", [], None, []
    verdict = "FAKE" if record["prob"] > 0.5 else "REAL"
    frames_scored = sum(1 for fr in record["frames"] if fr["prob"] is not None)
    text = (f"**{name}**: **{verdict}** — p(fake) = {record['prob']:.3f} "
            f"(mean over {frames_scored} frame(s), {record['n_faces']} face(s))")
    gallery, rows = [], []
    for fr, frec in zip(result.frames, record["frames"]):
        for k, (face, frace) in enumerate(zip(fr.faces, frec["faces"])):
            where = f"{fr.time:.1f}s" if fr.time is not None else f"#{fr.index}"
            gallery.append((face.crop, f"{where}{f' face {k}' if k else ''}: {frace['prob']:.2f}"))
            rows.append([fr.index, None if fr.time is None else round(fr.time, 3), k, round(frace["prob"], 4)])
        if not fr.faces:
            rows.append([fr.index, None if fr.time is None else round(fr.time, 3), None, None])
    return text, gallery, score_plot(record), rows


def build_demo(predictor, title: str = "r2m deepfake detector"):
    """The Gradio Blocks app around a :class:`r2m.predict.Predictor`."""
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError("the demo needs Gradio: pip install -e '.[demo]'") from err

    info = predictor.describe()
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nDetector `{os.path.basename(info['path'])}` "
                    f"(task {info.get('task')}, {info.get('format')}); faces: dlib HOG + DF40 alignment.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image or short video", file_types=["image", "video"], elem_id="r2m-upload")
                button = gr.Button("Analyse", variant="primary", elem_id="r2m-analyse")
            with gr.Column(scale=2):
                verdict = gr.Markdown("Drop an image or a short video.", elem_id="r2m-verdict")
                gallery = gr.Gallery(label="Faces", columns=6, height=220, elem_id="r2m-faces")
                plot = gr.Plot(label="Score over time", elem_id="r2m-plot")
                table = gr.Dataframe(headers=["frame", "time (s)", "face", "p(fake)"], label="Per frame",
                                     elem_id="r2m-table")
        outputs = [verdict, gallery, plot, table]
        button.click(lambda p: analyse(predictor, p), inputs=upload, outputs=outputs)
        upload.upload(lambda p: analyse(predictor, p), inputs=upload, outputs=outputs)
    return demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r2m.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", help="r2m specialist / joint / merged .safetensors file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--all-faces", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    from r2m.predict import Predictor

    try:
        predictor = Predictor(args.detector, device=args.device, n_frames=args.frames or None, all_faces=args.all_faces)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    build_demo(predictor).launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
