"""The lean loader: uint8 batches from the DataModules, normalisation on the device in the detector.

Checked against the former float path (albumentations ``Normalize`` + ``ToTensorV2`` in the worker,
float collate): evaluation tensors bit-equal, the same augmentation draws for the same seed, the
same augmentation statistics across seeds, reproducible multi-worker order."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_modules.dataset import FrameDataset, FrameTable, collate_frames
from data_modules.df40 import DF40DataModule
from data_modules.fixtures import write_df40_fixture
from data_modules.transforms import build_transform, eval_transform, resolve_mean_std, train_transform
from r2m.models.preprocess import normalize_images

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_df40_fixture(tmp_path_factory.mktemp("fxl") / "df40", n_videos=4, frames_per_video=4, image_size=24)


def make_dm(info, **kw):
    args = dict(json_dir=info["json_dir"], data_root=info["data_root"], families=info["families"],
                test_splits=info["test_splits"], path_remap=info["path_remap"], frames_per_video=None,
                image_size=16, batch_size=8, eval_batch_size=16, num_workers=0, val_fraction=0.25)
    args.update(kw)
    return DF40DataModule(**args)


def _images(n=6, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def _old_batch(images, transform):
    return collate_frames([{"image": transform(image=im)["image"], "label": 0, "video_id": i}
                           for i, im in enumerate(images)])["image"]


def _new_batch(images, transform, mean, std):
    batch = collate_frames([{"image": transform(image=im)["image"], "label": 0, "video_id": i}
                            for i, im in enumerate(images)])["image"]
    assert batch.dtype == torch.uint8 and batch.shape == (len(images), 3, *batch.shape[2:])
    return normalize_images(batch, mean, std)


@pytest.mark.parametrize("stats", [(None, None), HALF])
def test_eval_tensors_equal_former_float_path(stats):
    mean, std = resolve_mean_std(*stats)
    images = _images()
    old = _old_batch(images, eval_transform(24, mean, std))
    new = _new_batch(images, eval_transform(24, mean, std, output="uint8"), mean, std)
    assert new.dtype == torch.float32 and new.is_contiguous() and new.shape == old.shape
    # same float32 arithmetic as albumentations' Normalize LUT: equal, not just close
    torch.testing.assert_close(new, old, atol=0, rtol=0)


def test_train_draws_equal_for_the_same_seed():
    mean, std = resolve_mean_std(None, None)
    images = _images(12)
    old_t = train_transform(24, mean, std, seed=7)
    new_t = train_transform(24, mean, std, seed=7, output="uint8")
    for _ in range(3):  # several calls: the generators stay in step
        torch.testing.assert_close(_new_batch(images, new_t, mean, std), _old_batch(images, old_t), atol=0, rtol=0)


def test_augmentation_statistics_match_float_path():
    """Independent seeds: the per-image statistics of augmented batches agree within sampling error,
    and differ from un-augmented images (so the check can fail)."""
    mean, std = resolve_mean_std(*HALF)
    base = _images(1, 48, 48, seed=3)[0]
    base = np.ascontiguousarray(np.clip(base.astype(np.int16) // 2 + np.arange(48)[None, :, None] * 2, 0, 255)
                                .astype(np.uint8))
    n = 300

    def stats(batch):  # per-image: mean, std, left-right asymmetry, high-frequency energy
        lr = (batch[..., :12] - batch[..., -12:]).mean(dim=(1, 2, 3))
        hf = (batch[..., 1:] - batch[..., :-1]).abs().mean(dim=(1, 2, 3))
        return torch.stack([batch.mean(dim=(1, 2, 3)), batch.std(dim=(1, 2, 3)), lr, hf], 1)

    old = stats(_old_batch([base] * n, train_transform(24, mean, std, seed=1)))
    new = stats(_new_batch([base] * n, train_transform(24, mean, std, seed=2, output="uint8"), mean, std))
    plain = stats(_new_batch([base] * n, eval_transform(24, mean, std, output="uint8"), mean, std))
    se = torch.sqrt(old.var(0) / n + new.var(0) / n)
    assert torch.all((old.mean(0) - new.mean(0)).abs() < 4 * se), (old.mean(0), new.mean(0), se)
    assert torch.all((old.std(0) / new.std(0) - 1).abs() < 0.25), (old.std(0), new.std(0))
    assert (plain.mean(0) - new.mean(0)).abs()[3] > 4 * se[3]  # augmentation (blur/JPEG) is visible
    assert float(new[:, 2].std()) > 10 * float(plain[:, 2].std())  # flips are drawn


def test_collate_uint8_contract_and_errors():
    imgs = _images(3, 8, 8)
    batch = collate_frames([{"image": im, "label": i % 2, "video_id": i} for i, im in enumerate(imgs)])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, 8, 8)
    assert torch.equal(batch["image"][1], torch.from_numpy(imgs[1]).permute(2, 0, 1))
    assert batch["label"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="item 1"):
        collate_frames([{"image": imgs[0], "label": 0, "video_id": 0},
                        {"image": imgs[1][:4], "label": 0, "video_id": 1}])
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(torch.zeros(2, 3, 4, 4, dtype=torch.int32), *HALF)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        normalize_images(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), *HALF)
    floats = torch.randn(2, 3, 4, 4)
    assert normalize_images(floats, *HALF) is floats


def test_worker_batches_shared_and_reproducible(fx):
    def run():
        dm = make_dm(fx, num_workers=2, batch_size=4)
        dm.setup("fit")
        return list(dm.train_dataloader())

    a, b = run(), run()
    assert all(x["image"].dtype == torch.uint8 for x in a)
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["video_id"], y["video_id"]) for x, y in zip(a, b))
    assert a[0]["image"].untyped_storage().is_shared()  # allocated in shared memory by the worker


def test_datamodule_uint8_equals_former_float_loader(fx):
    """The DataModule's train loader (2 workers) against today's float loader built from the same
    frame table, seed and worker seeding: normalised batches identical."""
    mean, std = resolve_mean_std(*HALF)
    dm = make_dm(fx, num_workers=2, batch_size=4, mean=mean, std=std)
    dm.setup("fit")
    table = dm.table("train")
    old = DataLoader(FrameDataset(table, build_transform(True, True, 16, mean, std, seed=dm.seed)), batch_size=4,
                     shuffle=True, generator=torch.Generator().manual_seed(dm.seed), num_workers=2,
                     collate_fn=collate_frames)
    for x, y in zip(dm.train_dataloader(), old, strict=True):
        assert torch.equal(x["label"], y["label"])
        torch.testing.assert_close(normalize_images(x["image"], mean, std), y["image"], atol=0, rtol=0)


def test_detector_normalises_after_transfer_in_lightning(fx):
    """Lightning calls the hook: logits of a validation pass over uint8 batches equal the model on
    the former float batches."""
    import lightning as L

    from r2m.models.detector import DeepfakeDetector

    torch.manual_seed(0)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8}}
    model = DeepfakeDetector(model_name="t", model_cfg=cfg, image_size=16, mean=HALF[0], std=HALF[1])
    model.eval()
    dm = make_dm(fx, mean=HALF[0], std=HALF[1])
    dm.setup("fit")
    seen = []

    class Grab(L.Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(batch["image"].clone())

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Grab()])
    trainer.validate(model, datamodule=dm, verbose=False)
    old = DataLoader(FrameDataset(dm.table("val"), eval_transform(16, *HALF)), batch_size=16, collate_fn=collate_frames)
    ref = [b["image"] for b in old]
    assert len(seen) == len(ref) and all(s.dtype == torch.float32 for s in seen)
    for s, r in zip(seen, ref):
        torch.testing.assert_close(s, r, atol=0, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(model(s), model(r))
