"""The data doctor CLI on generated fixtures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_modules.doctor import main, settings_from_config
from data_modules.fixtures import write_df40_fixture

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fx_missing(tmp_path_factory):
    return write_df40_fixture(tmp_path_factory.mktemp("doc") / "fx", n_videos=3, frames_per_video=4,
                              image_size=16, missing=4, seed=5)


@pytest.fixture(scope="module")
def fx_clean(tmp_path_factory):
    return write_df40_fixture(tmp_path_factory.mktemp("docc") / "fx", n_videos=2, frames_per_video=3, image_size=16)


def args_for(info, names):
    out = [str(Path(info["json_dir"], f"{n}.json")) for n in names]
    out += ["--data-root", info["data_root"]]
    for k, v in info["path_remap"].items():
        out += ["--remap", f"{k}={v}"]
    return out


def table_rows(text):
    """Rows of the first printed table → {(dataset/split, method): {column: value}}."""
    lines = text.splitlines()
    head = lines[0].split()
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = line.split(None, len(head) - 2)
        rows[(cells[0], cells[1])] = dict(zip(head[2:], cells[2:]))
    return rows


def test_doctor_reports_missing_frames_per_method(fx_missing, capsys):
    names = ["FSAll_ff", "FRAll_ff", "EFSAll_ff", "FSAll_cdf", "heygen"]
    rc = main(args_for(fx_missing, names))
    out = capsys.readouterr().out
    assert rc == 1 and "status: FAILED" in out and "missing (check --data-root" in out
    rows = table_rows(out)
    missing = set(fx_missing["missing"])
    total = 0
    for name in names:
        obj = json.loads(Path(fx_missing["json_dir"], f"{name}.json").read_text())[name]
        for group, splits in obj.items():
            for split, videos in splits.items():
                frames = [f for e in videos.values() for f in e["frames"]]
                row = rows[(f"{name}/{split}", group)]
                n_miss = sum(f in missing for f in frames)
                total += n_miss
                assert int(row["frames"]) == len(frames)
                assert int(row["missing"]) == n_miss
                assert int(row["found"]) == len(frames) - n_miss
                assert int(row["videos"]) == len(videos)
    assert total > 0 and f"{total} missing" in out
    assert main(args_for(fx_missing, names) + ["--allow-missing"]) == 0


def test_doctor_clean_fixture_ok_with_sizes_and_balance(fx_clean, capsys):
    rc = main(args_for(fx_clean, ["FSAll_ff", "heygen"]))
    out = capsys.readouterr().out
    assert rc == 0 and "status: OK" in out
    rows = table_rows(out)
    assert rows[("heygen/test", "heygen_Fake")]["image"] == "32x32:6"  # "image sizes" column: unseen sets are 2x
    assert rows[("FSAll_ff/train", "simswap_Fake")]["image"] == "16x16:6"
    # real frames repeated under the second method are reported as duplicates
    assert int(rows[("FSAll_ff/train", "fsgan_Real")]["duplicate"]) == 2 * 3
    assert int(rows[("FSAll_ff/train", "simswap_Real")]["real"]) == 2 * 3
    assert int(rows[("FSAll_ff/train", "simswap_Fake")]["fake"]) == 2 * 3


def test_doctor_without_remap_finds_nothing(fx_clean, capsys):
    rc = main([str(Path(fx_clean["json_dir"], "heygen.json")), "--data-root", fx_clean["data_root"]])
    out = capsys.readouterr().out
    assert rc == 1 and "12 frames listed, 12 missing" in out  # 2+2 videos x 3 frames


def test_doctor_malformed_json_and_unknown_label(fx_clean, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"bad": {')
    rc = main([str(bad), *args_for(fx_clean, ["heygen"])])
    out = capsys.readouterr().out
    assert rc == 1 and "ERROR:" in out and "bad.json: malformed JSON" in out
    odd = tmp_path / "odd.json"
    frame = json.loads(Path(fx_clean["json_dir"], "heygen.json").read_text())["heygen"]["heygen_Real"]["test"]
    odd.write_text(json.dumps({"odd": {"g": {"test": {"v": {"label": "Weird", "frames": next(iter(frame.values()))["frames"]}}}}}))
    base = args_for(fx_clean, [])
    rc = main([str(odd), *base])
    out = capsys.readouterr().out
    assert rc == 1 and "unknown label string 'Weird'" in out
    assert main([str(odd), *base, "--label", "Weird=1"]) == 0


def test_doctor_flags_unreadable_image(fx_clean, tmp_path, capsys):
    import shutil

    root = Path(shutil.copytree(fx_clean["root"], tmp_path / "copy"))
    victim = next((root / "data" / "df40_test" / "heygen" / "fake").rglob("*.png"))
    victim.write_bytes(b"not an image")
    info = {**fx_clean, "json_dir": str(root / "json"), "data_root": str(root / "data")}
    rc = main(args_for(info, ["heygen"]) + ["--size-samples", "0"])
    out = capsys.readouterr().out
    assert rc == 1 and "unreadable:1" in out and victim.name in out


def test_doctor_with_data_config(fx_clean, tmp_path, capsys):
    cfg_dir = tmp_path / "configs" / "data"
    cfg_dir.mkdir(parents=True)
    remap = "\n".join(f"  {k}: ${{paths.df40_root}}/{v}" for k, v in fx_clean["path_remap"].items())
    (cfg_dir / "mine.yaml").write_text(
        "_target_: data_modules.df40.DF40DataModule\n"
        "json_dir: ${paths.df40_json_dir}\ndata_root: ${paths.df40_root}\n"
        f"path_remap:\n{remap}\n"
        "families: {fs: [FSAll_ff]}\ntest_splits: {unseen: [heygen, deepfacelab]}\n"
        "image_size: ${model.image_size}\n")
    rc = main(["--config", str(cfg_dir / "mine.yaml"), "--data-root", fx_clean["data_root"],
               "--json-dir", fx_clean["json_dir"]])
    out = capsys.readouterr().out
    assert rc == 0 and "deepfacelab/test" in out and "FSAll_ff/train" in out
    with pytest.raises(SystemExit, match="cannot resolve data.json_dir"):
        settings_from_config(str(cfg_dir / "mine.yaml"))


def test_project_df40_config_resolves():
    s = settings_from_config(str(REPO / "configs" / "data" / "df40.yaml"), data_root="/R", json_dir="/J")
    names = [Path(p).stem for p in s.jsons]
    assert names[:3] == ["FSAll_ff", "FRAll_ff", "EFSAll_ff"] and len(names) == len(set(names)) == 15
    assert all(p.startswith("/J/") for p in s.jsons)
    assert s.path_remap["deepfakes_detection_datasets/DF40_train"] == "/R/DF40_train"
    assert s.data_root == "/R" and s.compression == "c23"


def test_doctor_module_entry_point_exit_code(fx_missing):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    names = sorted(p.stem for p in Path(fx_missing["json_dir"]).glob("*.json"))
    proc = subprocess.run([sys.executable, "-m", "data_modules.doctor", *args_for(fx_missing, names)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 1 and "FSAll_ff/train" in proc.stdout and "status: FAILED" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "data_modules.doctor"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2 and "give JSON files" in proc.stderr


def test_fixture_cli_then_doctor(tmp_path, capsys):
    from data_modules import fixtures

    out_dir = tmp_path / "cli"
    assert fixtures.main([str(out_dir), "--missing", "2", "--n-videos", "1", "--frames-per-video", "2",
                          "--image-size", "8"]) == 0
    info = json.loads((out_dir / "fixture.json").read_text())
    assert len(info["missing"]) == 2
    info = {**info, "json_dir": str(out_dir / "json"), "data_root": str(out_dir / "data")}
    names = sorted(p.stem for p in (out_dir / "json").glob("*.json"))
    capsys.readouterr()
    assert main(args_for(info, names)) == 1
    assert main(args_for(info, names) + ["--allow-missing"]) == 0
