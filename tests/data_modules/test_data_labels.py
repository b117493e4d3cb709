"""Label strings → 0/1: defaults, suffix fallback, overrides and errors."""

import json

import pytest

from data_modules.index import parse_index
from data_modules.labels import DEFAULT_LABEL_MAP, LabelMapper, UnknownLabelError, suffix_label


@pytest.mark.parametrize("label, value", [
    ("FF-real", 0), ("FF-DF", 1), ("FF-F2F", 1), ("FF-FS", 1), ("FF-NT", 1),
    ("CelebDFv2_real", 0), ("CelebDFv2_fake", 1), ("FSAll_Real", 0), ("FSAll_Fake", 1),
    ("FRAll_Real", 0), ("EFSAll_Fake", 1), ("simswap_Fake", 1), ("heygen_Real", 0), ("DFDCP_FakeA", 1),
])
def test_default_map_knows_standard_strings(label, value):
    assert label in DEFAULT_LABEL_MAP
    assert LabelMapper()(label) == value


@pytest.mark.parametrize("label, value", [
    ("mynew_Real", 0), ("mynew_REAL", 0), ("Other-real", 0), ("x_fake", 1), ("X-FAKE", 1), ("a_b_Fake", 1),
])
def test_suffix_fallback_case_insensitive(label, value):
    assert label not in DEFAULT_LABEL_MAP
    assert suffix_label(label) == value
    assert LabelMapper()(label) == value


def test_unknown_label_error_names_json_and_string():
    with pytest.raises(UnknownLabelError) as err:
        LabelMapper()("FakeA_something", source="some/dir/weird.json")
    assert "weird.json" in str(err.value) and "FakeA_something" in str(err.value)
    assert suffix_label("realistic") is None and suffix_label("unreal_x") is None


def test_user_map_overrides_and_extends():
    m = LabelMapper({"FF-real": 1, "Synth": 1, "Natural": 0})
    assert m("FF-real") == 1 and m("Synth") == 1 and m("natural") == 0
    assert LabelMapper()("FF-real") == 0  # defaults untouched


@pytest.mark.parametrize("bad", [2, -1, "1", True, 0.5])
def test_label_map_values_must_be_zero_or_one(bad):
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        LabelMapper({"X": bad})


def test_no_fallback_when_disabled():
    with pytest.raises(UnknownLabelError):
        LabelMapper(use_suffix_fallback=False)("mynew_Real")


def test_parse_index_unknown_label_names_file(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"odd": {"g": {"test": {"v1": {"label": "Mystery", "frames": ["a.png"]}}}}}))
    with pytest.raises(UnknownLabelError) as err:
        parse_index(path)
    assert "odd.json" in str(err.value) and "'Mystery'" in str(err.value)
    assert parse_index(path, labels=LabelMapper({"Mystery": 1}))["test"][0].label == 1
    kept = parse_index(path, unknown_labels="keep")["test"][0]
    assert kept.label == -1 and kept.label_name == "Mystery"
