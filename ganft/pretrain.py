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
import sys
import time
from collections.abc import Callable

import torch
from torchvision.transforms.v2 import functional as TF

from ganft import classic_augment, data, finetune
from ganft.cache import CachedGan, CheckpointCache, code_version, content_key, load_or_make
from ganft.config import ClassifierConfig, DataConfig, StudyConfig, TrialConfig
from ganft.data import Images, splits_for
from ganft.gan_train import build_discriminator
from ganft.models import classifier as classifier_models
from ganft.models import gan as gan_models
from ganft.paths import project_root
from ganft.runtime import pick_device
from ganft.tracking import NULL_TRACKER, Tracker

log = logging.getLogger(__name__)

PRETRAIN_SEED = 0  # one checkpoint per source and recipe; the trial's seed varies the fine-tuning
# The code that determines a pretrained checkpoint: any change to these files makes new keys.
PRETRAIN_CODE = (classifier_models, gan_models, finetune, classic_augment, data)


class PretrainedMissingError(FileNotFoundError):
    """``init: pretrained`` found no checkpoint; the message says which command makes it."""


def pretrained_cache() -> CheckpointCache:
    return CheckpointCache(project_root() / ".ganft-cache" / "pretrained")


def pretrain_recipe(cfg: ClassifierConfig) -> ClassifierConfig:
    """The fixed source-training recipe: the target's arch and width, ``pretrain_steps`` steps,
    batch 128, lr 1e-3 with a cosine schedule, validation 20 times, no augmentation."""
    return ClassifierConfig(arch=cfg.arch, width=cfg.width, steps=cfg.pretrain_steps, batch_size=128,
                            lr=1e-3, schedule="cosine", eval_every=max(1, cfg.pretrain_steps // 20))


def pretrain_key(cfg: TrialConfig, image_shape: tuple[int, int, int]) -> str:
    """Source dataset, target image shape, the recipe, its seed and the code version."""
    ident = {"source": cfg.classifier.pretrained_source, "image_shape": list(image_shape),
             "recipe": pretrain_recipe(cfg.classifier).model_dump(mode="json"), "seed": PRETRAIN_SEED,
             "code": code_version(*PRETRAIN_CODE, sys.modules[__name__])}
    return content_key(ident)


def resize_images(images: Images, image_shape: tuple[int, int, int]) -> Images:
    """(N, C, h, w) -> (N, C, H, W), bilinear with antialiasing (the size rule above)."""
    c, h, w = image_shape
    if images.x.shape[1] != c:
        raise ValueError(f"classifier.pretrained_source has {images.x.shape[1]}-channel images, the "
                         f"target {c}-channel ones; pick a source with the same channels")
    if tuple(images.x.shape[2:]) == (h, w):
        return images
    x = TF.resize(images.x, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return Images(x.clamp_(-1, 1), images.y)


def pretrain(cfg: TrialConfig, image_shape: tuple[int, int, int], device: torch.device) -> dict:
    """Train the source classifier; returns the cache payload (trunk weights and metrics)."""
    source = splits_for(DataConfig(dataset=cfg.classifier.pretrained_source))
    # another dataset's labels, all of them: a tenth held out (stratified, fixed) picks the checkpoint
    train_idx, val_idx = data.budget_holdout(source.train.y, 0.1, PRETRAIN_SEED)
    pool = resize_images(source.train.take(train_idx), image_shape)
    val = resize_images(source.train.take(val_idx), image_shape)
    recipe = pretrain_recipe(cfg.classifier)
    res = finetune.train_classifier(recipe, pool, None, val, source.num_classes, seed=PRETRAIN_SEED,
                                    device=device)
    trunk = {k: v.detach().cpu() for k, v in res.model.trunk.state_dict().items()}
    metrics = {"pretrain/val_acc": res.metrics["clf/best_val_acc"],
               "pretrain/best_step": res.metrics["clf/best_step"],
               "pretrain/train_seconds": res.metrics["clf/train_seconds"]}
    return {"trunk": trunk, "metrics": metrics}


def ensure_pretrained(cfg: TrialConfig, image_shape: tuple[int, int, int], device: torch.device,
                      cache: CheckpointCache | None = None) -> tuple[str, dict[str, float], bool]:
    """(key, metrics, trained now?) for the checkpoint ``cfg`` needs, training it if missing."""
    cache = cache or pretrained_cache()
    key = pretrain_key(cfg, image_shape)

    def train() -> dict:
        t0 = time.perf_counter()
        log.info("pretraining %s (width %d) on %s resized to %s for %d steps", cfg.classifier.arch,
                 cfg.classifier.width, cfg.classifier.pretrained_source, "x".join(map(str, image_shape)),
                 cfg.classifier.pretrain_steps)
        entry = pretrain(cfg, image_shape, device)
        log.info("pretrained %s in %.0f s", key, time.perf_counter() - t0)
        return entry

    entry, hit = load_or_make(cache, key, train)  # a second process needing it waits, then loads it
    return key, dict(entry["metrics"]), not hit


# --------------------------------------------------------------------------- starting trunks


def _scratch(cfg: TrialConfig, image_shape: tuple[int, int, int], num_classes: int,
             gan: CachedGan | None, tracker: Tracker) -> None:
    return None


def _discriminator(cfg: TrialConfig, image_shape: tuple[int, int, int], num_classes: int,
                   gan: CachedGan | None, tracker: Tracker) -> dict[str, torch.Tensor]:
    if gan is None:
        raise ValueError("classifier.init discriminator needs the trained GAN (run_trial obtains it)")
    if not gan.disc_state:
        raise ValueError("the GAN cache entry holds no discriminator (an entry from an older ganft?); "
                         "delete it from .ganft-cache/gan/ so the GAN is trained again")
    D = build_discriminator(cfg.gan, image_shape, num_classes)
    D.load_state_dict(gan.disc_state)
    return gan_models.trunk_state_for_classifier(D)  # spectral norm materialised, heads dropped


def _pretrained(cfg: TrialConfig, image_shape: tuple[int, int, int], num_classes: int,
                gan: CachedGan | None, tracker: Tracker) -> dict[str, torch.Tensor]:
    cache = pretrained_cache()
    key = pretrain_key(cfg, image_shape)
    entry = cache.load(key)
    if entry is None:
        c = cfg.classifier
        raise PretrainedMissingError(
            f"classifier.init pretrained: no checkpoint of {c.arch} (width {c.width}, {c.pretrain_steps} "
            f"steps) pretrained on {c.pretrained_source} at {'x'.join(map(str, image_shape))} in "
            f"{cache.dir} (key {key}); run `ganft pretrain STUDY.yaml` with this study file first")
    tracker.set_tags({"clf.pretrained_key": key})
    tracker.log_metrics(dict(entry["metrics"]))
    return entry["trunk"]


def _torchvision(cfg: TrialConfig, image_shape: tuple[int, int, int], num_classes: int,
                 gan: CachedGan | None, tracker: Tracker) -> dict[str, torch.Tensor]:
    return classifier_models.imagenet_trunk_state(image_shape[0])


INITS: dict[str, Callable[..., dict[str, torch.Tensor] | None]] = {
    "scratch": _scratch, "discriminator": _discriminator, "pretrained": _pretrained,
    "torchvision": _torchvision}


def initial_trunk_state(cfg: TrialConfig, image_shape: tuple[int, int, int], num_classes: int,
                        gan: CachedGan | None = None,
                        tracker: Tracker = NULL_TRACKER) -> dict[str, torch.Tensor] | None:
    """The starting trunk weights for ``cfg.classifier.init`` (None: from scratch)."""
    init = cfg.classifier.init
    if init not in INITS:
        raise ValueError(f"unknown classifier.init {init!r}; known: {', '.join(INITS)}")
    return INITS[init](cfg, image_shape, num_classes, gan, tracker)


def pretrain_study(study: StudyConfig, device_name: str = "auto") -> list[str]:
    """``ganft pretrain STUDY``: train (once, cached) every source checkpoint the study's
    ``classifier.init: pretrained`` points need; one line per checkpoint."""
    device = pick_device(device_name)
    needed = {}  # key -> (a trial config that needs it, the target image shape)
    for point in study.points() or [{}]:
        trial = study.trial_config(point)
        if trial.classifier.init == "pretrained":
            shape = splits_for(trial.data).image_shape
            needed.setdefault(pretrain_key(trial, shape), (trial, shape))
    if not needed:
        return [f"study {study.name}: no grid point uses classifier.init pretrained; nothing to pretrain"]
    lines = []
    for key, (trial, shape) in needed.items():
        _, metrics, trained = ensure_pretrained(trial, shape, device)
        c = trial.classifier
        lines.append(f"{'trained' if trained else 'cached'} {key}: {c.arch} (width {c.width}) on "
                     f"{c.pretrained_source} at {'x'.join(map(str, shape))}, {c.pretrain_steps} steps, "
                     f"source val acc {metrics['pretrain/val_acc']:.3f}")
    return lines
