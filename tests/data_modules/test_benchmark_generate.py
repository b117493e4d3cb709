"""Built-in benchmark generation: determinism, DF40 JSON layout, caching, atomicity, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_modules.benchmark import FAMILIES, register_family
from data_modules.benchmark import generate as gen_mod
from data_modules.benchmark.__main__ import main
from data_modules.benchmark.families import unregister_family
from data_modules.benchmark.generate import (
    BenchmarkConfig,
    ensure_benchmark,
    generate_benchmark,
    read_manifest,
    verify_benchmark,
)

TINY = dict(image_size=32, frames_per_video=2, n_train=8, n_test=4, n_pretrain=6)


def tiny(**over) -> BenchmarkConfig:
    return BenchmarkConfig(**{**TINY, **over})


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return generate_benchmark(tmp_path_factory.mktemp("bench") / "b", tiny())


@pytest.fixture
def temp_family():
    names: list[str] = []
    yield names
    for name in names:
        if name in FAMILIES:
            unregister_family(name)


def test_same_seed_byte_identical_other_seed_differs(bench: Path, tmp_path: Path) -> None:
    again = generate_benchmark(tmp_path / "again", tiny())
    assert file_hashes(bench) == file_hashes(again)
    other = generate_benchmark(tmp_path / "other", tiny(seed=1))
    a, b = file_hashes(bench), file_hashes(other)
    pngs = [k for k in a if k.endswith(".png")]
    assert set(pngs) == {k for k in b if k.endswith(".png")}
    assert sum(a[k] == b[k] for k in pngs) <= len(pngs) // 10
    assert read_manifest(bench)["content_sha256"] != read_manifest(other)["content_sha256"]


def test_manifest_and_splits(bench: Path) -> None:
    m = read_manifest(bench)
    cfg = tiny()
    assert m["config"] == cfg.to_dict() and m["config_hash"] == cfg.config_hash()
    assert m["test_splits"] == {
        "in_distribution": ["blend_photo", "warp_photo", "upsample_photo"],
        "cross_dataset": ["blend_archive", "warp_archive", "upsample_archive"],
        "unseen": ["diffusion_photo", "edit_photo"],
    }
    assert list(m["test_splits"]) == ["in_distribution", "cross_dataset", "unseen"]  # protocol order kept
    assert m["families"] == {"blend": ["blend_photo"], "warp": ["warp_photo"], "upsample": ["upsample_photo"],
                             "joint": ["blend_photo", "warp_photo", "upsample_photo"]}
    assert set(m["family_versions"]) == {"blend", "warp", "upsample", "diffusion", "edit"}
    assert m["n_files"] == len([k for k in file_hashes(bench) if k != "manifest.json"])
    assert len(m["pretrain_frames"]) == 6
    assert all(p.startswith("frames/real/photo/pretrain/") for p in m["pretrain_frames"])
    assert verify_benchmark(bench) == []


def test_df40_json_structure(bench: Path) -> None:
    cfg = tiny()
    m = read_manifest(bench)
    real_frames: dict[tuple[str, str], dict[str, list[str]]] = {}
    for name, info in m["datasets"].items():
        family, domain = info["family"], info["domain"]
        data = json.loads((bench / "json" / f"{name}.json").read_text())
        assert list(data) == [name]
        groups = data[name]
        assert set(groups) == {f"{family}_Real", f"{family}_Fake"}
        expected_splits = {"train", "test"} if name in m["families"]["joint"] else {"test"}
        for group, splits in groups.items():
            assert set(splits) == expected_splits, (name, group)
            for split, videos in splits.items():
                count = cfg.videos("n_train" if split == "train" else "n_test")
                assert len(videos) == count
                for video in videos.values():
                    assert video["label"] == group
                    assert len(video["frames"]) == cfg.frames_per_video
                    for frame in video["frames"]:
                        assert not Path(frame).is_absolute()
                        img = cv2.imread(str(bench / frame), cv2.IMREAD_COLOR)
                        assert img is not None and img.shape == (32, 32, 3)
        for split in expected_splits:
            reals, fakes = groups[f"{family}_Real"][split], groups[f"{family}_Fake"][split]
            assert set(reals) == set(fakes)  # fake video i is made from real video i
            # the same reals are shared by every family of a domain/split (as in DF40)
            frames = {v: e["frames"] for v, e in reals.items()}
            assert real_frames.setdefault((domain, split), frames) == frames
            assert all(f.startswith(f"frames/{family}/{domain}/{split}/") for v in fakes.values() for f in v["frames"])
    train = {f for frames in real_frames[("photo", "train")].values() for f in frames}
    test = {f for frames in real_frames[("photo", "test")].values() for f in frames}
    assert train and test and train.isdisjoint(test)


def test_fakes_differ_from_their_reals(bench: Path) -> None:
    data = json.loads((bench / "json" / "warp_photo.json").read_text())["warp_photo"]
    for video, entry in data["warp_Fake"]["test"].items():
        for fake, real in zip(entry["frames"], data["warp_Real"]["test"][video]["frames"]):
            a = cv2.imread(str(bench / fake)).astype(np.int16)
            b = cv2.imread(str(bench / real)).astype(np.int16)
            assert np.abs(a - b).mean() > 0.2


def test_config_hash_tracks_inputs(temp_family: list[str]) -> None:
    base = tiny().config_hash()
    assert tiny().config_hash() == base
    for over in ({"seed": 1}, {"n_train": 12}, {"image_size": 48}, {"strength": 1.5}, {"families_unseen": ("diffusion",)},
                 {"families_train": ("warp", "blend", "upsample")}):
        assert tiny(**over).config_hash() != base, over
    temp_family.append("h4-gen")
    register_family("h4-gen", lambda img, rng: 255 - img, version="1")
    h1 = tiny(families_unseen=("h4-gen",)).config_hash()
    register_family("h4-gen", lambda img, rng: 255 - img, version="2", overwrite=True)
    assert tiny(families_unseen=("h4-gen",)).config_hash() != h1


def test_user_family_is_generated(tmp_path: Path, temp_family: list[str]) -> None:
    temp_family.append("h4-invert")
    register_family("h4-invert", lambda img, rng: 255 - img, imitates="test")
    out = generate_benchmark(tmp_path / "b", tiny(families_train=("blend",), families_unseen=("h4-invert",)))
    m = read_manifest(out)
    assert m["test_splits"]["unseen"] == ["h4-invert_photo"]
    data = json.loads((out / "json" / "h4-invert_photo.json").read_text())["h4-invert_photo"]
    video, entry = next(iter(data["h4-invert_Fake"]["test"].items()))
    fake = cv2.imread(str(out / entry["frames"][0]))
    real = cv2.imread(str(out / data["h4-invert_Real"]["test"][video]["frames"][0]))
    np.testing.assert_array_equal(fake, 255 - real)


@pytest.mark.parametrize("over,match", [
    ({"n_train": 3}, "n_train"),
    ({"families_train": ("nope",)}, "nope"),
    ({"families_unseen": ("blend",)}, "both"),
    ({"families_train": ()}, "empty"),
    ({"cross_domain": "photo"}, "differ"),
    ({"strength": 0.0}, "strength"),
    ({"train_domain": "mars"}, "mars"),
])
def test_invalid_config(over: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**over).validate()


def test_failed_generation_leaves_nothing(tmp_path: Path, temp_family: list[str]) -> None:
    temp_family.append("h4-broken")

    def broken(img, rng):
        raise RuntimeError("family exploded")

    register_family("h4-broken", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        generate_benchmark(tmp_path / "b", tiny(families_unseen=("h4-broken",)))
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary folder


def test_ensure_benchmark_caches(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny(families_train=("blend",), families_unseen=())
    first = ensure_benchmark(tmp_path, cfg)
    assert first == tmp_path / cfg.config_hash()
    mtime = (first / "manifest.json").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached benchmark")

    monkeypatch.setattr(gen_mod, "_write_tree", fail)
    assert ensure_benchmark(tmp_path, cfg) == first
    assert (first / "manifest.json").stat().st_mtime_ns == mtime


def test_verify_detects_corruption(tmp_path: Path) -> None:
    out = generate_benchmark(tmp_path / "b", tiny(families_train=("blend",), families_unseen=()))
    assert verify_benchmark(out) == []
    victim = next((out / "frames" / "blend").rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    assert any("content hash" in p for p in verify_benchmark(out))


def test_cli_generate_show_verify(tmp_path: Path, capsys) -> None:
    args = ["generate", str(tmp_path / "root"), "--image-size", "32", "--video-frames", "2", "--n-train", "8",
            "--n-test", "4", "--n-pretrain", "2", "--families-train", "blend,warp", "--families-unseen", "edit"]
    assert main(args) == 0
    bench = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert read_manifest(bench)["test_splits"]["unseen"] == ["edit_photo"]
    assert main(["verify", str(bench)]) == 0
    sheet_path = tmp_path / "sheet.png"
    assert main(["show", str(sheet_path), "--n", "3", "--image-size", "32", "--scale", "1", "--diff"]) == 0
    sheet = cv2.imread(str(sheet_path))
    rows = 2 + 2 * 5  # two real domains, each built-in family + its difference row
    assert sheet.shape[0] == rows * (32 + 2) + 2 and sheet.shape[1] == 130 + 3 * (32 + 2) + 2
