"""Size-aware, class-conditional DCGAN: generator, discriminator and the conv trunk they share
with the classifier (so a classifier can start from a trained discriminator's features).

Resolutions are halved from the image size down to a small start size (``layout``):
8 -> 2 (2 stages), 28 -> 7 (2), 32 -> 4 (3), 64 -> 4 (4). The generator mirrors the
discriminator: a linear layer to (C0, s0, s0), then one 2x transposed conv per stage, the last
straight to image channels. Channels double per stage going down: width, 2*width, ... (max 512).
"""

from __future__ import annotations

import torch
from torch import nn

MAX_CHANNELS = 512


def layout(size: int) -> tuple[int, int]:
    """(start resolution s0, number of 2x stages) for a square image of side ``size``."""
    s, stages = size, 0
    while s % 2 == 0 and (s // 2 >= 4 or stages < 2):
        s //= 2
        stages += 1
    if stages < 2:
        raise ValueError(f"image size {size} is not supported: it must halve at least twice "
                         f"(e.g. 8, 28, 32, 64)")
    return s, stages


def stage_channels(width: int, stages: int) -> list[int]:
    """Channels at each stage from full resolution down: width, 2*width, ... capped at 512."""
    return [min(width * 2**i, MAX_CHANNELS) for i in range(stages)]


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's N(0, 0.02) conv/linear weights and N(1, 0.02) norm scales."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ConvTrunk(nn.Module):
    """Strided 4x4 convs with LeakyReLU(0.2): (B, C, S, S) -> (B, features).

    The discriminator's body and the classifier's body (``seed-cnn``); ``norm`` is batch norm on
    every stage but the first (DCGAN) or none.
    """

    def __init__(self, *, channels: int, size: int, width: int, norm: str = "batch") -> None:
        super().__init__()
        s0, stages = layout(size)
        chans = stage_channels(width, stages)
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(chans):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=(norm == "none" or i == 0)))
            if norm == "batch" and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            elif norm not in ("batch", "none"):
                raise ValueError(f"unknown norm {norm!r}; known: batch, none")
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.out_features = c_in * s0 * s0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)  # (B, C_last * s0 * s0)


class Generator(nn.Module):
    """G(z, y): noise (B, z_dim) and labels (B,) -> images (B, C, S, S) in [-1, 1]."""

    def __init__(self, *, channels: int, size: int, num_classes: int, z_dim: int = 64,
                 width: int = 64) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.size, self.channels = z_dim, num_classes, size, channels
        s0, stages = layout(size)
        chans = stage_channels(width, stages)[::-1]  # start resolution first
        self.s0, self.c0 = s0, chans[0]
        self.embed = nn.Embedding(num_classes, z_dim)  # class -> vector concatenated to z
        self.fc = nn.Sequential(nn.Linear(2 * z_dim, chans[0] * s0 * s0, bias=False),
                                nn.BatchNorm1d(chans[0] * s0 * s0), nn.ReLU(inplace=True))
        ups: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            ups += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]
        # the last stage goes straight to image channels, as in DCGAN (no full-resolution feature maps)
        ups.append(nn.ConvTranspose2d(chans[-1], channels, 4, 2, 1))
        self.ups = nn.Sequential(*ups)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], dim=1))  # (B, C0 * s0 * s0)
        h = h.view(-1, self.c0, self.s0, self.s0)  # (B, C0, s0, s0)
        return torch.tanh(self.ups(h))  # (B, C, S, S)


class Discriminator(nn.Module):
    """D(x, y) -> real/fake logits (B,), with a projection head for the class (Miyato & Koyama).

    logit = w . h + <embed(y), h>: the class enters as an inner product with the features.
    """

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int = 64,
                 norm: str = "batch") -> None:
        super().__init__()
        self.trunk = ConvTrunk(channels=channels, size=size, width=width, norm=norm)
        self.head = nn.Linear(self.trunk.out_features, 1)
        self.embed = nn.Embedding(num_classes, self.trunk.out_features)
        dcgan_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)  # (B, F)
        return self.head(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)  # (B,)

