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
    return write_df40_fixture(tmp_path_factory.mktemp("doc") / "fx", n_videos=4, frames_per_video=4,
                              image_size=16, missing=4, seed=5)


@pytest.fixture(scope="module")
def fx_clean(tmp_path_factory):
    return write_df40_fixture(tmp_path_factory.mktemp("docc") / "fx", n_videos=2, frames_per_video=3, image_size=16)


@pytest.fixture(scope="module")
def fx_cfg(tmp_path_factory):
    return write_df40_fixture(tmp_path_factory.mktemp("docf") / "fx", n_videos=8, frames_per_video=2, image_size=8)


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


def _mine_yaml(info, extra=""):
    remap = "\n".join(f"  {k}: ${{paths.df40_root}}/{v}" for k, v in info["path_remap"].items())
    groups = "\n".join(f"  - {g}" for g in info["identity_groups"])
    return ("defaults:\n  - df40\n  - _self_\n"  # what the README recommends for one's own data
            f"path_remap:\n{remap}\nidentity_groups:\n{groups}\n"
            "val_fraction: 0.5\nframes_per_video: 2\n"
            "test_splits: {unseen: [heygen, deepfacelab]}\n" + extra)


def test_doctor_with_defaults_list_data_config(fx_cfg, tmp_path, capsys):
    cfg_dir = tmp_path / "configs" / "data"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "mine.yaml").write_text(_mine_yaml(fx_cfg))
    argv = ["--config", str(cfg_dir / "mine.yaml"), "--data-root", fx_cfg["data_root"],
            "--json-dir", fx_cfg["json_dir"], "--no-progress"]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "deepfacelab/test" in out and "FSAll_ff/train" in out and "status: OK" in out
    # composed as train.py composes it: df40's families (merged dict) and _target_, mine's overrides
    s = settings_from_config(*argv[1:2], data_root=fx_cfg["data_root"], json_dir=fx_cfg["json_dir"])
    dm = s.datamodule
    assert sorted(dm.families) == ["efs", "fr", "fs", "joint"] and dm.val_fraction == 0.5
    assert dm.test_set_names == ["FSAll_ff", "FRAll_ff", "EFSAll_ff", "FSAll_cdf", "FRAll_cdf", "EFSAll_cdf",
                                 "heygen", "deepfacelab"]
    # the carve printed = the carve training builds, per family
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines()
             if line.split()[:1] and line.split()[0] in dm.families and len(line.split()) == 7}
    for family in dm.families:
        train_dm = settings_from_config(str(cfg_dir / "mine.yaml"), fx_cfg["data_root"], fx_cfg["json_dir"],
                                        [f"data.family={family}"]).datamodule
        train_dm.setup("fit")
        for side in ("train", "val"):
            t = train_dm.table(side)
            keys = train_dm.video_keys(side)
            labels = {}
            for i in range(len(t)):
                labels[int(t.video_ids[i])] = int(t.labels[i])
            want = [sum(v == 0 for v in labels.values()), int((t.labels == 0).sum()),
                    sum(v == 1 for v in labels.values()), int((t.labels == 1).sum())]
            assert len(labels) == len(keys)
            assert [int(x) for x in lines[(family, side)][:4]] == want, (family, side)
    # a Hydra override reaches the data module; one leaving validation without fakes is an error
    rc = main(argv + ["data.val_fraction=0.01"])
    out = capsys.readouterr().out
    assert rc == 1 and "both classes are needed" in out
    with pytest.raises(SystemExit, match="cannot resolve data.json_dir|no json_dir"):
        settings_from_config(str(cfg_dir / "mine.yaml"), overrides=["paths.df40_json_dir=???"])


def test_doctor_loose_config_file_and_group_name(fx_cfg, tmp_path, capsys):
    loose = tmp_path / "elsewhere.yaml"  # not in a data/ folder: composed from a temporary group
    loose.write_text(_mine_yaml(fx_cfg))
    argv = ["--data-root", fx_cfg["data_root"], "--json-dir", fx_cfg["json_dir"], "--no-progress"]
    assert main(["--config", str(loose), *argv]) == 0
    capsys.readouterr()
    s = settings_from_config("df40", data_root="/R", json_dir="/J")
    assert s.datamodule.json_dir == "/J" and s.data_root == "/R"
    with pytest.raises(SystemExit, match="not a DF40-format data"):
        settings_from_config("benchmark")


def test_project_df40_config_resolves():
    s = settings_from_config(str(REPO / "configs" / "data" / "df40.yaml"), data_root="/R", json_dir="/J")
    names = [Path(p).stem for p in s.jsons]
    assert names[:3] == ["FSAll_ff", "FRAll_ff", "EFSAll_ff"] and len(names) == len(set(names)) == 15
    assert all(p.startswith("/J/") for p in s.jsons)
    assert s.path_remap["deepfakes_detection_datasets/DF40_train"] == "DF40_train"  # relative to data_root
    assert s.data_root == "/R" and s.compression == "c23"
    assert s.datamodule.identity_groups == "auto"


def test_doctor_module_entry_point_exit_code(fx_missing):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    names = sorted(p.stem for p in Path(fx_missing["json_dir"]).glob("*.json"))
    proc = subprocess.run([sys.executable, "-m", "data_modules.doctor", *args_for(fx_missing, names), "--no-carve"],
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


def _broken_copy(info, tmp_path):
    import shutil

    from data_modules.fixtures import BROKEN_KINDS, break_image

    root = Path(shutil.copytree(info["root"], tmp_path / "broken"))
    new = {**info, "root": str(root), "json_dir": str(root / "json"), "data_root": str(root / "data"),
           "identity_groups": [str(root / Path(g).relative_to(info["root"])) for g in info["identity_groups"]]}
    # one broken frame per kind, in different training videos (FS fakes / reals, FR fakes, EFS fakes)
    victims = {}
    folders = ["df40_train/simswap/ff/frames", "ffpp_real/original_sequences/youtube/c23/frames",
               "df40_train/fomm/ff/frames", "df40_train/StyleGAN3/ff"]
    for kind, folder in zip(BROKEN_KINDS, folders):
        path = sorted((root / "data" / folder).rglob("*.png"))[0]
        break_image(path, kind)
        victims[kind] = str(path)
    return new, victims


def test_doctor_lists_the_four_broken_png_kinds(fx_cfg, tmp_path, capsys):
    info, victims = _broken_copy(fx_cfg, tmp_path)
    names = ["FSAll_ff", "FRAll_ff", "EFSAll_ff"]
    reasons = {"truncated": "IEND", "zero-byte": "zero-byte", "text": "not a PNG file (text",
               "bit-flipped": "decode:"}
    for extra in (["--deep"], ["--decode-samples", "1000"]):
        rc = main(args_for(info, names) + extra + ["--no-progress"])
        out = capsys.readouterr().out
        listed = {line.split()[1].rstrip(":"): line for line in out.splitlines() if line.startswith("  UNREADABLE")}
        assert rc == 1 and "status: FAILED" in out and "4 unreadable image file(s)" in out, out
        for kind, path in victims.items():
            assert path in listed and reasons[kind] in listed[path], (kind, extra)
    # headers alone (no decode) catch three kinds; a flipped bit in the image data needs decoding
    rc = main(args_for(info, names) + ["--decode-samples", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "3 unreadable image file(s)" in out and victims["bit-flipped"] not in out


def test_doctor_deep_with_config_decodes_what_training_reads(fx_cfg, tmp_path, capsys):
    info, victims = _broken_copy(fx_cfg, tmp_path)
    cfg_dir = tmp_path / "configs" / "data"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "mine.yaml").write_text(_mine_yaml(info).replace("frames_per_video: 2", "frames_per_video: null"))
    rc = main(["--config", str(cfg_dir / "mine.yaml"), "--data-root", info["data_root"], "--json-dir",
               info["json_dir"], "--deep", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    for path in victims.values():
        assert f"UNREADABLE {path}" in out
    line = next(line for line in out.splitlines() if line.startswith("images:"))
    assert "every frame training/testing reads" in line


def _readme_doctor_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python -m data_modules.doctor")]


def test_readme_doctor_commands_work_on_the_readme_layout(tmp_path, capsys, monkeypatch):
    """The README's doctor commands, as written, on the README's folder layout (dataset_json/, DF40/,
    DF40_train/, FaceForensics++/, Celeb-DF-v2/ under $DF40_ROOT)."""
    import shlex

    info = write_df40_fixture(tmp_path / "DF40", n_videos=8, frames_per_video=2, image_size=8, layout="df40")
    commands = _readme_doctor_commands()
    assert len(commands) >= 2
    monkeypatch.setenv("DF40_ROOT", info["root"])
    monkeypatch.chdir(REPO)
    for cmd in commands:
        argv = [os.path.expandvars(a) for a in shlex.split(cmd)][3:]
        rc = main(argv + ["--no-progress"])
        out = capsys.readouterr().out
        assert rc == 0, (cmd, out[-3000:])
        assert ", 0 missing" in out and "validation carve" in out


def test_progress_bar_on_long_existence_checks(tmp_path, capsys):
    from data_modules.index import frames_exist

    paths = [str(tmp_path / f"{i}.png") for i in range(5000)]
    assert frames_exist(paths, workers=2, chunk=1000, desc="checking", show_progress=True) == [False] * 5000
    assert "checking" in capsys.readouterr().err
    frames_exist(paths, workers=2, chunk=1000)  # short lists: quiet by default
    assert capsys.readouterr().err == ""
