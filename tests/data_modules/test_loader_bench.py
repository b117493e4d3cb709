"""The e2e training benchmark runs the real train.py composition (smoke run on the tiny model)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks.train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("benchmarks.train_throughput", module)
    spec.loader.exec_module(module)
    return module


def test_compose_is_the_training_config(bench):
    args = bench.parse_args(["e2e", "--model", "vit_l14", "--device", "cpu"])
    cfg = bench.compose_cfg(args, None, None)
    assert cfg.model.model_name == "ViT-L-14-quickgelu" and cfg.model.optimizer._target_ == "torch.optim.Adam"
    assert cfg.data.batch_size == 32 and cfg.data._target_ == "data_modules.df40.DF40DataModule"
    assert cfg.model.pretrained is None and cfg.trainer.precision == "32-true"
    gpu = bench.compose_cfg(bench.parse_args(["e2e", "--model", "vit_b16", "--device", "cuda"]), None, None)
    assert gpu.trainer.precision == "bf16-mixed" and gpu.model.model_name == "ViT-B-16-quickgelu"


def test_e2e_runs_train_task_and_reports_both_rows(bench, capsys):
    out = bench.bench_e2e(bench.parse_args(["e2e", "--model", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1",
                                            "--workers", "0", "--source-size", "48"]))
    text = "\n".join(out)
    assert "train.py fit (e2e)" in text and "raw step" in text and "e2e / raw" in text
    assert "tiny-vit" in text and "DF40DataModule" in text
