"""Unlabelled images and the GANs that learn beyond the budget (issue 16): the labels of unlabelled
images are never read, they are disjoint from everything labelled, a transfer GAN reuses its cached
source and fine-tunes exactly its steps, and self-training spends the same classifier steps."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fake_fashion
from recorder import Recorder

from ganft import data as data_mod
from ganft import pipeline
from ganft.config import ConfigError, DataConfig, TrialConfig
from ganft.data import budget_positions, labelled_budget, load_splits, unlabelled_images, unlabelled_positions
from ganft.gan_train import build_discriminator, train_gan
from ganft.images import Images
from ganft.runtime import seeded
from ganft.store import CheckpointCache
from ganft.study.schema import load_study

CPU = torch.device("cpu")
SUBSET_INDICES = data_mod.subset_indices
# from-budget: the validation split's selection is part of what poisoned labels must not reach
TINY = {"data": {"dataset": "digits", "train_size": 100, "unlabelled_size": 400, "validation": "from-budget"},
        "gan": {"steps": 30},
        "synth": {"ratio": 1}, "classifier": {"steps": 30, "eval_every": 10}}


def tiny(**sections: dict) -> TrialConfig:
    merged = {k: {**TINY.get(k, {}), **v} for k, v in sections.items()}
    return TrialConfig.model_validate({**TINY, **merged})


# --------------------------------------------------------------------------- which images


@pytest.mark.parametrize("data", [{"validation": "from-budget"}, {"validation": "pool", "val_size": 300}])
def test_unlabelled_images_are_disjoint_from_budget_validation_and_test(data: dict) -> None:
    splits = load_splits("digits")
    cfg = DataConfig(dataset="digits", train_size=100, unlabelled_size=500, **data)
    u = unlabelled_positions(splits, cfg, seed=3)
    labelled = budget_positions(splits, cfg, seed=3)
    assert len(u) == 500 and len(np.unique(u)) == 500
    assert not np.intersect1d(u, labelled).size
    assert len(labelled) == 100 + data.get("val_size", 0)
    # the budget positions are exactly the images labelled_budget hands out (pixels compared)
    budget = labelled_budget(splits, cfg, seed=3)
    given = torch.cat([budget.train.x] + ([budget.val.x] if budget.val is not None else []))
    rows = lambda x: sorted(map(bytes, x.flatten(1).numpy()))  # noqa: E731
    assert rows(given) == rows(splits.train.x[labelled])
    # the test split is another tensor: no unlabelled image equals a test image by position or content
    x = unlabelled_images(splits, cfg, seed=3)
    assert torch.equal(x, splits.train.x[torch.as_tensor(u)])
    test_rows = {bytes(r) for r in splits.test.x.flatten(1).numpy()}
    assert not any(bytes(r) in test_rows for r in x.flatten(1).numpy())


def test_unlabelled_choice_follows_u_and_seed_and_all_takes_the_rest() -> None:
    splits = load_splits("digits")
    cfg = DataConfig(dataset="digits", train_size=100, unlabelled_size=300)
    a, b = unlabelled_positions(splits, cfg, 0), unlabelled_positions(splits, cfg, 0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, unlabelled_positions(splits, cfg, 1))
    rest = unlabelled_positions(splits, cfg.model_copy(update={"unlabelled_size": "all"}), 0)
    assert len(rest) == len(splits.train) - 100
    assert unlabelled_images(splits, cfg.model_copy(update={"unlabelled_size": 0}), 0).shape[0] == 0
    with pytest.raises(ConfigError, match="data.unlabelled_size 5000 is more than the 1337 images"):
        unlabelled_positions(splits, cfg.model_copy(update={"unlabelled_size": 5000}), 0)


# --------------------------------------------------------------------------- labels never read


def run_poisoned(cfg: TrialConfig, monkeypatch: pytest.MonkeyPatch, poison: str) -> dict[str, float]:
    """run_trial on digits whose unlabelled (or, as the control, budget) images carry wrong labels.

    Which images are labelled is the simulation's choice, made from the true labels (a stratified
    budget); it is held fixed here so that only a label that leaked into training could change the
    result."""
    clean = load_splits("digits")
    true_y = clean.train.y.clone()
    monkeypatch.setattr(data_mod, "subset_indices", lambda labels, n, seed: SUBSET_INDICES(true_y, n, seed))
    pos = {"unlabelled": unlabelled_positions(clean, cfg.data, cfg.seed),
           "budget": budget_positions(clean, cfg.data, cfg.seed), "none": np.array([], dtype=int)}[poison]
    y = clean.train.y.clone()
    y[torch.as_tensor(pos, dtype=torch.long)] = (y[torch.as_tensor(pos, dtype=torch.long)] + 1 +
                                                 torch.arange(len(pos)) % 8) % 10  # every one wrong
    splits = replace(clean, train=Images(clean.train.x, y))
    monkeypatch.setattr(pipeline, "splits_for", lambda _cfg: splits)
    with seeded(0):
        return pipeline.run_trial(cfg, device=CPU)


@pytest.mark.slow  # three trials per arm: about 10-20 s each on 2 cores
@pytest.mark.parametrize("arm", ["self-training", "self-training-2-rounds", "budget+unlabelled", "transfer",
                                 "fixmatch", "ssgan"])
def test_poisoned_unlabelled_labels_change_nothing(arm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fixmatch = {"data": {"validation": "none"}, "synth": {"source": "fixmatch", "ratio": 0},
                "classifier": {"augment": "crop-flip"}, "fixmatch": {"mu": 2, "tau": 0.5}}
    cfg = {"self-training": tiny(synth={"source": "self-training"}),
           "self-training-2-rounds": tiny(synth={"source": "self-training", "rounds": 2},
                                          classifier={"augment": "crop-flip"}),
           "budget+unlabelled": tiny(gan={"train_on": "budget+unlabelled"}),
           "transfer": tiny(gan={"train_on": "transfer", "source_steps": 20}),
           "fixmatch": tiny(**fixmatch),
           "ssgan": tiny(data={"validation": "none"}, synth={"source": "ssgan", "ratio": 0},
                         classifier={"arch": "seed-cnn", "width": 8})}[arm]
    honest = run_poisoned(cfg, monkeypatch, "none")
    poisoned = run_poisoned(cfg, monkeypatch, "unlabelled")
    same = ("test/acc", "test/acc_last", "clf/best_val_acc", "clf/train_acc_last", "synth/count")
    same = tuple(k for k in same if k in honest)
    assert {k: poisoned[k] for k in same} == {k: honest[k] for k in same}
    assert poisoned["data/unlabelled_count"] == 400
    # the metric that reads the true labels does see the poison (so it is not reading something else)
    probe = "fixmatch/pseudo_label_acc" if arm == "fixmatch" else "synth/pseudo_label_precision"
    if probe in honest:
        assert poisoned[probe] != honest[probe]
    # the control: the same poison on the budget's labels does change the trial
    control = run_poisoned(cfg, monkeypatch, "budget")
    assert {k: control[k] for k in same} != {k: honest[k] for k in same}


# --------------------------------------------------------------------------- transfer


def test_transfer_reuses_its_cached_source_and_fine_tunes_exactly_its_steps(tmp_path: Path) -> None:
    root = tmp_path / "fmnist"
    fake_fashion(root, n_train=300, n_test=60)
    cache = CheckpointCache(tmp_path / "gan")
    base = {"data": {"dataset": "fashion-mnist", "root": str(root), "train_size": 50},
            "gan": {"train_on": "transfer", "transfer_source": "digits", "source_steps": 15, "freeze_d": 1},
            "synth": {"ratio": 1}, "classifier": {"steps": 10, "eval_every": 5}}
    logged = []
    for steps in (12, 7):
        rec = Recorder()
        cfg = TrialConfig.model_validate({**base, "gan": {**base["gan"], "steps": steps}})
        pipeline.run_trial(cfg, device=CPU, tracker=rec, cache=cache)
        logged.append(rec.merged())
    first, second = logged
    assert first["gan/source_cached"] == 0.0 and second["gan/source_cached"] == 1.0
    assert first["gan/source_g_steps"] == second["gan/source_g_steps"] == 15
    assert first["gan/g_steps"] == 12 and second["gan/g_steps"] == 7
    assert first["gan/source_images"] == len(load_splits("digits").train)


def test_freeze_d_keeps_the_first_stages_of_the_source_discriminator() -> None:
    cfg = tiny(gan={"train_on": "transfer", "freeze_d": 1, "steps": 5}).gan
    splits = load_splits("digits")
    real = splits.train.take(np.arange(64))
    source_cfg = cfg.model_copy(update={"freeze_d": 0, "train_on": "budget"})
    src = train_gan(source_cfg, real, 10, seed=0, device=CPU)
    start = {k: v.clone() for k, v in src.discriminator.state_dict().items()}
    res = train_gan(cfg, real, 10, seed=1, device=CPU, init=(src.generator.state_dict(), start))
    after = res.discriminator.state_dict()
    first_conv = "trunk.body.0.weight"
    assert torch.equal(after[first_conv], start[first_conv])
    later = [k for k in start if k.startswith("trunk.body.") and k.endswith("weight") and k != first_conv
             and start[k].ndim == 4]
    assert later and all(not torch.equal(after[k], start[k]) for k in later)
    with pytest.raises(ValueError, match="gan.freeze_d 9: this discriminator has"):
        D = build_discriminator(cfg.model_copy(update={"freeze_d": 8}), (1, 8, 8), 10)
        from ganft.models.gan import freeze_stages
        freeze_stages(D.trunk, 9)


# --------------------------------------------------------------------------- equal budgets, config


@pytest.mark.slow  # four trials
def test_self_training_spends_the_same_classifier_steps_as_the_other_arms() -> None:
    arms = {"real only": tiny(synth={"ratio": 0}), "self-training": tiny(synth={"source": "self-training"}),
            "gan": tiny(), "budget+unlabelled": tiny(gan={"train_on": "budget+unlabelled"})}
    steps = {}
    for name, cfg in arms.items():
        rec = Recorder()
        pipeline.run_trial(cfg, device=CPU, tracker=rec)
        steps[name] = rec.steps("clf/loss")[-1]
        assert rec.merged()["clf/stopped_step"] == 30
    assert set(steps.values()) == {30}
    assert rec.merged()["synth/count"] == 80


@pytest.mark.parametrize(("section", "message"), [
    ({"gan": {"train_on": "budget+unlabelled"}}, "gan.train_on budget+unlabelled needs unlabelled images"),
    ({"synth": {"source": "self-training"}}, "synth.source self-training needs unlabelled images"),
    ({"gan": {"train_on": "transfer"}}, "gan.transfer_source unlabelled needs unlabelled images"),
    ({"gan": {"freeze_d": 1}}, "gan.freeze_d 1 applies to gan.train_on transfer only"),
    ({"gan": {"train_on": "transfer", "transfer_source": "digits"}},
     "transfer_source must differ from data.dataset"),
])
def test_unlabelled_settings_that_cannot_work_are_refused(section: dict, message: str) -> None:
    cfg = {"data": {"dataset": "digits", "unlabelled_size": 0}, **section}
    with pytest.raises(ValueError, match=re.escape(message)):
        TrialConfig.model_validate(cfg)


def test_a_bad_unlabelled_size_in_a_study_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nbase:\n  data: {dataset: digits, unlabelled_size: lots}\n")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    line = "base.data.unlabelled_size: allowed: a count of images from 0 to 10000000, or all"
    assert line in str(err.value)
    assert "\n" not in str(err.value)


def test_trials_of_one_budget_share_one_labeller_and_get_the_same_result(tmp_path: Path) -> None:
    """The real-subset labeller is cached by (budget, seed, recipe): the second self-training trial
    loads it instead of training it again, and the trial's result is the one a fresh labeller gives."""
    cache = CheckpointCache(tmp_path / "gan")
    cfg = tiny(synth={"source": "self-training"})
    runs = []
    for c in (cache, cache, None):
        rec = Recorder()
        runs.append(pipeline.run_trial(cfg, device=CPU, tracker=rec, cache=c) | rec.merged())
    first, second, uncached = runs
    assert (first["synth/labeller_cached"], second["synth/labeller_cached"]) == (0.0, 1.0)
    assert uncached["synth/labeller_cached"] == 0.0
    same = ("test/acc", "clf/best_val_acc", "synth/mean_confidence")
    assert {k: second[k] for k in same if k in first} == {k: uncached[k] for k in same if k in first}
    assert first["test/acc"] == second["test/acc"]
    rec = Recorder()
    pipeline.run_trial(cfg.model_copy(update={"seed": 1}), device=CPU, tracker=rec, cache=cache)
    assert rec.merged()["synth/labeller_cached"] == 0.0  # another seed: another budget, another labeller
