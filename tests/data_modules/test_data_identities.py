"""Identity rules and the leak-free identity carve (issue 9) on DF40-layout fixtures."""

import hashlib
import json
from pathlib import Path

import pytest

from data_modules.df40 import DF40DataModule
from data_modules.fixtures import write_df40_fixture
from data_modules.identities import (
    IdentityResolver,
    carve_by_identity,
    identity_uniform,
    keys_sha256,
    load_identity_groups,
)
from data_modules.index import VideoRecord

FAMILIES = ("fs", "fr", "efs", "joint")


def rec(video, folder="x", dataset="D", method="m", label=0):
    return VideoRecord(dataset=dataset, method=method, label_name="L", label=label, video=video, split="train",
                       compression=None, frames=[f"/root/{folder}/{video}/000.png"])


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_df40_fixture(tmp_path_factory.mktemp("ids") / "df40", n_videos=12, frames_per_video=2, image_size=8)


def make_dm(info, family, grouped=True, **kw):
    groups = {True: info["identity_groups"], False: None, "auto": "auto"}[grouped]
    args = dict(json_dir=info["json_dir"], data_root=info["data_root"], families=info["families"],
                test_splits={"unseen": ["heygen"]}, path_remap=info["path_remap"], frames_per_video=None,
                image_size=8, num_workers=0, val_fraction=0.25, identity_groups=groups)
    args.update(kw)
    dm = DF40DataModule(family=family, **args)
    dm.setup("fit")
    return dm


def frame_set(dm, name):
    t = dm.table(name)
    return {t.path(i) for i in range(len(t))}


def test_default_rules_ffpp_celebdf_youtube_dfd_fallback():
    r = IdentityResolver(data_root="/root")
    assert r.resolve(rec("000")) == (("ff++:000",), "ff++")
    assert r.resolve(rec("000_003")) == (("ff++:000", "ff++:003"), "ff++")
    assert r.resolve(rec("id0_0001")) == (("celeb-df:id0",), "celeb-df")
    assert r.resolve(rec("id3_id17_0004")) == (("celeb-df:id17", "celeb-df:id3"), "celeb-df")
    assert r.resolve(rec("00042", folder="Celeb-DF-v2/YouTube-real/frames")) == (
        ("celeb-df-youtube:00042",), "youtube")
    assert r.resolve(rec("01_02__meeting_serious__YVGY8LOK")) == (("dfd:01", "dfd:02"), "dfd")
    assert r.resolve(rec("01__walking_outside")) == (("dfd:01",), "dfd")
    # no rule: the frame folder (relative to data_root) is the identity; same folder in two JSONs → same id
    a = r.resolve(rec("clipA", folder="mine", dataset="J1", method="x"))
    b = r.resolve(rec("clipA", folder="mine", dataset="J2", method="y"))
    assert a == b == (("folder:mine/clipA",), "fallback")
    # namespaced: FF++ 000 ≠ Celeb-DF id0 ≠ a YouTube real
    assert r(rec("000")) != r(rec("id0_0000")) != r(rec("00000", folder="Celeb-DF-v2/YouTube-real/frames"))
    # 5 digits outside YouTube-real: no pairing detected
    assert r.resolve(rec("00042"))[1] == "fallback"


def test_user_regex_callable_and_groups():
    r = IdentityResolver(r"clip-(\w+)-from-(\w+)")
    assert r.resolve(rec("clip-a-from-b")) == (("user:a", "user:b"), "regex:clip-(\\w+)-from-(\\w+)")
    assert r.resolve(rec("000_001"))[1] == "ff++"  # defaults after the user rule
    assert "regex:" in r.description and "default" in r.description
    only = IdentityResolver([r"(\w+)-take\d", "none"])
    assert only.resolve(rec("000_001"))[1] == "fallback"

    def fn(record):
        return ["actor:" + record.video.split(".")[0]] if "." in record.video else None

    c = IdentityResolver(fn)
    assert c.resolve(rec("bob.mp4")) == (("actor:bob",), f"callable:{__name__}.{fn.__qualname__}")
    with pytest.raises(ValueError, match="invalid regular expression"):
        IdentityResolver("(unclosed")
    groups = load_identity_groups([[["000", "001"], ["002", "003"]], [["001", "005"]]])
    assert groups["ff++:000"] == groups["ff++:005"] == "group:ff++:000+ff++:001+ff++:005"
    g = IdentityResolver(groups=[[["000", "001"]]])
    assert g(rec("000_001")) == g(rec("001")) == ("group:ff++:000+ff++:001",)
    assert "groups:" in g.description


def test_carve_is_a_function_of_seed_and_identity():
    records = [rec(f"{i:03d}") for i in range(200)] + [rec(f"{i:03d}_{i + 1:03d}", label=1) for i in range(0, 200, 2)]
    c = carve_by_identity(records, 0.3, seed=5)
    val_ids = {f"ff++:{i:03d}" for i in range(200) if identity_uniform(5, f"ff++:{i:03d}") < 0.3}
    assert 30 < len(val_ids) < 90
    for r in c.val:
        assert set(c.identities[r.key]) <= val_ids
    for r in c.train:
        assert not set(c.identities[r.key]) & val_ids
    for r in c.left_out:
        ids = set(c.identities[r.key])
        assert ids & val_ids and ids - val_ids
    assert len(c.train) + len(c.val) + len(c.left_out) == len(records)
    # independent of the order and of other records
    c2 = carve_by_identity(list(reversed(records))[:150], 0.3, seed=5)
    assert {r.key for r in c2.val} <= {r.key for r in c.val}
    assert identity_uniform(5, "ff++:000") == int.from_bytes(
        hashlib.sha256(b"r2m-carve-v1|5|ff++:000").digest()[:8], "big") / 2 ** 64


@pytest.mark.parametrize("grouped", [True, False, "auto"])
def test_no_identity_in_train_and_val_of_any_specialist(fx, grouped):
    # val_fraction 0.4 without groups (pair fakes need both identities: ~f² of them are validation)
    kw = {} if grouped else {"val_fraction": 0.4, "seed": 3}
    dms = {f: make_dm(fx, f, grouped=grouped, **kw) for f in FAMILIES}
    for f, dm in dms.items():
        split = dm.split_identities()
        assert split["val"] and split["train"]
        assert {0, 1} <= set(dm.table("val").labels.tolist()), f
        # recomputed from the video names, not from the data module's own bookkeeping
        r = IdentityResolver(groups=fx["identity_groups"] if grouped else None, data_root=fx["data_root"])
        if grouped == "auto":
            r = dm.identities
            assert "auto-groups:" in r.description
        train_ids = {i for rr in dm.carve.train for i in r(rr)}
        assert train_ids == split["train"]
    for f, a in dms.items():
        for g, b in dms.items():
            assert not (a.split_identities()["val"] & b.split_identities()["train"]), (f, g)
            # and on frames: no validation frame of one is a training frame of another
            assert not (frame_set(a, "val") & frame_set(b, "train")), (f, g)
    # the joint validation set = the union of the specialists' (frames and identities)
    assert frame_set(dms["joint"], "val") == set().union(*(frame_set(dms[f], "val") for f in ("fs", "fr", "efs")))
    assert dms["joint"].split_identities()["val"] == set().union(
        *(dms[f].split_identities()["val"] for f in ("fs", "fr", "efs")))
    if grouped is False:
        assert dms["fs"].carve_record()["n_left_out"] > 0
        assert dms["fs"].index_report.total("left_out_videos") == dms["fs"].carve_record()["n_left_out"]
    else:
        assert dms["fs"].carve_record()["n_left_out"] == 0


def test_carve_of_a_family_does_not_depend_on_other_families(fx):
    alone = make_dm(fx, "fr")
    families = {"fr": fx["families"]["fr"], "both": ["EFSAll_ff", "FRAll_ff", "FSAll_ff"]}
    with_others = make_dm(fx, "both", families=families)
    fr_val = {k for k in with_others.carve.identities if k[0] == "FRAll_ff"}
    # per video: the side of every FRAll_ff video is the same in both
    side = lambda dm: {r.key: s for s in ("train", "val", "left_out") for r in getattr(dm.carve, s)}  # noqa: E731
    a, b = side(alone), side(with_others)
    assert fr_val and all(b[k] == a[k] for k in a if k in b)
    # frames of the FR JSON are on the same side whatever else is loaded (dedupe order irrelevant)
    fr_frames = {f for r in alone.carve.val for f in r.frames}
    assert fr_frames <= frame_set(with_others, "val")
    assert not fr_frames & frame_set(with_others, "train")


def test_auto_groups_equal_the_pair_files(fx):
    """`auto` derives the FF++ pairs from the fake names of all families: the same carve as the pair files."""
    for f in FAMILIES:
        a, b = make_dm(fx, f, grouped="auto"), make_dm(fx, f, grouped=True)
        assert a.video_keys("val") == b.video_keys("val") and a.video_keys("train") == b.video_keys("train")
        assert a.carve_record()["n_left_out"] == 0


def test_auto_groups_need_every_family_json(fx, tmp_path):
    import shutil

    json_dir = tmp_path / "json"
    shutil.copytree(fx["json_dir"], json_dir)
    (json_dir / "EFSAll_ff.json").unlink()
    with pytest.raises(FileNotFoundError, match="EFSAll_ff.json"):
        make_dm({**fx, "json_dir": str(json_dir)}, "fs", grouped="auto")


def test_carve_record_contract(fx):
    dm = make_dm(fx, "fs")
    rec_ = dm.carve_record()
    json.dumps(rec_)
    for key, typ in (("scheme", str), ("seed", int), ("val_fraction", float), ("identity_rule", str),
                     ("val_videos_sha256", str), ("n_train_videos", int), ("n_val_videos", int), ("n_left_out", int)):
        assert isinstance(rec_[key], typ), key
    keys = dm.video_keys("val")
    assert rec_["val_videos_sha256"] == hashlib.sha256("\n".join(sorted("/".join(k) for k in keys)).encode()).hexdigest()
    assert rec_["val_videos_sha256"] == keys_sha256(keys) and len(rec_["val_videos_sha256"]) == 64
    assert rec_["n_val_videos"] == len(keys) and rec_["n_train_videos"] == len(dm.video_keys("train"))
    again = make_dm(fx, "fs")
    assert again.carve_record() == rec_
    ids = dm.split_identities()
    assert isinstance(ids["train"], frozenset) and isinstance(ids["val"], frozenset)


def test_one_class_validation_is_a_clear_error(fx):
    # without groups, a tiny val_fraction leaves no pair fake in validation
    with pytest.raises(ValueError, match="both classes are needed.*identity_groups"):
        make_dm(fx, "fs", grouped=False, val_fraction=0.05)
