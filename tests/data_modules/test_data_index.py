"""JSON index parsing, prefix remap, natural sort, existence checks and dedupe."""

import json
import os

import pytest

from data_modules.index import (
    IndexFormatError,
    IndexReport,
    MissingFramesError,
    PathResolver,
    check_frames,
    dedupe_frames,
    natural_sorted,
    parse_index,
    read_json,
)


def _write(tmp_path, name, obj):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(obj))
    return path


FF_STYLE = {
    "FF-XX": {
        "FF-real": {
            "train": {"c23": {"101": {"label": "FF-real", "frames": ["r/101/011.png", "r/101/000.png", "r/101/2.png"]}},
                      "c40": {"101": {"label": "FF-real", "frames": ["r40/101/000.png"]}}},
            "val": {"c23": {}, "c40": {}},
            "test": {"c23": {}, "c40": {}},
        },
        "FF-DF": {
            "train": {"c23": {"101_202": {"label": "FF-DF", "frames": ["f/101_202/000.png"], "masks": ["m/101_202/000.png"]}},
                      "c40": {}},
        },
    }
}

DF40_STYLE = {
    "toyswap_ff": {
        "toyswap_Real": {"test": {"305": {"label": "toyswap_Real", "frames": ["x/305/004.png", "x/305/001.png"]}}},
        "toyswap_Fake": {"test": {"305_410": {"label": "toyswap_Fake", "frames": ["y/305_410/004.png"]}}},
    }
}


def test_parse_with_compression_level(tmp_path):
    path = _write(tmp_path, "FF-XX", FF_STYLE)
    out = parse_index(path, compression="c23", resolver=PathResolver("/root"))
    assert set(out) == {"train", "val", "test"}
    assert out["val"] == [] and out["test"] == []
    real, fake = out["train"]
    assert (real.dataset, real.method, real.label_name, real.label, real.video) == ("FF-XX", "FF-real", "FF-real", 0, "101")
    assert real.compression == "c23" and fake.label == 1 and fake.key == ("FF-XX", "FF-DF", "101_202")
    assert real.frames == ["/root/r/101/000.png", "/root/r/101/2.png", "/root/r/101/011.png"]  # natural order
    assert fake.masks == ["/root/m/101_202/000.png"]
    c40 = parse_index(path, compression="c40", resolver=PathResolver("/root"))
    assert [r.frames for r in c40["train"]] == [["/root/r40/101/000.png"]]


def test_parse_without_compression_level(tmp_path):
    path = _write(tmp_path, "toyswap_ff", DF40_STYLE)
    out = parse_index(path, compression="c23", resolver=PathResolver("d"))
    assert list(out) == ["test"]
    recs = out["test"]
    assert [(r.method, r.label, r.video, r.compression) for r in recs] == [
        ("toyswap_Real", 0, "305", None), ("toyswap_Fake", 1, "305_410", None)]
    assert recs[0].frames == [os.path.join("d", "x/305/001.png"), os.path.join("d", "x/305/004.png")]


def test_compression_level_not_present_is_error(tmp_path):
    path = _write(tmp_path, "FF-XX", FF_STYLE)
    with pytest.raises(IndexFormatError, match="'raw' not present"):
        parse_index(path, compression="raw")
    with pytest.raises(IndexFormatError, match="several compression levels"):
        parse_index(path, compression=None)


def test_mixed_structure_and_bad_entries_are_errors(tmp_path):
    mixed = {"m": {"g": {"test": {"v": {"label": "a_Real", "frames": []}, "c23": {"w": {"label": "a_Real", "frames": []}}}}}}
    with pytest.raises(IndexFormatError, match=r"m\.json \[g/test\]: mixed structure"):
        parse_index(_write(tmp_path, "m", mixed))
    nolabel = {"n": {"g": {"test": {"v": {"frames": ["a.png"]}}}}}
    with pytest.raises(IndexFormatError, match="no 'label'"):
        parse_index(_write(tmp_path, "n", nolabel))
    badframes = {"b": {"g": {"test": {"v": {"label": "a_Real", "frames": "a.png"}}}}}
    with pytest.raises(IndexFormatError, match="'frames' must be a list"):
        parse_index(_write(tmp_path, "b", badframes))
    two_top = {"x": {}, "y": {}}
    with pytest.raises(IndexFormatError, match="top-level key 'z' not found"):
        parse_index(_write(tmp_path, "z", two_top))


def test_malformed_json_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"broken": {"g": {"test": {\n  "v": {"label": "x_Real", "frames": [}\n}}}')
    with pytest.raises(IndexFormatError) as err:
        read_json(path)
    assert "broken.json" in str(err.value) and "line 2" in str(err.value)
    with pytest.raises(IndexFormatError, match="cannot read"):
        read_json(tmp_path / "absent.json")
    path.write_text("[1, 2]")
    with pytest.raises(IndexFormatError, match="expected a JSON object"):
        read_json(path)


def test_prefix_remap_longest_match_and_component_boundary():
    r = PathResolver("/data", {
        "deepfakes_detection_datasets/DF40": "df40_test",
        "deepfakes_detection_datasets/DF40_train/": "/abs/train",
        "./deepfakes_detection_datasets": "generic",
    })
    assert r("deepfakes_detection_datasets/DF40/simswap/a.png") == "/data/df40_test/simswap/a.png"
    assert r("deepfakes_detection_datasets/DF40_train/simswap/a.png") == "/abs/train/simswap/a.png"
    assert r("deepfakes_detection_datasets\\FaceForensics++\\x\\0.png") == "/data/generic/FaceForensics++/x/0.png"
    assert r("./deepfakes_detection_datasets/DF40x/a.png") == "/data/generic/DF40x/a.png"  # not the DF40 rule
    assert r("other/a.png") == "/data/other/a.png"
    assert r("/already/absolute.png") == "/already/absolute.png"
    with pytest.raises(ValueError, match="empty prefix"):
        PathResolver(".", {"": "x"})


def test_natural_sort():
    assert natural_sorted(["v/10.png", "v/2.png", "v/000.png", "v/001.png"]) == ["v/000.png", "v/001.png", "v/2.png", "v/10.png"]
    names = ["d/seed188.png", "d/seed1020.png", "d/seed0099.png", "d/seed0188a.png"]
    assert natural_sorted(names) == ["d/seed0099.png", "d/seed188.png", "d/seed0188a.png", "d/seed1020.png"]
    mixed = ["d/b.png", "d/10.png", "d/a2.png", "d/a10.png", "d/9.png"]
    assert natural_sorted(mixed) == ["d/9.png", "d/10.png", "d/a2.png", "d/a10.png", "d/b.png"]


def _records_on_disk(tmp_path, n_missing_per_video):
    """Two methods, two videos each, 3 frames; the first n frames of each video are not written."""
    obj = {"s": {}}
    for method, label in (("m_Real", "m_Real"), ("m_Fake", "m_Fake")):
        videos = {}
        for v in ("a", "b"):
            frames = [f"{method}/{v}/{k:03d}.png" for k in range(3)]
            for k, f in enumerate(frames):
                if k >= n_missing_per_video[method]:
                    (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
                    (tmp_path / f).write_bytes(b"x")
            videos[v] = {"label": label, "frames": frames}
        obj["s"][method] = {"test": videos}
    return parse_index(_write(tmp_path, "s", obj), resolver=PathResolver(tmp_path))["test"]


def test_missing_frames_error_mode(tmp_path):
    recs = _records_on_disk(tmp_path, {"m_Real": 0, "m_Fake": 1})
    with pytest.raises(MissingFramesError) as err:
        check_frames(recs, IndexReport(), "error")
    msg = str(err.value)
    assert "2 listed frame(s) do not exist" in msg and "s/test/m_Fake: 2" in msg and "000.png" in msg


def test_missing_frames_drop_mode_counts_per_method(tmp_path):
    recs = _records_on_disk(tmp_path, {"m_Real": 3, "m_Fake": 1})
    report = IndexReport()
    kept = check_frames(recs, report, "drop")
    assert [r.key for r in kept] == [("s", "m_Fake", "a"), ("s", "m_Fake", "b")]
    assert all(len(r.frames) == 2 and all(os.path.isfile(f) for f in r.frames) for r in kept)
    real, fake = report.row("s", "test", "m_Real"), report.row("s", "test", "m_Fake")
    assert (real["videos"], real["frames"], real["missing_frames"], real["dropped_videos"]) == (2, 6, 6, 2)
    assert (fake["videos"], fake["frames"], fake["missing_frames"], fake["dropped_videos"]) == (2, 6, 2, 0)
    assert report.total("missing_frames") == 8
    assert report["s/test"]["m_Fake"]["missing_frames"] == 2
    with pytest.raises(ValueError, match="on_missing"):
        check_frames(recs, report, "ignore")


def test_dedupe_keeps_first_occurrence_and_counts(tmp_path):
    obj = {"fam": {
        "a_Real": {"train": {"000": {"label": "fam_Real", "frames": ["r/000/1.png", "r/000/2.png"]}}},
        "a_Fake": {"train": {"000_1": {"label": "fam_Fake", "frames": ["a/000_1/1.png"]}}},
        "b_Real": {"train": {"000": {"label": "fam_Real", "frames": ["r/000/1.png", "r/000/2.png", "r/000/3.png"]}}},
        "b_Fake": {"train": {"000_1": {"label": "fam_Fake", "frames": ["b/000_1/1.png"]}}},
    }}
    recs = parse_index(_write(tmp_path, "fam", obj), resolver=PathResolver(""))["train"]
    report = IndexReport()
    kept = dedupe_frames(recs, report)
    assert [(r.method, r.frames) for r in kept] == [
        ("a_Real", ["r/000/1.png", "r/000/2.png"]), ("a_Fake", ["a/000_1/1.png"]),
        ("b_Real", ["r/000/3.png"]), ("b_Fake", ["b/000_1/1.png"])]
    assert report.row("fam", "train", "b_Real")["duplicate_frames"] == 2
    # the two fakes share label string and folder name but not the key
    assert kept[1].key != kept[3].key
    # across calls with a shared `seen`: everything already seen
    seen = {}
    dedupe_frames(recs, IndexReport(), seen)
    rep2 = IndexReport()
    assert dedupe_frames(recs, rep2, seen) == []
    assert rep2.total("duplicate_videos") == 4


def test_dedupe_label_conflict_is_error(tmp_path):
    obj = {"c": {"g": {"test": {"v": {"label": "c_Real", "frames": ["p.png"]}}},
                 "h": {"test": {"w": {"label": "c_Fake", "frames": ["p.png"]}}}}}
    recs = parse_index(_write(tmp_path, "c", obj), resolver=PathResolver(""))["test"]
    with pytest.raises(IndexFormatError, match="'p.png' is listed as label 0"):
        dedupe_frames(recs, IndexReport())
