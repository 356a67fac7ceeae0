"""What a GAN learns from (``gan.train_on``): the budget, the budget with unlabelled images, or a
source it is transferred from.

- ``budget``: the budget's training images with their labels (closed set: the GAN knows nothing the
  classifier does not).
- ``budget+unlabelled``: the budget's images with their labels and the ``data.unlabelled_size``
  images with the labels the real-subset classifier gives them: S2GAN (Lucic et al., 2019, "High-
  fidelity image generation with fewer labels"), which pseudo-labels the unlabelled real images with
  a classifier trained on the few labelled ones and trains the conditional GAN on all of them. An
  unconditional GAN (``gan.conditioning none``) ignores those labels and learns from all the images.
- ``transfer``: a GAN first trained for ``gan.source_steps`` on ``gan.transfer_source`` (the unlabelled
  images, pseudo-labelled as above, or another built-in dataset's training split with its own labels,
  resized and converted to the target's shape), cached like any GAN, then trained ``gan.steps`` more
  on the budget from those weights (Wang et al., 2018, "Transferring GANs"; G and its EMA start from
  the source's sampling generator), the discriminator's first ``gan.freeze_d`` stages frozen (FreezeD,
  Mo et al., 2020).

The unlabelled images come from ``data.unlabelled_images``, pixels only; labels here are always the
budget's own or a budget-trained classifier's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from ganft.cache import CachedGan, GanCache, content_key, images_digest, load_or_make
from ganft.config import DataConfig, TrialConfig
from ganft.data import Budget, Images, splits_for
from ganft.pretrain import resize_images
from ganft.synth import predict_labels

log = logging.getLogger(__name__)


def pseudo_labelled(unlabelled: torch.Tensor, labeller: Callable[[], nn.Module],
                    device: torch.device) -> Images:
    """The unlabelled images with the real-subset classifier's labels."""
    labels, _ = predict_labels(labeller(), unlabelled, device)
    return Images(unlabelled, labels)


def join(a: Images, b: Images) -> Images:
    return Images(torch.cat([a.x, b.x.to(a.x.device)]), torch.cat([a.y, b.y.to(a.y.device)]))


def gan_images(cfg: TrialConfig, budget: Budget, unlabelled: torch.Tensor,
               labeller: Callable[[], nn.Module], device: torch.device) -> Images:
    """The images (and labels) the GAN trains on in the trial itself (after any source run)."""
    if cfg.gan.train_on == "budget+unlabelled":
        return join(budget.train, pseudo_labelled(unlabelled, labeller, device))
    return budget.train  # budget, and transfer's fine-tuning


def to_shape(images: Images, shape: tuple[int, int, int]) -> Images:
    """A source dataset's images in the target's (C, H, W): grey <-> RGB by channel mean or repeat,
    then resized as pretraining sources are (``pretrain.resize_images``)."""
    c = shape[0]
    x = images.x
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x[:, :1].expand(-1, c, -1, -1).contiguous()
    return resize_images(Images(x, images.y), shape)


def source_images(cfg: TrialConfig, shape: tuple[int, int, int], num_classes: int, unlabelled: torch.Tensor,
                  labeller: Callable[[], nn.Module], device: torch.device) -> Images:
    """``gan.transfer_source``'s images and labels, in the target's shape."""
    name = cfg.gan.transfer_source
    if name == "unlabelled":
        return pseudo_labelled(unlabelled, labeller, device)
    source = splits_for(DataConfig(dataset=name))
    if source.num_classes != num_classes:
        raise ValueError(f"gan.transfer_source {name} has {source.num_classes} classes and "
                         f"{cfg.data.dataset} {num_classes}: a conditional GAN's class layers cannot be "
                         f"transferred; pick a source with {num_classes} classes or transfer_source "
                         f"unlabelled")
    return to_shape(source.train, shape)


def source_config(cfg: TrialConfig) -> TrialConfig:
    """The source run's config: the trial's GAN recipe for ``source_steps``, no selection, nothing frozen."""
    gan = cfg.gan.model_copy(update={"steps": cfg.gan.source_steps, "train_on": "budget", "freeze_d": 0,
                                     "eval_every": 0})
    return cfg.model_copy(update={"gan": gan})


def source_key(cfg: TrialConfig, source: Images) -> str:
    """The source GAN's cache key: its images and labels by content, its seed, recipe and code."""
    from ganft.cache import GAN_CODE, code_version

    src = source_config(cfg)
    return content_key({"transfer_source": cfg.gan.transfer_source, "images": images_digest(source),
                        "seed": cfg.seed, "gan": src.gan.model_dump(mode="json"),
                        "code": code_version(*GAN_CODE)})


def source_gan(cfg: TrialConfig, source: Images, num_classes: int, device: torch.device,
               cache: GanCache | None) -> tuple[CachedGan, bool]:
    """The source GAN of a ``transfer`` trial (trained once per source, seed and recipe) and whether
    it came from the cache."""
    from ganft.gan_train import train_gan

    def train() -> CachedGan:
        log.info("transfer: training the source GAN (%d steps on %d %s images)", cfg.gan.source_steps,
                 len(source), cfg.gan.transfer_source)
        res = train_gan(source_config(cfg).gan, source, num_classes, seed=cfg.seed, device=device)
        return CachedGan(res.generator.state_dict(), res.samples, res.metrics, res.discriminator.state_dict())

    key = source_key(cfg, source)
    entry, hit = load_or_make(cache, key, train)
    if hit:
        log.info("transfer: source GAN %s reused from the cache", key)
    return entry, hit
