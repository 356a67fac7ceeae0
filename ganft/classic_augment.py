"""Classic augmentation for the classifier: the cheap baseline that GAN images have to beat.
(DiffAugment for GAN training is a different thing and lives in ``ganft.diffaugment``.)

``classic``: a random crop with padding (an integer shift of up to ``pad`` pixels, background
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

# Whether a left-right mirror image keeps its class. Digits do not (a mirrored 2, 3, 7 is not a
# digit); clothes do. A dataset added to ganft must say which (a test checks every dataset name).
# An image folder says so itself (data.hflip, off by default).
HFLIP_PRESERVES_LABEL = {"digits": False, "mnist": False, "fashion-mnist": True, "cifar10": True}
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


def _none(dataset: str, size: int, hflip: bool | None) -> None:
    return None


def _classic(dataset: str, size: int, hflip: bool | None) -> ClassicAugment:
    if hflip is not None:
        return ClassicAugment(size=size, hflip=hflip)
    if dataset not in HFLIP_PRESERVES_LABEL:
        raise ValueError(f"classic augmentation does not know whether a horizontal flip preserves "
                         f"{dataset!r} labels; add it to HFLIP_PRESERVES_LABEL "
                         f"(known: {', '.join(HFLIP_PRESERVES_LABEL)})")
    return ClassicAugment(size=size, hflip=HFLIP_PRESERVES_LABEL[dataset])


AUGMENTS = {"none": _none, "classic": _classic}


def classifier_augment(name: str, dataset: str, size: int,
                       hflip: bool | None = None) -> ClassicAugment | None:
    """The ``classifier.augment`` variant for a dataset, or None for no augmentation; ``hflip``
    says whether a mirror image keeps its label where the dataset table does not (image folders)."""
    if name not in AUGMENTS:
        raise ValueError(f"unknown classifier.augment {name!r}; known: {', '.join(AUGMENTS)}")
    return AUGMENTS[name](dataset, size, hflip)

