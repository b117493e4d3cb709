"""BenchmarkDataModule: DF40 split structure, batches, joint dedupe, the source-region carve (no
validation or test crop shares a source region with training), extra families, pretraining loaders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_modules.benchmark import BenchmarkDataModule, benchmark_datamodule

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(image_size=32, video_frames=2, n_train=16, n_test=8, n_pretrain=10)
TEST_SETS = ["blend_photo", "warp_photo", "upsample_photo", "blend_archive", "warp_archive", "upsample_archive",
             "diffusion_photo", "edit_photo", "fingerprint_photo", "resave_photo"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_root")


def make(root: Path, family: str = "blend", **kwargs) -> BenchmarkDataModule:
    return benchmark_datamodule(str(root), family=family, **{**TINY, "batch_size": 8, "eval_batch_size": 16, **kwargs})


def test_split_structure_and_batches(root: Path) -> None:
    dm = make(root)
    dm.setup()
    assert dm.task_name == "blend" and dm.train_sources == ["blend_photo"]
    assert dm.test_set_names == TEST_SETS
    assert dm.test_splits == {"in_distribution": TEST_SETS[:3], "cross_dataset": TEST_SETS[3:6], "unseen": TEST_SETS[6:]}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32) and batch["image"].dtype == torch.uint8  # normalised on the device
    assert batch["label"].dtype == torch.long and set(batch["label"].tolist()) <= {0, 1}
    loaders = dm.test_dataloader()
    assert len(loaders) == len(TEST_SETS)
    for name, loader in zip(TEST_SETS, loaders):
        labels, vids = [], []
        for b in loader:
            labels += b["label"].tolist()
            vids += b["video_id"].tolist()
        assert labels.count(0) == labels.count(1) == 4, name  # n_test=8: half real, half fake
        keys = dm.video_keys(name)
        assert sorted(set(vids)) == list(range(len(keys))) and len(keys) == 4  # 2 real + 2 fake videos
        assert {k[0] for k in keys} == {name}
        fam = name.split("_")[0]
        assert {k[1] for k in keys} == {f"{fam}_Real", f"{fam}_Fake"}


def test_joint_dedupes_shared_reals(root: Path) -> None:
    dm = make(root, family="joint", val_fraction=0.0)
    dm.setup("fit")
    assert dm.train_sources == ["blend_photo", "warp_photo", "upsample_photo"]
    labels = dm.table("train").labels
    # 4 real videos × 2 frames shared by the three families (counted once), 3 × 8 fake frames
    assert int((labels == 0).sum()) == 8 and int((labels == 1).sum()) == 24
    assert len(set(dm.table("train").paths.tolist())) == len(labels)


def test_unknown_family(root: Path) -> None:
    with pytest.raises(ValueError, match="unknown forgery family 'nope'"):
        make(root, family="nope")
    with pytest.raises(ValueError, match="families_unseen"):
        make(root, family="diffusion")


def test_images_are_the_generated_pngs(root: Path) -> None:
    """The evaluation loader returns exactly the written crops (uint8), equal after the detector's
    on-device normalisation with mean/std."""
    from r2m.models.preprocess import normalize_images

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    dm = make(root, mean=mean, std=std)
    dm.setup("test")
    table = dm.table("edit_photo")
    batch = next(iter(dm.test_dataloader()[TEST_SETS.index("edit_photo")]))
    images = normalize_images(batch["image"], mean, std)
    for i in range(3):
        rgb = cv2.imread(table.path(i), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64) / 255.0
        expected = (rgb - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(images[i].permute(1, 2, 0).numpy(), expected, atol=1e-5)


CARVE = dict(n_train=64, val_fraction=0.3)


def _videos(dm: BenchmarkDataModule, name: str) -> list[tuple[str, str, str, int]]:
    table = dm.table(name)
    labels = {int(v): int(lab) for v, lab in zip(table.video_ids, table.labels)}
    return [(*key, labels[i]) for i, key in enumerate(table.keys)]


def _train_frames_and_ids(dm: BenchmarkDataModule) -> tuple[set[str], set[str]]:
    table = dm.table("train")
    frames = {table.path(i) for i in range(len(table))}
    return frames, set(dm.split_identities()["train"])


@pytest.mark.parametrize("family", ["blend", "warp", "upsample", "joint"])
def test_no_validation_or_test_crop_shares_a_source_with_training(root: Path, family: str) -> None:
    """Issue 9: no forged crop in validation or test whose source crop (or source region) is in training."""
    dm = make(root, family=family, **CARVE)
    dm.setup()
    train_frames, train_ids = _train_frames_and_ids(dm)
    ids = dm.split_identities()
    assert ids["train"] and ids["val"] and ids["train"].isdisjoint(ids["val"])
    bench = dm.bench_dir
    checked = 0
    for name in ["val", *dm.test_set_names]:
        split = "train" if name == "val" else "test"
        for dataset, _group, video, label in _videos(dm, name):
            if label != 1:
                continue
            src = dm.source_of(dataset, split, video)
            assert src["identity"] not in train_ids, (name, dataset, video)
            assert not {str(bench / f) for f in src["source_frames"]} & train_frames, (name, dataset, video)
            checked += 1
        table = dm.table(name)
        assert not {table.path(i) for i in range(len(table))} & train_frames
    assert checked > 0
    # every forged video of validation comes from a validation real crop
    val_real_ids = {dm.identity_of(d, "train", v, 0) for d, _, v, lab in _videos(dm, "val") if lab == 0}
    assert {dm.identity_of(d, "train", v, 1) for d, _, v, lab in _videos(dm, "val") if lab == 1} <= val_real_ids


def test_joint_validation_is_the_union_and_carves_do_not_depend_on_other_families(root: Path) -> None:
    def val_frames(dm):
        table = dm.table("val")
        return {table.path(i) for i in range(len(table))}

    joint = make(root, family="joint", **CARVE)
    specialists = [make(root, family=f, **CARVE) for f in ("blend", "warp", "upsample")]
    assert val_frames(joint) == set().union(*(val_frames(dm) for dm in specialists))
    assert joint.split_identities()["val"] == specialists[0].split_identities()["val"]
    alone = make(root, family="warp", families_train=["warp"], families_unseen=[], **CARVE)
    assert alone.carve_record()["val_videos_sha256"] == specialists[1].carve_record()["val_videos_sha256"]
    train_ids = set().union(*(dm.split_identities()["train"] for dm in specialists))
    assert train_ids.isdisjoint(joint.split_identities()["val"])


def test_carve_record_and_seeds(root: Path) -> None:
    dm = make(root, **CARVE)
    rec = dm.carve_record()
    assert rec["scheme"] == "benchmark-source-v1" and rec["seed"] == 0 and rec["val_fraction"] == 0.3
    assert rec["n_left_out"] == 0 and isinstance(rec["identity_rule"], str)
    keys = sorted("/".join(k) for k in dm.video_keys("val"))
    assert rec["val_videos_sha256"] == hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert rec["n_val_videos"] == len(keys) and rec["n_train_videos"] == len(dm.video_keys("train"))
    json.dumps(rec)
    assert {k[1] for k in dm.video_keys("val")} == {"blend_Real", "blend_Fake"}  # both classes
    # the carve follows carve_seed only; split_seed (shuffling, augmentation) leaves it alone
    assert make(root, split_seed=7, **CARVE).carve_record() == rec
    others = {make(root, carve_seed=s, **CARVE).carve_record()["val_videos_sha256"] for s in (1, 2, 3)}
    assert others - {rec["val_videos_sha256"]}


def test_extra_family_trains_without_editing_lists(root: Path, tmp_path: Path, monkeypatch) -> None:
    """tasks=[new]: a family registered in a file named once in family_modules trains as family=new."""
    from data_modules.benchmark.families import FAMILIES, unregister_family

    module = tmp_path / "h4_fakes.py"
    module.write_text(
        "import numpy as np\n"
        "from data_modules.benchmark import register_family\n"
        "@register_family('h4-flip', imitates='test: mirrored')\n"
        "def flip(img, rng):\n"
        "    return np.ascontiguousarray(img[:, ::-1])\n")
    monkeypatch.chdir(tmp_path)
    try:
        dm = make(root, family="h4-flip", family_modules=["h4_fakes.py"])
        dm.setup("fit")
        assert dm.train_sources == ["h4-flip_photo"]
        assert "h4-flip_photo" in dm.test_splits["in_distribution"]
        assert {k[1] for k in dm.video_keys("train")} == {"h4-flip_Real", "h4-flip_Fake"}
        make(root, family="blend", family_modules=["h4_fakes.py"])  # loading twice is fine
    finally:
        if "h4-flip" in FAMILIES:
            unregister_family("h4-flip")
    with pytest.raises(ValueError, match="missing_mod"):
        make(root, family_modules=["missing_mod"])


def test_pretrain_loaders_are_real_only_labelled_by_source(root: Path) -> None:
    dm = make(root)
    loader = dm.pretrain_dataloader(batch_size=4, augment=False, shuffle=False)
    assert len(loader.dataset) == 10
    assert all("/real/photo/pretrain/" in Path(p).as_posix() for p in dm.pretrain_frames)
    batches = list(loader)
    labels = [int(x) for b in batches for x in b["label"]]
    assert labels == [dm.pretrain_classes.index(s) for s in dm.manifest["pretrain_sources"]]
    assert batches[0]["image"].shape == (4, 3, 32, 32)
    a = [b["label"].tolist() for b in dm.pretrain_dataloader(seed=5)]
    assert a == [b["label"].tolist() for b in make(root, split_seed=99).pretrain_dataloader(seed=5)]
    held_out = dm.pretrain_eval_dataloader()
    paths = [held_out.dataset.table.path(i) for i in range(len(held_out.dataset))]
    assert paths and all("/real/photo/test/" in Path(p).as_posix() for p in paths)
    with pytest.raises(ValueError, match="n_pretrain=0"):
        make(root, n_pretrain=0).pretrain_dataloader()


def test_manifest_arguments_are_not_overridable(root: Path) -> None:
    with pytest.raises(TypeError, match="json_dir"):
        make(root, json_dir="/elsewhere")


def test_hydra_config_instantiates(root: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = OmegaConf.load(ROOT / "configs" / "data" / "benchmark.yaml")
    cfg = OmegaConf.create({"paths": {"cache_dir": str(root / "cache")},
                            "model": {"image_size": 32, "mean": None, "std": None}, "data": data})
    cfg.data.n_train, cfg.data.n_test, cfg.data.n_pretrain, cfg.data.video_frames = 8, 4, 2, 2
    cfg.data.families_unseen = ["edit"]
    dm = instantiate(cfg.data)
    assert isinstance(dm, BenchmarkDataModule)
    assert dm.bench_dir.parent == root / "cache" / "benchmark"
    assert dm.manifest["config"]["image_size"] == 32 and dm.config.families_unseen == ("edit",)
    assert dm.num_workers == 0 and dm.augment == {"rotate_p": 0.0, "blur_p": 0.0, "jpeg_p": 0.0}
    dm.setup("test")
    assert dm.test_splits["unseen"] == ["edit_photo"]
