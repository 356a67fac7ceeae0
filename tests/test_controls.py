"""The controls that make a null readable (issue 22): the oracle adds real labelled images from
outside everything the trial may read, class balanced and counted like a synthetic set; the placebo
is real only with another batch order and nothing else; both are refused where they cannot work,
before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recorder import Recorder

from ganft import pipeline
from ganft.cli import main
from ganft.config import ClassifierConfig, ConfigError, DataConfig, TrialConfig
from ganft.data import (
    budget_positions,
    labelled_budget,
    load_splits,
    oracle_pool,
    oracle_positions,
    unlabelled_positions,
)
from ganft.finetune import Start, train_classifier
from ganft.runtime import derive_seed
from ganft.synth import oracle_set

CPU = torch.device("cpu")
TINY = {"data": {"dataset": "digits", "train_size": 100}, "classifier": {"steps": 20, "eval_every": 10}}


def tiny(**sections: dict) -> TrialConfig:
    return TrialConfig.model_validate({**TINY, **{k: {**TINY.get(k, {}), **v} for k, v in sections.items()}})


@pytest.mark.parametrize("data", [{"validation": "from-budget", "unlabelled_size": 400},
                                  {"validation": "none"}, {"validation": "pool", "val_size": 300}])
def test_oracle_images_are_disjoint_from_budget_validation_unlabelled_and_test(data: dict) -> None:
    splits = load_splits("digits")
    cfg = DataConfig(dataset="digits", train_size=100, **data)
    pos = oracle_positions(splits, cfg, seed=2)
    assert not np.intersect1d(pos, budget_positions(splits, cfg, seed=2)).size  # budget and validation
    if cfg.unlabelled_size:
        assert not np.intersect1d(pos, unlabelled_positions(splits, cfg, seed=2)).size
    taken = len(budget_positions(splits, cfg, 2)) + (cfg.unlabelled_size or 0)
    assert len(pos) == len(splits.train) - taken and pos.max() < len(splits.train)  # all of the rest
    pool = oracle_pool(splits, cfg, seed=2)
    assert torch.equal(pool.x, splits.train.x[torch.as_tensor(pos)])  # training split rows, by position
    test_rows = {bytes(r) for r in splits.test.x.flatten(1).numpy()}  # another tensor: no image in common
    assert not any(bytes(r) in test_rows for r in pool.x.flatten(1).numpy())


def test_the_oracle_set_is_class_balanced_exact_and_follows_its_seed() -> None:
    splits = load_splits("digits")
    pool = oracle_pool(splits, DataConfig(dataset="digits", train_size=100), seed=0)
    a = oracle_set(pool, 83, 10, seed=5, device=CPU)
    counts = torch.bincount(a.y, minlength=10)
    assert len(a) == 83 and counts.max() - counts.min() == 1
    assert torch.equal(a.x, oracle_set(pool, 83, 10, seed=5, device=CPU).x)
    assert not torch.equal(a.x, oracle_set(pool, 83, 10, seed=6, device=CPU).x)
    with pytest.raises(ValueError, match="needs 150 labelled images of class 0 .* has 1[0-9][0-9]"):
        oracle_set(pool, 1500, 10, seed=5, device=CPU)


def test_an_oracle_trial_adds_ratio_times_n_real_labelled_images_and_trains_no_gan() -> None:
    cfg = tiny(synth={"source": "oracle", "ratio": 2})
    m = pipeline.run_trial(cfg, device=CPU)
    n_train = len(labelled_budget(load_splits("digits"), cfg.data, cfg.seed).train)
    assert m["synth/count"] == 2 * n_train and m["clf/train_images"] == 3 * n_train
    assert m["gan/trained_here"] == 0.0


def test_the_placebo_differs_from_real_only_in_its_batch_order_only() -> None:
    splits = load_splits("digits")
    budget = labelled_budget(splits, DataConfig(dataset="digits", train_size=100), 0)
    cfg = ClassifierConfig(steps=20, eval_every=10, width=8, batch_size=16)

    def weights(start: Start) -> dict[str, torch.Tensor]:
        res = train_classifier(cfg, budget.train, budget.val, 10, seed=0, device=CPU, start=start)
        return res.model.state_dict()

    same = weights(Start(order_seed=derive_seed(0, "clf-batches")))  # the baseline's own order, given
    base, other = weights(Start()), weights(Start(order_seed=derive_seed(0, "clf-batches", "placebo")))
    assert all(torch.equal(base[k], same[k]) for k in base)  # the order seed is all it changes...
    assert not all(torch.equal(base[k], other[k]) for k in base)  # ...and it does change the run
    rec = Recorder()
    real, placebo = (pipeline.run_trial(tiny(synth={"source": s}), device=CPU, tracker=rec)
                     for s in ("gan", "placebo"))
    assert placebo["synth/count"] == real["synth/count"] == 0
    assert placebo["clf/train_images"] == real["clf/train_images"] and placebo["test/acc"] != real["test/acc"]


@pytest.mark.parametrize(("synth", "message"), [
    ({"source": "placebo", "ratio": 1}, "synth.source placebo adds no images"),
])
def test_controls_that_cannot_work_are_refused(synth: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(synth=synth)


def test_an_oracle_the_dataset_cannot_give_is_one_line_before_any_work(home: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    root = home / "folder"  # 2 classes x 12 images: N = 10 leaves about 6 of each outside the budget
    from torchvision.io import write_png

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            write_png(torch.full((1, 8, 8), 20 * i, dtype=torch.uint8), str(root / c / f"{i}.png"))
    study = home / "oracle.yaml"
    study.write_text(f"name: oracle\nbase:\n  data: {{dataset: imagefolder, root: {root}, image_size: 8, "
                     f"train_size: 10, test_fraction: 0.2}}\n  synth: {{source: oracle}}\n"
                     f"grid:\n  synth.ratio: [0, 4]\n")
    assert main(["study", "run", str(study), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synth.source oracle at synth.ratio 4 needs 40 labelled images" in err[0]
    assert "class 'a'" in err[0] and "lower the ratio or N" in err[0]
    assert not (home / "mlflow.db").exists() and not (home / "optuna-journal.log").exists()


def test_every_run_logs_whether_it_fitted_its_real_images() -> None:
    from ganft.finetune import loss_windows

    w = loss_windows(torch.arange(20.0, 0.0, -1.0))  # 20, 19, ..., 1: windows of 2 steps
    assert w == {"clf/loss_last_window": 1.5, "clf/loss_prev_window": 3.5}
    assert np.isnan(loss_windows(torch.tensor([1.0]))["clf/loss_prev_window"])  # too short for two
    m = pipeline.run_trial(tiny(synth={"source": "oracle", "ratio": 1}), device=CPU)
    assert m["clf/loss_last_window"] > 0 and m["clf/loss_prev_window"] > 0
    assert 0 <= m["clf/train_acc_last"] <= 1


@pytest.mark.parametrize("where", ["space", "base"])
def test_a_search_that_could_choose_a_control_is_refused_at_load(where: str, tmp_path: Path) -> None:
    from ganft.study.schema import load_study

    space = "    synth.source: {choices: [gan, oracle]}\n" if where == "space" else \
        "    classifier.lr: {choices: [0.001, 0.002]}\n"
    base = "base:\n  synth: {source: placebo}\n" if where == "base" else ""
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nsampler: tpe\n{base}search:\n  n_trials: 4\n  objective: val/acc\n"
                    f"  space:\n{space}")
    with pytest.raises(ConfigError, match="is a control .* a search may not choose it") as err:
        load_study(path)
    assert "\n" not in str(err.value)


def test_the_report_margin_comes_from_the_flag_then_the_study_file_then_1_pp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from argparse import Namespace

    from ganft.cli import _margin

    study = tmp_path / "m.yaml"
    study.write_text("name: m\nreport: {margin: 2.5}\n")
    assert _margin(Namespace(margin=None, study=str(study))) == pytest.approx(0.025)
    assert _margin(Namespace(margin=0.5, study=str(study))) == pytest.approx(0.005)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANFT_HOME", str(tmp_path))
    assert _margin(Namespace(margin=None, study="no-such-study")) == pytest.approx(0.01)
    study.write_text("name: m\nreport: {margin: 0}\n")
    with pytest.raises(ConfigError, match="report.margin"):
        _margin(Namespace(margin=None, study=str(study)))


def test_equal_presentations_grows_the_steps_with_the_added_images() -> None:
    n = len(labelled_budget(load_splits("digits"), DataConfig(dataset="digits", train_size=100), 0).train)
    runs = {r: pipeline.run_trial(tiny(synth={"source": "oracle", "ratio": r},
                                       classifier={"budget": "equal-presentations"}), device=CPU)
            for r in (0, 1, 4)}
    assert [runs[r]["clf/stopped_step"] for r in (0, 1, 4)] == [20, 40, 100]  # 20 * (n + r * n) / n
    assert runs[4]["clf/train_images"] == 5 * n
    with pytest.raises(ValueError, match="equal-presentations .* needs synth.mix union"):
        tiny(classifier={"budget": "equal-presentations"}, synth={"mix": "weighted"})
