"""Adversarial losses as pure functions of discriminator logits, picked by name from ``LOSSES``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def ns_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, D side: BCE(real -> 1) + BCE(fake -> 0), on logits."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def ns_g(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, G side: BCE(fake -> 1), i.e. -log sigmoid(D(G(z)))."""
    return F.softplus(-d_fake).mean()


LossPair = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 Callable[[torch.Tensor], torch.Tensor]]
LOSSES: dict[str, LossPair] = {"ns": (ns_d, ns_g)}


def get_loss(name: str) -> LossPair:
    if name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]
