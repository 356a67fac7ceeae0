"""run_trial: one trial of a study, as plain stages (data -> GAN -> synthetic set -> classifier ->
test metrics). Returns the metrics dict; everything else goes to the tracker."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from ganft import gan_sources, quality
from ganft.cache import CachedGan, GanCache, gan_key, labeller_cache, load_or_make
from ganft.classic_augment import classifier_augment
from ganft.config import TrialConfig, flatten
from ganft.data import Budget, Splits, labelled_budget, splits_for, unlabelled_images
from ganft.evaluate import test_metrics
from ganft.finetune import train_classifier
from ganft.gan_train import SAMPLES_PER_CLASS, build_generator, train_gan
from ganft.pretrain import initial_trunk_state
from ganft.runtime import derive_seed, prepare_model
from ganft.selection import gan_scorer
from ganft.synth import real_labeller, self_training_set, synthesise, synthetic_count
from ganft.tracking import NULL_TRACKER, Tracker, log_image_tensor

log = logging.getLogger(__name__)


def obtain_gan(cfg: TrialConfig, budget: Budget, splits: Splits, device: torch.device,
               tracker: Tracker, cache: GanCache | None, labeller: Callable[[], nn.Module],
               unlabelled: torch.Tensor) -> tuple[CachedGan, bool]:
    """The trained GAN for (dataset, budget images, seed, GAN config) and whether it was trained
    now (False: reused from the cache). Of the labelled images it sees only the budget's training
    part (and, with gan.train_on, unlabelled ones or a source: gan_sources.py); its best step, when
    chosen at all, is chosen on the budget's validation part (``selection.gan_scorer``)."""
    key = gan_key(cfg, budget, unlabelled)

    def train() -> CachedGan:
        images = gan_sources.gan_images(cfg, budget, unlabelled, labeller, device)
        init, extra = None, {}
        if cfg.gan.train_on == "transfer":
            source = gan_sources.source_images(cfg, splits.image_shape, splits.num_classes, unlabelled,
                                               labeller, device)
            src, src_hit = gan_sources.source_gan(cfg, source, splits.num_classes, device, cache)
            init = (src.state_dict, src.disc_state)
            extra = {"gan/source_cached": float(src_hit), "gan/source_images": float(len(source)),
                     "gan/source_g_steps": src.metrics.get("gan/g_steps", float("nan"))}
        log.info("GAN %s: training (%d steps on %d images, %s)", key, cfg.gan.steps, len(images),
                 cfg.gan.train_on)
        scorer = gan_scorer(cfg.gan, budget, labeller, device) if cfg.gan.eval_every else None
        result = train_gan(cfg.gan, images, splits.num_classes, seed=cfg.seed, device=device,
                           tracker=tracker, scorer=scorer, init=init)
        return CachedGan(result.generator.state_dict(), result.samples, {**result.metrics, **extra},
                         result.discriminator.state_dict())

    entry, hit = load_or_make(cache, key, train)  # a second worker needing it waits, then loads it
    if hit:
        log.info("GAN %s: reused from the cache", key)
    tracker.set_tags({"gan.cache": "hit" if hit else "miss", "gan.key": key})
    tracker.log_metrics(entry.metrics)
    log_image_tensor(tracker, entry.samples, "gan_samples.png", nrow=SAMPLES_PER_CLASS,
                     row_labels=list(splits.classes))  # one row per class
    return entry, not hit


def load_generator(cfg: TrialConfig, entry: CachedGan, splits: Splits,
                   device: torch.device) -> torch.nn.Module:
    G = build_generator(cfg.gan, splits.image_shape, splits.num_classes)
    G.load_state_dict(entry.state_dict)
    return prepare_model(G, device).eval()


def run_trial(cfg: TrialConfig, *, device: torch.device, tracker: Tracker = NULL_TRACKER,
              cache: GanCache | None = None,
              on_eval: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """One trial; ``on_eval(step, budget val acc)`` is told every validation of the classifier
    (a search's pruner, which may stop the trial by raising)."""
    t0 = time.perf_counter()
    tracker.log_params(flatten(cfg))
    splits = splits_for(cfg.data)
    tracker.set_tags({"data.classes": json.dumps(list(splits.classes))})  # the labels, for reports
    budget = labelled_budget(splits, cfg.data, cfg.seed)  # the only labels anything below reads
    unlabelled = unlabelled_images(splits, cfg.data, cfg.seed)  # (U, C, H, W) pixels, no labels
    n_synth = synthetic_count(cfg.synth.ratio, len(budget.train))
    labeller = real_labeller(cfg, budget, splits.num_classes, device, labeller_cache(cache),
                             tracker)  # made only if asked for; shared by the trials of this budget
    gan, synthetic, trained, synth_metrics, quality_metrics = None, None, False, {}, {}
    self_training = cfg.synth.source == "self-training"
    # ratio 0 is the real-only baseline: no GAN, unless the classifier starts from its discriminator;
    # self-training adds real unlabelled images instead of generated ones
    if (n_synth and not self_training) or cfg.classifier.init == "discriminator":
        gan, trained = obtain_gan(cfg, budget, splits, device, tracker, cache, labeller, unlabelled)
    if n_synth and self_training:
        synthetic, synth_metrics = self_training_set(unlabelled, n_synth, splits.num_classes, labeller(),
                                                     min_confidence=cfg.synth.min_confidence,
                                                     seed=derive_seed(cfg.seed, "synth"), device=device)
    elif n_synth:
        G = load_generator(cfg, gan, splits, device)
        synthetic, synth_metrics = synthesise(cfg, G, n_synth, splits.num_classes, labeller,
                                              seed=derive_seed(cfg.seed, "synth"), device=device)
        quality_metrics = quality.trial_quality(cfg, G, labeller, splits, device, tracker)
    trunk = initial_trunk_state(cfg, splits.image_shape, splits.num_classes, gan, tracker)  # init
    augment = classifier_augment(cfg.classifier.augment, cfg.data.dataset, splits.image_shape[1],
                                 cfg.data.hflip if cfg.data.dataset == "imagefolder" else None)
    clf = train_classifier(cfg.classifier, budget.train, synthetic, budget.val, splits.num_classes,
                           seed=cfg.seed, device=device, tracker=tracker, mix=cfg.synth.mix,
                           synth_weight=cfg.synth.weight, real_fraction=cfg.synth.real_fraction,
                           trunk_state=trunk, augment=augment, on_eval=on_eval)
    test = splits.test.to(device)
    metrics, confusion = test_metrics(clf.model, test, splits.classes)
    metrics["test/acc_last"] = clf.last_accuracy(test)  # without selection: how much it mattered
    tracker.log_figure(confusion, "confusion_matrix.png")
    metrics = {**clf.metrics, **metrics, "synth/count": n_synth, **synth_metrics, **quality_metrics,
               "data/real_count": len(budget.train),
               "data/val_count": 0 if budget.val is None else len(budget.val),
               "data/unlabelled_count": len(unlabelled),
               "gan/trained_here": float(trained),
               "time/trial_seconds": time.perf_counter() - t0}
    tracker.log_metrics(metrics)
    return metrics
