"""The GAN's best step, chosen on budget data only (``gan.eval_every`` > 0).

Every K steps the sampling generator is scored by the Kernel Inception Distance (torchmetrics' KID:
an unbiased MMD with a cubic polynomial kernel, fine for the tens of images a small budget holds
out, where a Fréchet distance's covariance would be singular) between generated images and the
budget's validation images, in the feature space of the real-subset classifier: the trial's
classifier recipe trained on the budget's training images (the same classifier that filters
synthetic images, ``labeller.Labeller``). The pool-trained extractor of ``quality`` has seen
labels a user with N images does not have, so it only reports quality and never chooses.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance

from ganft.config import GanConfig
from ganft.gan_train import Scorer
from ganft.images import Budget
from ganft.runtime import derive_seed, seeded

CHUNK = 500  # images per feature batch
# Bump when the best step chosen for the same GAN run changes (this file): part of the key of every
# GAN trained with gan.eval_every > 0.
SELECTION_VERSION = 1
KID_SUBSETS = 100


class TrunkFeatures(nn.Module):
    """torchmetrics' custom feature module: images (B, C, H, W) in [-1, 1] -> a classifier's trunk
    features (B, F), always in eval mode and without autograd."""

    def __init__(self, classifier: nn.Module, image_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.trunk = classifier.trunk.eval().requires_grad_(False)
        with torch.no_grad():  # torchmetrics reads num_features instead of a dummy forward of its own
            device = next(self.trunk.parameters()).device
            self.num_features = self.trunk(torch.zeros(2, *image_shape, device=device)).shape[1]

    def train(self, mode: bool = True) -> TrunkFeatures:
        return super().train(False)  # torchmetrics may call .train(); batch norm must stay frozen

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x.float())


def gan_scorer(cfg: GanConfig, budget: Budget, labeller: Callable[[], nn.Module],
               device: torch.device) -> Scorer:
    """Generated images -> KID against the budget's validation images (lower is better)."""
    if budget.val is None:
        raise ValueError("gan.eval_every needs validation images; data.validation none has none")
    return kid_scorer(cfg, budget.val.x.to(device), labeller)


def curve_scorer(cfg: GanConfig, budget: Budget, labeller: Callable[[], nn.Module],
                 device: torch.device) -> Scorer:
    """``gan.curve_every``: generated images -> KID against the budget's training images, the ones
    the generator learns from (a convergence curve: it chooses nothing, so it may look at them)."""
    return kid_scorer(cfg, budget.train.x.to(device), labeller)


def kid_scorer(cfg: GanConfig, real: torch.Tensor, labeller: Callable[[], nn.Module]) -> Scorer:
    """Generated images -> KID against ``real`` in the real-subset classifier's trunk features."""
    device = real.device
    features = TrunkFeatures(labeller(), tuple(real.shape[1:]))
    size = min(len(real), cfg.eval_samples)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=features, subsets=KID_SUBSETS, subset_size=size,
                                         reset_real_features=False).to(device)
    for chunk in real.split(CHUNK):
        metric.update(chunk, real=True)  # kept across resets

    def score(images: torch.Tensor) -> float:
        metric.reset()
        for chunk in images.split(CHUNK):
            metric.update(chunk, real=False)
        with seeded(derive_seed("gan-select-kid")):  # torchmetrics draws the subsets from the global RNG
            mean, _ = metric.compute()
        return float(mean)

    return score
