"""Classifiers. ``seed-cnn`` is the seed article's classifier, fixed: the discriminator's conv
trunk (sized to the image) with a class head that returns logits, no Softmax before the loss."""

from __future__ import annotations

import torch
from torch import nn

from ganft.models.gan import ConvTrunk, dcgan_init


class SeedCNN(nn.Module):
    """(B, C, S, S) images -> (B, num_classes) logits."""

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int = 32,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.trunk = ConvTrunk(channels=channels, size=size, width=width, norm="batch")
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.trunk.out_features, num_classes))
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))  # (B, K) logits for CrossEntropyLoss


CLASSIFIERS = {"seed-cnn": SeedCNN}


def build_classifier(arch: str, image_shape: tuple[int, int, int], num_classes: int,
                     width: int) -> nn.Module:
    if arch not in CLASSIFIERS:
        raise ValueError(f"unknown classifier arch {arch!r}; known: {', '.join(CLASSIFIERS)}")
    c, h, _ = image_shape
    return CLASSIFIERS[arch](channels=c, size=h, num_classes=num_classes, width=width)
