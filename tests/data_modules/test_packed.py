"""Packed LitData shards: the same frames, labels, video keys and batches as the PNG-folder path."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.df40 import DF40DataModule
from data_modules.fixtures import write_df40_fixture
from data_modules.image_io import read_rgb
from data_modules.packed import MANIFEST, PackedDataModule, main, pack_datamodule, read_manifest, table_digest


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_df40_fixture(tmp_path_factory.mktemp("fxp") / "df40", n_videos=8, frames_per_video=3, image_size=16)


def make_dm(info, **kw):
    args = dict(json_dir=info["json_dir"], data_root=info["data_root"], families=info["families"],
                test_splits=info["test_splits"], path_remap=info["path_remap"], frames_per_video=None,
                image_size=16, batch_size=4, eval_batch_size=8, num_workers=0, val_fraction=0.25)
    args.update(kw)
    return DF40DataModule(**args)


@pytest.mark.parametrize("encoding", ["original", "raw"])
def test_pack_same_frames_labels_keys_and_batches(fx, tmp_path, encoding):
    dm = make_dm(fx)
    out = pack_datamodule(dm, tmp_path / "pack", encoding=encoding, chunk_bytes="8KB")
    manifest = read_manifest(out)
    assert manifest["family"] == "fs" and manifest["train_sources"] == ["FSAll_ff"]
    assert set(manifest["splits"]) == {"train", "val", *dm.test_set_names}
    assert not (tmp_path / "pack.partial").exists()
    packed = PackedDataModule(out, image_size=16, batch_size=4, eval_batch_size=8, num_workers=0)
    packed.setup("fit")
    assert packed.test_set_names == dm.test_set_names and packed.test_splits == dm.test_splits
    for name in ["train", "val", *dm.test_set_names]:
        table = dm.table(name)
        assert packed.video_keys(name) == dm.video_keys(name)
        assert manifest["splits"][name]["frames_sha256"] == table_digest(table)
        ds = packed.dataset(name, train=False)
        assert len(ds) == len(table)
        for i in range(len(table)):  # the same pixels, label and video of every frame, in order
            img, label, vid = ds.read(i)
            assert np.array_equal(img, read_rgb(table.path(i)))
            assert (label, vid) == (int(table.labels[i]), int(table.video_ids[i]))
    # the same batches as the folder loaders: augmented train order and pixels, eval batches
    for a, b in zip(dm.train_dataloader(), packed.train_dataloader(), strict=True):
        assert a["image"].dtype == torch.uint8
        assert all(torch.equal(a[k], b[k]) for k in ("image", "label", "video_id"))
    for la, lb in zip(dm.test_dataloader(), packed.test_dataloader(), strict=True):
        for a, b in zip(la, lb, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in ("image", "label", "video_id"))


def test_packed_workers_match_folder_workers(fx, tmp_path):
    dm = make_dm(fx, num_workers=2)
    out = pack_datamodule(dm, tmp_path / "pack", splits=["train", "val"])
    packed = PackedDataModule(out, image_size=16, batch_size=4, num_workers=2)
    for a, b in zip(dm.train_dataloader(), packed.train_dataloader(), strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["video_id"], b["video_id"])


def test_pack_errors(fx, tmp_path):
    dm = make_dm(fx)
    out = pack_datamodule(dm, tmp_path / "p", splits=["train", "val"])
    with pytest.raises(FileExistsError, match="exists"):
        pack_datamodule(dm, out, splits=["train", "val"])
    with pytest.raises(KeyError, match="nope"):
        pack_datamodule(dm, tmp_path / "q", splits=["train", "nope"])
    assert not (tmp_path / "q").exists()
    with pytest.raises(ValueError, match="packed for family 'fs'"):
        PackedDataModule(out, family="fr")
    with pytest.raises(KeyError, match="FSAll_cdf"):
        PackedDataModule(out, test_splits={"cross_dataset": ["FSAll_cdf"]})
    with pytest.raises(FileNotFoundError, match="not a packed dataset"):
        PackedDataModule(tmp_path)
    bad = json.loads((out / MANIFEST).read_text())
    bad["format"] = "other"
    (out / MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="format"):
        read_manifest(out)


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def test_cli_and_packed_config(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    root = tmp_path / "cache"
    over = ["experiment=tiny", f"paths.root_dir={tmp_path}", f"paths.cache_dir={root}", "data.fixture.n_videos=8",
            "data.fixture.frames_per_video=2", "data.fixture.image_size=16"]
    assert main([str(tmp_path / "pack"), *over]) == 0
    printed = capsys.readouterr().out
    assert "train:" in printed and "val:" in printed
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=tiny", f"paths.root_dir={tmp_path}", "data=packed",
                                                      f"data.root={tmp_path / 'pack'}"])
        source = compose(config_name="train", overrides=over)
    dm = instantiate(cfg.data)
    assert isinstance(dm, PackedDataModule) and dm.task_name == "fs"
    ref = instantiate(source.data)
    ref.setup("fit")
    assert dm.video_keys("val") == ref.video_keys("val")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
    with pytest.raises(SystemExit, match="reads a pack"):
        main([str(tmp_path / "pack2"), "experiment=tiny", f"paths.root_dir={tmp_path}", "data=packed", f"data.root={tmp_path}"])
