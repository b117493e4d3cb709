"""The Optuna search (r2m/search.py) on tiny specialists and the generated fixture data: real TPE
studies in SQLite / journal storage, resumed, read back with Optuna; the documented CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from wandb_reader import records as wandb_records

from pipeline_helpers import REPO, make_specialists, run_script
from r2m.search import PipelineRunner, parse_search, run_search


@pytest.fixture(scope="module")
def specialists(tmp_path_factory) -> dict[str, Path]:
    return make_specialists(tmp_path_factory.mktemp("specialists"))


def _compose(root: Path, tmp: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("merge", overrides=[
            "hparams_search=r2m_optuna", f"specialists={root}", f"paths.root_dir={tmp}",
            f"paths.base_dir={root / 'base'}", "data=fixture", "data.num_workers=0", "device=cpu",
            "eval.check_carve=false", f"paths.output_dir={tmp / 'run'}", *overrides,
        ])


def _spec(cfg):
    from omegaconf import OmegaConf

    merge_cfg = OmegaConf.to_container(cfg.merge, resolve=True)
    method = merge_cfg.pop("method")
    merge_cfg.pop("name")
    return parse_search(OmegaConf.to_container(cfg.search, resolve=True), method, merge_cfg)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_parse_search_refuses_bad_spaces():
    fixed = {"alpha": 0.6}
    ok = {"study_name": "s", "dir": "d", "params": {"alpha": {"interval": [0.1, 1.0]}}}
    spec = parse_search(ok, "r2m", fixed)
    assert [p.name for p in spec.params] == ["alpha"] and "alpha" not in spec.fixed
    bad = [
        ({"params": {"alpah": {"interval": [0.1, 1.0]}}}, "alpah"),                    # not a hyperparameter
        ({"params": {"alpha": {"interval": [1.0, 0.1]}}}, "low must be < high"),
        ({"params": {"rank_ratio": {"choice": [0.1, 1.5]}}}, "rank_ratio: value 1.5"),  # method's own check
        ({"params": {"rank_ratio": {"interval": [0.0, 0.3], "log": True}}}, "log range needs low > 0"),
        ({"params": {"center": {"choice": []}}}, "non-empty list"),
        ({"params": {"alpha": {"interval": [0.1, 1.0], "logg": True}}}, "search.params.alpha"),
        ({"n_trials": 0}, "search.n_trials"),
        ({"sampler": {"sed": 1}}, "search.sampler"),
        ({"n_trial": 3}, "unknown key"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_search({**ok, **change}, "r2m", fixed)


def test_search_runs_resumes_and_equals_an_uninterrupted_study(specialists, tmp_path):
    """3 trials in SQLite, resumed to 5 (no trial re-run), equal — params and validation AUCs — to
    an uninterrupted 5-trial study in a journal file; best.json is the storage's best trial."""
    import optuna

    root = specialists["fs"].parent.parent
    cfg = _compose(root, tmp_path, "search.n_trials=3", "search.sampler.n_startup_trials=2")
    spec = _spec(cfg)
    runner = PipelineRunner(cfg, spec.method, spec.study_name)
    first = run_search(spec, runner)
    assert first.ran == [0, 1, 2]
    db = spec.directory / "study.db"
    assert db.is_file()
    warm_svd = runner.cache.stats["svd_computed"]

    spec5 = _spec(_compose(root, tmp_path, "search.n_trials=5", "search.sampler.n_startup_trials=2"))
    resumed = run_search(spec5, runner)
    assert resumed.ran == [3, 4]  # the stored trials are not re-run

    study = optuna.load_study(study_name=spec.study_name, storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert all(0.0 <= t.value <= 1.0 for t in trials)
    # one DecompositionCache serves every trial: rank ratios seen before need no new spectra
    seen = {(t.params["center"], t.params["residual"]) for t in trials[:3]}
    if all((t.params["center"], t.params["residual"]) in seen for t in trials[3:]):
        assert runner.cache.stats["svd_computed"] == warm_svd

    rows = _read_csv(spec.directory / "trials.csv")
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3, 4]
    assert [float(r["val_auc"]) for r in rows] == [t.value for t in trials]
    assert [float(r["param/alpha"]) for r in rows] == [t.params["alpha"] for t in trials]
    for t in trials:
        assert json.loads((Path(t.user_attrs["dir"]) / "summary.json").read_text())["models"][0]["val_auc"] == t.value

    best = json.loads((spec.directory / "best.json").read_text())
    assert best["number"] == study.best_trial.number and best["val_auc"] == max(t.value for t in trials)
    assert best["chosen_on"] == "val_auc" and best["hparams"]["alpha"] == study.best_trial.params["alpha"]
    assert set(best["test"]) >= {"in_distribution", "cross_dataset", "unseen", "overall"}
    assert all(math.isfinite(v["auc"]) for v in best["test"].values())
    assert Path(best["merged_path"]).is_file()
    assert "val_auc_rerun" not in best  # re-merging the best point reproduced its validation AUC

    # the same search uninterrupted, in a journal file: the same points and numbers
    journal = tmp_path / "journal" / "study.log"
    spec_j = _spec(_compose(root, tmp_path, "search.n_trials=5", "search.sampler.n_startup_trials=2",
                            f"search.storage=journal:{journal}", f"search.dir={tmp_path / 'journal'}"))
    straight = run_search(spec_j, runner)
    assert journal.is_file() and straight.ran == [0, 1, 2, 3, 4]
    reloaded = optuna.load_study(study_name=spec.study_name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert [t.params for t in reloaded.get_trials()] == [t.params for t in trials]
    assert [t.value for t in reloaded.get_trials()] == [t.value for t in trials]

    # resuming with a different space is refused, naming what changed
    spec_other = _spec(_compose(root, tmp_path, "search.n_trials=6", "search.sampler.n_startup_trials=2",
                                "search.params.alpha.interval=[0.1,2.0]"))
    with pytest.raises(ValueError, match="different space"):
        run_search(spec_other, runner)


def test_merge_py_hparams_search_cli(specialists, tmp_path):
    """The documented command, twice: a fresh study, then a resume that adds one trial."""
    import optuna

    root = specialists["fs"].parent.parent
    args = ["hparams_search=r2m_optuna", f"specialists={root}", f"paths.root_dir={tmp_path}",
            f"paths.base_dir={root / 'base'}", "data=fixture", "data.num_workers=0", "device=cpu",
            "eval.check_carve=false", "search.sampler.n_startup_trials=1",
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_script("merge.py", [*args, "search.n_trials=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "logs" / "merge" / "search" / "r2m_rank_alpha"
    assert "Best of 2 trials" in proc.stdout
    proc = run_script("merge.py", [*args, "search.n_trials=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = optuna.load_study(study_name="r2m_rank_alpha", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len(_read_csv(out / "trials.csv")) == 3
    assert json.loads((out / "best.json").read_text())["val_auc"] == study.best_value

    # a bad space fails before any trial, naming the key; the study is untouched
    proc = run_script("merge.py", [*args, "search.n_trials=4", "+search.params.alpah={interval:[0.1,1.0]}"],
                      cwd=tmp_path)
    assert proc.returncode != 0 and "search.params.alpah" in proc.stderr
    assert len(optuna.load_study(study_name="r2m_rank_alpha", storage=f"sqlite:///{out / 'study.db'}").trials) == 3


def test_search_logs_one_wandb_run_per_trial(specialists, tmp_path, monkeypatch):
    """logger=wandb (offline): one run per trial + the best point (job_type merge, one group, the
    trial's name, val/auc) and one merge-summary run with the trial table; read back from the files."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = specialists["fs"].parent.parent
    cfg = _compose(root, tmp_path, "search.n_trials=2", "search.sampler.n_startup_trials=1", "logger=wandb",
                   "search.save_best=false")
    spec = _spec(cfg)
    result = run_search(spec, PipelineRunner(cfg, spec.method, spec.study_name))
    runs = {}
    for f in sorted(spec.directory.rglob("run-*.wandb")):
        records = wandb_records(f)
        run = next(r.run for r in records if r.HasField("run"))
        keys = {item.key or "/".join(item.nested_key) for r in records if r.HasField("history")
                for item in r.history.item}
        runs[run.display_name] = (run.job_type, run.run_group, keys)
    trial_names = [t.user_attrs["name"] for t in result.study.trials]
    merge_runs = {n: v for n, v in runs.items() if v[0] == "merge"}
    assert len(merge_runs) == 3 and set(trial_names) < set(merge_runs)   # 2 trials + the best point
    assert len({v[1] for v in runs.values()}) == 1 and next(iter(runs.values()))[1]  # one group for all
    for name, (_, _, keys) in merge_runs.items():
        assert "val/auc" in keys, name
    best_run = next(n for n in merge_runs if "-best " in n)
    assert "test/overall/auc" in merge_runs[best_run][2]        # only the chosen point is tested
    assert not any(k.startswith("test/") for n in trial_names for k in merge_runs[n][2])
    assert [v[0] for v in runs.values()].count("merge-summary") == 1


class _QuadraticRunner:
    """A runner whose score is a known function of alpha: tests the study management alone."""

    def identity(self):
        return {"runner": "quadratic"}

    def run(self, name, hparams, out_dir, *, test, save, context):
        from r2m.search import TrialOutcome

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return TrialOutcome(val_auc=1.0 - (hparams["alpha"] - 0.7) ** 2)


def test_resume_fails_stale_trials_and_errors_are_stored(tmp_path):
    import optuna

    spec = parse_search({"study_name": "q", "dir": str(tmp_path), "n_trials": 3,
                         "sampler": {"n_startup_trials": 2},
                         "params": {"alpha": {"interval": [0.1, 1.2]}}}, "r2m", {})
    run_search(spec, _QuadraticRunner())
    db = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.load_study(study_name="q", storage=db).ask()  # a process that died mid-trial
    spec4 = parse_search({"study_name": "q", "dir": str(tmp_path), "n_trials": 4,
                          "params": {"alpha": {"interval": [0.1, 1.2]}}, "sampler": {"n_startup_trials": 2}},
                         "r2m", {})
    run_search(spec4, _QuadraticRunner())
    states = [t.state.name for t in optuna.load_study(study_name="q", storage=db).get_trials()]
    assert states == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE"]

    class Broken(_QuadraticRunner):
        def run(self, *args, **kwargs):
            raise RuntimeError("evaluation exploded")

    spec5 = parse_search({"study_name": "q", "dir": str(tmp_path), "n_trials": 5,
                          "params": {"alpha": {"interval": [0.1, 1.2]}}, "sampler": {"n_startup_trials": 2}},
                         "r2m", {})
    with pytest.raises(RuntimeError, match="evaluation exploded"):
        run_search(spec5, Broken())
    trials = optuna.load_study(study_name="q", storage=db).get_trials()
    assert trials[-1].state.name == "FAIL"
    rows = _read_csv(tmp_path / "trials.csv")
    assert [r["state"] for r in rows] == [t.state.name for t in trials]  # the table matches the storage
