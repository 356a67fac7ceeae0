"""run_trial: one trial of a study, as a short script: the labelled budget, the cross-validation of
the recipe inside it (``data.validation kfold`` only), the recipe's fit on the budget (``fit``: the
images an arm adds, the arm picked once from ``ARMS`` by ``synth.source``; the classifier's start;
its training), the test metrics. Returns the metrics dict; everything else goes to the tracker.

An arm is a small function ``(cfg, data, n) -> Added``: the n images it adds to the budget's real
ones, their labels and its metrics. Ratio 0 is the real-only baseline for every arm that adds
images; the placebo control adds none and changes the classifier's batch order instead. Arms and
run_trial read the whole TrialConfig because this is where its sections meet; each stage below them
gets its own section (``cfg.gan``, ``cfg.synth``, ``cfg.classifier``, ...) and, where it needs a value
of another, that value by name (``conditioning=cfg.gan.conditioning``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ganft.classic_augment import classifier_augment
from ganft.config import SynthConfig, TrialConfig, mirror_keeps_label
from ganft.data import (
    budget_folds,
    labelled_budget,
    oracle_pool,
    splits_for,
    unlabelled_images,
    unlabelled_truth,
)
from ganft.evaluate import held_out_scores, test_metrics
from ganft.finetune import Augment, FinetuneResult, Mix, Start, train_classifier
from ganft.fixmatch import Views, train_fixmatch
from ganft.images import Budget, Images, LabelProbe, Splits
from ganft.keys import flatten
from ganft.labeller import Labeller
from ganft.pretrain import initial_trunk_state
from ganft.quality import KeptAs, trial_quality
from ganft.runtime import derive_seed
from ganft.ssgan import obtain_ssgan
from ganft.store import CheckpointCache
from ganft.synth import oracle_set, self_training_set, synthesise, synthetic_count
from ganft.tracker import NULL_TRACKER, Tracker
from ganft.trial_gan import GanOnDemand, obtain_gan


@dataclass(frozen=True)
class TrialData:
    """What an arm draws on: the trial's data, its labeller and GAN (each made on first use, if at
    all), the device and the tracker."""

    splits: Splits
    budget: Budget
    unlabelled: torch.Tensor  # (U, C, H, W) pixels of data.unlabelled_size images, no labels
    probe: LabelProbe  # their true labels, for pseudo-label precision metrics only
    augment: Augment | None  # classifier.augment for this dataset
    labeller: Labeller
    gan: GanOnDemand
    device: torch.device
    tracker: Tracker
    cache: CheckpointCache | None = None  # the store GANs and labellers are kept in


@dataclass(frozen=True)
class Added:
    images: Images | None  # None: nothing added (real only)
    metrics: dict[str, float] = field(default_factory=dict)
    order_seed: int | None = None  # the classifier's batch order, when the arm changes it (placebo)

    def mixed(self, cfg: SynthConfig) -> Mix | None:
        """The images as the classifier mixes them in (``synth.mix``, ...), None when there are none."""
        return None if self.images is None else Mix(self.images, cfg)


Arm = Callable[[TrialConfig, TrialData, int], Added]


def adds(arm: Arm) -> Arm:
    """An arm that adds images: at ratio 0 (n = 0) it is the real-only baseline and does nothing."""
    return lambda cfg, t, n: arm(cfg, t, n) if n else Added(None)


def generated(cfg: TrialConfig, t: TrialData, n: int) -> Added:
    """n images from the trial's GAN, class balanced, labelled by the class they were generated for
    (or by the labeller), and the GAN's quality scores."""
    gan = t.gan()
    G = gan.generator(t.device)
    t0 = time.perf_counter()
    images, metrics = synthesise(cfg.synth, G, n, t.splits.num_classes, t.labeller,
                                 conditioning=cfg.gan.conditioning, seed=derive_seed(cfg.seed, "synth"),
                                 device=t.device)
    metrics["time/synth_seconds"] = time.perf_counter() - t0  # beside gan/train_seconds
    labeller = None if cfg.gan.conditioning != "none" else t.labeller  # labels an unconditional GAN's images
    kept = None if t.cache is None else KeptAs(t.cache.child("scores"), {  # the next ratio's trial reads them
        "generator": gan.key, "labeller": None if labeller is None else labeller.key})
    quality = trial_quality(cfg.quality, G, labeller, t.splits, cas_recipe=cfg.classifier, seed=cfg.seed,
                            device=t.device, tracker=t.tracker, budget_train=t.budget.train, kept=kept)
    return Added(images, {**metrics, **quality})


def self_training(cfg: TrialConfig, t: TrialData, n: int) -> Added:
    """n real unlabelled images with a teacher's labels (the cheap alternative: no GAN). Round 1's
    teacher is the real-subset labeller; with ``synth.rounds`` > 1 each round's student (the trial's
    classifier recipe on the budget and that round's images, ``classifier.augment`` as its noise)
    labels the next round's, and the last round's images are the ones the trial's classifier adds."""
    teacher, metrics = t.labeller(), {}
    for r in range(1, cfg.synth.rounds + 1):
        images, got = self_training_set(t.unlabelled, n, t.splits.num_classes, teacher,
                                        min_confidence=cfg.synth.min_confidence,
                                        seed=derive_seed(cfg.seed, "synth"), device=t.device, probe=t.probe)
        metrics.update(got if r == cfg.synth.rounds else
                       {f"{k}_round{r}": v for k, v in got.items() if "precision" in k})
        if r < cfg.synth.rounds:
            teacher = train_classifier(cfg.classifier, t.budget.train, None, t.splits.num_classes,
                                       seed=derive_seed(cfg.seed, "self-training-round", r), device=t.device,
                                       added=Mix(images, cfg.synth), start=Start(augment=t.augment)).model
    return Added(images, metrics)


def oracle(cfg: TrialConfig, t: TrialData, n: int) -> Added:
    """Control: n class-balanced real labelled images from outside the budget, its validation images
    and the unlabelled pool, mixed in as generated images are: a perfect generator. It reads labels a
    user would not have; reports mark it as a control and never choose it."""
    pool = oracle_pool(t.splits, cfg.data, cfg.seed)
    images = oracle_set(pool, n, t.splits.num_classes, seed=derive_seed(cfg.seed, "oracle"), device=t.device)
    return Added(images, {"synth/count": float(len(images)), "synth/oracle_pool": float(len(pool))})


def placebo(cfg: TrialConfig, t: TrialData, n: int) -> Added:
    """Control: real only again, differing from the baseline only in the classifier's batch order
    (an A/A test): its gain should be zero, and its spread is the noise floor."""
    return Added(None, order_seed=derive_seed(cfg.seed, "clf-batches", "placebo"))


def trains_itself(cfg: TrialConfig, t: TrialData, n: int) -> Added:
    """FixMatch and the semi-supervised GAN add no images: the unlabelled images enter through their
    own training (``fit``)."""
    return Added(None)


ARMS: dict[str, Arm] = {"gan": adds(generated), "self-training": adds(self_training),  # by synth.source
                        "oracle": adds(oracle), "placebo": placebo, "fixmatch": trains_itself,
                        "ssgan": trains_itself}


@dataclass(frozen=True)
class Fit:
    """One fit of a trial's recipe on one budget: the classifier and what the arm added."""

    clf: FinetuneResult
    added: Added
    n_added: int
    unlabelled: torch.Tensor
    gan: GanOnDemand


def fit(cfg: TrialConfig, splits: Splits, budget: Budget, *, device: torch.device, tracker: Tracker,
        cache: CheckpointCache | None, on_eval: Callable[[int, float], None] | None = None) -> Fit:
    """The trial's recipe on ``budget``: the arm's added set, the classifier's start, training."""
    unlabelled = unlabelled_images(splits, cfg.data, cfg.seed)
    labeller = Labeller(cfg.classifier, budget, splits.num_classes, seed=cfg.seed, device=device,
                        cache=None if cache is None else cache.child("labellers"), tracker=tracker)
    gan = GanOnDemand(lambda: obtain_gan(cfg.gan, seed=cfg.seed, budget=budget, splits=splits,
                                         unlabelled=unlabelled, labeller=labeller, device=device,
                                         tracker=tracker, cache=cache, diffusion=cfg.diffusion))
    n_added = synthetic_count(cfg.synth.ratio, len(budget.train))
    augment = _augment(cfg, "classifier", splits)
    probe = LabelProbe(unlabelled_truth(splits, cfg.data, cfg.seed))
    data = TrialData(splits, budget, unlabelled, probe, augment, labeller, gan, device, tracker, cache)
    added = ARMS[cfg.synth.source](cfg, data, n_added)
    if cfg.synth.source == "fixmatch":  # FixMatch and ssgan change the training itself, not its data
        clf = train_fixmatch(cfg.classifier, cfg.fixmatch, budget.train, unlabelled, splits.num_classes,
                             seed=cfg.seed, device=device, tracker=tracker, probe=probe,
                             views=Views(augment, _augment(cfg, "strong", splits)))
        return Fit(clf, added, n_added, unlabelled, gan)
    if cfg.synth.source == "ssgan":  # the classifier is a semi-supervised GAN's discriminator
        clf = obtain_ssgan(cfg, budget.train, unlabelled, splits.num_classes, device=device, augment=augment,
                           tracker=tracker, cache=cache)
        return Fit(clf, added, n_added, unlabelled, gan)
    trunk = initial_trunk_state(cfg.classifier, splits.image_shape, gan, tracker)  # classifier.init
    clf = train_classifier(cfg.classifier, budget.train, budget.val, splits.num_classes, seed=cfg.seed,
                           device=device, added=added.mixed(cfg.synth),
                           start=Start(trunk, augment, added.order_seed), tracker=tracker, on_eval=on_eval)
    return Fit(clf, added, n_added, unlabelled, gan)


def _augment(cfg: TrialConfig, policy: str, splits: Splits) -> Augment | None:
    """The augmentation ``policy`` ("classifier": ``classifier.augment``) for the trial's dataset."""
    name = cfg.classifier.augment if policy == "classifier" else policy
    return classifier_augment(name, cfg.data.dataset, splits.image_shape[1], mirror_keeps_label(cfg.data))


def cross_validate(cfg: TrialConfig, splits: Splits, budget: Budget, *, device: torch.device,
                   cache: CheckpointCache | None) -> dict[str, float]:
    """``data.validation kfold``: every fold of the budget fitted as the trial is (its own GAN,
    labeller and classifier, fixed steps, nothing logged but the result) and scored on its held-out
    images; the means over folds (``cv/...``) and the spread of the true-class probability."""
    scores = []
    for part, held_out in budget_folds(budget, cfg.data, cfg.seed):
        f = fit(cfg, splits, part, device=device, tracker=NULL_TRACKER, cache=cache)
        scores.append(held_out_scores(f.clf.model, held_out.to(device), splits.num_classes))
    per_fold = {k: np.array([s[k] for s in scores]) for k in scores[0]}
    return {**{f"cv/{k}": float(v.mean()) for k, v in per_fold.items()}, "cv/folds": float(len(scores)),
            "cv/true_class_prob_sd": float(per_fold["true_class_prob"].std(ddof=1))}


def run_trial(cfg: TrialConfig, *, device: torch.device, tracker: Tracker = NULL_TRACKER,
              cache: CheckpointCache | None = None,
              on_eval: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """One trial; ``cache`` stores GANs and labellers for the trials that share them;
    ``on_eval(step, budget val acc)`` is told every validation of the classifier (a search's
    pruner, which may stop the trial by raising). Under ``data.validation kfold`` the folds are
    cross-validated first (``cv/...`` metrics), then the recipe is fitted on all N for the test."""
    t0 = time.perf_counter()
    splits = splits_for(cfg.data)
    c, size, _ = splits.image_shape  # logged as loaded: data.image_size/channels set folders only
    tracker.log_params({**flatten(cfg), "data.image_size": size, "data.channels": c})
    tracker.set_tags({"data.classes": json.dumps(list(splits.classes))})  # the labels, for reports
    budget = labelled_budget(splits, cfg.data, cfg.seed)  # the only labels anything below reads
    kfold = cfg.data.validation == "kfold"
    cv = cross_validate(cfg, splits, budget, device=device, cache=cache) if kfold else {}
    f = fit(cfg, splits, budget, device=device, tracker=tracker, cache=cache, on_eval=on_eval)
    test = splits.test.to(device)
    metrics, confusion = test_metrics(f.clf.model, test, splits.classes)
    metrics["test/acc_last"] = f.clf.last_accuracy(test)  # without selection: how much it mattered
    tracker.log_figure(confusion, "confusion_matrix.png")
    metrics = {**f.clf.metrics, **metrics, "synth/count": f.n_added, **f.added.metrics, **cv,
               "data/real_count": len(budget.train),
               "data/val_count": 0 if budget.val is None else len(budget.val),
               "data/unlabelled_count": len(f.unlabelled), "gan/trained_here": float(f.gan.trained_here),
               "time/trial_seconds": time.perf_counter() - t0}
    tracker.log_metrics(metrics)
    return metrics
