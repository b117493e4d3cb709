"""BenchmarkDataModule: DF40 split structure, batches, joint dedupe, pretraining loader, Hydra config."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_modules.benchmark import BenchmarkDataModule, benchmark_datamodule

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(image_size=32, video_frames=2, n_train=16, n_test=8, n_pretrain=10)
TEST_SETS = ["blend_photo", "warp_photo", "upsample_photo", "blend_archive", "warp_archive", "upsample_archive",
             "diffusion_photo", "edit_photo"]


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
    assert batch["image"].shape[1:] == (3, 32, 32) and batch["image"].dtype == torch.float32
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
    with pytest.raises(ValueError, match="unknown family"):
        make(root, family="diffusion")


def test_images_are_the_generated_pngs(root: Path) -> None:
    """The evaluation loader returns exactly the written crops, normalised with mean/std."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    dm = make(root, mean=mean, std=std)
    dm.setup("test")
    table = dm.table("edit_photo")
    batch = next(iter(dm.test_dataloader()[TEST_SETS.index("edit_photo")]))
    for i in range(3):
        rgb = cv2.imread(table.path(i), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64) / 255.0
        expected = (rgb - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(batch["image"][i].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_pretrain_loader_is_real_only(root: Path) -> None:
    dm = make(root)
    loader = dm.pretrain_dataloader(batch_size=4, augment=False, shuffle=False)
    assert len(loader.dataset) == 10
    assert all("/frames/real/photo/pretrain/" in Path(p).as_posix() for p in dm.pretrain_frames)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == 10
    assert all(int(b["label"].abs().sum()) == 0 for b in batches)
    assert batches[0]["image"].shape == (4, 3, 32, 32)
    assert len(next(iter(dm.pretrain_dataloader())))  # defaults: module batch size, augmentation


def test_pretrain_falls_back_to_training_reals(root: Path) -> None:
    dm = make(root, n_pretrain=0, family="warp")
    dm.setup("fit")
    assert dm.pretrain_frames == []
    loader = dm.pretrain_dataloader(augment=False, shuffle=False)
    train = dm.table("train")
    assert len(loader.dataset) == int((train.labels == 0).sum())


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
    generated = dm.manifest["config"]
    assert generated["image_size"] == 32 and generated["families_unseen"] == ["edit"]
    assert dm.num_workers == 0 and dm.augment == {"rotate_p": 0.0, "blur_p": 0.0, "jpeg_p": 0.0}
    dm.setup("test")
    assert dm.test_splits["unseen"] == ["edit_photo"]
