"""The seed article's DCGAN + classifier pipeline: the speed reference ganft is measured against.

This is the article's code path kept as it was written (pytorch/examples' DCGAN: nz = 100,
ngf = ndf = 64, a torchvision-style dataset that turns every image into a PIL image and back each
epoch, a DataLoader with 2 workers, BCELoss on sigmoid outputs, separate D passes for real and
fake), on the same data source as ganft (Fashion-MNIST's IDX files). It is the baseline, not
something to optimise, so its layer stacks are written out here rather than imported from ganft
(a change to ganft's models must not move the reference).

Only the bugs that stop it from running are fixed:
  1. the generator is fed noise of shape (N, 100, 1, 1), not (N, 100);
  2. the data are resized to 64x64 in the DataLoader's transform, since the generator emits 64x64
     images and the discriminator expects them (the article feeds 28x28 images);
  3. the discriminator's (N, 1, 1, 1) output is flattened to (N,) to match the labels;
  4. models and batches are moved to the device;
  5. the classifier returns logits: the Softmax before CrossEntropyLoss is removed.
(The article's generated images carry no labels and are never used in fine-tuning; that does not
stop it from running, so the reference keeps training its classifier on real images.)

    python bench/seed_reference.py --steps 5      # prints GAN and classifier images per second
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

NZ, NGF, NDF, NC = 100, 64, 64, 1


class IdxImages(Dataset):
    """Like torchvision's FashionMNIST: uint8 arrays in memory, a PIL image per item per epoch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i], mode="L")
        return self.transform(img), int(self.labels[i])


def weights_init(m: nn.Module) -> None:
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(NZ, NGF * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(NGF * 8), nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 8, NGF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 4), nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 4, NGF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 2), nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF), nn.ReLU(True),
            nn.ConvTranspose2d(NGF, NC, 4, 2, 1, bias=False), nn.Tanh(),  # (N, 1, 64, 64)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


def conv_body() -> list[nn.Module]:
    """The discriminator's body, 64x64 -> (N, 8ndf, 4, 4); the classifier has the same shape."""
    return [
        nn.Conv2d(NC, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 2, NDF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 4, NDF * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 8), nn.LeakyReLU(0.2, inplace=True),
    ]


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(*conv_body(), nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)  # fix 3: (N, 1, 1, 1) -> (N,)


class Classifier(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.main = nn.Sequential(*conv_body(), nn.Conv2d(NDF * 8, num_classes, 4, 1, 0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten(1)  # fix 5: logits, no Softmax


def loader(images: np.ndarray, labels: np.ndarray, batch_size: int = 64, workers: int = 2) -> DataLoader:
    transform = transforms.Compose([transforms.Resize(64), transforms.ToTensor(),  # fix 2: resize to 64
                                    transforms.Normalize((0.5,), (0.5,))])
    return DataLoader(IdxImages(images, labels, transform), batch_size=batch_size, shuffle=True,
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0)


def _images_per_second(data: DataLoader, steps: int, warmup: int,
                       step: Callable[[torch.Tensor, torch.Tensor], None]) -> float:
    """Run ``step(images, labels)`` on the loader's batches (re-iterating it, as the article's
    epochs do) for ``warmup + steps`` iterations; images per second after the warm-up."""
    it, done, t0 = iter(data), 0, 0.0
    while done < warmup + steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(data)
            continue
        if done == warmup:
            t0 = time.perf_counter()
        step(x, y)
        done += 1
    return steps * data.batch_size / (time.perf_counter() - t0)


def gan_images_per_second(data: DataLoader, steps: int, device: torch.device, warmup: int = 2) -> float:
    """The article's training loop for ``warmup + steps`` iterations; images per second after warm-up."""
    netG, netD = Generator().to(device), Discriminator().to(device)  # fix 4
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(real: torch.Tensor, _: torch.Tensor) -> None:
        real = real.to(device)
        b = real.size(0)
        netD.zero_grad()
        errD_real = criterion(netD(real), torch.full((b,), 1.0, device=device))
        errD_real.backward()
        noise = torch.randn(b, NZ, 1, 1, device=device)  # fix 1
        fake = netG(noise)
        errD_fake = criterion(netD(fake.detach()), torch.full((b,), 0.0, device=device))
        errD_fake.backward()
        optD.step()
        netG.zero_grad()
        errG = criterion(netD(fake), torch.full((b,), 1.0, device=device))
        errG.backward()
        optG.step()
        errG.item()  # the article prints its losses every step

    return _images_per_second(data, steps, warmup, step)


def classifier_images_per_second(data: DataLoader, steps: int, device: torch.device, warmup: int = 2) -> float:
    model = Classifier().to(device)
    model.apply(weights_init)
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    return _images_per_second(data, steps, warmup, step)


def fashion_arrays(root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's training images as uint8 (N, 28, 28), from the same IDX files ganft reads
    (the Debian package's folder, or ``root``)."""
    from pathlib import Path

    from ganft.datasets import DEBIAN_FASHION_DIR, FASHION_FILES, read_idx

    folder = Path(root) if root else DEBIAN_FASHION_DIR
    img_name, lbl_name = FASHION_FILES["train"]
    return read_idx(folder / f"{img_name}.gz"), read_idx(folder / f"{lbl_name}.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", help="folder of Fashion-MNIST IDX .gz files (default: the Debian package's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    images, labels = fashion_arrays(args.root)
    data = loader(images, labels)
    print(f"seed reference GAN:        {gan_images_per_second(data, args.steps, device):8.1f} images/s")
    print(f"seed reference classifier: {classifier_images_per_second(data, args.steps, device):8.1f} images/s")


if __name__ == "__main__":
    main()
