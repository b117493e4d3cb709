"""Built-in benchmark generation: determinism, DF40 JSON layout, per-family folders (adding a family
changes nothing else), source records, caching, atomicity, CLI."""

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
    ensure_family,
    family_dir,
    generate_benchmark,
    read_family,
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
    real = [k for k in a if k.startswith("real/") and k.endswith(".png")]
    assert real and set(real) == {k for k in b if k.startswith("real/") and k.endswith(".png")}
    assert sum(a[k] == b[k] for k in real) <= len(real) // 10
    assert read_manifest(bench)["content_sha256"] != read_manifest(other)["content_sha256"]


def test_manifest_records_every_real_crops_source(bench: Path) -> None:
    m = read_manifest(bench)
    cfg = tiny()
    assert m["config"] == cfg.real_config() and m["config_hash"] == cfg.config_hash()
    for domain, split, n in (("photo", "train", cfg.videos("n_train")), ("photo", "test", cfg.videos("n_test")),
                             ("archive", "test", cfg.videos("n_test"))):
        videos = m["real_videos"][domain][split]
        assert len(videos) == n
        for rec in videos.values():
            assert rec["identity"].startswith(f"{domain}/{rec['source']}/") and len(rec["frames"]) == 2
            if rec["source"] != "lfw_faces":
                assert rec["identity"].endswith(f"/{rec['band']}/{rec['region']}")
    assert len(m["pretrain_frames"]) == len(m["pretrain_sources"]) == 6
    assert all(p.startswith("real/photo/pretrain/") for p in m["pretrain_frames"])
    assert set(m["pretrain_sources"]) <= set(m["domains"]["photo"]["sources"])
    assert verify_benchmark(bench) == []


def test_df40_json_structure_and_fake_sources(bench: Path) -> None:
    cfg = tiny()
    m = read_manifest(bench)
    for family in (*cfg.families_train, *cfg.families_unseen):
        folder = family_dir(bench, cfg, family)
        info = read_family(folder)
        assert info["family"] == family and info["real_config_hash"] == cfg.config_hash()
        for name, ds in info["datasets"].items():
            domain = ds["domain"]
            data = json.loads((folder / "json" / f"{name}.json").read_text())
            assert list(data) == [name]
            groups = data[name]
            assert set(groups) == {f"{family}_Real", f"{family}_Fake"}
            expected = {"train", "test"} if domain == "photo" else {"test"}
            for group, splits in groups.items():
                assert set(splits) == expected, (name, group)
                for split, videos in splits.items():
                    assert len(videos) == cfg.videos("n_train" if split == "train" else "n_test")
                    for video in videos.values():
                        assert video["label"] == group and len(video["frames"]) == cfg.frames_per_video
                        for frame in video["frames"]:
                            assert not Path(frame).is_absolute()
                            img = cv2.imread(str(bench / frame), cv2.IMREAD_COLOR)
                            assert img is not None and img.shape == (32, 32, 3)
            for split in expected:
                reals, fakes = groups[f"{family}_Real"][split], groups[f"{family}_Fake"][split]
                assert set(reals) == set(fakes)
                for video, entry in fakes.items():
                    src = info["fake_sources"][domain][split][video]
                    real = m["real_videos"][domain][split][video]
                    # every forged crop records the real crop (and region) it was made from
                    assert src["source_frames"] == reals[video]["frames"] == real["frames"]
                    assert src["identity"] == real["identity"] and src["source"] == real["source"]
                    assert all(f.startswith(f"{folder.relative_to(bench).as_posix()}/frames/{domain}/{split}/")
                               for f in entry["frames"])
    train = {f for r in m["real_videos"]["photo"]["train"].values() for f in r["frames"]}
    test = {f for r in m["real_videos"]["photo"]["test"].values() for f in r["frames"]}
    assert train and test and train.isdisjoint(test)
    train_ids = {r["identity"] for r in m["real_videos"]["photo"]["train"].values()}
    test_ids = {r["identity"] for r in m["real_videos"]["photo"]["test"].values()}
    assert train_ids.isdisjoint(test_ids)  # different bands → different source regions


def test_fakes_differ_from_their_reals(bench: Path) -> None:
    folder = family_dir(bench, tiny(), "warp")
    data = json.loads((folder / "json" / "warp_photo.json").read_text())["warp_photo"]
    for video, entry in data["warp_Fake"]["test"].items():
        for fake, real in zip(entry["frames"], data["warp_Real"]["test"][video]["frames"]):
            a = cv2.imread(str(bench / fake)).astype(np.int16)
            b = cv2.imread(str(bench / real)).astype(np.int16)
            assert np.abs(a - b).mean() > 0.2


def test_adding_a_family_leaves_everything_else_byte_identical(tmp_path: Path, temp_family: list[str]) -> None:
    """A newly registered family adds its own folder; the reals, the other families' files (bytes
    and modification times), the pretraining crops and the real-data hash stay as they were."""
    from data_modules.benchmark.datamodule import pretrain_identity

    cfg = tiny(families_train=("blend", "warp"), families_unseen=("edit",))
    bench = ensure_benchmark(tmp_path, cfg)
    before = file_hashes(bench)
    mtimes = {p: p.stat().st_mtime_ns for p in bench.rglob("*") if p.is_file()}
    temp_family.append("h4-add")
    register_family("h4-add", lambda img, rng: np.ascontiguousarray(img[:, ::-1]), imitates="test")
    cfg2 = tiny(families_train=("blend", "warp", "h4-add"), families_unseen=("edit",))
    assert cfg2.config_hash() == cfg.config_hash()
    assert ensure_benchmark(tmp_path, cfg2) == bench
    after = file_hashes(bench)
    new = family_dir(bench, cfg2, "h4-add").relative_to(bench).as_posix() + "/"
    assert {k: v for k, v in after.items() if not k.startswith(new)} == before
    assert any(k.startswith(new) for k in after)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    data_cfg = {"seed": 0, "image_size": 32, "video_frames": 2, "n_train": 8, "n_test": 4, "n_pretrain": 6}
    assert pretrain_identity({**data_cfg, "families_train": ["blend", "warp"]}) == \
        pretrain_identity({**data_cfg, "families_train": ["blend", "warp", "h4-add"], "carve_seed": 3})
    assert verify_benchmark(bench) == []


def test_hashes_track_their_inputs(temp_family: list[str]) -> None:
    base = tiny().config_hash()
    assert tiny().config_hash() == base
    for over in ({"seed": 1}, {"n_train": 12}, {"image_size": 48}, {"n_pretrain": 8}):
        assert tiny(**over).config_hash() != base, over
    for over in ({"strength": 1.5}, {"families_unseen": ("diffusion",)}, {"families_train": ("warp", "blend")}):
        assert tiny(**over).config_hash() == base, over  # reals do not depend on the families
    assert tiny(strength=1.5).family_key("blend") != tiny().family_key("blend")
    assert tiny(seed=1).family_key("blend") != tiny().family_key("blend")
    temp_family.append("h4-gen")
    register_family("h4-gen", lambda img, rng: 255 - img, version="1")
    k1 = tiny().family_key("h4-gen")
    register_family("h4-gen", lambda img, rng: 255 - img, version="2", overwrite=True)
    assert tiny().family_key("h4-gen") != k1


def test_user_family_is_generated(tmp_path: Path, temp_family: list[str]) -> None:
    temp_family.append("h4-invert")
    register_family("h4-invert", lambda img, rng: 255 - img, imitates="test")
    cfg = tiny(families_train=("blend",), families_unseen=("h4-invert",))
    out = generate_benchmark(tmp_path / "b", cfg)
    assert cfg.test_splits["unseen"] == ["h4-invert_photo"]
    folder = family_dir(out, cfg, "h4-invert")
    data = json.loads((folder / "json" / "h4-invert_photo.json").read_text())["h4-invert_photo"]
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


def test_failed_family_leaves_no_folder(tmp_path: Path, temp_family: list[str]) -> None:
    temp_family.append("h4-broken")

    def broken(img, rng):
        raise RuntimeError("family exploded")

    register_family("h4-broken", broken)
    cfg = tiny(families_train=("blend",), families_unseen=("h4-broken",))
    with pytest.raises(RuntimeError, match="exploded"):
        generate_benchmark(tmp_path / "b", cfg)
    families = sorted(p.name for p in (tmp_path / "b" / "families").iterdir())
    assert families == [cfg.family_key("blend")]  # no temporary or partial folder left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_ensure_benchmark_caches(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny(families_train=("blend",), families_unseen=())
    first = ensure_benchmark(tmp_path, cfg)
    assert first == tmp_path / cfg.config_hash()
    mtime = (first / "manifest.json").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached benchmark")

    monkeypatch.setattr(gen_mod, "_write_real", fail)
    monkeypatch.setattr(gen_mod, "_write_family", fail)
    assert ensure_benchmark(tmp_path, cfg) == first
    assert ensure_family(first, cfg, "blend") == family_dir(first, cfg, "blend")
    assert (first / "manifest.json").stat().st_mtime_ns == mtime


def test_verify_detects_corruption(tmp_path: Path) -> None:
    cfg = tiny(families_train=("blend",), families_unseen=())
    out = generate_benchmark(tmp_path / "b", cfg)
    assert verify_benchmark(out) == []
    victim = next((family_dir(out, cfg, "blend") / "frames").rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    assert any("content hash" in p for p in verify_benchmark(out))
    real = next((out / "real").rglob("*.png"))
    real.unlink()
    assert any("files on disk" in p for p in verify_benchmark(out))


def test_cli_generate_show_verify(tmp_path: Path, capsys) -> None:
    args = ["generate", str(tmp_path / "root"), "--image-size", "32", "--video-frames", "2", "--n-train", "8",
            "--n-test", "4", "--n-pretrain", "2", "--families-train", "blend,warp", "--families-unseen", "edit"]
    assert main(args) == 0
    bench = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(p.name.split("-")[0] for p in (bench / "families").iterdir()) == ["blend", "edit", "warp"]
    assert main(["verify", str(bench)]) == 0
    sheet_path = tmp_path / "sheet.png"
    assert main(["show", str(sheet_path), "--n", "3", "--image-size", "32", "--scale", "1", "--diff"]) == 0
    sheet = cv2.imread(str(sheet_path))
    rows = 2 + 2 * len(FAMILIES)  # two real domains, each registered family + its difference row
    assert sheet.shape[0] == rows * (32 + 2) + 2 and sheet.shape[1] == 130 + 3 * (32 + 2) + 2
