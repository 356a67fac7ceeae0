"""The image sets every stage passes around: a labelled set (``Images``), a dataset's two splits
(``Splits``) and a trial's labelled budget (``Budget``). A base module: it imports no stage, so any
stage can use these types without depending on another stage."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Images:
    """A labelled image set held as tensors."""

    x: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    y: torch.Tensor  # (N,) int64 class indices

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray | torch.Tensor) -> Images:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Images(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> Images:
        return Images(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Splits:
    name: str
    train: Images  # the dataset's whole training split: labelled budgets come from here
    test: Images  # touched only for final metrics
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # (C, H, W)


@dataclass(frozen=True)
class Budget:
    """The N labelled images a user has, divided by the validation protocol (``data.validation``).

    ``train`` is what the classifier and the GAN learn from; ``val`` is what every selection looks at
    (classifier checkpoint, early stopping, the GAN's best step, the filtering labeller's checkpoint,
    the Optuna objective). ``val`` is None under ``none``: no selection, the last step is kept.
    Under ``from-budget`` both parts are inside the N images; under ``pool`` ``val`` is the fixed
    pool validation set, labelled data beyond N (the earlier protocol, kept for comparison)."""

    protocol: str
    train: Images
    val: Images | None


class LabelProbe:
    """The unlabelled images' true labels, for a metric only: how many of a step's pseudo-labels are
    right. Training never reads them (the loss uses the model's own pseudo-labels)."""

    def __init__(self, truth: torch.Tensor | None) -> None:
        self._truth = truth  # (U,), or None where the labels are not known

    def to(self, device: torch.device | str) -> LabelProbe:
        """The probe with its labels on ``device``, moved once rather than on every step."""
        return LabelProbe(None if self._truth is None else self._truth.to(device))

    def correct(self, idx: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Number of the masked pseudo-labels (pseudo[mask]) equal to the true label; NaN if unknown."""
        if self._truth is None:
            return torch.tensor(math.nan)
        truth = self._truth.to(idx.device)[idx]  # a no-op once the probe is on idx's device
        return ((truth == pseudo) & mask).sum().float()


def resize_images(images: Images, image_shape: tuple[int, int, int]) -> Images:
    """(N, C, h, w) -> (N, C, H, W) for ``image_shape`` (C, H, W): bilinear with antialiasing, the
    size rule of another dataset's images (a pretraining source, a GAN's transfer source)."""
    from torchvision.transforms.v2 import functional as TF

    c, h, w = image_shape
    if images.x.shape[1] != c:
        raise ValueError(f"resize_images: {images.x.shape[1]}-channel images cannot become {c}-channel ones")
    if tuple(images.x.shape[2:]) == (h, w):
        return images
    x = TF.resize(images.x, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return Images(x.clamp_(-1, 1), images.y)
