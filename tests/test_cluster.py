"""r2m/cluster.py with submitit's real local executor: the post-sweep job runs after the sweep's
jobs, as its own job, and the submitting process does not wait; job folders are read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytest.importorskip("submitit")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from r2m.cluster import (  # noqa: E402
    POST_MANIFEST,
    SWEEP_MANIFEST,
    _executor,
    _post_params,
    read_submission,
    record_submission,
    submit_post_sweep,
)

REPO = Path(__file__).resolve().parents[1]
LOCAL = "hydra_plugins.r2m_launcher.submitit.R2MLocalLauncher"


def _config(sweep: Path, **launcher):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "job": {"name": "train"},
                                       "launcher": {"_target_": LOCAL, "timeout_min": 5, "tasks_per_node": 1,
                                                    "nodes": 1, "submitit_folder": f"{sweep}/.submitit/%j",
                                                    "wait": False, "post_sweep": {}, **launcher}}})


def _sweep_jobs(sweep: Path, calls):
    """Submit real submitit local jobs as a 'sweep' and record them as the launcher does."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(sweep / ".submitit" / "%j"), cluster="local")
    executor.update_parameters(timeout_min=5)
    jobs = [executor.submit(fn, *args) for fn, *args in calls]
    record_submission(sweep, "local", jobs, [[f"job={i}"] for i in range(len(jobs))])
    return jobs


def test_post_sweep_job_runs_after_the_sweep_jobs(tmp_path):
    from r2m.utils import atomic_write_text

    sweep = tmp_path / "sweep"
    marks = [tmp_path / f"train{i}.txt" for i in range(2)]
    jobs = _sweep_jobs(sweep, [(atomic_write_text, m, f"specialist {i}") for i, m in enumerate(marks)])
    manifest = read_submission(sweep)
    assert [j["job_id"] for j in manifest["jobs"]] == [str(j.job_id) for j in jobs]

    merged = tmp_path / "merged.txt"
    post = submit_post_sweep(_config(sweep), atomic_write_text, merged, "merged")
    assert Path(post.result()) == merged and merged.read_text() == "merged"
    # the post-sweep job started only once both sweep jobs had written their results
    for job, mark in zip(jobs, marks):
        assert job.paths.result_pickle.is_file() and mark.is_file()
        assert mark.stat().st_mtime <= merged.stat().st_mtime
    record = json.loads((sweep / ".submitit" / POST_MANIFEST).read_text())
    assert record["job_id"] == str(post.job_id) and record["after"] == [str(j.job_id) for j in jobs]
    assert Path(record["folder"]).parent == sweep / ".submitit" / "post_sweep"
    assert Path(record["result"]).is_file() and Path(record["stdout"]).is_file()


def test_post_sweep_job_fails_when_a_sweep_job_failed(tmp_path):
    from r2m.utils import atomic_write_text

    sweep = tmp_path / "sweep"
    missing = tmp_path / "no_such_file.txt"
    jobs = _sweep_jobs(sweep, [(atomic_write_text, tmp_path / "ok.txt", "ok"), (Path.read_text, missing)])
    merged = tmp_path / "merged.txt"
    post = submit_post_sweep(_config(sweep), atomic_write_text, merged, "merged")
    with pytest.raises(Exception) as err:
        post.result()
    text = str(err.value)
    assert f"sweep job {jobs[1].job_id}" in text and "did not succeed" in text and "no_such_file" in text
    assert not merged.exists()  # nothing merged


def test_slurm_post_job_depends_afterok_on_the_array(tmp_path, monkeypatch):
    """The composed hydra/launcher=slurm config → the post job's sbatch script: one node, one task,
    one GPU, post_sweep settings, and --dependency=afterok on the array id. (No cluster here: an
    `srun` on PATH lets submitit build the SLURM executor; nothing is submitted.)"""
    from hydra import compose, initialize_config_dir

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=8",
                                          "hydra.launcher.gpus_per_node=8", "hydra.launcher.partition=gpu",
                                          f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.r2m_launcher.submitit.R2MSlurmLauncher"
    assert cfg.hydra.launcher.wait is False
    params = _post_params(cfg)
    assert params["tasks_per_node"] == 1 and params["nodes"] == 1 and params["gpus_per_node"] == 1
    assert params["timeout_min"] == cfg.hydra.launcher.post_sweep.timeout_min
    executor = _executor("slurm", tmp_path / "post" / "%j", params, "afterok:4242")
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    assert "#SBATCH --dependency=afterok:4242" in script
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --nodes=1" in script
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --partition=gpu" in script
    assert f"#SBATCH --time={cfg.hydra.launcher.post_sweep.timeout_min}" in script


def test_training_sweep_submits_and_leaves_the_merge_to_its_own_job(tmp_path):
    """`train.py -m` with the non-waiting local submitit launcher and MergeOnMultirunEnd: the command
    returns before the training jobs finished; the merge runs as a separate job afterwards."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["-m", "experiment=tiny", "data.family=fs,fr", f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}",
            "trainer.max_epochs=1", "test_after_fit=false", "logger=none", "hydra/launcher=r2m_submitit_local",
            "hydra.launcher.timeout_min=30", "+hydra.callbacks.merge._target_=r2m.callbacks.hydra.MergeOnMultirunEnd",
            "+hydra.callbacks.merge.methods=[r2m,average]", "+hydra.callbacks.merge.diagnostics=false"]
    log = tmp_path / "submit.log"
    with open(log, "w") as out:  # a file, not a pipe: the jobs must not keep the submitter's output open
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    manifest = read_submission(sweep)
    assert len(manifest["jobs"]) == 2 and (sweep / ".submitit" / SWEEP_MANIFEST).is_file()
    post = json.loads((sweep / ".submitit" / POST_MANIFEST).read_text())
    assert not Path(post["result"]).exists(), "the submitting process waited for the post-sweep job"
    assert "MergeOnMultirunEnd" in text and "runs as submitit job" in text

    deadline = time.monotonic() + 1200
    while not Path(post["result"]).is_file():
        assert time.monotonic() < deadline, "post-sweep job did not finish"
        time.sleep(3)
    from submitit.core.utils import pickle_load

    status, value = pickle_load(post["result"])
    assert status == "success", value
    for job in manifest["jobs"]:
        assert pickle_load(job["result"])[0] == "success"
        assert Path(job["result"]).stat().st_mtime <= Path(post["result"]).stat().st_mtime
    rows = {r["model"] for r in json.loads((sweep / "merge" / "comparison.json").read_text())["rows"]}
    assert rows == {"specialist:fs", "specialist:fr", "r2m", "average"}
    assert "Comparison" in Path(post["stdout"]).read_text()  # the merge's output is in the post job's log
