"""Sample a labelled synthetic set from a conditional generator: exact count, class balanced."""

from __future__ import annotations

import torch

from ganft.data import Images
from ganft.models.gan import Generator
from ganft.runtime import make_generator


def synthetic_count(ratio: float, n_real: int) -> int:
    """round(ratio x N) images (Python's round: halves go to the even neighbour)."""
    return round(ratio * n_real)


def class_counts(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """n split over classes as evenly as possible: counts differ by at most one, and which classes
    get the extra image is drawn from ``gen`` (so no class is always favoured)."""
    counts = torch.full((num_classes,), n // num_classes, dtype=torch.long)
    extra = torch.randperm(num_classes, generator=gen)[: n % num_classes]
    counts[extra] += 1
    return counts


def sample_synthetic(generator: Generator, n: int, num_classes: int, *, seed: int,
                     device: torch.device, batch_size: int = 2048) -> Images:
    """n labelled images from ``generator``, class balanced, on ``device``; same seed, same bits."""
    cpu_gen = make_generator(seed)  # counts and labels on the CPU, noise on the device
    labels = torch.repeat_interleave(torch.arange(num_classes), class_counts(n, num_classes, cpu_gen))
    labels = labels[torch.randperm(n, generator=cpu_gen)].to(device)  # (n,) shuffled
    noise_gen = make_generator(seed, device)
    generator.eval()
    chunks = []
    with torch.inference_mode():
        for y in labels.split(batch_size):
            z = torch.randn(len(y), generator.z_dim, generator=noise_gen, device=device)
            chunks.append(generator(z, y))
        x = torch.cat(chunks) if chunks else torch.empty(0, *_image_shape(generator), device=device)
    # clone outside inference mode: inference tensors cannot be saved for a later backward pass
    return Images(x.clone(), labels.clone())


def _image_shape(generator: Generator) -> tuple[int, int, int]:
    return (generator.channels, generator.size, generator.size)
