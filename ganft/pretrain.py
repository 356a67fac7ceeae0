"""Where a classifier's trunk starts (``classifier.init``), and the source-dataset pretraining
that ``init: pretrained`` needs.

- ``scratch``: DCGAN's random init (no starting trunk).
- ``discriminator``: the feature layers of the GAN trained on the same N images (the seed
  article's design); the classifier's head is new.
- ``pretrained``: a classifier of the same arch and width trained once on
  ``classifier.pretrained_source`` (its whole training split, a fixed tenth of it held out for the
  best checkpoint) by ``ganft pretrain STUDY.yaml``, cached in ``.ganft-cache/pretrained/``. Trials
  only load it; a missing checkpoint fails the trial with the command to run.
  **Size rule**: source images are resized to the target's height and width (bilinear,
  antialiased), so the trunk is trained at the resolution it is fine-tuned at (digits 8x8 ->
  28x28 for Fashion-MNIST); the channel counts must match.
- ``torchvision``: ImageNet ResNet-18 from the local torch hub cache (never downloaded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ganft import data, finetune
from ganft.config import ClassifierConfig, DataConfig
from ganft.data import splits_for
from ganft.images import resize_images
from ganft.models import classifier as classifier_models
from ganft.paths import project_root
from ganft.store import CheckpointCache, content_key, load_or_make
from ganft.tracker import NULL_TRACKER, Tracker

if TYPE_CHECKING:  # the GAN a discriminator start reads (imported for its type only)
    from ganft.trial_gan import TrialGan

log = logging.getLogger(__name__)
LazyGan = Callable[[], "TrialGan"]  # the trial's GAN, obtained (trained or loaded) when called

PRETRAIN_SEED = 0  # one checkpoint per source and recipe; the trial's seed varies the fine-tuning
# Bump when a checkpoint pretrained from the same source and recipe changes (this file: the source's
# split and resizing; the training itself has finetune.CLASSIFIER_VERSION).
PRETRAIN_VERSION = 1


class PretrainedMissingError(FileNotFoundError):
    """``init: pretrained`` found no checkpoint; the message says which command makes it."""


def pretrained_cache() -> CheckpointCache:
    return CheckpointCache(project_root() / ".ganft-cache" / "pretrained")


def pretrain_recipe(cfg: ClassifierConfig) -> ClassifierConfig:
    """The fixed source-training recipe: the target's arch and width, ``pretrain_steps`` steps,
    batch 128, lr 1e-3 with a cosine schedule, validation 20 times, no augmentation."""
    return ClassifierConfig(arch=cfg.arch, width=cfg.width, steps=cfg.pretrain_steps, batch_size=128,
                            lr=1e-3, schedule="cosine", eval_every=max(1, cfg.pretrain_steps // 20))


def pretrain_key(cfg: ClassifierConfig, image_shape: tuple[int, int, int]) -> str:
    """Source dataset, target image shape, the recipe, its seed and the code versions."""
    ident = {"source": cfg.pretrained_source, "image_shape": list(image_shape),
             "recipe": pretrain_recipe(cfg).model_dump(mode="json"), "seed": PRETRAIN_SEED,
             "version": [PRETRAIN_VERSION, finetune.CLASSIFIER_VERSION]}
    return content_key(ident)


def pretrain(cfg: ClassifierConfig, image_shape: tuple[int, int, int], device: torch.device) -> dict:
    """Train the source classifier; returns the cache payload (trunk weights and metrics)."""
    source = splits_for(DataConfig(dataset=cfg.pretrained_source))
    if source.image_shape[0] != image_shape[0]:
        raise ValueError(f"classifier.pretrained_source has {source.image_shape[0]}-channel images, the "
                         f"target {image_shape[0]}-channel ones; pick a source with the same channels")
    # another dataset's labels, all of them: a tenth held out (stratified, fixed) picks the checkpoint
    train_idx, val_idx = data.budget_holdout(source.train.y, 0.1, PRETRAIN_SEED)
    pool = resize_images(source.train.take(train_idx), image_shape)
    val = resize_images(source.train.take(val_idx), image_shape)
    recipe = pretrain_recipe(cfg)
    res = finetune.train_classifier(recipe, pool, val, source.num_classes, seed=PRETRAIN_SEED, device=device)
    trunk = {k: v.detach().cpu() for k, v in res.model.trunk.state_dict().items()}
    metrics = {"pretrain/val_acc": res.metrics["clf/best_val_acc"],
               "pretrain/best_step": res.metrics["clf/best_step"],
               "pretrain/train_seconds": res.metrics["clf/train_seconds"]}
    return {"trunk": trunk, "metrics": metrics}


def ensure_pretrained(cfg: ClassifierConfig, image_shape: tuple[int, int, int], device: torch.device,
                      cache: CheckpointCache | None = None) -> tuple[str, dict[str, float], bool]:
    """(key, metrics, trained now?) for the checkpoint ``cfg`` needs, training it if missing."""
    cache = cache or pretrained_cache()
    key = pretrain_key(cfg, image_shape)

    def train() -> dict:
        t0 = time.perf_counter()
        log.info("pretraining %s (width %d) on %s resized to %s for %d steps", cfg.arch, cfg.width,
                 cfg.pretrained_source, "x".join(map(str, image_shape)), cfg.pretrain_steps)
        entry = pretrain(cfg, image_shape, device)
        log.info("pretrained %s in %.0f s", key, time.perf_counter() - t0)
        return entry

    entry, hit = load_or_make(cache, key, train)  # a second process needing it waits, then loads it
    return key, dict(entry["metrics"]), not hit


# --------------------------------------------------------------------------- starting trunks


def _scratch(cfg: ClassifierConfig, image_shape: tuple[int, int, int], gan: LazyGan | None,
             tracker: Tracker) -> None:
    return None


def _discriminator(cfg: ClassifierConfig, image_shape: tuple[int, int, int], gan: LazyGan | None,
                   tracker: Tracker) -> dict[str, torch.Tensor]:
    if gan is None:
        raise ValueError("classifier.init discriminator needs the trial's GAN (run_trial hands it in)")
    return gan().discriminator_trunk()  # trained (or loaded) now if no arm needed it yet


def _pretrained(cfg: ClassifierConfig, image_shape: tuple[int, int, int], gan: LazyGan | None,
                tracker: Tracker) -> dict[str, torch.Tensor]:
    cache = pretrained_cache()
    key = pretrain_key(cfg, image_shape)
    entry = cache.load(key)
    if entry is None:
        raise PretrainedMissingError(
            f"classifier.init pretrained: no checkpoint of {cfg.arch} (width {cfg.width}, "
            f"{cfg.pretrain_steps} steps) pretrained on {cfg.pretrained_source} at "
            f"{'x'.join(map(str, image_shape))} in {cache.dir} (key {key}); run `ganft pretrain "
            f"STUDY.yaml` with this study file first")
    tracker.set_tags({"clf.pretrained_key": key})
    tracker.log_metrics(dict(entry["metrics"]))
    return entry["trunk"]


def _torchvision(cfg: ClassifierConfig, image_shape: tuple[int, int, int], gan: LazyGan | None,
                 tracker: Tracker) -> dict[str, torch.Tensor]:
    return classifier_models.imagenet_trunk_state(image_shape[0])


INITS: dict[str, Callable[..., dict[str, torch.Tensor] | None]] = {
    "scratch": _scratch, "discriminator": _discriminator, "pretrained": _pretrained,
    "torchvision": _torchvision}


def initial_trunk_state(cfg: ClassifierConfig, image_shape: tuple[int, int, int],
                        gan: LazyGan | None = None,
                        tracker: Tracker = NULL_TRACKER) -> dict[str, torch.Tensor] | None:
    """The starting trunk weights for ``cfg.init`` (None: from scratch); ``gan`` is the trial's GAN,
    obtained only if the start is its discriminator."""
    if cfg.init not in INITS:
        raise ValueError(f"unknown classifier.init {cfg.init!r}; known: {', '.join(INITS)}")
    return INITS[cfg.init](cfg, image_shape, gan, tracker)
