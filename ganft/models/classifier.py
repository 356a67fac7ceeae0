"""Classifiers, each a ``trunk`` (features) and a ``head`` (logits), so every initialisation and
freezing rule works on any of them.

``bn-cnn`` (the default) is a two-stage CNN with batch norm and max pooling, the baseline a
practitioner would pick. ``seed-cnn`` is the seed article's classifier, fixed: the discriminator's
conv trunk (sized to the
image) with a class head that returns logits, no Softmax before the loss. ``resnet18`` is
torchvision's ResNet-18 adapted to small images. ``mlp`` is the fully connected network of Salimans
et al.'s semi-supervised GAN on MNIST (1000-500-250-250-250 hidden units), for that arm's
discriminator and its real-only pair. ``ganft.pretrain`` picks a trunk's starting
weights (``classifier.init``); the ImageNet ones are read here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights

from ganft.models.gan import ConvTrunk, dcgan_init


class SeedCNN(nn.Module):
    """(B, C, S, S) images -> (B, num_classes) logits."""

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int = 32,
                 dropout: float = 0.3, norm: str = "batch") -> None:
        super().__init__()
        self.trunk = ConvTrunk(channels=channels, size=size, width=width, norm=norm)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.trunk.out_features, num_classes))
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))  # (B, K) logits for CrossEntropyLoss


class BatchNormCNN(nn.Module):
    """The default classifier: the CNN a practitioner would train on small 8x8-32x32 images.

    Two stages of a 3x3 conv (same padding), batch norm, ReLU and a 2x2 max-pool:
    (B, C, S, S) -> (B, width, S/2, S/2) -> (B, 2*width, S/4, S/4); the trunk ends flattened, the head
    is dropout and a linear layer returning logits. bench/baseline.py compares it with a plain
    two-conv CNN with max pooling on the same labelled budget and step budget.
    """

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int = 32,
                 dropout: float = 0.3) -> None:
        super().__init__()
        if size % 4:
            raise ValueError(f"image size {size} is not supported by bn-cnn: it must be divisible by 4 "
                             f"(e.g. 8, 28, 32, 64)")
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in (width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in * (size // 4) ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))  # (B, K) logits for CrossEntropyLoss


MLP_HIDDEN = (1000, 500, 250, 250, 250)  # Salimans et al. 2016, their MNIST discriminator


def mlp_layers(in_features: int) -> tuple[nn.Sequential, int]:
    """Flatten, then a linear layer and a ReLU per ``MLP_HIDDEN`` width: the ``mlp`` trunk, and its
    number of output features."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in MLP_HIDDEN:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    return nn.Sequential(*layers), in_features


class MLP(nn.Module):
    """(B, C, S, S) images -> (B, K) logits through ``mlp_layers`` and a dropout + linear head: any
    image size and channel count. ``width`` is not used: the hidden widths are the paper's."""

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int = 0,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.trunk, features = mlp_layers(channels * size * size)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))  # (B, K) logits for CrossEntropyLoss


# ImageNet statistics averaged over RGB: a grey image replicated to 3 channels and normalised per
# channel is close to this single normalisation applied before the channel-summed first conv.
IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = 0.449, 0.226


class ResNet18Small(nn.Module):
    """torchvision's ResNet-18 for small images: (B, C, S, S) in [-1, 1] -> (B, K) logits.

    The ImageNet stem (7x7 stride-2 conv, then a stride-2 max-pool) would shrink 28x28 to 7x7
    before the first block; here the 7x7 conv has stride 1 and the max-pool is gone, so 28x28 runs
    through the four stages at 28, 14, 7, 4 (the usual CIFAR adaptation). The 7x7 kernel is kept
    so ImageNet weights still fit. ``width`` is not used: ResNet-18's widths are fixed.
    """

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=1, padding=3, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()  # the trunk ends at the 512 pooled features
        self.trunk = net
        self.head = nn.Linear(512, num_classes)
        rgb_mean, rgb_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        self.register_buffer("rgb_mean", rgb_mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", rgb_std.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2  # [-1, 1] -> [0, 1], then ImageNet's normalisation
        if x.shape[1] == 3:
            return self.head(self.trunk((x - self.rgb_mean) / self.rgb_std))  # (B, K)
        x = (x - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD
        return self.head(self.trunk(x))  # (B, K)


CLASSIFIERS = {"bn-cnn": BatchNormCNN, "seed-cnn": SeedCNN, "resnet18": ResNet18Small, "mlp": MLP}


def build_classifier(arch: str, image_shape: tuple[int, int, int], num_classes: int,
                     width: int, *, norm: str = "batch") -> nn.Module:
    """A classifier with ``.trunk`` and ``.head``; ``norm`` is seed-cnn's trunk norm (it must match
    a discriminator whose trunk it starts from)."""
    if arch not in CLASSIFIERS:
        raise ValueError(f"unknown classifier arch {arch!r}; known: {', '.join(CLASSIFIERS)}")
    c, h, _ = image_shape
    extra = {"norm": norm} if arch == "seed-cnn" else {}
    return CLASSIFIERS[arch](channels=c, size=h, num_classes=num_classes, width=width, **extra)


def trunk_norm(trunk_state: dict[str, torch.Tensor]) -> str:
    """The ConvTrunk norm a state dict was saved from: batch norm leaves running statistics."""
    return "batch" if any(k.endswith("running_mean") for k in trunk_state) else "none"


# --------------------------------------------------------------------------- starting weights


def imagenet_weights_path() -> Path:
    """Where torch hub keeps torchvision's ImageNet ResNet-18 ($TORCH_HOME/hub/checkpoints/...)."""
    name = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]  # resnet18-f37072fd.pth
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def imagenet_trunk_state(channels: int) -> dict[str, torch.Tensor]:
    """ImageNet ResNet-18 weights for ``ResNet18Small.trunk``, read from the local torch hub cache.

    Never downloads: a missing file is an error that says where to put it. For 1-channel images
    the first conv's RGB kernels are summed, which is exactly the response to a grey image
    replicated over R, G and B.
    """
    path = imagenet_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier.init torchvision needs torchvision's ImageNet ResNet-18 weights at {path} "
            f"(torch hub cache, $TORCH_HOME/hub/checkpoints); ganft never downloads them. Copy "
            f"{ResNet18_Weights.IMAGENET1K_V1.url} there, e.g. from a machine with internet where "
            f"`python -c \"import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')\"` "
            f"has fetched it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet head goes
    conv1 = state["conv1.weight"]  # (64, 3, 7, 7)
    if channels == 1:
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)  # (64, 1, 7, 7)
    elif channels != 3:
        raise ValueError(f"ImageNet weights need 1- or 3-channel images, not {channels}")
    return state

