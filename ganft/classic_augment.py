"""Augmentation for the classifier: the cheap baseline that GAN images have to beat, and the two
views of consistency training (FixMatch). (DiffAugment for GAN training is a different thing and
lives in ``ganft.diffaugment``.) Policies, by ``classifier.augment``:

- ``crop-flip``: pad by ``crop_padding`` pixels (background) and crop back at a random whole-pixel
  offset, and mirror where that keeps the label. No pixel is resampled: every training image stays
  as sharp as the test images. What torchvision's ``v2.RandomCrop(size, padding=pad)`` and
  ``v2.RandomHorizontalFlip()`` do, drawn per image and done as one gather over the batch.
- ``flip``: mirror images only (half of them, drawn per image), no shift: for centred data such as
  Fashion-MNIST, where a shifted image looks like no test image. Only where a mirror image keeps
  the label (a study file asking it of digits is refused before any work).
- ``affine`` (``classic`` is its earlier name): crop-flip's shift plus a small rotation and
  scale, all one bilinear resampling, so *every* image is resampled (blurred) even when the
  rotation and scale drawn are close to identity: see below.
- ``strong`` (FixMatch's strong view, ``StrongAugment``): crop-flip, then two RandAugment
  operations at a random magnitude (torchvision's ``v2.RandAugment``) and a cutout square.

``affine``: a random crop with padding (an integer shift of up to ``pad`` pixels, background
filled), a small affine (rotation within +-10 degrees, scale 0.9-1.1) and, only where it
preserves the label, a horizontal flip: what torchvision's ``v2.RandomCrop(size, padding=pad)``,
``v2.RandomAffine(10, scale=(0.9, 1.1))`` and ``v2.RandomHorizontalFlip()`` do, with parameters
drawn independently for every image of a batch.

Hand-written rather than a ``v2.Compose``: v2 transforms draw one set of parameters per call, so
a batched call would move every image of the batch the same way, and one call per image costs as
much as the classifier step itself on a CPU. Here the three become one 2x3 matrix per image and a
single ``grid_sample`` over the batch.
tests/test_finetune.py checks the result against torchvision's functional ops for fixed parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ganft.config import label_safe_hflip  # whether a mirror image keeps a dataset's labels
from ganft.runtime import seeded

MAX_DEGREES = 10.0
SCALE_RANGE = (0.9, 1.1)
BACKGROUND = -1.0  # images are in [-1, 1] on a black background: what shifted-in pixels get


def crop_padding(size: int) -> int:
    """Padding of the random crop: 4 px at 32x32 (the CIFAR convention), 3 at 28x28, 1 at 8x8."""
    return max(1, size // 8)


def affine_theta(offset: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor,
                 flip: torch.Tensor, size: int) -> torch.Tensor:
    """Per-image matrices for ``F.affine_grid``: output -> input coordinates, (B, 2, 3).

    In torchvision's order: out(p) = in(A^-1 F p + o), where o is the crop offset (B, 2) in
    pixels (x, y), A rotates by ``degrees`` and scales about the centre (torchvision's
    ``affine``), and F mirrors x where ``flip``. Normalised coordinates are pixels / (size / 2).
    """
    rad = torch.deg2rad(degrees)
    cos, sin = torch.cos(rad) / scale, torch.sin(rad) / scale  # A^-1 = R(-angle) / scale
    fx = 1.0 - 2.0 * flip.to(cos.dtype)  # -1 mirrors the x axis
    o = offset.to(cos.dtype) / (size / 2)  # (B, 2) normalised
    row_x = torch.stack([cos * fx, sin, o[:, 0]], dim=1)
    row_y = torch.stack([-sin * fx, cos, o[:, 1]], dim=1)
    return torch.stack([row_x, row_y], dim=1)  # (B, 2, 3)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (B, C, H, W) images with (B, 2, 3) matrices, bilinear, background outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    # zeros padding on x - BACKGROUND is background padding on x, blended correctly at the edges
    return F.grid_sample(x - BACKGROUND, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + BACKGROUND


@dataclass(frozen=True)
class ClassicAugment:
    """Random crop-with-padding, small affine and (optionally) horizontal flip, per image."""

    size: int
    hflip: bool

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        B, dev = len(x), x.device
        pad = crop_padding(self.size)
        offset = torch.randint(-pad, pad + 1, (B, 2), generator=gen, device=dev)  # (B, 2) px
        degrees = (torch.rand(B, generator=gen, device=dev) * 2 - 1) * MAX_DEGREES
        lo, hi = SCALE_RANGE
        scale = lo + (hi - lo) * torch.rand(B, generator=gen, device=dev)
        flip = torch.rand(B, generator=gen, device=dev) < (0.5 if self.hflip else 0.0)
        return warp(x, affine_theta(offset, degrees, scale, flip, self.size))


def shift_crop(x: torch.Tensor, offset: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, C, H, W) images shifted by whole pixels: padded by ``pad`` on every side (background) and
    cropped back to (H, W) at ``pad + offset`` (offset (B, 2) in [-pad, pad], (x, y)). One advanced-
    indexing gather for the whole batch, no resampling: out[b, :, i, j] = padded[b, :, i + pad + dy,
    j + pad + dx], exactly torchvision's ``crop(pad(img, pad), top=pad + dy, left=pad + dx, H, W)``."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=BACKGROUND)  # (B, C, H + 2p, W + 2p)
    rows = torch.arange(H, device=x.device)[None, :] + pad + offset[:, 1:2]  # (B, H)
    cols = torch.arange(W, device=x.device)[None, :] + pad + offset[:, 0:1]  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class CropFlip:
    """Whole-pixel random crop with padding and (optionally) horizontal flip, per image: no pixel is
    resampled. FixMatch's weak view, and the augmentation a practitioner reaches for first."""

    size: int
    hflip: bool

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        B, dev = len(x), x.device
        pad = crop_padding(self.size)
        offset = torch.randint(-pad, pad + 1, (B, 2), generator=gen, device=dev)  # (B, 2) px
        flip = torch.rand(B, generator=gen, device=dev) < (0.5 if self.hflip else 0.0)
        out = shift_crop(x, offset, pad)
        return torch.where(flip[:, None, None, None], out.flip(-1), out)


@dataclass(frozen=True)
class Flip:
    """Horizontal flip of half the images, drawn per image, and nothing else: torchvision's
    ``v2.RandomHorizontalFlip()`` per image. A weak view for centred images (see the module text)."""

    size: int
    hflip: bool

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        flip = torch.rand(len(x), generator=gen, device=x.device) < (0.5 if self.hflip else 0.0)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


CUTOUT_FRACTION = 0.5  # side of the cutout square, as a share of the image side (FixMatch's bound)
STRONG_GROUP = 8  # images per v2.RandAugment call: each group draws its own operations


@dataclass(frozen=True)
class StrongAugment:
    """FixMatch's strong view (Sohn et al. 2020): crop-flip, then RandAugment (two operations at a
    random magnitude, torchvision's ``v2.RandAugment``) and a cutout square of side up to half the
    image, filled with mid grey. Values stay in [-1, 1] and shapes are kept.

    v2 transforms draw one set of parameters per call, so a whole-batch call would give every image
    the same operations and one call per image costs more than the training step on a CPU: the
    batch is cut into groups of STRONG_GROUP images, each group drawing its own operations and
    magnitude (torchvision's RNG seeded from ``gen``, so a run repeats bit for bit); the crop, the
    flip and the cutout are drawn per image."""

    size: int
    hflip: bool

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from torchvision.transforms import v2

        x = CropFlip(self.size, self.hflip)(x, gen)
        seed = int(torch.randint(2**62, (1,), generator=gen, device=x.device))
        u = ((x + 1) / 2).clamp(0, 1)  # v2's float ops expect [0, 1]
        with seeded(seed):
            groups = []
            for chunk in u.split(STRONG_GROUP):
                magnitude = int(torch.randint(1, 11, (1,)))  # RandAugment's random-magnitude variant
                groups.append(v2.RandAugment(num_ops=2, magnitude=magnitude)(chunk))
        out = torch.cat(groups) * 2 - 1
        return cutout(out, gen, int(CUTOUT_FRACTION * self.size))


def cutout(x: torch.Tensor, gen: torch.Generator, side: int, fill: float = 0.0) -> torch.Tensor:
    """A square of up to ``side`` pixels (side drawn per image, centre anywhere, clipped at the
    border) set to ``fill`` (0: mid grey in [-1, 1]) in every image of (B, C, H, W)."""
    B, _, H, W = x.shape
    dev = x.device
    s = torch.randint(1, max(side, 1) + 1, (B, 1, 1), generator=gen, device=dev)
    cy = torch.randint(0, H, (B, 1, 1), generator=gen, device=dev)
    cx = torch.randint(0, W, (B, 1, 1), generator=gen, device=dev)
    i = torch.arange(H, device=dev)[None, :, None]
    j = torch.arange(W, device=dev)[None, None, :]
    inside = ((i - cy).abs() * 2 < s) & ((j - cx).abs() * 2 < s)  # (B, H, W)
    return x.masked_fill(inside[:, None], fill)


AUGMENTS = {"none": None, "flip": Flip, "crop-flip": CropFlip, "affine": ClassicAugment,
            "classic": ClassicAugment, "strong": StrongAugment}


def classifier_augment(name: str, dataset: str, size: int,
                       hflip: bool | None = None) -> Flip | CropFlip | ClassicAugment | StrongAugment | None:
    """The ``classifier.augment`` variant for a dataset, or None for no augmentation; ``hflip``
    says whether a mirror image keeps its label where the dataset table does not (image folders)."""
    if name not in AUGMENTS:
        raise ValueError(f"unknown classifier.augment {name!r}; known: {', '.join(AUGMENTS)}")
    policy = AUGMENTS[name]
    return None if policy is None else policy(size=size, hflip=label_safe_hflip(dataset, hflip))

