"""DiffAugment (Zhao et al., 2020): the same differentiable augmentation on real and fake images
before the discriminator, so D cannot memorise a tiny training set. Policies ``translation``,
``cutout`` and ``color`` (brightness and contrast; saturation too for RGB), combinable in any order.

Written by hand because torchvision's v2 transforms draw one set of parameters per call (the whole
batch shifts alike) and are not meant to be differentiated through for G's update; DiffAugment needs
an independent shift per image and gradients through it. Randomness comes from an explicit
``torch.Generator`` on the images' device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its side in x and y, filling with zeros."""
    b, _, h, w = x.shape  # batch, channels, height, width
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), generator=gen, device=x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), generator=gen, device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                            indexing="ij")
    # index into a 1-pixel zero border: shifted-out positions clamp onto it
    iy = (gy.unsqueeze(0) + ty + 1).clamp(0, h + 1)  # (B, H, W)
    ix = (gx.unsqueeze(0) + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    bidx = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[bidx, iy, ix].permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` of the side per image, centred anywhere in the image (so it may be
    cut by the border), as in DiffAugment. Zero is mid-grey for images in [-1, 1]."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    y0 = torch.randint(0, h, (b, 1, 1), generator=gen, device=x.device) - ch // 2  # top-left corners
    x0 = torch.randint(0, w, (b, 1, 1), generator=gen, device=x.device) - cw // 2
    gy = torch.arange(h, device=x.device).view(1, h, 1)
    gx = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (gy >= y0) & (gy < y0 + ch) & (gx >= x0) & (gx < x0 + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment's colour policy, one draw per image: brightness + U(-0.5, 0.5); saturation, i.e.
    the spread around the per-pixel channel mean scaled by U(0, 2) (the identity for 1-channel
    images, whose channel mean is the pixel); contrast, the spread around the image mean scaled by
    U(0.5, 1.5)."""
    b = x.shape[0]

    def draw() -> torch.Tensor:
        return torch.rand(b, 1, 1, 1, generator=gen, device=x.device, dtype=x.dtype)

    x = x + (draw() - 0.5)
    x_mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    x = (x - x_mean) * (draw() * 2) + x_mean
    x_mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - x_mean) * (draw() + 0.5) + x_mean


POLICIES: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "translation": translation,
    "cutout": cutout,
    "color": color,
}


def diff_augment(x: torch.Tensor, policies: Sequence[str], gen: torch.Generator) -> torch.Tensor:
    """Apply the named DiffAugment policies in order (an empty list returns x unchanged)."""
    for name in policies:
        if name not in POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r}; known: {', '.join(POLICIES)}")
        x = POLICIES[name](x, gen)
    return x
