"""Choices made inside the budget (issue 22): data.validation kfold cross-validates the trial's whole
recipe on stratified folds of the N images (every fold its own GAN and classifier), scores each
held-out fold by a continuous score, and fits the recipe on all N for the test. Nothing a choice
reads comes from the test split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ganft import pipeline
from ganft.catalog import check_sizes
from ganft.cli import main
from ganft.config import ConfigError, DataConfig, TrialConfig
from ganft.data import budget_folds, labelled_budget, load_splits
from ganft.images import Images
from ganft.study.objective import objective_value

CPU = torch.device("cpu")
KFOLD = {"data": {"dataset": "digits", "train_size": 100, "validation": "kfold", "folds": 4},
         "gan": {"steps": 10, "width": 8, "z_dim": 8},
         "classifier": {"steps": 15, "eval_every": 15, "width": 8}}
CHOICES = ("clf/best_val_acc", "clf/best_step", "clf/train_acc_last")  # with cv/*: what chooses


def kfold(**sections: dict) -> TrialConfig:
    merged = {k: {**KFOLD.get(k, {}), **v} for k, v in sections.items()}
    return TrialConfig.model_validate({**KFOLD, **merged})


def rows(x: torch.Tensor) -> list[bytes]:
    return sorted(bytes(r) for r in x.flatten(1).numpy())


def test_folds_are_stratified_disjoint_and_cover_the_budget_in_every_repeat() -> None:
    splits = load_splits("digits")
    cfg = DataConfig(dataset="digits", train_size=100, validation="kfold", folds=5, fold_repeats=2)
    budget = labelled_budget(splits, cfg, seed=1)
    assert budget.val is None and len(budget.train) == 100  # the trial's own fit: all N images
    folds = budget_folds(budget, cfg, seed=1)
    assert len(folds) == 10
    for repeat in (folds[:5], folds[5:]):
        held = [h for _, h in repeat]
        assert rows(torch.cat([h.x for h in held])) == rows(budget.train.x)  # cover, once each
        for part, h in repeat:
            assert len(part.train) + len(h) == 100 and part.val is None
            assert not set(rows(part.train.x)) & set(rows(h.x))  # disjoint
            counts = torch.bincount(h.y, minlength=10)
            assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # stratified
    assert rows(folds[0][1].x) != rows(folds[5][1].x)  # another repeat, another assignment
    assert [rows(h.x) for _, h in folds] == [rows(h.x) for _, h in budget_folds(budget, cfg, seed=1)]


def test_a_kfold_trial_scores_its_folds_and_refits_on_all_n() -> None:
    m = pipeline.run_trial(kfold(synth={"ratio": 1}), device=CPU)
    assert m["cv/folds"] == 4 and 0 < m["cv/true_class_prob"] < 1 and m["cv/log_loss"] > 0
    assert m["data/real_count"] == 100 and m["data/val_count"] == 0 and m["synth/count"] == 100
    assert objective_value(m) == m["cv/true_class_prob"]  # what a search or a report chooses on


def test_a_poisoned_test_split_changes_no_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    clean = load_splits("digits")
    g = torch.Generator().manual_seed(0)
    poisoned = replace(clean, test=Images(torch.rand(clean.test.x.shape, generator=g) * 2 - 1,
                                          clean.test.y[torch.randperm(len(clean.test), generator=g)]))
    runs = {}
    for name, splits in (("clean", clean), ("poisoned", poisoned)):
        monkeypatch.setattr(pipeline, "splits_for", lambda _cfg, s=splits: s)
        for protocol in ("kfold", "from-budget"):
            cfg = kfold() if protocol == "kfold" else \
                TrialConfig.model_validate({**KFOLD, "data": {"dataset": "digits", "train_size": 100}})
            runs[(name, protocol)] = pipeline.run_trial(cfg, device=CPU)
    for protocol in ("kfold", "from-budget"):
        a, b = runs[("clean", protocol)], runs[("poisoned", protocol)]
        chosen = [k for k in a if k.startswith("cv/") or k in CHOICES]
        assert chosen and {k: a[k] for k in chosen} == {k: b[k] for k in chosen}  # every choice the same
        assert objective_value(a) == objective_value(b)
        assert a["test/acc"] != b["test/acc"]  # the poison did reach the test metrics


@pytest.mark.parametrize(("data", "message"), [
    ({"validation": "kfld"}, "data.validation: Input should be 'from-budget', 'none', 'pool' or 'kfold'"),
    ({"validation": "from-budget", "folds": 3},
     "data.folds and data.fold_repeats apply to data.validation kfold"),
    ({"validation": "kfold", "folds": 1}, "data.folds: Input should be greater than or equal to 2"),
])
def test_a_bad_protocol_is_one_line_naming_the_key(data: dict, message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    fields = ", ".join(f"{k}: {v}" for k, v in data.items())
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nbase:\n  data: {{dataset: digits, {fields}}}\n")
    assert main(["study", "run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_more_folds_than_the_smallest_class_holds_is_refused_naming_data_folds() -> None:
    # digits: 1,437 training images, the smallest class 142 of them, so about 9 in a budget of 100
    with pytest.raises(ConfigError, match=r"data.folds: 12 is more than the 9 image\(s\) of the smallest "
                                          r"class in a budget of N=100; allowed: 2..9, or a larger"):
        check_sizes(DataConfig(dataset="digits", train_size=100, validation="kfold", folds=12))
    check_sizes(DataConfig(dataset="digits", train_size=100, validation="kfold", folds=9))
    with pytest.raises(ValueError, match="gan.eval_every 5 selects on validation data, and data.validation "
                                         "kfold"):
        kfold(gan={"eval_every": 5})
