"""python -m data_modules.preprocess: raw media → DF40 layout + JSON → DF40DataModule / doctor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from media_helpers import astronaut, needs_faces, no_face_image, write_png

pytestmark = needs_faces


@pytest.fixture(scope="module")
def raw(media_dir, tmp_path_factory):
    """FF++-style names: reals 000, 001 (+ an image folder 002), fakes 000_001 (video) and 001_000
    (image), plus bad media among the fakes."""
    root = tmp_path_factory.mktemp("raw")
    real, fake = root / "real", root / "myswap"
    real.mkdir(), fake.mkdir()
    shutil.copy(media_dir["video"], real / "000.mp4")
    write_png(real / "001.png", astronaut())
    (real / "002").mkdir()
    for i in range(3):
        write_png(real / "002" / f"{i}.png", np.roll(astronaut(), 10 * i, axis=1))
    shutil.copy(media_dir["video"], fake / "000_001.mp4")
    write_png(fake / "001_000.png", astronaut()[:, ::-1].copy())
    (fake / "empty.mp4").write_bytes(b"")
    (fake / "text.mp4").write_text("not a video\n" * 10)
    data = media_dir["video"].read_bytes()
    (fake / "cut.mp4").write_bytes(data[: len(data) // 3])
    write_png(fake / "noface.png", no_face_image())
    (fake / "README.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def processed(raw, tmp_path_factory):
    from data_modules.preprocess import main

    out = tmp_path_factory.mktemp("df40_out")
    argv = ["--name", "myswap_ff", "--out", str(out), "--fake", str(raw / "myswap"), "--real", str(raw / "real"),
            "--frames", "6", "--workers", "2", "--no-progress"]
    rc = main(argv)
    return {"out": out, "rc": rc, "argv": argv,
            "report": json.loads((out / "myswap_ff.report.json").read_text()),
            "index": json.loads((out / "myswap_ff.json").read_text())}


def test_layout_json_and_report(processed):
    out, report, index = processed["out"], processed["report"], processed["index"]
    assert processed["rc"] == 1  # some inputs failed
    by_video = {v["video"]: v for v in report["videos"]}
    assert by_video["empty"]["status"] == "failed" and by_video["empty"]["reason"] == "empty file (0 bytes)"
    assert by_video["text"]["reason"].startswith("not a video file")
    assert by_video["cut"]["reason"].startswith("broken or truncated video")
    assert by_video["noface"]["status"] == "no_face" and by_video["noface"]["skipped"] == {"no face detected": 1}
    assert report["ignored_files"][0].endswith("README.txt")
    vid = by_video["000_001"]
    assert vid["status"] == "ok" and vid["frames_sampled"] == 6 and vid["frames_read"] == 6
    assert vid["faces_found"] == 6 and vid["frames_written"] == 6 and vid["n_total_frames"] == 40
    assert vid["frames"] == [f"{i:03d}.png" for i in (0, 7, 15, 23, 31, 39)]

    top = index["myswap_ff"]
    assert set(top) == {"myswap_Fake", "myswap_Real"}
    fakes, reals = top["myswap_Fake"]["train"], top["myswap_Real"]["train"]
    assert set(fakes) == {"000_001", "001_000"} and set(reals) == {"000", "001", "002"}
    assert fakes["000_001"]["label"] == "myswap_Fake" and reals["000"]["label"] == "myswap_Real"
    assert fakes["000_001"]["frames"][0] == "myswap/frames/000_001/000.png"
    assert len(reals["002"]["frames"]) == 3
    for entry in [*fakes.values(), *reals.values()]:
        for f in entry["frames"]:
            assert (out / f).is_file()
            lm = out / f.replace("/frames/", "/landmarks/").replace(".png", ".npy")
            assert np.load(lm).shape == (68, 2)
    assert not (out / "myswap" / "frames" / "empty").exists()
    assert not list(out.rglob("*.tmp"))


def test_datamodule_and_doctor_read_it(processed):
    from data_modules.df40 import DF40DataModule
    from data_modules.doctor import main as doctor

    out = processed["out"]
    dm = DF40DataModule(json_dir=str(out), data_root=str(out), family="myswap", families={"myswap": ["myswap_ff"]},
                        test_splits={}, path_remap={}, frames_per_video=4, val_fraction=0.0, image_size=32,
                        batch_size=4, num_workers=0, augment=False)
    dm.setup("fit")
    table = dm.table("train")
    assert len(table.keys) == 5 and int((table.labels == 1).sum()) == 4 + 1 and int((table.labels == 0).sum()) == 4 + 1 + 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert doctor([str(out / "myswap_ff.json"), "--data-root", str(out)]) == 0


def test_resume_skips_finished_videos(processed):
    from data_modules.preprocess import main

    out = processed["out"]
    crop = out / "myswap" / "frames" / "000_001" / "000.png"
    before = crop.stat().st_mtime_ns
    rc = main(processed["argv"] + ["--allow-failures", "--workers", "1"])
    report = json.loads((out / "myswap_ff.report.json").read_text())
    assert rc == 0
    resumed = {v["video"] for v in report["videos"] if v["resumed"]}
    assert resumed == {"000_001", "001_000", "000", "001", "002"}
    assert crop.stat().st_mtime_ns == before
    assert json.loads((out / "myswap_ff.json").read_text()) == processed["index"]


def test_identities_field_and_errors(processed, raw, tmp_path):
    from data_modules.preprocess import main

    ids = tmp_path / "ids.csv"
    ids.write_text("video,identities\n000_001,alice;bob\n001_000,bob;alice\n000,alice\n001,bob\n002,carol\n")
    out = processed["out"]
    rc = main(["--name", "ids_ff", "--out", str(out), "--fake", str(raw / "myswap"), "--real", str(raw / "real"),
               "--frames", "6", "--workers", "1", "--no-progress", "--identities", str(ids), "--allow-failures"])
    assert rc == 0
    index = json.loads((out / "ids_ff.json").read_text())["ids_ff"]
    assert index["myswap_Fake"]["train"]["000_001"]["identities"] == ["alice", "bob"]
    assert index["myswap_Real"]["train"]["002"]["identities"] == ["carol"]
    assert main(["--name", "x", "--out", str(tmp_path), "--fake", str(tmp_path / "nope")]) == 2


def test_interrupted_video_is_redone_and_splits_merge(processed, raw, tmp_path, capsys):
    from data_modules.preprocess import main

    out = processed["out"]
    frames = out / "myswap" / "frames" / "001_000"
    (out / "myswap" / "reports" / "001_000.json").unlink()  # as if the run died before the report
    (frames / "stale.png").write_bytes(b"half")
    rc = main(processed["argv"] + ["--allow-failures", "--workers", "1"])
    report = json.loads((out / "myswap_ff.report.json").read_text())
    assert rc == 0 and {v["video"]: v["resumed"] for v in report["videos"]}["001_000"] is False
    assert sorted(p.name for p in frames.iterdir()) == ["000.png"]
    # another split merges into the same JSON; the same video under two splits is refused
    test_in = tmp_path / "test_fakes"
    test_in.mkdir()
    shutil.copy(raw / "myswap" / "001_000.png", test_in / "002_003.png")
    common = ["--name", "myswap_ff", "--out", str(out), "--method", "myswap", "--frames", "6", "--workers", "1",
              "--no-progress"]
    assert main(common + ["--fake", str(test_in), "--split", "test"]) == 0
    index = json.loads((out / "myswap_ff.json").read_text())["myswap_ff"]
    assert set(index["myswap_Fake"]) == {"train", "test"} and set(index["myswap_Fake"]["test"]) == {"002_003"}
    assert set(index["myswap_Fake"]["train"]) == {"000_001", "001_000"}
    (test_in / "002_003.png").unlink()
    shutil.copy(raw / "myswap" / "001_000.png", test_in / "000_001.png")
    before = (out / "myswap" / "frames" / "000_001" / "000.png").read_bytes()
    assert main(common + ["--fake", str(test_in), "--split", "test"]) == 2  # another source under that name
    assert (out / "myswap" / "frames" / "000_001" / "000.png").read_bytes() == before  # nothing overwritten
    assert "already holds crops of" in capsys.readouterr().err
    assert main(common + ["--fake", str(raw / "myswap"), "--split", "test"]) == 2  # same videos, other split
    assert "already listed under split 'train'" in capsys.readouterr().err
    assert set(json.loads((out / "myswap_ff.json").read_text())["myswap_ff"]["myswap_Fake"]["test"]) == {"002_003"}
