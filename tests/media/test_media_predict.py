"""predict.py / r2m.predict: a tiny exported specialist on images, a folder and videos, with bad media."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from media_helpers import ASTRONAUT_BOX, needs_faces, no_face_image, write_png

pytestmark = needs_faces


@pytest.fixture(scope="module")
def inputs(media_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_in")
    folder = root / "folder"
    folder.mkdir()
    shutil.copy(media_dir["image"], folder / "astronaut.png")
    write_png(folder / "noface.png", no_face_image())
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("hello\n" * 30)
    data = media_dir["video"].read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])
    return {"video": media_dir["video"], "folder": folder, "bad": [root / "empty.mp4", root / "text.mp4",
                                                                   root / "cut.mp4", root / "missing.jpg"]}


@pytest.fixture(scope="module")
def ran(inputs, tiny_detector, tmp_path_factory):
    import predict as cli

    out = tmp_path_factory.mktemp("predict_out")
    argv = [str(tiny_detector), str(inputs["video"]), str(inputs["folder"]), *map(str, inputs["bad"]),
            "--out", str(out), "--frames", "8", "--batch-size", "5", "--device", "cpu", "--annotate", "--no-progress"]
    rc = cli.main(argv)
    return {"rc": rc, "out": out, "report": json.loads((out / "predictions.json").read_text()),
            "rows": list(csv.DictReader((out / "predictions.csv").open()))}


def test_video_scores_per_sampled_frame_and_mean(ran, media_dir):
    from data_modules.faces import sample_indices

    video = next(f for f in ran["report"]["files"] if f["path"].endswith("moving.mp4"))
    assert video["status"] == "ok" and video["kind"] == "video"
    assert [fr["index"] for fr in video["frames"]] == sample_indices(media_dir["n_frames"], 8)
    probs = [fr["prob"] for fr in video["frames"]]
    assert len(probs) == 8 and all(0.0 <= p <= 1.0 for p in probs)
    assert len(set(probs)) > 1  # the crops differ per frame
    assert video["prob"] == pytest.approx(float(np.mean(probs)), abs=1e-12)
    rows = [r for r in ran["rows"] if r["path"].endswith("moving.mp4")]
    assert len(rows) == 8 and float(rows[3]["prob_fake"]) == pytest.approx(probs[3])
    assert (ran["out"] / "annotated").is_dir() and video["annotated"].endswith(".mp4")


def test_bad_media_reported_others_processed(ran):
    assert ran["rc"] == 1
    files = {f["path"].rsplit("/", 1)[-1]: f for f in ran["report"]["files"]}
    assert files["astronaut.png"]["status"] == "ok" and files["astronaut.png"]["frames"][0]["faces"][0]["box"] == list(ASTRONAUT_BOX)
    assert files["noface.png"]["status"] == "no_face" and files["noface.png"]["reason"] == "no face in any sampled frame"
    assert files["empty.mp4"]["reason"] == "empty file (0 bytes)"
    assert files["text.mp4"]["reason"].startswith("not a video file")
    assert files["cut.mp4"]["reason"].startswith("broken or truncated video")
    assert files["missing.jpg"]["reason"] == "file does not exist"
    assert ran["report"]["n_ok"] == 2 and ran["report"]["n_failed"] == 5
    reasons = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in ran["rows"] if r["status"] != "ok"}
    assert set(reasons) == {"noface.png", "empty.mp4", "text.mp4", "cut.mp4", "missing.jpg"} and all(reasons.values())


def test_matches_direct_model_forward(ran, tiny_detector):
    """The score of the astronaut crop equals the detector's own forward on the normalised crop."""
    import cv2
    import torch

    from data_modules.faces import FaceExtractor
    from data_modules.image_io import read_rgb
    from media_helpers import astronaut
    from r2m.models import DeepfakeDetector

    model = DeepfakeDetector.from_file(tiny_detector).eval()
    crop = FaceExtractor().faces(astronaut())[0][0].crop
    x = cv2.resize(crop, (32, 32), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    x = (x - np.array(model.input_mean, np.float32)) / np.array(model.input_std, np.float32)
    with torch.no_grad():
        p = model(torch.from_numpy(x).permute(2, 0, 1)[None]).softmax(-1)[0, 1].item()
    files = {f["path"].rsplit("/", 1)[-1]: f for f in ran["report"]["files"]}
    assert files["astronaut.png"]["prob"] == pytest.approx(p, abs=1e-5)
    annotated = read_rgb(files["astronaut.png"]["annotated"])
    assert annotated.shape == astronaut().shape and not np.array_equal(annotated, astronaut())


def test_detector_errors(tmp_path, inputs):
    import predict as cli

    assert cli.main([str(tmp_path / "nope.safetensors"), str(inputs["folder"]), "--out", str(tmp_path)]) == 2
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert cli.main([str(tmp_path / "junk.safetensors"), str(inputs["folder"]), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "predictions.json").exists()


def test_merged_file_scores_like_its_weights_and_base_is_refused(tmp_path, tiny_detector, media_dir):
    import predict as cli
    from r2m.checkpoints import load_checkpoint, save_base, save_merged
    from r2m.predict import predict

    ck = load_checkpoint(tiny_detector)
    meta = {k: ck.meta[k] for k in ("model_name", "model_spec", "feature", "image_size", "mean", "std")}
    merged = save_merged(tmp_path / "merged.safetensors", ck.backbone, ck.head,
                         {**meta, "base_hash": ck.meta["base_hash"], "task": "merged", "method": "average"})
    spec = predict(tiny_detector, [media_dir["image"]], device="cpu", progress=False)
    got = predict(merged, [media_dir["image"]], device="cpu", progress=False)
    assert got["detector"]["format"] == "r2m-merged/1" and spec["detector"]["format"] == "r2m-specialist/1"
    assert got["files"][0]["prob"] == spec["files"][0]["prob"]
    base = save_base(tmp_path / "base.safetensors", ck.backbone, meta)
    assert cli.main([str(base), str(media_dir["image"]), "--out", str(tmp_path / "p")]) == 2


def test_all_faces_frame_score_is_the_max(tmp_path, tiny_detector):
    from media_helpers import two_faces
    from r2m.predict import predict

    image = write_png(tmp_path / "two.png", two_faces()[0])
    one = predict(tiny_detector, [image], device="cpu", progress=False)["files"][0]
    both = predict(tiny_detector, [image], device="cpu", progress=False, all_faces=True)["files"][0]
    faces = both["frames"][0]["faces"]
    assert len(one["frames"][0]["faces"]) == 1 and len(faces) == 2
    assert faces[0]["prob"] == pytest.approx(one["prob"], abs=1e-6)  # the largest face scores the same
    assert both["prob"] == both["frames"][0]["prob"] == max(f["prob"] for f in faces)
