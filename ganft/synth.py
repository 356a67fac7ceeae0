"""The images an arm adds: a labelled synthetic set sampled from a generator (exact count, class
balanced), self-training's pseudo-labelled real images, and the oracle control's real labelled ones.

A conditional generator labels its images with the class it was asked for (``sample_synthetic``).
With ``synth.min_confidence`` > 0, or for an unconditional generator, a classifier trained on the
real subset (the labeller) also sees every image (``sample_labelled``): a conditional image is kept
only if the labeller gives its conditioning label at least that probability (filtering); an
unconditional image gets the labeller's most probable class as its label (a pseudo-label, the seed
article's set-up) and is kept only if that probability reaches the threshold. Images are drawn
until every class has its quota, so the count and the balance stay exact, and the fraction of drawn
images that passed is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganft.config import SynthConfig
from ganft.images import Images, LabelProbe
from ganft.labeller import predict_labels
from ganft.models.gan import Generator
from ganft.runtime import autocast, make_generator

log = logging.getLogger(__name__)
MAX_DRAWS_PER_IMAGE = 20  # give up on a class quota after drawing 20x the images asked for


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


def sample_synthetic(generator: Generator | nn.Module, n: int, num_classes: int, *, seed: int,
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
            with autocast(device):
                chunks.append(generator(z, y).float())
        x = torch.cat(chunks) if chunks else torch.empty(0, *_image_shape(generator), device=device)
    # clone outside inference mode: inference tensors cannot be saved for a later backward pass
    return Images(x.clone(), labels.clone())


def _image_shape(generator: nn.Module) -> tuple[int, int, int]:
    return (generator.channels, generator.size, generator.size)


# --------------------------------------------------------------------------- filtering


def _conditioning_label(probs: torch.Tensor, y_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return y_cond, probs.gather(1, y_cond[:, None]).squeeze(1)  # label, its probability


def _pseudo_label(probs: torch.Tensor, y_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    conf, label = probs.max(dim=1)
    return label, conf


# gan.conditioning -> (how an image gets its label and confidence, the kept-fraction metric name)
LABEL_RULES = {"projection": (_conditioning_label, "synth/kept_fraction"),
               "acgan": (_conditioning_label, "synth/kept_fraction"),
               "none": (_pseudo_label, "synth/pseudo_label_kept_fraction")}


def sample_labelled(generator: nn.Module, n: int, num_classes: int, labeller: nn.Module, *,
                    conditioning: str, min_confidence: float, seed: int, device: torch.device,
                    batch_size: int = 1024) -> tuple[Images, dict[str, float]]:
    """n images whose labels the labeller confirms (conditional) or gives (unconditional) with
    probability >= min_confidence, class balanced; fewer only if a class quota cannot be filled
    within MAX_DRAWS_PER_IMAGE * n draws (``synth/shortfall`` says how many are missing)."""
    label_fn, kept_name = LABEL_RULES[conditioning]
    cpu_gen, noise_gen = make_generator(seed), make_generator(seed, device)
    need = class_counts(n, num_classes, cpu_gen).to(device)  # (K,) images still wanted per class
    xs, ys, drawn, passed = [], [], 0, 0
    generator.eval()
    labeller.eval()
    with torch.inference_mode():
        while int(need.sum()) > 0 and drawn < MAX_DRAWS_PER_IMAGE * n:
            m = min(batch_size, max(64, 2 * int(need.sum())))
            classes = torch.arange(num_classes, device=device)
            wanted = torch.repeat_interleave(classes, need)  # one entry per missing image
            y_cond = wanted[torch.randint(len(wanted), (m,), generator=cpu_gen).to(device)]  # (m,)
            with autocast(device):
                x = generator(torch.randn(m, generator.z_dim, generator=noise_gen, device=device), y_cond)
                x = x.float()  # (m, C, H, W): stored with the fp32 real images
                label, conf = label_fn(F.softmax(labeller(x).float(), dim=1), y_cond)  # (m,), (m,)
            ok = conf >= min_confidence
            # 1-based rank of each passing image among the passing images of its class in this draw
            counts = (F.one_hot(label, num_classes) * ok[:, None]).cumsum(0)  # (m, K)
            rank = counts.gather(1, label[:, None]).squeeze(1)
            take = ok & (rank <= need[label])
            xs.append(x[take])
            ys.append(label[take])
            need -= torch.bincount(label[take], minlength=num_classes)
            drawn, passed = drawn + m, passed + int(ok.sum())
        x, y = torch.cat(xs), torch.cat(ys)
        order = torch.randperm(len(y), generator=cpu_gen).to(device)
    if len(y) < n:
        log.warning("synthetic set: %d of %d images after %d draws (min_confidence %.2f)", len(y), n,
                    drawn, min_confidence)
    metrics = {kept_name: passed / max(drawn, 1), "synth/count": float(len(y)),
               "synth/shortfall": float(n - len(y))}
    return Images(x[order].clone(), y[order].clone()), metrics  # clones: usable outside inference mode


def synthesise(cfg: SynthConfig, generator: nn.Module, n: int, num_classes: int,
               labeller: Callable[[], nn.Module], *, conditioning: str, seed: int,
               device: torch.device) -> tuple[Images, dict[str, float]]:
    """The trial's synthetic set and its synth/ metrics: plain conditional sampling, or labelled and
    filtered by the real-subset classifier (``labeller()`` is trained only on this path).
    ``conditioning`` is the GAN's (``gan.conditioning``): how an image gets its label."""
    if conditioning != "none" and cfg.min_confidence == 0:
        images = sample_synthetic(generator, n, num_classes, seed=seed, device=device)
        return images, {"synth/count": float(len(images))}
    return sample_labelled(generator, n, num_classes, labeller(), conditioning=conditioning,
                           min_confidence=cfg.min_confidence, seed=seed, device=device)


# --------------------------------------------------------------------------- real unlabelled images


def self_training_set(unlabelled: torch.Tensor, n: int, num_classes: int, labeller: nn.Module, *,
                      min_confidence: float, seed: int, device: torch.device,
                      probe: LabelProbe | None = None) -> tuple[Images, dict[str, float]]:
    """Self-training's added set: n real unlabelled images with the labeller's labels, class balanced
    like a synthetic set, the most confident of each class first and none below min_confidence
    (fewer only where a class has too few such images: ``synth/shortfall``). ``probe`` (the images'
    true labels, for the metric only) gives ``synth/pseudo_label_precision``."""
    label, conf = predict_labels(labeller, unlabelled, device)
    gen = make_generator(seed)
    need = class_counts(n, num_classes, gen)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero((label == c) & (conf >= min_confidence)).squeeze(1)
        picked.append(idx[conf[idx].argsort(descending=True)[: int(need[c])]])
    idx = torch.cat(picked)
    idx = idx[torch.randperm(len(idx), generator=gen)]
    if len(idx) < n:
        log.warning("self-training set: %d of %d images at min_confidence %.2f", len(idx), n, min_confidence)
    metrics = {"synth/count": float(len(idx)), "synth/shortfall": float(n - len(idx)),
               "synth/self_training_confident_fraction": float((conf >= min_confidence).float().mean())
               if len(conf) else 0.0}
    if probe is not None and len(idx):
        right = probe.correct(idx, label[idx], torch.ones(len(idx), dtype=torch.bool))
        metrics["synth/pseudo_label_precision"] = float(right) / len(idx)
    return Images(unlabelled[idx].to(device), label[idx].to(device)), metrics


# --------------------------------------------------------------------------- the oracle control


def oracle_set(pool: Images, n: int, num_classes: int, *, seed: int, device: torch.device) -> Images:
    """The oracle's added set: n real labelled images of ``pool`` (data.oracle_pool), class balanced
    as a synthetic set is (counts differ by at most one), drawn without replacement by ``seed``: a
    perfect generator. A class with too few images is an error naming the counts (the study file's
    check, catalog.check_oracle, catches this before any work)."""
    gen = make_generator(seed)
    need = class_counts(n, num_classes, gen)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(pool.y == c).squeeze(1)
        if len(idx) < int(need[c]):
            raise ValueError(f"synth.source oracle needs {int(need[c])} labelled images of class {c} outside "
                             f"the budget and the unlabelled pool, and the training split has {len(idx)}")
        picked.append(idx[torch.randperm(len(idx), generator=gen)[: int(need[c])]])
    idx = torch.cat(picked)
    return pool.take(idx[torch.randperm(len(idx), generator=gen)]).to(device)
