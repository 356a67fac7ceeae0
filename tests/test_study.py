"""A tiny end-to-end study on digits into temporary stores: Optuna trials, MLflow runs, the GAN
cache, rerun, interruption and a failing trial."""

from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from ganft import pipeline
from ganft.cli import main
from ganft.study.objective import FAULT_ENV
from ganft.study.storage import open_storage
from ganft.study.stores import Stores

POINTS = {f"n{n}-r{r}-s0" for n in (30, 60) for r in (0.0, 1.0, 2.0)}


def trials(home: Path, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    st = optuna.load_study(study_name=name, storage=open_storage(str(home / "optuna-journal.log")))
    return st.get_trials(deepcopy=False)


def runs(home: Path, name: str = "tiny") -> pd.DataFrame:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    rows = []
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        rows.append({"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                     "role": r.data.tags.get("ganft.role"), "parent": r.data.tags.get("mlflow.parentRunId"),
                     "cache": r.data.tags.get("gan.cache"), "params": r.data.params,
                     "metrics": r.data.metrics, "failure": r.data.tags.get("ganft.failure")})
    return pd.DataFrame(rows)


def complete_points(home: Path, name: str = "tiny") -> Counter:
    return Counter(t.user_attrs["ganft.grid_point"] for t in trials(home, name)
                   if t.state == optuna.trial.TrialState.COMPLETE)


@pytest.mark.slow  # a whole 6-point study with GAN training: over 10 s on 2 cores
def test_study_runs_every_point_once_logs_to_mlflow_and_reuses_gans(
        tiny_study: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    assert complete_points(home) == Counter({p: 1 for p in POINTS})
    df = runs(home)
    parents, children = df[df.role == "parent"], df[df.role == "trial"]
    assert len(parents) == 1 and parents.status.iloc[0] == "FINISHED"
    assert set(children.name) == POINTS and len(children) == 6
    assert (children.status == "FINISHED").all() and (children.parent == parents.id.iloc[0]).all()
    row = children[children.name == "n60-r2.0-s0"].iloc[0]
    assert row.params["data.train_size"] == "60" and row.params["synth.ratio"] == "2.0"
    # ratio 2 x the 60 training images (data.validation none, the default: all N train)
    assert row.params["gan.steps"] == "12" and row.metrics["synth/count"] == 120
    assert row.params["data.validation"] == "none" and "clf/val_acc" not in row.metrics
    assert 0 <= row.metrics["test/acc"] <= 1 and "test/macro_f1" in row.metrics
    assert "gan/loss_d" in row.metrics and "clf/train_acc_last" in row.metrics
    # one GAN per (N, seed): the ratio-1 and ratio-2 trials of each N share it
    gan_runs = children[children.cache.notna()]
    assert sorted(gan_runs.cache) == ["hit", "hit", "miss", "miss"]
    assert children[children.name.str.contains("r0.0")].cache.isna().all()  # real only: no GAN
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(row.id)} >= {"confusion_matrix.png", "gan_samples.png"}
    assert len(list((home / ".ganft-cache" / "gan").glob("*.pt"))) == 2
    capsys.readouterr()

    # a second run trains nothing and says the study is complete
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    assert "study tiny is complete: 6 of 6 grid points done" in capsys.readouterr().out
    assert len(trials(home)) == 6 and len(runs(home)) == 7

    # the report reads the runs back
    assert main(["report", str(tiny_study)]) == 0
    out = home / "reports" / "tiny"
    assert {"index.html", "index.md", "results.csv", "cells.csv", "accuracy_vs_ratio.png"} <= {
        p.name for p in out.iterdir()}
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and set(results["grid_point"]) == POINTS
    assert len(pd.read_csv(out / "cells.csv")) == 4  # 2 sizes x 2 non-zero ratios


@pytest.mark.slow  # over 6 s on an idle 2-core machine (issue 25: the fast selection stays under 3 min)
def test_interrupted_study_resumes_without_duplicates(
        tiny_study: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run_trial = pipeline.run_trial
    calls = {"n": 0}

    def interrupt_third(cfg, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run_trial(cfg, **kw)

    monkeypatch.setattr(pipeline, "run_trial", interrupt_third)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 130
    assert sum(complete_points(home).values()) == 2
    df = runs(home)
    assert sorted(df[df.role == "trial"].status) == ["FINISHED", "FINISHED", "KILLED"]
    assert (df[df.role == "parent"].status == "KILLED").all()

    monkeypatch.setattr(pipeline, "run_trial", real_run_trial)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    assert complete_points(home) == Counter({p: 1 for p in POINTS})
    df = runs(home)
    finished = df[(df.role == "trial") & (df.status == "FINISHED")]
    assert sorted(finished.name) == sorted(POINTS)
    assert not (df.status == "RUNNING").any()


@pytest.mark.slow  # 4-10 s on a 2-core machine, like its neighbour
def test_ctrl_c_inside_the_creation_of_a_trials_run_leaves_no_run_running(
        tiny_study: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CI saw it (seed 295837 of the random-kill test): Ctrl-C lands after MLflow wrote the run and
    # before its id came back, so the trial never learns which run is its own
    from ganft.study import mlflow_store

    real_start = mlflow_store.MlflowStore.start_run
    calls = {"n": 0}

    def start_then_interrupted(self, name, tags, parent_id=None):
        run_id = real_start(self, name, tags, parent_id=parent_id)
        if tags.get("ganft.role") == "trial":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return run_id

    monkeypatch.setattr(mlflow_store.MlflowStore, "start_run", start_then_interrupted)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 130
    df = runs(home)
    assert not (df.status == "RUNNING").any(), df[["name", "role", "status"]]
    assert sorted(df[df.role == "trial"].status) == ["FINISHED", "KILLED"]
    assert "interrupted" in df[(df.status == "KILLED") & (df.role == "trial")].failure.iloc[0]

    monkeypatch.setattr(mlflow_store.MlflowStore, "start_run", real_start)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    assert complete_points(home) == Counter({p: 1 for p in POINTS})


@pytest.mark.slow  # a whole 6-point study: over 10 s on 2 cores
def test_a_worker_killed_between_taking_a_trial_and_naming_itself_leaves_no_point_undone(
        tiny_study: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # CI saw it (seed 919071 of the random-kill test): SIGKILL landed after a worker had popped a
    # queued point (its trial RUNNING) and before it had written its name on it; the next run took
    # that point for one running elsewhere, ran the rest and ended 0 with the point never run
    from ganft.study.run import preflight
    from ganft.study.schema import load_study

    cfg = load_study(tiny_study)
    study, _, queued = preflight(cfg, Stores.resolve(), 1)
    assert queued == 6
    taken = study.ask()  # what the killed worker did, and no more
    assert taken.user_attrs["ganft.grid_point"] in POINTS and "ganft.owner" not in taken.user_attrs

    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    assert "6 of 6 grid points complete, 0 failed" in capsys.readouterr().out
    assert complete_points(home) == Counter({p: 1 for p in POINTS})
    reaped = next(t for t in trials(home) if t.number == taken.number)
    assert reaped.state == optuna.trial.TrialState.FAIL and "ganft.fail_reason" not in reaped.user_attrs


def test_failing_point_is_recorded_others_complete_and_retries_are_bounded(
        tiny_study: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the test hook makes this point's losses NaN; the training's own guard fails the trial
    monkeypatch.setenv(FAULT_ENV, "n60-r1.0-s0")
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "5 of 6 grid points complete, 1 failed" in out and "NonFiniteLossError: non-finite" in out
    failed = [t for t in trials(home) if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["ganft.fail_reason"].startswith(
        "NonFiniteLossError: non-finite")
    df = runs(home)
    bad = df[(df.role == "trial") & (df.status == "FAILED")]
    assert list(bad.name) == ["n60-r1.0-s0"] and "NonFiniteLossError: non-finite" in bad.failure.iloc[0]

    assert main(["study", "status", str(tiny_study)]) == 1
    status = capsys.readouterr().out
    assert "5 complete" in status and "1 failed" in status and "failed    n60-r1.0-s0" in status

    # rerun: the failed point is retried once (max_retries: 1), then left alone
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 1
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 1
    attempts = [t for t in trials(home) if t.user_attrs.get("ganft.grid_point") == "n60-r1.0-s0"]
    assert len(attempts) == 2
    assert complete_points(home) == Counter({p: 1 for p in POINTS - {"n60-r1.0-s0"}})


def test_changed_base_config_is_refused(tiny_study: Path, home: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    text = tiny_study.read_text().replace("data.train_size: [30, 60]", "data.train_size: [30]")
    tiny_study.write_text(text)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    tiny_study.write_text(text.replace("steps: 12, width: 8", "steps: 13, width: 8"))
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 2
    assert "different base config" in capsys.readouterr().err


@pytest.mark.parametrize("older", ["a field added since", "a value changed"])
def test_a_study_stored_by_an_earlier_ganft_resumes_unless_its_config_differs(
        tiny_study: Path, home: Path, capsys: pytest.CaptureFixture[str], older: str) -> None:
    """A store written before a config field existed (its stored base lacks the field, its hash
    is that of the shorter base) resumes when the new field is at its default; a stored base that
    differs in a value is still refused."""
    from ganft.study.grid import config_hash
    from ganft.study.schema import load_study

    text = tiny_study.read_text().replace("data.train_size: [30, 60]", "data.train_size: [30]")
    tiny_study.write_text(text)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    cfg = load_study(tiny_study)
    base = cfg.base.model_dump(mode="json")
    assert config_hash(cfg, base) == config_hash(cfg)  # the stored dump hashes as the config does
    del base["data"]["unlabelled_size"]  # as a ganft without unlabelled images stored it
    if older == "a value changed":
        base["gan"]["steps"] += 1
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(home / "optuna-journal.log")))
    study.set_user_attr("ganft.base", base)
    study.set_user_attr("ganft.base_hash", config_hash(cfg, base))
    tiny_study.write_text(text.replace("seed: [0]", "seed: [0, 1]"))  # more points to run
    code = main(["study", "run", str(tiny_study), "--no-progress"])
    if older == "a value changed":
        assert code == 2 and "different base config" in capsys.readouterr().err
    else:
        assert code == 0 and "different base config" not in capsys.readouterr().err
        assert len(complete_points(home)) == 6


def test_stores_default_to_the_project_root(home: Path) -> None:
    stores = Stores.resolve()
    assert stores.storage == str(home / "optuna-journal.log")
    assert stores.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"


def test_importances_survive_a_grid_whose_range_changed_between_runs(tmp_path: Path) -> None:
    """A grid sized down (or extended) between runs stores two ranges for one parameter; the
    report's importances must still come out (Optuna's own refuse mixed distributions)."""
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    from ganft.study.status import optuna_frames

    storage = str(tmp_path / "j.log")
    study = optuna.create_study(study_name="g", storage=open_storage(storage), direction="maximize")
    for i, (n, r) in enumerate([(100, 0), (100, 1), (500, 0), (500, 1), (1000, 0), (1000, 1)]):
        high = 5000 if i < 3 else 1000  # the first run's grid went up to 5000
        study.add_trial(create_trial(params={"data.train_size": n, "synth.ratio": r},
                                     distributions={"data.train_size": IntDistribution(100, high),
                                                    "synth.ratio": IntDistribution(0, 1)},
                                     value=0.5 + n / 4000 + 0.01 * r))
    history, importances = optuna_frames("g", storage)
    assert len(history) == 6
    assert set(importances["param"]) == {"data.train_size", "synth.ratio"}
    assert importances.set_index("param")["importance"]["data.train_size"] > 0.5


SUB_GRIDS = """\
name: arms
base:
  data: {dataset: digits, train_size: 60}
  gan: {steps: 12, width: 8, z_dim: 16, batch_size: 32}
  classifier: {steps: 12, width: 8, eval_every: 6, batch_size: 32}
grid:
  - {synth.ratio: [0], seed: [0, 1]}
  - {synth.ratio: [1, 2], gan.loss: [ns, hinge], seed: [0, 1]}
  - {synth.ratio: [1], data.unlabelled_size: [50], synth.source: [self-training], seed: [0, 1]}
  - {synth.ratio: [0], seed: [1]}
"""


def test_a_list_of_grids_runs_the_union_of_their_points_once(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = home / "arms.yaml"
    path.write_text(SUB_GRIDS)
    seen = []

    def fake_trial(cfg, **kw):
        seen.append((cfg.synth.ratio, cfg.gan.loss, cfg.synth.source, cfg.data.unlabelled_size, cfg.seed))
        return {"test/acc": 0.5, "clf/best_val_acc": 0.5, "clf/train_acc_last": 1.0}

    monkeypatch.setattr(pipeline, "run_trial", fake_trial)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    # 2 real only + 8 GAN + 2 self-training; the last sub-grid repeats a real-only point
    assert len(seen) == len(set(seen)) == 12
    assert {s for s in seen if s[2] == "self-training"} == {(1.0, "ns", "self-training", 50, 0),
                                                             (1.0, "ns", "self-training", 50, 1)}
    assert {s for s in seen if s[0] == 0} == {(0.0, "ns", "gan", 0, 0), (0.0, "ns", "gan", 0, 1)}
    assert sum(complete_points(home, "arms").values()) == 12
    capsys.readouterr()
    assert main(["study", "run", str(path), "--no-progress"]) == 0  # nothing left to run
    assert len(seen) == 12 and "12 of 12 grid points done" in capsys.readouterr().out



@pytest.mark.parametrize(("grid", "message"), [
    ("grid: []\n", "an empty list of grids"),
    ("grid:\n  - {}\n", "grid: item 0: an empty grid"),
    ("grid:\n  - {seed: [0]}\n  - {synth.ratioo: [1]}\n", "grid: item 1: unknown config key 'synth.ratioo'"),
    ("grid:\n  - {synth.source: [self-training], synth.ratio: [1]}\n",
     "grid point synth.source=self-training, synth.ratio=1: synth.source self-training needs unlabelled"),
])
def test_a_bad_list_of_grids_is_one_line_and_writes_nothing(home: Path, grid: str, message: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = home / "bad.yaml"
    path.write_text("name: bad\nbase:\n  data: {dataset: digits}\n" + grid)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (home / "optuna-journal.log").exists() and not (home / "mlflow.db").exists()
