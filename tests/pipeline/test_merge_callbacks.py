"""The Lightning merge callback end to end: the built-in benchmark command at a tiny size (several
tasks in one process). The Hydra callback: tests/pipeline/test_merge_workflows.py."""

from __future__ import annotations

import json
import math

from pipeline_helpers import run_script

SPLITS = ("in_distribution", "cross_dataset", "unseen", "overall")


def _comparison(path):
    return {row["model"]: row for row in json.loads(path.read_text())["rows"]}


def test_builtin_benchmark_command_smoke(tmp_path):
    """`python train.py` (the README's main command) at a tiny size: every specialist, the joint
    model, every merge method and R²M variant × every split, with finite AUC and EER."""
    run_dir = tmp_path / "run"
    proc = run_script("train.py", [
        f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", "extras.print_config=false",
        "data.n_train=64", "data.n_test=32", "data.n_pretrain=32", "data.batch_size=16",
        "trainer.max_epochs=1", "pretrain.epochs=1",
    ], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _comparison(run_dir / "merge" / "comparison.json")
    expected = {"specialist:blend", "specialist:warp", "specialist:upsample", "joint", "r2m", "r2m[center]",
                "r2m[minus_core]", "r2m[center,minus_core]", "average", "task_arithmetic", "ties", "dare",
                "cart", "tsv", "iso_c", "iso_cts"}
    assert set(rows) == expected
    for name, row in rows.items():
        for split in SPLITS:
            for metric in ("auc", "eer"):
                value = row[f"{split}/{metric}"]
                assert value is not None and math.isfinite(value) and 0.0 <= value <= 1.0, (name, split, metric)
    assert (run_dir / "merge" / "merged" / "r2m" / "merged.safetensors").is_file()
    assert list((run_dir / "merge").glob("roc_*.png"))
    assert "Comparison" in proc.stdout
