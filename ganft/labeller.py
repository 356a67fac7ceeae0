"""The real-subset labeller: the trial's classifier recipe trained from scratch on the budget's
training images only, its checkpoint chosen on the budget's validation images (the last one under
``data.validation none``). It labels and filters generated images (synth.py), pseudo-labels
unlabelled ones (self-training, a GAN that learns from them), and its trunk's features pick a
GAN's best step (selection.py). It reads no label outside the budget.

It is made once, on first use, and shared through the checkpoint store by every trial of the same
(recipe, seed, budget) (metric ``synth/labeller_cached``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganft.config import ClassifierConfig
from ganft.finetune import CLASSIFIER_VERSION, train_classifier
from ganft.images import Budget
from ganft.models.classifier import build_classifier
from ganft.runtime import autocast, prepare_model
from ganft.store import CheckpointCache, content_key, images_digest, load_or_make
from ganft.tracker import NULL_TRACKER, Tracker

log = logging.getLogger(__name__)
# Bump when a labeller made from the same recipe and images, or its predictions, change (this file;
# the classifier's training has its own finetune.CLASSIFIER_VERSION).
LABELLER_VERSION = 1


def helper_recipe(cfg: ClassifierConfig) -> ClassifierConfig:
    """The trial's classifier recipe for an auxiliary classifier trained from scratch on one set
    (the real-subset labeller, CAS): every layer trains and no augmentation, whatever the trial's
    freezing, since there is no starting trunk to freeze."""
    return cfg.model_copy(update={"freeze": "full", "augment": "none"})


class Labeller:
    """``labeller()`` is the trained classifier (eval mode, on the device), made on the first call;
    ``ident`` is what determines it, for the keys of what it helps make (a GAN that learns from its
    labels or is selected in its features)."""

    def __init__(self, cfg: ClassifierConfig, budget: Budget, num_classes: int, *, seed: int,
                 device: torch.device, cache: CheckpointCache | None = None,
                 tracker: Tracker = NULL_TRACKER) -> None:
        self.recipe, self.budget, self.num_classes = helper_recipe(cfg), budget, num_classes
        self.seed, self.device, self.cache, self.tracker = seed, device, cache, tracker
        self._model: nn.Module | None = None

    @functools.cached_property
    def ident(self) -> dict[str, Any]:
        """Its recipe, seed, the budget images it trains and selects on, and the code versions."""
        return {"recipe": self.recipe.model_dump(mode="json"), "seed": self.seed,
                "train": images_digest(self.budget.train), "val": images_digest(self.budget.val),
                "version": [LABELLER_VERSION, CLASSIFIER_VERSION]}

    @functools.cached_property
    def key(self) -> str:
        """Its key in the checkpoint store."""
        return content_key({"role": "labeller", **self.ident})

    def _make(self) -> dict[str, dict[str, torch.Tensor]]:
        log.info("training the real-subset labeller (%d images)", len(self.budget.train))
        res = train_classifier(self.recipe, self.budget.train, self.budget.val, self.num_classes,
                               seed=self.seed, device=self.device)
        return {"state_dict": {k: v.detach().cpu() for k, v in res.model.state_dict().items()}}

    def __call__(self) -> nn.Module:
        if self._model is None:
            entry, hit = load_or_make(self.cache, self.key, self._make)
            self.tracker.log_metrics({"synth/labeller_cached": float(hit)})
            model = build_classifier(self.recipe.arch, tuple(self.budget.train.x.shape[1:]), self.num_classes,
                                     self.recipe.width)
            model.load_state_dict(entry["state_dict"])
            self._model = prepare_model(model, self.device).eval()
        return self._model


def predict_labels(labeller: nn.Module, x: torch.Tensor, device: torch.device,
                   batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The labeller's most probable class and its probability for each image of x (U, C, H, W):
    (U,) int64 and (U,) float32, on the CPU."""
    labeller.eval()
    labels, confs = [], []
    with torch.inference_mode():
        for chunk in x.split(batch_size):
            with autocast(device):
                probs = F.softmax(labeller(chunk.to(device)).float(), dim=1)
            conf, label = probs.max(dim=1)
            labels.append(label.cpu())
            confs.append(conf.cpu())
    empty = torch.empty(0)
    return torch.cat(labels) if labels else empty.long(), torch.cat(confs) if confs else empty
