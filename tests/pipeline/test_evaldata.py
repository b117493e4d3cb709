"""r2m.evaldata: which data a merge is evaluated on, and the validation-carve check."""

from __future__ import annotations

import pytest

from fake_carve import FakeCarveDM
from r2m.evaldata import check_carve, resolve_data_config

DF40 = {"_target_": "data_modules.df40.DF40DataModule", "json_dir": "/d/json", "family": "fs", "val_fraction": 0.1,
        "seed": 1024, "batch_size": 32}


def _meta(**data):
    return {"data_config": {**DF40, **data}}


def test_default_is_the_specialists_data_with_user_overrides_on_top():
    cfg, source = resolve_data_config([("a", _meta(family="fs")), ("b", _meta(family="fr", batch_size=8))],
                                      {"eval_batch_size": 7}, family="joint")
    assert source == "specialists" and cfg["json_dir"] == "/d/json" and cfg["family"] == "joint"
    assert cfg["eval_batch_size"] == 7


def test_old_files_fall_back_to_config_data():
    cfg, _ = resolve_data_config([("a", {"config": {"data": DF40}})], None)
    assert cfg["_target_"] == DF40["_target_"]


def test_no_recorded_data_and_no_explicit_data_is_an_error():
    with pytest.raises(ValueError, match=r"a: record no data config.*data=df40"):
        resolve_data_config([("a", {"task": "fs"})], None)


def test_specialists_on_different_data_are_refused_unless_allowed():
    files = [("a", _meta()), ("b", _meta(json_dir="/other"))]
    with pytest.raises(ValueError, match=r"different data configs: b vs a: data.json_dir"):
        resolve_data_config(files, None)
    cfg, _ = resolve_data_config(files, None, allow_mixed=True)
    assert cfg["json_dir"] == "/d/json"


@pytest.mark.parametrize("user", [{"val_fraction": 0.3}, {**DF40, "seed": 7}])
def test_a_different_carve_in_the_evaluation_data_is_refused(user):
    with pytest.raises(ValueError, match="validation carve .* differs"):
        resolve_data_config([("spec.safetensors", _meta())], user)


def _files(val_fraction=0.5, seed=0, scheme="identity"):
    out = []
    for fam in ("fs", "fr"):
        dm = FakeCarveDM(fam, val_fraction, seed, scheme)
        dm.setup("fit")
        out.append((f"{fam}.safetensors", {"carve": dm.carve_record(), "data_config": {"family": fam}}))
    return out


def _cfg(**kw):
    return {"_target_": "fake_carve.FakeCarveDM", "family": "joint", "val_fraction": 0.5, "seed": 0, **kw}


def _dm(**kw):
    dm = FakeCarveDM(**{k: v for k, v in _cfg(**kw).items() if k != "_target_"})
    dm.setup("fit")
    return dm


def test_matching_carve_passes():
    report = check_carve(_dm(), _cfg(), _files())
    assert report["status"] == "checked" and set(report["files"]) == {"fs.safetensors", "fr.safetensors"}


def test_different_val_fraction_is_refused():
    with pytest.raises(ValueError, match=r"fs.safetensors.*val_fraction: recorded 0.5"):
        check_carve(_dm(val_fraction=0.3), _cfg(val_fraction=0.3), _files())


def test_validation_identities_in_a_specialists_training_set_are_refused():
    # the old per-family carve: a shared real identity is validation for one family, training for the other
    files = _files(scheme="per_family")
    dm = _dm(scheme="per_family")
    own = {f: FakeCarveDM(f, 0.5, 0, "per_family") for f in ("fs", "fr")}
    for d in own.values():
        d.setup("fit")
    assert set(dm.split_identities()["val"]) & set().union(*(d.split_identities()["train"] for d in own.values()))
    with pytest.raises(ValueError, match="identities of the evaluation validation set are training identities"):
        check_carve(dm, _cfg(scheme="per_family"), files)
    # the identity carve of the same data passes
    assert check_carve(_dm(), _cfg(), _files())["status"] == "checked"


def test_specialists_without_a_carve_are_refused_and_old_data_modules_are_reported_unchecked():
    with pytest.raises(ValueError, match=r"fs.safetensors: record no validation carve.*eval.check_carve=false"):
        check_carve(_dm(), _cfg(), [("fs.safetensors", {"data_config": {"family": "fs"}})])
    assert check_carve(object(), _cfg(), _files())["status"] == "unchecked"
