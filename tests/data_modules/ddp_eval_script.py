"""Run validation + test of a tiny detector on a DF40 fixture with N CPU processes (Lightning DDP) and
write the numbers (rank 0) as JSON. Used by test_ddp_eval.py; Lightning's DDP launcher re-runs this
script for rank 1.

    python tests/data_modules/ddp_eval_script.py FIXTURE_ROOT OUT.json DEVICES
"""

import json
import os
import sys

import torch


def main() -> None:
    root, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    import lightning.pytorch as pl

    from data_modules.fixtures import fixture_datamodule
    from r2m.models.detector import DeepfakeDetector

    torch.manual_seed(0)
    model = DeepfakeDetector(model_name="tiny-vit", image_size=32, model_cfg={
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}})
    dm = fixture_datamodule(root, family="fs", fixture={"n_videos": 5, "frames_per_video": 3, "image_size": 32},
                            test_splits={"in_distribution": ["FSAll_ff"], "unseen": ["heygen"]},
                            val_fraction=0.5, seed=3, eval_batch_size=4, augment=False)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=True)
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    samplers = [type(trainer.val_dataloaders.sampler).__name__]
    trainer.test(model, datamodule=dm, verbose=False)
    samplers += [type(dl.sampler).__name__ for dl in trainer.test_dataloaders]
    if trainer.global_rank == 0:
        res = model.test_results.to_dict()
        payload = {"val": {k: float(v) for k, v in val.items()}, "per_set": res["per_set"],
                   "n_frames": res["n_frames"], "n_videos": res["n_videos"], "samplers": samplers,
                   "table_frames": {n: len(dm.table(n)) for n in dm.test_set_names},
                   "val_frames": len(dm.table("val")), "world_size": trainer.world_size}
        with open(out, "w", encoding="utf-8") as f:
            json.dump(payload, f)


if __name__ == "__main__":
    main()
