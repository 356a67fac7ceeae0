"""GAN generators and discriminators, and the conv trunk that D shares with the classifier (so a
classifier can start from a trained discriminator's features).

``dcgan`` (the default) is size-aware: resolutions are halved from the image size down to a small
start size (``layout``): 8 -> 2 (2 stages), 28 -> 7 (2), 32 -> 4 (3), 64 -> 4 (4). The generator
mirrors the discriminator: a linear layer to (C0, s0, s0), then one 2x transposed conv per stage, the
last straight to image channels. Channels double per stage going down: width, 2*width, ... (max 512).

``seed-dcgan`` is the seed article's network (the pytorch/examples DCGAN at 64x64, ngf = ndf =
width), fixed: the generator takes noise as (B, Z, 1, 1) and D returns a logit, not a probability.
It trains at 64x64 and ``Resized`` brings its samples back to the data size. Its discriminator *is*
``Discriminator`` at size 64: ``ConvTrunk(size=64)`` is the article's four strided 4x4 convs
(width, 2w, 4w, 8w channels; batch norm on all but the first; LeakyReLU 0.2), and its final
4x4 valid conv on the (8w, 4, 4) map is the same map as our linear head on the flattened features.
One difference, kept so the trunk's parameter names match ``seed-cnn``'s: the first conv has a bias.
A classifier started from that trunk must see 64x64 inputs.

Conditioning: the generator gets the label as an embedding concatenated to z (``projection``,
``acgan``) or ignores it (``none``); the discriminator's head is a projection (Miyato & Koyama,
2018), a real/fake logit plus a class head (ACGAN, Odena et al., 2017) or a plain logit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

MAX_CHANNELS = 512
SEED_SIZE = 64  # the seed article's training resolution


def pick(table: dict[str, Any], name: str, what: str) -> Any:
    """``table[name]``, or a ValueError that lists the known names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(table)}")
    return table[name]


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
    every stage but the first (DCGAN) or none (then every conv has a bias).
    """

    def __init__(self, *, channels: int, size: int, width: int, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {norm!r}; known: batch, none")
        s0, stages = layout(size)
        self.norm = norm  # which ConvTrunk a copied state dict fits (trunk_state_for_classifier)
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(stage_channels(width, stages)):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=(norm == "none" or i == 0)))
            if norm == "batch" and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.out_features = c_in * s0 * s0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)  # (B, C_last * s0 * s0)


# --------------------------------------------------------------------------- generators


class LabelConcat(nn.Module):
    """z (B, Z) and labels (B,) -> (B, 2Z): a learned class vector concatenated to the noise."""

    def __init__(self, num_classes: int, z_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, z_dim)
        self.out_dim = 2 * z_dim

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([z, self.embed(y)], dim=1)


class NoLabel(nn.Module):
    """Unconditional: the labels are ignored (they may be None)."""

    def __init__(self, num_classes: int, z_dim: int) -> None:
        super().__init__()
        self.out_dim = z_dim

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return z


G_CONDITIONING: dict[str, type[nn.Module]] = {"projection": LabelConcat, "acgan": LabelConcat,
                                              "none": NoLabel}


class Generator(nn.Module):
    """G(z, y): noise (B, z_dim) and labels (B,) -> images (B, C, S, S) in [-1, 1]."""

    def __init__(self, *, channels: int, size: int, num_classes: int, z_dim: int = 64,
                 width: int = 64, conditioning: str = "projection") -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.size, self.channels = z_dim, num_classes, size, channels
        s0, stages = layout(size)
        chans = stage_channels(width, stages)[::-1]  # start resolution first
        self.s0, self.c0 = s0, chans[0]
        self.cond = pick(G_CONDITIONING, conditioning, "conditioning")(num_classes, z_dim)
        self.fc = nn.Sequential(nn.Linear(self.cond.out_dim, chans[0] * s0 * s0, bias=False),
                                nn.BatchNorm1d(chans[0] * s0 * s0), nn.ReLU(inplace=True))
        ups: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            ups += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]
        # the last stage goes straight to image channels, as in DCGAN (no full-resolution feature maps)
        ups.append(nn.ConvTranspose2d(chans[-1], channels, 4, 2, 1))
        self.ups = nn.Sequential(*ups)
        dcgan_init(self)

    @property
    def core(self) -> nn.Module:
        """The module that trains against D (itself: it works at the data size)."""
        return self

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.fc(self.cond(z, y))  # (B, C0 * s0 * s0)
        h = h.view(-1, self.c0, self.s0, self.s0)  # (B, C0, s0, s0)
        return torch.tanh(self.ups(h))  # (B, C, S, S)


class SeedGenerator(nn.Module):
    """The seed article's DCGAN generator (pytorch/examples dcgan), 64x64, ngf = width, fixed: the
    noise (with the label embedding, if conditional) enters as (B, Z, 1, 1), not (B, Z)."""

    def __init__(self, *, channels: int, num_classes: int, z_dim: int = 100, width: int = 64,
                 conditioning: str = "none") -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.size, self.channels = z_dim, num_classes, SEED_SIZE, channels
        self.cond = pick(G_CONDITIONING, conditioning, "conditioning")(num_classes, z_dim)
        ngf = width
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.cond.out_dim, ngf * 8, 4, 1, 0, bias=False),  # (B, 8ngf, 4, 4)
            nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),  # (B, 4ngf, 8, 8)
            nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),  # (B, 2ngf, 16, 16)
            nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),  # (B, ngf, 32, 32)
            nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False),  # (B, C, 64, 64)
            nn.Tanh(),
        )
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.net(self.cond(z, y)[:, :, None, None])  # (B, C, 64, 64)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square images to side ``size``: bilinear, antialiased when shrinking (a no-op at that size).
    Both are convex combinations of pixels, so images stay in [-1, 1]."""
    if x.shape[-1] == size:
        return x
    # in fp32: antialiased interpolation has no bf16 kernel (samples may come from a bf16 autocast)
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=size < x.shape[-1],
                         align_corners=False)


class Resized(nn.Module):
    """A generator that trains at a larger size (``core``, e.g. the seed article's 64x64), whose
    samples are resized back to the data size ``size``."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net = net
        self.z_dim, self.num_classes, self.channels = net.z_dim, net.num_classes, net.channels
        self.size = size  # the data size; net.size is the training size

    @property
    def core(self) -> nn.Module:
        return self.net

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return resize(self.net(z, y), self.size)  # (B, C, size, size)


# --------------------------------------------------------------------------- discriminators


class ProjectionHead(nn.Module):
    """logit = w . h + <embed(y), h> (Miyato & Koyama, 2018): the class enters as an inner product."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1), None  # (B,)


class ACGANHead(nn.Module):
    """An unconditional real/fake logit and class logits from the same features (Odena et al., 2017)."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.classes = nn.Linear(features, num_classes)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(h).squeeze(1), self.classes(h)  # (B,), (B, K)


class PlainHead(nn.Module):
    """An unconditional real/fake logit."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.linear(h).squeeze(1), None


D_HEADS: dict[str, type[nn.Module]] = {"projection": ProjectionHead, "acgan": ACGANHead, "none": PlainHead}
TRUNK_NORM = {"batch": "batch", "spectral": "none", "none": "none"}  # D's norm -> its trunk's norm


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al., 2018) on every conv, linear and embedding weight."""
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding):
            spectral_norm(m)
    return module


D_NORM_WRAP = {"batch": lambda m: m, "none": lambda m: m, "spectral": add_spectral_norm}


class Discriminator(nn.Module):
    """D(x, y) -> real/fake logits (B,); ``outputs`` also returns class logits (ACGAN) or None."""

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int = 64,
                 norm: str = "batch", conditioning: str = "projection") -> None:
        super().__init__()
        if norm not in TRUNK_NORM:
            raise ValueError(f"unknown D norm {norm!r}; known: {', '.join(TRUNK_NORM)}")
        self.trunk = ConvTrunk(channels=channels, size=size, width=width, norm=TRUNK_NORM[norm])
        self.head = pick(D_HEADS, conditioning, "conditioning")(self.trunk.out_features, num_classes)
        dcgan_init(self)
        D_NORM_WRAP[norm](self)

    def outputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(self.trunk(x), y)  # (B,) logits, (B, K) class logits or None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.outputs(x, y)[0]  # (B,)


def freeze_stages(trunk: ConvTrunk, k: int) -> None:
    """FreezeD (Mo et al., 2020): the trunk's first k stages (conv and batch norm weights) stop
    learning; their batch-norm statistics still follow the data."""
    convs = [i for i, m in enumerate(trunk.body) if isinstance(m, nn.Conv2d)]
    if k > len(convs):
        raise ValueError(f"gan.freeze_d {k}: this discriminator has {len(convs)} stages; allowed: 0 "
                         f"to {len(convs)}")
    end = convs[k] if k < len(convs) else len(trunk.body)
    for m in list(trunk.body)[:end]:
        for p in m.parameters():
            p.requires_grad_(False)


def trunk_state_for_classifier(disc: nn.Module) -> dict[str, torch.Tensor]:
    """D's feature layers as a plain ``ConvTrunk`` state dict (load it into
    ``ConvTrunk(norm=disc.trunk.norm)`` of the same channels, size and width): spectral-normalised
    weights are materialised as W / sigma with D's current power-iteration vectors, so no
    parametrization keys remain. The heads (real/fake, projection, class) are dropped."""
    # Read off the live trunk rather than remove_parametrizations on a deepcopy: the copy shares its
    # dynamically made Parametrized* class with D, and removal deletes ``weight`` from that class.
    trunk, was_training = disc.trunk, disc.trunk.training
    trunk.eval()  # in eval mode, reading W / sigma runs no power iteration
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, m in trunk.named_modules():
            if "parametrizations" in name.split("."):
                continue  # the spectral norm's own state (original weight, u, v)
            prefix = f"{name}." if name else ""
            tensors = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
            if parametrize.is_parametrized(m, "weight"):
                tensors.append(("weight", m.weight))  # W / sigma
            state.update({prefix + k: v.detach().clone() for k, v in tensors})
    trunk.train(was_training)
    return state


# --------------------------------------------------------------------------- builders by arch


def _dcgan_g(*, channels: int, size: int, num_classes: int, z_dim: int, width: int,
             conditioning: str) -> nn.Module:
    return Generator(channels=channels, size=size, num_classes=num_classes, z_dim=z_dim, width=width,
                     conditioning=conditioning)


def _seed_g(*, channels: int, size: int, num_classes: int, z_dim: int, width: int,
            conditioning: str) -> nn.Module:
    net = SeedGenerator(channels=channels, num_classes=num_classes, z_dim=z_dim, width=width,
                        conditioning=conditioning)
    return Resized(net, size)


GENERATORS = {"dcgan": _dcgan_g, "seed-dcgan": _seed_g}
D_SIZE = {"dcgan": lambda size: size, "seed-dcgan": lambda size: SEED_SIZE}  # D's input side per arch


def build_generator(arch: str, *, channels: int, size: int, num_classes: int, z_dim: int, width: int,
                    conditioning: str) -> nn.Module:
    """The sampling generator for images of side ``size``; its ``core`` is what trains against D."""
    if arch not in GENERATORS:
        raise ValueError(f"unknown GAN arch {arch!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[arch](channels=channels, size=size, num_classes=num_classes, z_dim=z_dim,
                            width=width, conditioning=conditioning)


def build_discriminator(arch: str, *, channels: int, size: int, num_classes: int, width: int,
                        norm: str, conditioning: str) -> Discriminator:
    if arch not in D_SIZE:
        raise ValueError(f"unknown GAN arch {arch!r}; known: {', '.join(D_SIZE)}")
    return Discriminator(channels=channels, size=D_SIZE[arch](size), num_classes=num_classes,
                         width=width, norm=norm, conditioning=conditioning)
