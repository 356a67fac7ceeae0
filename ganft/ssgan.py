"""The semi-supervised GAN (Salimans et al., NeurIPS 2016, "Improved Techniques for Training
GANs"): the GAN's own best case for a classifier with few labels (``synth.source ssgan``). The
classifier *is* the discriminator, and the generator's samples are never added to a training set.

D has K class logits l(x) and a fake class whose logit is fixed at 0, so with Z(x) = sum_k exp l_k(x)
the probability that x is real is D(x) = Z / (Z + 1) = sigmoid(logsumexp l(x)) (``real_logit``).
Each step trains D on a labelled batch of the budget (cross-entropy over the K classes), a batch of
unlabelled images (real: -log D) and a batch of generated images (fake: -log(1 - D)), the last two
weighted ``ssgan.unlabelled_weight`` and halved as in the paper's code; then the generator by
feature matching: the squared distance between the mean of D's ``FEATURE_LAYER`` output on the
unlabelled batch and on a fresh generated batch. The unlabelled images' labels never enter: this
module is never given them.

D has the shape of ``classifier.arch`` (``discriminator_trunk``: seed-cnn, bn-cnn or mlp, the
paper's MNIST network) without batch norm, which would mix the statistics of real and generated
batches, with the paper's regularisers: weight normalisation of every conv and linear layer,
Gaussian noise on the inputs (and, with ``ssgan.hidden_noise``, after every hidden activation) and
dropout before the head, in training only. Its weights start from PyTorch's default initialisation:
with DCGAN's N(0, 0.02) the logits start so small that the supervised loss barely moves for a
hundred steps. The generator is ganft's size-aware DCGAN generator, unconditional. What the trial
evaluates is the EMA of D's weights after exactly ``classifier.steps`` steps: nothing is selected. A
trained D is kept in the checkpoint store like a GAN (``SSGAN_VERSION`` in its key).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.optim import lr_scheduler

from ganft.config import ClassifierConfig, GanConfig, SsganConfig, TrialConfig
from ganft.finetune import SCHEDULES, FinetuneResult, draw_batches
from ganft.fixmatch import ema_model, fixed_budget_result, pool_batches
from ganft.gan_train import NonFiniteLossError
from ganft.images import Images
from ganft.models.classifier import mlp_layers
from ganft.models.gan import ConvTrunk, Generator
from ganft.progress import NO_PROGRESS, Progress, load_or_resume
from ganft.runtime import autocast, derive_seed, make_generator, prepare_model, seeded
from ganft.store import CheckpointCache, config_ident, content_key, images_digest, tensor_digest
from ganft.tracker import NULL_TRACKER, Tracker

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
SSGAN_VERSION = 1  # bump when a trained D for the same key would differ
FEATURE_LAYER = "trunk"  # the intermediate layer feature matching compares: D's flattened conv features
ADAM_BETAS = (0.5, 0.999)  # the paper's
# settings added later, left out of a stored D's key at these values, so Ds stored before keep theirs
ADDED_AT = {"hidden_noise": 0.0}


class SemiSupervisedD(nn.Module):
    """(B, C, S, S) images -> (B, K) class logits; the real/fake logit is ``real_logit`` of them."""

    def __init__(self, *, arch: str, channels: int, size: int, num_classes: int, width: int,
                 input_noise: float, dropout: float, hidden_noise: float = 0.0) -> None:
        super().__init__()
        self.input_noise = input_noise
        self.trunk, features = discriminator_trunk(arch, channels, size, width)
        if hidden_noise:
            add_hidden_noise(self.trunk, hidden_noise)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                weight_norm(m)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``FEATURE_LAYER`` output (B, F), input noise included while training."""
        if self.training and self.input_noise:
            x = x + self.input_noise * torch.randn_like(x)
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K)


class GaussianNoise(nn.Module):
    """x + std * N(0, 1) while training, x in eval mode. (torch has no such layer: written here.)"""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x) if self.training else x

    def extra_repr(self) -> str:
        return f"std={self.std}"


def add_hidden_noise(trunk: nn.Module, std: float) -> None:
    """Gaussian noise after every hidden activation (each ReLU or LeakyReLU) of ``trunk``, as in
    Salimans et al.'s MNIST discriminator. Parameter names do not change (the activations have none)."""
    for parent in list(trunk.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU | nn.LeakyReLU):
                setattr(parent, name, nn.Sequential(child, GaussianNoise(std)))


def discriminator_trunk(arch: str, channels: int, size: int, width: int) -> tuple[nn.Module, int]:
    """D's trunk in a classifier's shape without batch norm, and its number of output features:
    ``seed-cnn``, the DCGAN discriminator's strided 4x4 convs; ``bn-cnn``, the default classifier's
    two stages of a 3x3 conv and a 2x2 max-pool (LeakyReLU 0.2 for ReLU), so the semi-supervised GAN's
    classifier has the practitioner's classifier's shape; ``mlp``, the paper's fully connected MNIST
    discriminator (``models.classifier.mlp_layers``)."""
    if arch == "mlp":
        return mlp_layers(channels * size * size)
    if arch == "seed-cnn":
        trunk = ConvTrunk(channels=channels, size=size, width=width, norm="none")
        return trunk, trunk.out_features
    if arch != "bn-cnn" or size % 4:
        raise ValueError(f"synth.source ssgan has no discriminator for classifier.arch {arch} at size {size}")
    layers: list[nn.Module] = []
    c_in = channels
    for c_out in (width, 2 * width):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.2, inplace=True), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten()), c_in * (size // 4) ** 2


def build_ssgan(cfg: ClassifierConfig, ss: SsganConfig, gan: GanConfig, image_shape: tuple[int, int, int],
                num_classes: int, seed: int) -> tuple[SemiSupervisedD, Generator]:
    c, size, _ = image_shape
    with seeded(derive_seed(seed, "ssgan-init")):
        D = SemiSupervisedD(arch=cfg.arch, channels=c, size=size, num_classes=num_classes, width=cfg.width,
                            input_noise=ss.input_noise, dropout=ss.dropout, hidden_noise=ss.hidden_noise)
        G = Generator(channels=c, size=size, num_classes=num_classes, z_dim=gan.z_dim, width=gan.width,
                      conditioning="none")
    return D, G


def real_logit(class_logits: torch.Tensor) -> torch.Tensor:
    """The real/fake logit of (B, K) class logits with the fake logit fixed at 0: log(Z / 1), Z the sum
    of exp over the K classes, so sigmoid of it is D(x) = Z / (Z + 1). (B,)"""
    return torch.logsumexp(class_logits, dim=1)


def discriminator_loss(labelled: torch.Tensor, y: torch.Tensor, unlabelled: torch.Tensor,
                       fake: torch.Tensor, unlabelled_weight: float,
                       label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(supervised cross-entropy, real/fake loss) from the class logits of the three batches: the
    real/fake loss is (-log D(unlabelled) - log(1 - D(fake))) / 2, as softplus of the real logit."""
    sup = F.cross_entropy(labelled, y, label_smoothing=label_smoothing)
    unsup = 0.5 * (F.softplus(-real_logit(unlabelled)).mean() + F.softplus(real_logit(fake)).mean())
    return sup, unlabelled_weight * unsup


def feature_matching(D: SemiSupervisedD, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss: the mean over features of the squared difference between the batch
    means of D's ``FEATURE_LAYER`` output on real and on generated images (real ones detached)."""
    with torch.no_grad():
        target = D.features(real).float().mean(0)
    return (D.features(fake).float().mean(0) - target).pow(2).mean()


def train_ssgan(trial: TrialConfig, real: Images, unlabelled: torch.Tensor, num_classes: int, *,
                device: torch.device, augment: Augment | None = None, tracker: Tracker = NULL_TRACKER,
                progress: Progress = NO_PROGRESS) -> FinetuneResult:
    """``classifier.steps`` semi-supervised GAN steps (``trial``'s classifier, ssgan and gan sections,
    its seed) on the ``real`` budget images and the ``unlabelled`` pool (U, C, H, W); returns the EMA
    of D (eval mode) as the classifier, and its metrics (``clf/...`` as every arm logs them,
    ``ssgan/d_real``, ``ssgan/d_fake``, ``ssgan/fm_loss`` over the last 10%). ``progress``: where the
    training state is saved every few minutes and resumed from."""
    cfg, ss, seed = trial.classifier, trial.ssgan, trial.seed
    B = cfg.batch_size
    if len(unlabelled) < B:
        raise ValueError(f"synth.source ssgan draws classifier.batch_size {B} unlabelled images a step, and "
                         f"the pool has {len(unlabelled)}")
    real, pool = real.to(device), unlabelled.to(device)
    D, G = build_ssgan(cfg, ss, trial.gan, tuple(real.x.shape[1:]), num_classes, seed)
    D, G = prepare_model(D, device), prepare_model(G, device)
    ema = ema_model(D, ss.ema_decay)
    opt_d = torch.optim.Adam(D.parameters(), lr=ss.lr, betas=ADAM_BETAS)
    opt_g = torch.optim.Adam(G.parameters(), lr=ss.lr, betas=ADAM_BETAS)
    scheds: list[lr_scheduler.LRScheduler] = [SCHEDULES[cfg.schedule](opt, cfg.steps, cfg)
                                              for opt in (opt_d, opt_g)]
    labelled_idx = draw_batches(torch.ones(len(real)), cfg.steps, B,
                                make_generator(derive_seed(seed, "clf-batches"))).to(device)  # (steps, B)
    pool_idx = pool_batches(len(pool), cfg.steps, B,
                            make_generator(derive_seed(seed, "ssgan-pool"))).to(device)  # (steps, B)
    aug_gen = make_generator(derive_seed(seed, "clf-augment"), device)
    z_gen = make_generator(derive_seed(seed, "ssgan-z"), device)
    log = torch.zeros(cfg.steps, 4, device=device)  # per step: supervised loss, D(real), D(fake), FM loss
    tracker = progress.track(tracker)
    stateful = {"D": D, "G": G, "opt_d": opt_d, "opt_g": opt_g, "sched_d": scheds[0], "sched_g": scheds[1],
                "aug_gen": aug_gen, "z_gen": z_gen, **({"ema": ema} if ema is not None else {})}
    with seeded(derive_seed(seed, "ssgan-noise")):  # input noise and dropout (progress restores its state)
        done, saved = progress.restore(stateful)
        log = saved.get("log", log).to(device)
        t0 = time.perf_counter() - float(saved.get("seconds", 0.0))
        for step in range(done, cfg.steps):
            D.train()
            G.train()
            bl, bu = labelled_idx[step], pool_idx[step]
            xl = real.x[bl] if augment is None else augment(real.x[bl], aug_gen)
            xu = pool[bu]
            z = torch.randn(2 * B, G.z_dim, generator=z_gen, device=device)
            with autocast(device):
                fake = G(z[:B], None)
                lx, lu, lf = D(torch.cat([xl, xu, fake.detach()])).float().split([B, B, B])
            sup, unsup = discriminator_loss(lx, real.y[bl], lu, lf, ss.unlabelled_weight, cfg.label_smoothing)
            opt_d.zero_grad(set_to_none=True)
            (sup + unsup).backward()
            opt_d.step()
            with autocast(device):
                fm = feature_matching(D, xu, G(z[B:], None))
            opt_g.zero_grad(set_to_none=True)
            fm.backward()  # D's gradients from this are cleared before its next step
            opt_g.step()
            lr = scheds[0].get_last_lr()[0]
            for s in scheds:
                s.step()
            if ema is not None:
                ema.update_parameters(D)
            with torch.no_grad():
                log[step] = torch.stack([sup.detach(), torch.sigmoid(real_logit(lu)).mean(),
                                         torch.sigmoid(real_logit(lf)).mean(), fm.detach()])
            if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
                _log_window(log[step + 1 - min(cfg.eval_every, step + 1): step + 1], step + 1, lr, tracker)
            progress.maybe_save(step + 1, cfg.steps, stateful,
                                {"log": log, "seconds": time.perf_counter() - t0})
    last = log[-max(1, cfg.steps // 10):]
    return fixed_budget_result(D, ema, real, cfg.steps, time.perf_counter() - t0, log[:, 0], {
        "ssgan/d_real": float(last[:, 1].mean()), "ssgan/d_fake": float(last[:, 2].mean()),
        "ssgan/fm_loss": float(last[:, 3].mean()), "ssgan/pool_size": float(len(pool)),
        "ssgan/pool_passes": cfg.steps * B / len(pool)})


def _log_window(rows: torch.Tensor, step: int, lr: float, tracker: Tracker) -> None:
    loss = float(rows[:, 0].mean())
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"non-finite clf/loss in semi-supervised GAN training at step {step}")
    tracker.log_metrics({"clf/loss": loss, "clf/lr": lr, "ssgan/d_real": float(rows[:, 1].mean()),
                         "ssgan/d_fake": float(rows[:, 2].mean()), "ssgan/fm_loss": float(rows[:, 3].mean())},
                        step=step)


def obtain_ssgan(cfg: TrialConfig, real: Images, unlabelled: torch.Tensor, num_classes: int, *,
                 device: torch.device, augment: Augment | None, tracker: Tracker,
                 cache: CheckpointCache | None) -> FinetuneResult:
    """The trial's semi-supervised GAN classifier: from the checkpoint store when this budget, pool,
    recipe and seed were trained before (a rerun of a crashed trial), else trained and stored."""
    key = content_key({"role": "ssgan", "version": SSGAN_VERSION, "seed": cfg.seed,
                       "classifier": cfg.classifier.model_dump(mode="json"),
                       "ssgan": config_ident(cfg.ssgan, ADDED_AT),
                       "gan": {"z_dim": cfg.gan.z_dim, "width": cfg.gan.width},
                       "budget": images_digest(real), "pool": tensor_digest(unlabelled)})

    def train(progress: Progress) -> dict[str, Any]:
        res = train_ssgan(cfg, real, unlabelled, num_classes, device=device, augment=augment, tracker=tracker,
                          progress=progress)
        cpu = lambda state: {k: v.detach().cpu() for k, v in state.items()}  # noqa: E731
        return {"state": cpu(res.model.state_dict()), "last": cpu(res.last_state) if res.last_state else None,
                "metrics": res.metrics}

    tracker.set_tags({"ssgan.key": key})  # now: `study status` finds a training's saved progress by it
    entry, hit = load_or_resume(None if cache is None else cache.child("ssgan"), key, train)
    tracker.set_tags({"ssgan.cache": "hit" if hit else "miss"})
    D, _ = build_ssgan(cfg.classifier, cfg.ssgan, cfg.gan, tuple(real.x.shape[1:]), num_classes, cfg.seed)
    D.load_state_dict(entry["state"])
    D = prepare_model(D, device).eval()
    last = None if entry["last"] is None else {k: v.to(device) for k, v in entry["last"].items()}
    return FinetuneResult(D, {**entry["metrics"], "ssgan/cached": float(hit)}, last_state=last)
