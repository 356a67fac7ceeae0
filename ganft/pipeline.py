"""run_trial: one trial of a study, as plain stages (data -> GAN -> synthetic set -> classifier ->
test metrics). Returns the metrics dict; everything else goes to the tracker."""

from __future__ import annotations

import logging
import time

import torch

from ganft import quality
from ganft.cache import CachedGan, GanCache, gan_key
from ganft.config import TrialConfig, flatten
from ganft.data import Images, Splits, labelled_subset, splits_for
from ganft.evaluate import test_metrics
from ganft.finetune import train_classifier
from ganft.gan_train import SAMPLES_PER_CLASS, build_generator, train_gan
from ganft.pretrain import initial_trunk_state
from ganft.runtime import derive_seed, prepare_model
from ganft.synth import real_labeller, synthesise, synthetic_count
from ganft.tracking import NULL_TRACKER, Tracker, log_image_tensor
from ganft.transforms import classifier_augment

log = logging.getLogger(__name__)


def obtain_gan(cfg: TrialConfig, real: Images, splits: Splits, device: torch.device,
               tracker: Tracker, cache: GanCache | None) -> tuple[CachedGan, bool]:
    """The trained GAN for (dataset, N, seed, GAN config) and whether it was trained now
    (False: reused from the cache)."""
    key = gan_key(cfg)

    def train() -> CachedGan:
        log.info("GAN %s: training (%d steps on %d images)", key, cfg.gan.steps, len(real))
        result = train_gan(cfg.gan, real, splits.num_classes, seed=cfg.seed, device=device,
                           tracker=tracker, scorer=quality.gan_scorer(cfg, splits, device, tracker))
        return CachedGan(result.generator.state_dict(), result.samples, result.metrics,
                         result.discriminator.state_dict())

    if cache is None:
        entry, hit = train(), False
    else:
        with cache.lock(key):  # a second worker needing the same GAN waits, then loads it
            entry = cache.load(key)
            hit = entry is not None
            if entry is None:
                entry = train()
                cache.save(key, entry)
            else:
                log.info("GAN %s: reused from the cache", key)
    tracker.set_tags({"gan.cache": "hit" if hit else "miss", "gan.key": key})
    tracker.log_metrics(entry.metrics)
    log_image_tensor(tracker, entry.samples, "gan_samples.png", nrow=SAMPLES_PER_CLASS)
    return entry, not hit


def load_generator(cfg: TrialConfig, entry: CachedGan, splits: Splits,
                   device: torch.device) -> torch.nn.Module:
    G = build_generator(cfg.gan, splits.image_shape, splits.num_classes)
    G.load_state_dict(entry.state_dict)
    return prepare_model(G, device).eval()


def run_trial(cfg: TrialConfig, *, device: torch.device, tracker: Tracker = NULL_TRACKER,
              cache: GanCache | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    tracker.log_params(flatten(cfg))
    splits = splits_for(cfg.data)
    real = labelled_subset(splits, cfg.data.train_size, cfg.seed)
    n_synth = synthetic_count(cfg.synth.ratio, len(real))
    gan, synthetic, trained, synth_metrics, quality_metrics = None, None, False, {}, {}
    # ratio 0 is the real-only baseline: no GAN, unless the classifier starts from its discriminator
    if n_synth or cfg.classifier.init == "discriminator":
        gan, trained = obtain_gan(cfg, real, splits, device, tracker, cache)
    if n_synth:
        G = load_generator(cfg, gan, splits, device)
        labeller = real_labeller(cfg, real, splits, device)  # trained only if filtering / pseudo-labels
        synthetic, synth_metrics = synthesise(cfg, G, n_synth, splits.num_classes, labeller,
                                              seed=derive_seed(cfg.seed, "synth"), device=device)
        quality_metrics = quality.trial_quality(cfg, G, labeller, splits, device, tracker)
    trunk = initial_trunk_state(cfg, splits.image_shape, splits.num_classes, gan, tracker)  # init
    augment = classifier_augment(cfg.classifier.augment, cfg.data.dataset, splits.image_shape[1])
    clf = train_classifier(cfg.classifier, real, synthetic, splits.val, splits.num_classes,
                           seed=cfg.seed, device=device, tracker=tracker, mix=cfg.synth.mix,
                           synth_weight=cfg.synth.weight, trunk_state=trunk, augment=augment)
    metrics, confusion = test_metrics(clf.model, splits.test.to(device), splits.classes)
    tracker.log_figure(confusion, "confusion_matrix.png")
    metrics = {**clf.metrics, **metrics, "synth/count": n_synth, **synth_metrics, **quality_metrics,
               "data/real_count": len(real),
               "gan/trained_here": float(trained),
               "time/trial_seconds": time.perf_counter() - t0}
    tracker.log_metrics(metrics)
    return metrics
