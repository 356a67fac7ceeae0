"""Adversarial losses and discriminator regularisers as pure functions.

Losses are functions of discriminator outputs (logits or critic values, shape (B,)), picked by name
from ``LOSSES``. Regularisers take the tensors of one D step (``DStep``) and return a scalar; the
training loop adds ``weight * reg(step)`` for each active one (``active_regularisers``), so the loop
itself never branches on which are on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ganft.diffaugment import translation

# --------------------------------------------------------------------------- adversarial losses


def ns_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN (Goodfellow et al., 2014), D side: BCE(real -> 1) + BCE(fake -> 0), on logits."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def ns_g(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, G side: BCE(fake -> 1), i.e. -log sigmoid(D(G(z)))."""
    return F.softplus(-d_fake).mean()


def hinge_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss (Lim & Ye, 2017; SNGAN), D side: max(0, 1 - D(x)) + max(0, 1 + D(G(z)))."""
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


def hinge_g(d_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss, G side: -D(G(z))."""
    return -d_fake.mean()


def wgan_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic (Arjovsky et al., 2017): minimise D(G(z)) - D(x). Its Lipschitz constraint
    is the gradient penalty below (WGAN-GP), which ``active_regularisers`` switches on with this loss."""
    return d_fake.mean() - d_real.mean()


def wgan_g(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


LossPair = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 Callable[[torch.Tensor], torch.Tensor]]
LOSSES: dict[str, LossPair] = {"ns": (ns_d, ns_g), "hinge": (hinge_d, hinge_g), "wgan-gp": (wgan_d, wgan_g)}


def get_loss(name: str) -> LossPair:
    if name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]


# --------------------------------------------------------------------------- conditioning losses


def class_ce(class_logits: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """ACGAN's auxiliary loss (Odena et al., 2017): cross-entropy of D's class head on label y."""
    return F.cross_entropy(class_logits, y)


def no_aux(class_logits: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """Projection and unconditional discriminators have no class head: nothing to add."""
    return torch.zeros((), device=y.device)


AUX_LOSSES: dict[str, Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]] = {
    "projection": no_aux, "acgan": class_ce, "none": no_aux}


# --------------------------------------------------------------------------- regularisers


@dataclass
class DStep:
    """What one discriminator step saw: inputs as D got them (after DiffAugment) and its outputs."""

    D: nn.Module  # D(x, y) -> (B,) logits
    x_real: torch.Tensor  # (B, C, H, W); requires grad when R1 is on (see needs_real_grad)
    x_fake: torch.Tensor  # (B, C, H, W), detached from G
    y: torch.Tensor  # (B,) labels of both
    d_real: torch.Tensor  # (B,) D(x_real, y)
    d_fake: torch.Tensor  # (B,) D(x_fake, y)
    gen: torch.Generator  # for the penalty's own random draws


def _grad_sq_norm(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # per-image squared norm of d(sum out)/dx, kept in the graph so the penalty can be minimised
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1)  # (B,)


def gradient_penalty(s: DStep) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): E[(|grad D(x_hat)| - 1)^2] on random interpolates of real
    and fake images, which pushes the critic towards 1-Lipschitz."""
    eps = torch.rand(len(s.x_real), 1, 1, 1, generator=s.gen, device=s.x_real.device)
    x_hat = (eps * s.x_real.detach() + (1 - eps) * s.x_fake.detach()).requires_grad_(True)
    return (_grad_sq_norm(s.D(x_hat, s.y), x_hat).add(1e-12).sqrt() - 1).pow(2).mean()


def r1_penalty(s: DStep) -> torch.Tensor:
    """R1 (Mescheder et al., 2018): 1/2 E|grad D(x_real)|^2, the gradient on real images only,
    reusing D's forward pass on them (x_real requires grad when R1 is on). ``r1_gamma`` scales it."""
    return 0.5 * _grad_sq_norm(s.d_real, s.x_real).mean()


def consistency_penalty(s: DStep) -> torch.Tensor:
    """Balanced consistency regularisation, bCR (Zhao et al., 2021): D should give the same output
    for an image and a translated copy, on real and on fake images. Translation is the transform
    because it preserves the label of every dataset here (a flip does not, e.g. for digits)."""
    x = torch.cat([s.x_real.detach(), s.x_fake])  # (2B, C, H, W)
    d_t = s.D(translation(x, s.gen), torch.cat([s.y, s.y]))  # (2B,)
    d = torch.cat([s.d_real, s.d_fake])
    return (d - d_t).pow(2).mean()


REGULARISERS: dict[str, Callable[[DStep], torch.Tensor]] = {
    "gp": gradient_penalty, "r1": r1_penalty, "bcr": consistency_penalty}


def active_regularisers(weights: dict[str, float]) -> list[tuple[float, Callable[[DStep], torch.Tensor]]]:
    """(weight, function) for each regulariser with a positive weight, e.g. {"r1": 5.0, "bcr": 0}."""
    unknown = set(weights) - set(REGULARISERS)
    if unknown:
        raise ValueError(f"unknown regulariser {sorted(unknown)}; known: {', '.join(REGULARISERS)}")
    return [(w, REGULARISERS[name]) for name, w in weights.items() if w > 0]
