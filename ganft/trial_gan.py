"""The trial's GAN: what it learns from (``gan.train_on``), its key in the checkpoint store, and the
GAN itself, trained once per key and reused by every trial that needs the same one (every ratio of
a grid shares the GAN of its (budget, seed)).

What it learns from:
- ``budget``: the budget's training images with their labels (closed set: the GAN knows nothing the
  classifier does not).
- ``budget+unlabelled``: the budget's images with their labels and the ``data.unlabelled_size``
  images with the labels the real-subset classifier gives them: S2GAN (Lucic et al., 2019, "High-
  fidelity image generation with fewer labels"), which pseudo-labels the unlabelled real images with
  a classifier trained on the few labelled ones and trains the conditional GAN on all of them. An
  unconditional GAN (``gan.conditioning none``) ignores those labels and learns from all the images.
- ``transfer``: a GAN first trained for ``gan.source_steps`` on ``gan.transfer_source`` (the unlabelled
  images, pseudo-labelled as above, or another built-in dataset's training split with its own labels,
  resized and converted to the target's shape), stored like any GAN, then trained ``gan.steps`` more
  on the budget from those weights (Wang et al., 2018, "Transferring GANs"; G and its EMA start from
  the source's sampling generator), the discriminator's first ``gan.freeze_d`` stages frozen (FreezeD,
  Mo et al., 2020).

The unlabelled images come from ``data.unlabelled_images``, pixels only; labels here are always the
budget's own or the budget-trained labeller's. Of the labelled images a GAN sees only the budget's
training part; its best step, when chosen at all, is chosen on the budget's validation part
(``selection.gan_scorer``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ganft.config import DataConfig, DiffusionConfig, GanConfig
from ganft.data import splits_for
from ganft.datasets import LOADER_VERSION
from ganft.gan_train import (
    GAN_VERSION,
    SAMPLES_PER_CLASS,
    Scores,
    build_discriminator,
    build_generator,
    train_gan,
)
from ganft.images import Budget, Images, Splits, resize_images
from ganft.labeller import Labeller, predict_labels
from ganft.models.gan import trunk_state_for_classifier
from ganft.progress import Progress, load_or_resume
from ganft.runtime import prepare_model
from ganft.selection import SELECTION_VERSION, curve_scorer, gan_scorer
from ganft.store import CheckpointCache, config_ident, content_key, images_digest, tensor_digest
from ganft.tracker import Tracker, log_image_tensor

log = logging.getLogger(__name__)
# Bump when what a GAN learns from changes for the same config and data (this file: pseudo-labels,
# joining, resizing a transfer source); the training itself has gan_train.GAN_VERSION.
SOURCES_VERSION = 1
NOT_IN_KEY = {"curve_every"}  # GAN settings that do not change its weights (and were added later)
# settings added later, left out of the key at these values, so GANs stored before them keep theirs
ADDED_AT = {"pseudo_label_min_confidence": 0.0}


def key_fields(cfg: GanConfig) -> dict[str, Any]:
    """The GAN config as its cache key holds it."""
    return config_ident(cfg, ADDED_AT, NOT_IN_KEY)


# --------------------------------------------------------------------------- what is stored


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


@dataclass
class CachedGan:
    """A trained GAN as the store keeps it."""

    state_dict: dict[str, torch.Tensor]  # the generator used for sampling (EMA when enabled)
    samples: torch.Tensor  # fixed-noise sample grid images
    metrics: dict[str, float]  # the training run's final gan/... metrics
    disc_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the trained discriminator

    def payload(self) -> dict[str, Any]:
        return {"state_dict": _cpu(self.state_dict), "samples": self.samples.cpu(),
                "metrics": {k: float(v) for k, v in self.metrics.items()},
                "disc_state": _cpu(self.disc_state)}

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> CachedGan:
        return cls(obj["state_dict"], obj["samples"], dict(obj["metrics"]), obj.get("disc_state", {}))


def train_stored(cfg: GanConfig, images: Images, num_classes: int, *, seed: int, device: torch.device,
                 diffusion: DiffusionConfig | None = None, **kw: Any) -> CachedGan:
    """``train_gan`` of ``cfg`` on ``images`` (gan.arch ddpm: ``diffusion.train_diffusion`` with
    ``diffusion``), as the store keeps it (``kw``: tracker, scores, init, progress)."""
    if cfg.arch == "ddpm":
        from ganft.diffusion import train_diffusion

        kw.pop("init", None)  # config.check_diffusion refuses transfer: there is nothing to start from
        res = train_diffusion(cfg, diffusion or DiffusionConfig(), images, num_classes, seed=seed,
                              device=device, **kw)
        return CachedGan(res.generator.state_dict(), res.samples, res.metrics)
    res = train_gan(cfg, images, num_classes, seed=seed, device=device, **kw)
    return CachedGan(res.generator.state_dict(), res.samples, res.metrics, res.discriminator.state_dict())


def load_or_train(cache: CheckpointCache | None, key: str,
                  train: Callable[[Progress], CachedGan]) -> tuple[CachedGan, bool]:
    """The GAN stored under ``key`` (True), else trained now, from its saved progress if a killed
    run left some, and stored (False)."""
    obj, hit = load_or_resume(cache, key, lambda progress: train(progress).payload())
    return CachedGan.from_payload(obj), hit


@dataclass(frozen=True)
class TrialGan:
    """A trial's trained GAN and what rebuilding its networks needs."""

    cfg: GanConfig
    entry: CachedGan
    image_shape: tuple[int, int, int]
    num_classes: int
    trained: bool  # trained by this trial (False: loaded from the store)
    diffusion: DiffusionConfig | None = None  # gan.arch ddpm: the model's settings
    key: str = ""  # its key in the store (gan_key)

    def generator(self, device: torch.device) -> nn.Module:
        """The sampling generator, eval mode, on ``device``."""
        if self.cfg.arch == "ddpm":
            from ganft.diffusion import build_diffusion

            G = build_diffusion(self.cfg, self.diffusion or DiffusionConfig(), self.image_shape,
                                self.num_classes)
        else:
            G = build_generator(self.cfg, self.image_shape, self.num_classes)
        G.load_state_dict(self.entry.state_dict)
        return prepare_model(G, device).eval()

    def discriminator_trunk(self) -> dict[str, torch.Tensor]:
        """D's conv trunk as a classifier trunk state (spectral norm materialised, heads dropped)."""
        if not self.entry.disc_state:
            raise ValueError("the GAN cache entry holds no discriminator (an entry from an older ganft?); "
                             "delete it from .ganft-cache/gan/ so the GAN is trained again")
        D = build_discriminator(self.cfg, self.image_shape, self.num_classes)
        D.load_state_dict(self.entry.disc_state)
        return trunk_state_for_classifier(D)


# --------------------------------------------------------------------------- what a GAN learns from


def pseudo_labelled(unlabelled: torch.Tensor, labeller: Labeller, device: torch.device,
                    min_confidence: float = 0.0) -> Images:
    """The unlabelled images with the real-subset classifier's labels, those it gives at least
    ``min_confidence`` probability."""
    labels, conf = predict_labels(labeller(), unlabelled, device)
    if not min_confidence:
        return Images(unlabelled, labels)
    keep = conf >= min_confidence
    return Images(unlabelled[keep.to(unlabelled.device)], labels[keep])


def label_threshold(cfg: GanConfig) -> float:
    """The pseudo-label threshold a GAN applies: only a conditional GAN uses the labels."""
    return cfg.pseudo_label_min_confidence if cfg.conditioning != "none" else 0.0


def join(a: Images, b: Images) -> Images:
    return Images(torch.cat([a.x, b.x.to(a.x.device)]), torch.cat([a.y, b.y.to(a.y.device)]))


def gan_images(cfg: GanConfig, budget: Budget, unlabelled: torch.Tensor, labeller: Labeller,
               device: torch.device) -> Images:
    """The images (and labels) the GAN trains on in the trial itself (after any source run)."""
    if cfg.train_on == "budget+unlabelled":
        return join(budget.train, pseudo_labelled(unlabelled, labeller, device, label_threshold(cfg)))
    return budget.train  # budget, and transfer's fine-tuning


def to_shape(images: Images, shape: tuple[int, int, int]) -> Images:
    """A source dataset's images in the target's (C, H, W): grey <-> RGB by channel mean or repeat,
    then resized as pretraining sources are (``images.resize_images``)."""
    c = shape[0]
    x = images.x
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x[:, :1].expand(-1, c, -1, -1).contiguous()
    return resize_images(Images(x, images.y), shape)


def source_images(cfg: GanConfig, splits: Splits, unlabelled: torch.Tensor, labeller: Labeller,
                  device: torch.device) -> Images:
    """``gan.transfer_source``'s images and labels, in the target's shape."""
    name = cfg.transfer_source
    if name == "unlabelled":
        return pseudo_labelled(unlabelled, labeller, device, label_threshold(cfg))
    source = splits_for(DataConfig(dataset=name))
    if source.num_classes != splits.num_classes:
        raise ValueError(f"gan.transfer_source {name} has {source.num_classes} classes and "
                         f"{splits.name} {splits.num_classes}: a conditional GAN's class layers cannot be "
                         f"transferred; pick a source with {splits.num_classes} classes or transfer_source "
                         f"unlabelled")
    return to_shape(source.train, splits.image_shape)


def source_config(cfg: GanConfig) -> GanConfig:
    """The source run's GAN config: the trial's recipe for ``source_steps``, no selection, nothing frozen."""
    return cfg.model_copy(update={"steps": cfg.source_steps, "train_on": "budget", "freeze_d": 0,
                                  "eval_every": 0, "curve_every": 0})


def source_key(cfg: GanConfig, source: Images, seed: int) -> str:
    """The source GAN's key: its images and labels by content, its seed, recipe and code version."""
    return content_key({"transfer_source": cfg.transfer_source, "images": images_digest(source),
                        "seed": seed, "gan": key_fields(source_config(cfg)),
                        "version": GAN_VERSION})


def source_gan(cfg: GanConfig, source: Images, num_classes: int, *, seed: int, device: torch.device,
               cache: CheckpointCache | None) -> tuple[CachedGan, bool]:
    """The source GAN of a ``transfer`` trial (trained once per source, seed and recipe) and whether
    it came from the store."""

    def train(progress: Progress) -> CachedGan:
        log.info("transfer: training the source GAN (%d steps on %d %s images)", cfg.source_steps,
                 len(source), cfg.transfer_source)
        return train_stored(source_config(cfg), source, num_classes, seed=seed, device=device,
                            progress=progress)

    key = source_key(cfg, source, seed)
    entry, hit = load_or_train(cache, key, train)
    if hit:
        log.info("transfer: source GAN %s reused from the cache", key)
    return entry, hit


# --------------------------------------------------------------------------- the trial's GAN


def sources_ident(cfg: GanConfig, unlabelled: torch.Tensor, labeller: Labeller) -> dict[str, Any]:
    """What else determines a GAN that does not learn from the budget alone: the unlabelled images by
    content, the labeller that labels them, and a built-in transfer source's loader."""
    if cfg.train_on == "budget":
        return {}
    ident: dict[str, Any] = {"sources_version": SOURCES_VERSION}
    if cfg.learns_unlabelled:
        ident["unlabelled"] = tensor_digest(unlabelled)
        ident["labeller"] = labeller.ident
    if cfg.train_on == "transfer" and cfg.transfer_source != "unlabelled":
        ident["source_loader"] = LOADER_VERSION
    return ident


def gan_key(cfg: GanConfig, *, seed: int, budget: Budget, splits: Splits, unlabelled: torch.Tensor,
            labeller: Labeller, diffusion: DiffusionConfig | None = None) -> str:
    """Everything that determines the generator: the images it trains on (by content, so the
    validation protocol, N and the subset seed are covered), the images and the labeller whose
    features pick its best step (``gan.eval_every`` > 0 only), its seed, the GAN config and the code
    versions (gan.arch ddpm: also the diffusion settings). Not the ratio, and not the classifier
    unless its labeller picks the best step."""
    selects = cfg.eval_every > 0
    family: dict[str, Any] = {}
    if cfg.arch == "ddpm":  # only then: the keys of every GAN stored before diffusion existed stay
        from ganft.diffusion import DIFFUSION_VERSION

        family = {"diffusion": (diffusion or DiffusionConfig()).model_dump(mode="json"),
                  "diffusion_version": DIFFUSION_VERSION}
    return content_key({
        "dataset": splits.name, "train": images_digest(budget.train),
        "select": images_digest(budget.val) if selects else None,
        "select_features": labeller.ident if selects else None,
        "seed": seed, "gan": key_fields(cfg),
        "version": [GAN_VERSION, SELECTION_VERSION if selects else None],
        **sources_ident(cfg, unlabelled, labeller), **family})


def _family(cfg: GanConfig) -> str:
    """What a log line calls the generator: a diffusion model is not a GAN."""
    return "diffusion model" if cfg.arch == "ddpm" else "GAN"


def obtain_gan(cfg: GanConfig, *, seed: int, budget: Budget, splits: Splits, unlabelled: torch.Tensor,
               labeller: Labeller, device: torch.device, tracker: Tracker,
               cache: CheckpointCache | None, diffusion: DiffusionConfig | None = None) -> TrialGan:
    """The trained GAN for (dataset, budget images, seed, GAN config), trained now or loaded from
    the store; its sample grid, metrics and cache state go to ``tracker``. ``diffusion``: the
    diffusion section, used by gan.arch ddpm."""
    key = gan_key(cfg, seed=seed, budget=budget, splits=splits, unlabelled=unlabelled, labeller=labeller,
                  diffusion=diffusion)

    def train(progress: Progress) -> CachedGan:
        images = gan_images(cfg, budget, unlabelled, labeller, device)
        init, extra = None, {}
        if cfg.train_on == "transfer":
            source = source_images(cfg, splits, unlabelled, labeller, device)
            src, src_hit = source_gan(cfg, source, splits.num_classes, seed=seed, device=device, cache=cache)
            init = (src.state_dict, src.disc_state)
            extra = {"gan/source_cached": float(src_hit), "gan/source_images": float(len(source)),
                     "gan/source_g_steps": src.metrics.get("gan/g_steps", float("nan"))}
        log.info("%s %s: training (%d steps on %d images, %s)", _family(cfg), key, cfg.steps, len(images),
                 cfg.train_on)
        extra["gan/train_images"] = float(len(images))
        scores = Scores(select=gan_scorer(cfg, budget, labeller, device) if cfg.eval_every else None,
                        curve=curve_scorer(cfg, budget, labeller, device) if cfg.curve_every else None)
        made = train_stored(cfg, images, splits.num_classes, seed=seed, device=device, tracker=tracker,
                            scores=scores, init=init, diffusion=diffusion, progress=progress)
        made.metrics.update(extra)
        return made

    tracker.set_tags({"gan.key": key})  # now: `study status` finds a training's saved progress by it
    entry, hit = load_or_train(cache, key, train)  # a second worker needing it waits, then loads it
    if hit:
        log.info("%s %s: reused from the cache", _family(cfg), key)
    tracker.set_tags({"gan.cache": "hit" if hit else "miss"})
    tracker.log_metrics(entry.metrics)
    rows, labels = real_beside_generated(entry.samples, budget.train, splits.classes,
                                         conditional=cfg.conditioning != "none")
    log_image_tensor(tracker, rows, "gan_samples.png", nrow=SAMPLES_PER_CLASS, row_labels=labels)
    return TrialGan(cfg, entry, splits.image_shape, splits.num_classes, trained=not hit, diffusion=diffusion,
                    key=key)


def real_beside_generated(samples: torch.Tensor, real: Images, classes: tuple[str, ...] | list[str], *,
                          conditional: bool = True) -> tuple[torch.Tensor, list[str]]:
    """The sample grid's rows: per class, up to SAMPLES_PER_CLASS budget images of that class (the
    first ones, padded with blank tiles), then its generated row, so a reader compares like with like.
    ``samples``: (K * SAMPLES_PER_CLASS, C, H, W), class by class. Returns (2K * SAMPLES_PER_CLASS,
    C, H, W) and the row labels (an unconditional GAN's rows are not classes, and say so)."""
    per = SAMPLES_PER_CLASS
    rows, labels = [], []
    for k, name in enumerate(classes):
        mine = real.x[real.y == k][:per].to(samples)
        blank = torch.ones((per - len(mine), *samples.shape[1:]), dtype=samples.dtype, device=samples.device)
        rows += [torch.cat([mine, blank]), samples[k * per:(k + 1) * per]]
        labels += [f"{name} (real)", f"{name} (GAN)" if conditional else "GAN (no class)"]
    return torch.cat(rows), labels


class GanOnDemand:
    """The trial's GAN, obtained on the first call (``obtain_gan``) and kept: the arm that samples
    it and a classifier that starts from its discriminator share one, and a trial that needs
    neither never obtains it."""

    def __init__(self, obtain: Callable[[], TrialGan]) -> None:
        self._obtain, self._gan = obtain, None

    def __call__(self) -> TrialGan:
        if self._gan is None:
            self._gan = self._obtain()
        return self._gan

    @property
    def trained_here(self) -> bool:
        return self._gan is not None and self._gan.trained
