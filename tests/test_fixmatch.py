"""Baselines a practitioner would use (issue 24): crop-flip and strong augmentation, FixMatch, and
self-training with a fair student, each checked for what a reviewer would try first: the views keep
shapes and values and differ, a lower threshold masks in more, the unlabelled images' labels never
reach a weight, the EMA is what is evaluated, every unlabelled image is drawn, and what cannot work
is refused before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ganft import pipeline
from ganft.classic_augment import (
    BACKGROUND,
    CropFlip,
    Flip,
    StrongAugment,
    classifier_augment,
    cutout,
    shift_crop,
)
from ganft.cli import main
from ganft.config import ClassifierConfig, DataConfig, FixMatchConfig, TrialConfig
from ganft.data import labelled_budget, load_splits, unlabelled_images, unlabelled_positions, unlabelled_truth
from ganft.fixmatch import Views, pool_batches, pseudo_labels, train_fixmatch
from ganft.images import LabelProbe
from ganft.runtime import make_generator

CPU = torch.device("cpu")
TINY = {"data": {"dataset": "digits", "train_size": 50, "unlabelled_size": "all"},
        "synth": {"source": "fixmatch"},
        "classifier": {"steps": 12, "eval_every": 6, "batch_size": 16, "width": 8, "augment": "crop-flip"},
        "fixmatch": {"mu": 2, "tau": 0.3}}


def tiny(**sections: dict) -> TrialConfig:
    return TrialConfig.model_validate({**TINY, **{k: {**TINY.get(k, {}), **v} for k, v in sections.items()}})


def fashion_like(n: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1


# --------------------------------------------------------------------------- the views


def test_crop_flip_shifts_by_whole_pixels_as_torchvision_pad_and_crop_does() -> None:
    x = fashion_like(4)
    offsets = torch.tensor([[0, 0], [3, -2], [-3, 3], [1, 0]])
    got = shift_crop(x, offsets, 3)
    for b, (dx, dy) in enumerate(offsets.tolist()):
        padded = TF.pad(x[b], [3, 3, 3, 3], fill=BACKGROUND)
        want = TF.crop(padded, 3 + dy, 3 + dx, 28, 28)
        assert torch.equal(got[b], want)
    assert torch.equal(got[0], x[0])  # offset 0: the image itself, not a resampled copy


def test_crop_flip_never_resamples_and_flips_only_where_labels_survive() -> None:
    x = fashion_like(64)
    out = CropFlip(28, hflip=True)(x, make_generator(1))
    values = set(x.unique().tolist()) | {BACKGROUND}
    assert set(out.unique().tolist()) <= values  # every output pixel is an input pixel or background
    unflipped = CropFlip(28, hflip=False)(x, make_generator(1))  # the same shifts, no mirror
    mirrored = [not torch.equal(out[b], unflipped[b]) for b in range(64)]
    assert all(torch.equal(out[b], unflipped[b].flip(-1)) for b in range(64) if mirrored[b])
    assert 10 < sum(mirrored) < 54  # with hflip about half the images are mirrored...
    assert classifier_augment("crop-flip", "digits", 8).hflip is False  # ...but never a digit
    assert classifier_augment("crop-flip", "fashion-mnist", 28).hflip is True


def test_flip_mirrors_about_half_the_images_and_moves_no_pixel_otherwise() -> None:
    x = fashion_like(200)
    out = classifier_augment("flip", "fashion-mnist", 28)(x, make_generator(3))
    assert isinstance(classifier_augment("flip", "fashion-mnist", 28), Flip)
    pairs = list(zip(out, x, strict=True))
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) and not torch.equal(o, i) for o, i in pairs])
    kept = torch.tensor([torch.equal(o, i) for o, i in pairs])
    assert (mirrored | kept).all()  # each image is itself or its mirror image: no shift, no resampling
    assert 70 < int(mirrored.sum()) < 130  # drawn per image, half of them
    assert torch.equal(out, Flip(28, True)(x, make_generator(3)))  # the generator decides everything


def test_flip_is_refused_where_a_mirror_image_changes_the_label() -> None:
    with pytest.raises(ValueError, match="classifier.augment flip mirrors images, and a mirror image "
                                         "does not keep a digits label"):
        tiny(classifier={"augment": "flip"})
    ok = {"dataset": "fashion-mnist", "train_size": 100, "unlabelled_size": "all"}
    assert tiny(data=ok, classifier={"augment": "flip"}).classifier.augment == "flip"
    folder = {"dataset": "imagefolder", "root": "/x", "unlabelled_size": 0}
    with pytest.raises(ValueError, match="set data.hflip true if it does"):
        TrialConfig.model_validate({"data": folder, "classifier": {"augment": "flip"}})
    assert TrialConfig.model_validate({"data": {**folder, "hflip": True},
                                       "classifier": {"augment": "flip"}}).data.hflip


@pytest.mark.parametrize("policy", ["crop-flip", "strong", "affine"])
def test_views_keep_shape_and_value_range_and_draw_per_image(policy: str) -> None:
    x = fashion_like(32)
    aug = classifier_augment(policy, "fashion-mnist", 28)
    out = aug(x, make_generator(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    same = aug(x[:1].expand(32, -1, -1, -1).contiguous(), make_generator(0))  # one image, 32 draws
    assert len({tuple(o.flatten()[:200].tolist()) for o in same}) > 16  # per image, not per batch
    assert torch.equal(out, aug(x, make_generator(0)))  # the generator decides everything


def test_weak_and_strong_views_of_the_same_images_differ() -> None:
    x = fashion_like(32)
    weak = CropFlip(28, True)(x, make_generator(0))
    strong = StrongAugment(28, True)(x, make_generator(0))
    per_image = (weak - strong).abs().flatten(1).mean(1)
    assert (per_image > 0.01).float().mean() > 0.9


def test_cutout_blanks_a_square_of_at_most_the_given_side() -> None:
    x = torch.ones(16, 1, 28, 28)
    out = cutout(x, make_generator(0), 14)
    blank = (out == 0).squeeze(1)
    assert blank.any(dim=(1, 2)).all()
    assert (blank.sum(dim=(1, 2)) <= 14 * 14).all()
    rows, cols = blank.any(2).sum(1), blank.any(1).sum(1)
    assert torch.equal(blank.sum(dim=(1, 2)), rows * cols)  # a rectangle (a clipped square)


# --------------------------------------------------------------------------- FixMatch


def test_a_lower_threshold_masks_in_more_pseudo_labels_on_a_fixed_batch() -> None:
    logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(0)) * 2
    rates = [pseudo_labels(logits, tau)[1].float().mean().item() for tau in (0.95, 0.7, 0.4, 0.1)]
    assert rates == sorted(rates) and rates[0] < rates[-1] == 1.0
    pseudo, mask = pseudo_labels(logits, 0.5)
    assert torch.equal(pseudo, logits.argmax(1))
    assert torch.equal(mask, F.softmax(logits, 1).max(1).values >= 0.5)


def test_every_unlabelled_image_is_drawn_once_per_pass_over_the_pool() -> None:
    idx = pool_batches(100, steps=10, per_step=30, gen=make_generator(0))  # 3 passes over 100 images
    assert idx.shape == (10, 30)
    flat = idx.flatten()
    for p in range(3):
        assert sorted(flat[100 * p: 100 * (p + 1)].tolist()) == list(range(100))
    assert all(len(set(row.tolist())) == 30 for row in idx[:3])  # distinct within the first pass's rows


def _fixmatch_inputs() -> tuple:
    splits = load_splits("digits")
    data = DataConfig(dataset="digits", train_size=50, unlabelled_size="all")
    return splits, labelled_budget(splits, data, 0).train, unlabelled_images(splits, data, 0), data


def _views() -> Views:
    return Views(CropFlip(8, False), StrongAugment(8, False))


def test_the_unlabelled_labels_never_reach_a_weight() -> None:
    splits, real, pool, data = _fixmatch_inputs()
    cfg = ClassifierConfig(steps=8, eval_every=4, batch_size=16, width=8)
    fm = FixMatchConfig(mu=2, tau=0.2)
    truth = unlabelled_truth(splits, data, 0)
    assert torch.equal(truth, splits.train.y[torch.as_tensor(unlabelled_positions(splits, data, 0))])
    runs = [train_fixmatch(cfg, fm, real, pool, 10, seed=0, device=CPU, views=_views(), probe=LabelProbe(t))
            for t in (truth, (truth + 3) % 10, None)]
    states = [r.model.state_dict() for r in runs]
    assert all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in states[0])
    accs = [r.metrics["fixmatch/pseudo_label_acc"] for r in runs]
    assert runs[0].metrics["fixmatch/mask_rate"] > 0 and accs[0] != accs[1] and np.isnan(accs[2])


# A whole FixMatch trial with poisoned unlabelled labels: tests/test_unlabelled.py
# (test_poisoned_unlabelled_labels_change_nothing[fixmatch]), with the budget held fixed.


def test_the_ema_of_the_weights_is_what_is_evaluated() -> None:
    """Two steps at a constant rate: the EMA after them is decay * w1 + (1 - decay) * w2, where w1
    and w2 are the raw weights after step 1 and step 2 (AveragedModel copies at its first update)."""
    _, real, pool, _ = _fixmatch_inputs()
    cfg = ClassifierConfig(steps=1, batch_size=16, width=8, schedule="constant", eval_every=1)

    def params(steps: int, decay: float) -> dict[str, torch.Tensor]:
        fm = FixMatchConfig(mu=2, tau=0.2, ema_decay=decay)
        res = train_fixmatch(cfg.model_copy(update={"steps": steps}), fm, real, pool, 10, seed=0, device=CPU,
                             views=_views())
        return {k: v.detach().clone() for k, v in res.model.named_parameters()}

    w1, w2, ema = params(1, 0.0), params(2, 0.0), params(2, 0.9)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for k in w1:
        torch.testing.assert_close(ema[k], 0.9 * w1[k] + 0.1 * w2[k])


def test_a_fixmatch_trial_logs_its_mask_rate_pseudo_label_accuracy_and_fit() -> None:
    m = pipeline.run_trial(tiny(), device=CPU)
    assert 0 < m["fixmatch/mask_rate"] <= 1 and 0 <= m["fixmatch/pseudo_label_acc"] <= 1
    assert m["synth/count"] == 0 and m["clf/stopped_step"] == 12 and m["gan/trained_here"] == 0
    assert 0 <= m["clf/train_acc_last"] <= 1 and m["clf/loss_last_window"] > 0
    assert m["fixmatch/pool_size"] == m["data/unlabelled_count"]


# --------------------------------------------------------------------------- self-training


def test_self_training_logs_its_pseudo_label_precision_per_round() -> None:
    m = pipeline.run_trial(tiny(synth={"source": "self-training", "ratio": 2, "rounds": 2}), device=CPU)
    assert 0 <= m["synth/pseudo_label_precision"] <= 1
    assert 0 <= m["synth/pseudo_label_precision_round1"] <= 1


# --------------------------------------------------------------------------- what cannot work


@pytest.mark.parametrize(("sections", "message"), [
    ({"data": {"unlabelled_size": 0}},
     "synth.source fixmatch needs unlabelled images: set data.unlabelled_size"),
    ({"data": {"unlabelled_size": 20}}, "fixmatch.mu 2 x classifier.batch_size 16 = 32 unlabelled images"),
    ({"synth": {"ratio": 1}}, "synth.source fixmatch adds no images"),
    ({"classifier": {"augment": "none"}}, "needs a weak view: set classifier.augment"),
    ({"data": {"validation": "from-budget"}}, "selects nothing: use data.validation none or kfold"),
    ({"synth": {"source": "gan", "rounds": 2}}, "synth.rounds 2 applies to synth.source self-training only"),
    ({"data": {"unlabelled_size": 0}, "synth": {"source": "self-training", "ratio": 1}},
     "synth.source self-training needs unlabelled images"),
])
def test_semi_supervised_arms_that_cannot_work_are_refused(sections: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**sections)


def test_a_pool_too_small_for_a_fixmatch_step_is_one_line_before_any_work(
        home: Path, capsys: pytest.CaptureFixture) -> None:
    study = home / "fm.yaml"  # digits: 1,437 training images; N 50 leaves 1,387, a step wants 64 x 30
    study.write_text("name: fm\nbase:\n  data: {dataset: digits, train_size: 50, unlabelled_size: all}\n"
                     "  synth: {source: fixmatch}\n  classifier: {augment: crop-flip, batch_size: 64}\n"
                     "  fixmatch: {mu: 30}\ngrid:\n  seed: [0]\n")
    assert main(["study", "run", str(study), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixmatch.mu 30 x classifier.batch_size 64 = 1,920 unlabelled images" in err[0]
    assert "digits has 1,387" in err[0]
    assert not (home / "mlflow.db").exists() and not (home / "optuna-journal.log").exists()


# --------------------------------------------------------------------------- the report


def planted_fixmatch() -> pd.DataFrame:
    """Real only (crop-flip and none) and FixMatch at 500 and 1,500 steps and a placebo, N 100,
    5 seeds: FixMatch gains exactly +2 pp at 500 steps and +6 pp at 1,500 on every seed."""
    rows = []
    for s in range(5):
        for steps in (500, 1500):
            base = 0.70 + 0.01 * s + (0.02 if steps == 1500 else 0.0)
            run = {"data.train_size": 100, "seed": s, "classifier.steps": steps, "synth.ratio": 0.0,
                   "classifier.init": "scratch", "data/real_count": 100.0, "synth/count": 0.0,
                   "clf/train_acc_last": 1.0, "clf/loss_last_window": 0.01, "clf/loss_prev_window": 0.0105,
                   "time/trial_seconds": 30.0}
            for aug, shift in (("crop-flip", 0.0), ("none", -0.01)):
                rows.append({**run, "classifier.augment": aug, "synth.source": "gan",
                             "data.unlabelled_size": 0, "test/acc": base + shift})
            gain = 0.02 if steps == 500 else 0.06
            rows.append({**run, "classifier.augment": "crop-flip", "synth.source": "fixmatch",
                         "data.unlabelled_size": "all", "test/acc": base + gain,
                         "time/trial_seconds": 600.0})
        rows.append({**run, "classifier.augment": "crop-flip", "synth.source": "placebo",
                     "data.unlabelled_size": 0, "test/acc": base + (0.001 if s % 2 else -0.001)})
    return pd.DataFrame(rows)


def test_the_report_pairs_fixmatch_with_real_only_of_its_own_budget_and_augmentation() -> None:
    from ganft.report import calibrate as cal
    from ganft.report.stats import FIXMATCH_ARM, paired_cells, with_arms

    df = with_arms(planted_fixmatch())
    assert set(df["arm"]) == {"real only", "placebo", FIXMATCH_ARM}  # ratio 0, yet not real only
    cells = paired_cells(df)
    fm = cells[cells["arm"] == FIXMATCH_ARM]
    fm = fm.iloc[np.argsort(fm["classifier.steps"].astype(int).to_numpy())]
    assert fm["n_pairs"].tolist() == [5, 5]  # each budget against the crop-flip real only of that budget
    np.testing.assert_allclose(fm["mean_diff"], [0.02, 0.06])
    np.testing.assert_allclose(fm["run_minutes"], [10.0, 10.0])
    table = cal.calibration(df, cells)
    assert table["n_pairs"].tolist() == [5, 5] and "classifier.steps" in table
    fit = cal.fit_table(df)
    assert len(fit[fit["arm"] == "real only"]) == 4  # two budgets x two augmentations, not one row


def test_a_report_with_several_budgets_draws_the_budget_curve(tmp_path: Path) -> None:
    from ganft.report.stats import with_arms
    from ganft.report.text import ReportMeta
    from ganft.report.write import write_report

    write_report(with_arms(planted_fixmatch()), tmp_path, ReportMeta(study="fm", command="", machine=""))
    page = (tmp_path / "index.md").read_text()
    assert (tmp_path / "budget_curve.png").stat().st_size > 10_000 and "## Budget curve" in page
    assert "+2.0 pp at steps 500 (" in page and "+6.0 pp at steps 1500 (" in page
