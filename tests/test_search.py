"""Optuna searches (issue 15): spaces checked at load, planted optima found, conditional
parameters, the cached real-only baseline, pruning, resume after kill -9, best and confirm.

Most tests replace ``pipeline.run_trial`` by a scored function of the sampled config, so a search
of 20 trials takes seconds and its optimum is known; the last test runs real (tiny) training end
to end through the report."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from ganft import pipeline
from ganft.cli import main
from ganft.config import ConfigError
from ganft.study.schema import load_study

SEARCH = """\
name: {name}
sampler: {sampler}
pruner: {pruner}
base:
  data: {{dataset: digits, train_size: 60, validation: from-budget}}
  gan: {{steps: 12, width: 8, z_dim: 16, batch_size: 32, d_norm: spectral}}
  synth: {{ratio: 1}}
  classifier: {{steps: 12, width: 8, eval_every: 4, batch_size: 32}}
search:
  n_trials: {n_trials}
  objective: {objective}
  repeats: {repeats}
  space:
{space}
"""

LR_AND_ARCH = """\
    classifier.lr: {low: 1.0e-4, high: 1.0, log: true}
    classifier.arch: {choices: [seed-cnn, bn-cnn]}
"""


def write_search(home: Path, name: str = "s", *, sampler: str = "tpe", pruner: str = "none",
                 n_trials: int = 20, objective: str = "val/acc", repeats: int = 1,
                 space: str = LR_AND_ARCH) -> Path:
    path = home / "studies" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SEARCH.format(name=name, sampler=sampler, pruner=pruner, n_trials=n_trials,
                                  objective=objective, repeats=repeats, space=space.rstrip("\n")))
    return path


def planted_score(cfg: Any) -> float:
    """Budget-validation accuracy with a planted optimum: lr 1e-2, bn-cnn, more synthetic images
    (ratio) better up to 2."""
    score = 0.9 - 0.05 * (math.log10(cfg.classifier.lr) + 2) ** 2
    score -= 0.1 if cfg.classifier.arch != "bn-cnn" else 0.0
    return score + 0.02 * min(cfg.synth.ratio, 2.0) + 0.001 * cfg.seed


class FakeTrials:
    """Stands in for pipeline.run_trial: records every call, tells on_eval a rising curve."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.caches: list[Any] = []

    def __call__(self, cfg: Any, *, device: Any, tracker: Any = None, cache: Any = None,
                 on_eval: Any = None) -> dict[str, float]:
        self.calls.append(cfg)
        self.caches.append(cache)
        score = planted_score(cfg)
        for step in (4, 8, 12):
            if on_eval is not None:
                on_eval(step, score * step / 12)
        return {"clf/best_val_acc": score, "test/acc": score - 0.05, "clf/train_acc_last": 1.0}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTrials:
    trials = FakeTrials()
    monkeypatch.setattr(pipeline, "run_trial", trials)
    return trials


def _study(home: Path, name: str = "s") -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna-journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


# --------------------------------------------------------------------------- the study file


@pytest.mark.parametrize(("space", "objective", "message"), [
    ("    classifier.lrr: {low: 0.001, high: 0.1}\n", "val/acc", "classifier.lrr"),
    ("    classifier.lr: {low: 0.1, high: 0.01}\n", "val/acc", "empty range"),
    ("    classifier.arch: {choices: [bn-cnn, vgg]}\n", "val/acc", "'vgg'"),
    ("    classifier.lr: {low: 0.0, high: 0.1, log: true}\n", "val/acc", "log: true needs low above 0"),
    ("    classifier.steps: {low: 1.5, high: 20}\n", "val/acc", "whole numbers"),
    ("    gan.gp_weight: {low: 1, high: 20, when: {gan.loss: wgan}}\n", "val/acc", "gan.loss"),
    ("    seed: {low: 0, high: 9}\n", "val/acc", "search.repeats"),
    ("    classifier.lr: {low: 0.001, high: 0.1}\n", "test/acc", "val/acc"),
])
def test_a_bad_search_space_is_one_line_and_writes_nothing(
        home: Path, capsys: pytest.CaptureFixture[str], space: str, objective: str, message: str) -> None:
    path = write_search(home, space=space, objective=objective)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (home / "optuna-journal.log").exists() and not (home / "mlflow.db").exists()


def test_no_test_metric_can_be_an_objective(home: Path) -> None:
    for objective in ("test/acc", "test/acc_last", "test/macro_f1"):
        with pytest.raises(ConfigError, match=r"search\.objective.*val/acc.*paired-gain"):
            load_study(write_search(home, objective=objective))


def test_a_study_is_a_grid_or_a_search(home: Path) -> None:
    path = write_search(home)
    path.write_text(path.read_text() + "grid:\n  seed: [0, 1]\n")
    with pytest.raises(ConfigError, match="a grid or a search, not both"):
        load_study(path)


# --------------------------------------------------------------------------- searching


def test_tpe_finds_the_planted_optimum_and_best_prints_a_base_block(
        home: Path, fake: FakeTrials, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_search(home, n_trials=30)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    study = _study(home)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 30
    assert study.best_params["classifier.arch"] == "bn-cnn"
    assert 10 ** -2.5 < study.best_params["classifier.lr"] < 10 ** -1.5
    capsys.readouterr()
    assert main(["study", "best", "s"]) == 0
    out = capsys.readouterr().out
    assert "the test split did not choose" in out.splitlines()[0]
    base = yaml.safe_load(out)["base"]
    assert base["classifier"]["arch"] == "bn-cnn"
    assert base["classifier"]["lr"] == study.best_params["classifier.lr"]
    reuse = home / "studies" / "from_best.yaml"  # a ready-to-use base: block
    reuse.write_text(yaml.safe_dump({"name": "from_best", "base": base, "grid": {"seed": [0, 1]}}))
    assert load_study(reuse).base.classifier.lr == study.best_params["classifier.lr"]
    assert main(["study", "status", "s"]) == 0
    assert "30 of 30 trials done" in capsys.readouterr().out


def test_the_confirmation_ganft_made_can_be_inspected_by_name(
        home: Path, fake: FakeTrials, capsys: pytest.CaptureFixture[str]) -> None:
    """``s-confirm`` has no study file (ganft built it from the search's best trial): status reads
    its config from the storage instead of saying there is no study file."""
    path = write_search(home, n_trials=4, space="    synth.ratio: {choices: [1, 2]}\n")
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    assert main(["study", "confirm", "s", "--seeds", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["study", "status", "s-confirm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study s-confirm: 4 complete, 0 running, 0 queued, 0 failed, 0 missing of 4"), out
    assert main(["study", "status", "t-confirm"]) == 2  # none stored: said as before
    assert "no study file for 't-confirm'" in capsys.readouterr().err


def test_a_search_can_be_lengthened_but_not_changed(home: Path, fake: FakeTrials,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "run", str(write_search(home, sampler="random", n_trials=3)), "--no-progress"]) == 0
    assert main(["study", "run", str(write_search(home, sampler="random", n_trials=6)), "--no-progress"]) == 0
    trials = sorted(_study(home).get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert len(trials) == 6
    # the second run samples new points, not the first run's again
    first, second = ({t.params["classifier.lr"] for t in part} for part in (trials[:3], trials[3:]))
    assert first.isdisjoint(second)
    changed = write_search(home, sampler="random", n_trials=6, repeats=2)
    capsys.readouterr()
    assert main(["study", "run", str(changed), "--no-progress"]) == 2
    assert "different base config" in capsys.readouterr().err


def test_a_conditional_parameter_is_sampled_only_for_its_variant(home: Path, fake: FakeTrials) -> None:
    space = """\
    gan.loss: {choices: [ns, wgan-gp]}
    gan.gp_weight: {low: 1.0, high: 20.0, when: {gan.loss: wgan-gp}}
    classifier.lr: {low: 1.0e-4, high: 1.0, log: true}
"""
    path = write_search(home, sampler="random", n_trials=12, space=space)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    trials = _study(home).get_trials(states=(TrialState.COMPLETE,))
    assert {t.params["gan.loss"] for t in trials} == {"ns", "wgan-gp"}
    for t in trials:
        assert ("gan.gp_weight" in t.params) == (t.params["gan.loss"] == "wgan-gp"), t.params
    weights = {round(c.gan.gp_weight, 6) for c in fake.calls if c.gan.loss == "ns"}
    assert weights == {10.0}  # an ns trial keeps the base value: nothing sampled for it


RATIOS = """\
    synth.ratio: {choices: [0.5, 1, 2, 4]}
    gan.lr_g: {low: 1.0e-4, high: 1.0e-3, log: true}
"""


def test_the_real_only_baseline_is_trained_once_per_n_and_seed(home: Path, fake: FakeTrials) -> None:
    path = write_search(home, sampler="random", n_trials=5, objective="paired-gain", repeats=2, space=RATIOS)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    baselines = [c for c in fake.calls if c.synth.ratio == 0]
    assert sorted(c.seed for c in baselines) == [0, 1]  # one per seed of the repeats, never again
    # every run, the baselines too, shares the GAN cache (a discriminator-initialised baseline
    # trains the GAN its trial then reuses)
    assert all(cache is not None for cache in fake.caches)
    trials = sorted(_study(home).get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert [trials[0].user_attrs[f"ganft.baseline_hit_{r}"] for r in (0, 1)] == [False, False]
    assert all(t.user_attrs[f"ganft.baseline_hit_{r}"] for t in trials[1:] for r in (0, 1))
    for t in trials:  # the mean over the repeats of the gain over real only, on budget validation
        gains = t.user_attrs["ganft.repeat_values"]
        assert gains == pytest.approx([0.02 * min(t.params["synth.ratio"], 2.0)] * 2)
        assert t.value == pytest.approx(sum(gains) / 2)
    fake.calls.clear()
    path2 = write_search(home, name="s2", sampler="random", n_trials=2, objective="paired-gain", repeats=2,
                         space=RATIOS)
    assert main(["study", "run", str(path2), "--no-progress"]) == 0
    assert not [c for c in fake.calls if c.synth.ratio == 0]  # another search of the same (N, seed) too


def test_pruned_trials_are_pruned_in_optuna_and_killed_and_tagged_in_mlflow(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def curve(cfg: Any, *, device: Any, tracker: Any = None, cache: Any = None, on_eval: Any = None) -> dict:
        calls.append(cfg)
        score = planted_score(cfg)
        for step in (4, 8, 12):
            on_eval(step, score)
        return {"clf/best_val_acc": score, "test/acc": score, "clf/train_acc_last": 1.0}

    monkeypatch.setattr(pipeline, "run_trial", curve)
    path = write_search(home, sampler="random", pruner="median", n_trials=16)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    study = _study(home)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert pruned and len(pruned) + len(complete) == 16  # pruned trials count toward n_trials
    assert not study.get_trials(states=(TrialState.FAIL,))  # and never as failures
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s").experiment_id
    for t in pruned:
        run = client.get_run(t.user_attrs["ganft.mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["ganft.pruned"] == "true"
    for t in complete:
        run = client.get_run(t.user_attrs["ganft.mlflow_run_id"])
        assert run.info.status == "FINISHED" and "ganft.pruned" not in run.data.tags
    runs = client.search_runs([exp], "tags.`ganft.role` = 'trial'")
    assert len(runs) == 16


KILLABLE = """\
import pathlib, sys, time
from ganft import pipeline

def slow(cfg, *, device, tracker=None, cache=None, on_eval=None):
    pathlib.Path(sys.argv[2], f"started-{time.time_ns()}").touch()
    time.sleep(float(sys.argv[3]))
    return {"clf/best_val_acc": cfg.classifier.lr, "test/acc": 0.5, "clf/train_acc_last": 1.0}

pipeline.run_trial = slow
from ganft.cli import main
sys.exit(main(["study", "run", sys.argv[1], "--no-progress"]))
"""


@pytest.mark.slow  # two interpreters that import the training stack
def test_a_search_killed_with_sigkill_resumes_to_exactly_n_trials(home: Path, tmp_path: Path) -> None:
    path = write_search(home, sampler="random", n_trials=4)
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "GANFT_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(marks), "3"], env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:  # inside the second trial
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = _study(home)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1
    again = subprocess.run([sys.executable, str(script), str(path), str(marks), "0"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    study = _study(home)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4  # exactly n_trials
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1  # the killed one, reaped
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s").experiment_id
    runs = client.search_runs([exp], "tags.`ganft.role` = 'trial'")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4 + ["KILLED"]
    rerun = subprocess.run([sys.executable, str(script), str(path), str(marks), "0"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "nothing to run" in rerun.stdout
    assert len(_study(home).trials) == 5  # no trial added once n_trials are done


@pytest.mark.slow  # real (tiny) training: a search, its report, the confirmation
def test_a_tiny_real_search_reports_and_confirms_on_fresh_seeds(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = """\
    classifier.lr: {low: 1.0e-3, high: 1.0e-2, log: true}
    synth.ratio: {choices: [0.5, 1, 2]}
"""
    path = write_search(home, sampler="tpe", pruner="median", n_trials=4, objective="paired-gain",
                        repeats=2, space=space)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    assert main(["study", "confirm", "s", "--seeds", "2", "--no-progress"]) == 0
    assert main(["report", "s"]) == 0
    md = (home / "reports" / "s" / "index.md").read_text()
    assert "Search: 4 trials" in md and "never the test split" in md
    assert "Confirmation on 2 fresh seeds, tested once" in md
    trials = (home / "reports" / "s" / "trials.csv").read_text().splitlines()
    assert len(trials) == 5  # header + 4 trials
    confirm = (home / "reports" / "s" / "confirm.csv").read_text()
    assert confirm.count("\n") == 5  # 2 seeds x (best, real only) + header
    assert "s-confirm" in capsys.readouterr().out


def test_the_search_report_names_the_earliest_best_and_repeated_points(tmp_path: Path) -> None:
    from ganft.report.search import write_search_report
    from ganft.report.text import ReportMeta

    trials = pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"],
                           "value": [0.05, 0.10, math.nan, 0.10], "repeat_sd": [0.0, 0.01, math.nan, 0.0],
                           "repeats": [2, 2, 1, 2], "params": ["a=1", "a=2", "a=1", "a=2"]})
    results = pd.DataFrame({"time/trial_seconds": [1.0, 2.0]})
    write_search_report(results, trials, tmp_path, ReportMeta(study="s"), objective="val/acc", history=None,
                        importances=None, confirm=None)
    page = (tmp_path / "index.md").read_text()
    assert "Best: trial 1, +10.0 pp" in page  # trial 3 ties it; the earlier one, as `study best`
    assert "2 trial(s) repeat an earlier trial's point: 2 (= 0), 3 (= 1)." in page


def test_a_search_whose_objective_does_not_repeat_names_no_winner(tmp_path: Path) -> None:
    from ganft.report.search import retest, write_search_report
    from ganft.report.text import ReportMeta

    rng = np.random.default_rng(0)
    quality = np.linspace(0, 0.1, 12)  # a real effect the objective sees twice...
    repeatable = [[q + rng.normal(0, 0.005), q + rng.normal(0, 0.005)] for q in quality]
    noise = [[rng.normal(0, 0.05), rng.normal(0, 0.05)] for _ in quality]  # ...or only noise
    for values, named in ((repeatable, True), (noise, False)):
        trials = pd.DataFrame({"number": range(12), "state": "COMPLETE", "repeats": 2,
                               "value": [np.mean(v) for v in values],
                               "repeat_sd": [np.std(v, ddof=1) for v in values],
                               "repeat_values": values, "params": [f"a={i}" for i in range(12)]})
        rho, p, n = retest(trials)
        assert n == 12 and (rho > 0.9 and p < 0.001 if named else rho < 0.5)
        write_search_report(pd.DataFrame({"time/trial_seconds": [1.0]}), trials, tmp_path,
                            ReportMeta(study="s"), objective="val/acc", history=None, importances=None,
                            confirm=None)
        page = (tmp_path / "index.md").read_text()
        assert ("Best: trial" in page) is named
        assert ("names no winner" in page) is not named and "test-retest Spearman rho" in page
