"""train_gan: a GAN trained for a step budget on the labelled budget's training images only.

The textbook DCGAN step (pytorch/examples): D on real and detached fake, then G against D, with
DiffAugment on every D input and an EMA copy of G for sampling. The variants (loss, conditioning,
regularisers, DiffAugment policies, architecture) are chosen once, before the loop, from the
literal dicts in losses.py, augment.py and models/gan.py; the loop itself has no branches on them.
Losses are summed on the device and read back only every ``log_every`` steps, where a non-finite
value stops the run with its reason. With ``gan.eval_every`` > 0 the sampling generator is scored
on the budget's validation images every K steps (``scorer``, KID from selection.py) and the best one
is kept: DCGANs often get worse with more steps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ganft.config import GanConfig
from ganft.diffaugment import diff_augment
from ganft.images import Images
from ganft.losses import AUX_LOSSES, DStep, active_regularisers, get_loss
from ganft.models import gan as models
from ganft.models.gan import Discriminator, resize
from ganft.progress import NO_PROGRESS, Progress
from ganft.runtime import autocast, derive_seed, make_generator, prepare_model, seeded
from ganft.tracker import NULL_TRACKER, Tracker

SAMPLES_PER_CLASS = 8  # columns of the fixed-noise sample grid: one row per class
# Bump when a GAN trained from the same config, images and seed changes (this file, models/gan.py,
# losses.py, diffaugment.py): it is part of every stored GAN's key, so they are all trained again.
GAN_VERSION = 1
Scorer = Callable[[torch.Tensor], float]  # generated images (N, C, H, W) -> score, lower is better


@dataclass(frozen=True)
class Scores:
    """What scores a generator while it trains: ``select`` (generated images -> budget-validation
    score) picks the best step when ``gan.eval_every`` > 0; ``curve`` (-> KID against the budget's
    training images) draws the convergence curve when ``gan.curve_every`` > 0."""

    select: Scorer | None = None
    curve: Scorer | None = None


NO_SCORES = Scores()  # neither: gan.eval_every and gan.curve_every 0


class NonFiniteLossError(RuntimeError):
    """A GAN or classifier loss became NaN/inf; the message says which loss and at which step."""


@dataclass
class GanResult:
    # the sampling generator at the data size, eval mode: EMA unless ema_decay == 0, and the best on
    # budget-validation KID when gan.eval_every > 0 (else the last)
    generator: nn.Module
    discriminator: Discriminator | None  # the trained D (its trunk can initialise a classifier); None: ddpm
    samples: torch.Tensor  # (K * SAMPLES_PER_CLASS, C, H, W) from the fixed noise, on the CPU
    metrics: dict[str, float]


def build_generator(cfg: GanConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c, h, _ = image_shape
    return models.build_generator(cfg.arch, channels=c, size=h, num_classes=num_classes, z_dim=cfg.z_dim,
                                  width=cfg.width, conditioning=cfg.conditioning)


def build_discriminator(cfg: GanConfig, image_shape: tuple[int, int, int],
                        num_classes: int) -> Discriminator:
    c, h, _ = image_shape
    return models.build_discriminator(cfg.arch, channels=c, size=h, num_classes=num_classes,
                                      width=cfg.width, norm=cfg.d_norm, conditioning=cfg.conditioning)


class Ema:
    """An exponential moving average of a generator's weights, for sampling.

    Warm-up: decay_t = min(decay, (1 + t) / (10 + t)), so short step budgets are not dominated by
    the random initial weights (0.999**600 is still 0.55). Parameters are averaged with one fused
    lerp; buffers (BatchNorm statistics) are copied, as StyleGAN does. Written by hand because
    torch's AveragedModel either averages integer buffers (its fused path fails on
    ``num_batches_tracked``) or goes tensor by tensor (a large share of a small GAN's step).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), weight)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


@torch.inference_mode()
def sample_grid(generator: nn.Module, num_classes: int, device: torch.device) -> torch.Tensor:
    """Images from a fixed noise batch, one row per class, comparable across runs and steps."""
    gen = make_generator(derive_seed("fixed-noise"), device)
    z = torch.randn(num_classes * SAMPLES_PER_CLASS, generator.z_dim, generator=gen, device=device)
    y = torch.arange(num_classes, device=device).repeat_interleave(SAMPLES_PER_CLASS)
    return generator.eval()(z, y).float().cpu()


# --------------------------------------------------------------------------- best checkpoint


class KeepLast:
    """gan.eval_every == 0: the generator after the last step is the result."""

    def observe(self, step: int, G: nn.Module, tracker: Tracker) -> None:
        pass

    def restore(self, G: nn.Module) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class KeepBest:
    """Score the sampling generator every ``every`` steps and after the last one, always on the same
    noise and class-balanced labels; log the curve as ``metric`` and keep the best weights (with
    ``keep`` False only the curve: ``gan.curve_every``)."""

    def __init__(self, scorer: Scorer, every: int, last: int, n: int, num_classes: int, z_dim: int,
                 seed: int, device: torch.device, metric: str = "gan/val_kid", keep: bool = True) -> None:
        self.scorer, self.every, self.last, self.metric, self.keep = scorer, every, last, metric, keep
        gen = make_generator(derive_seed(seed, "gan-eval"), device)  # not the training stream
        self.z = torch.randn(n, z_dim, generator=gen, device=device)  # (n, Z)
        self.y = torch.arange(n, device=device) % num_classes  # (n,)
        self.best_score, self.best_step, self.best_state, self.last_score = math.inf, 0, None, math.nan

    @torch.inference_mode()
    def observe(self, step: int, G: nn.Module, tracker: Tracker) -> None:
        if step % self.every and step != self.last:
            return
        was_training = G.training
        G.eval()
        images = torch.cat([G(z, y) for z, y in zip(self.z.split(500), self.y.split(500), strict=True)])
        G.train(was_training)
        score = self.scorer(images)
        tracker.log_metrics({self.metric: score}, step=step)
        self.last_score = score
        if score < self.best_score:  # a NaN score is never the best
            self.best_score, self.best_step = score, step
            if self.keep:
                self.best_state = {k: v.clone() for k, v in G.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed training needs (``progress.Progress``): the scores so far and the best weights."""
        return {"best_score": self.best_score, "best_step": self.best_step, "last_score": self.last_score,
                "best_state": self.best_state or {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_step = float(state["best_score"]), int(state["best_step"])
        self.last_score, self.best_state = float(state["last_score"]), state["best_state"] or None

    def restore(self, G: nn.Module) -> dict[str, float]:
        if self.best_state is None:  # no finite score: keep the last generator
            return {"gan/best_step": float(self.last), "gan/best_val_kid": math.nan}
        G.load_state_dict(self.best_state)
        return {"gan/best_step": float(self.best_step), "gan/best_val_kid": self.best_score}


def make_curve(cfg: GanConfig, curve: Scorer | None, num_classes: int, seed: int,
               device: torch.device) -> KeepLast | KeepBest:
    """``gan.curve_every`` > 0: the convergence curve ``gan/budget_kid`` (KID against the budget's
    training images, ``selection.curve_scorer``); it keeps nothing."""
    if not cfg.curve_every:
        return KeepLast()
    if curve is None:
        raise ValueError("gan.curve_every > 0 needs a scorer (selection.curve_scorer)")
    return KeepBest(curve, cfg.curve_every, cfg.steps, cfg.eval_samples, num_classes, cfg.z_dim, seed, device,
                    metric="gan/budget_kid", keep=False)


def curve_metrics(curve: KeepLast | KeepBest) -> dict[str, float]:
    """The curve's last and lowest value and the step of the lowest (how far from converged)."""
    if not isinstance(curve, KeepBest):
        return {}
    return {"gan/budget_kid_last": curve.last_score, "gan/budget_kid_min": curve.best_score,
            "gan/budget_kid_min_step": float(curve.best_step)}


def make_selector(cfg: GanConfig, scorer: Scorer | None, num_classes: int, seed: int,
                  device: torch.device) -> KeepLast | KeepBest:
    if not cfg.eval_every:
        return KeepLast()
    if scorer is None:
        raise ValueError("gan.eval_every > 0 needs a scorer (selection.gan_scorer) to pick the best "
                         "generator")
    return KeepBest(scorer, cfg.eval_every, cfg.steps, cfg.eval_samples, num_classes, cfg.z_dim, seed, device)


# --------------------------------------------------------------------------- one step


@dataclass
class StepParts:
    """The variant functions of one GAN step, chosen from the config before the loop."""

    loss_d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss_g: Callable[[torch.Tensor], torch.Tensor]
    aux: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]  # ACGAN class loss, or zero
    aux_weight: float
    regs: list[tuple[float, Callable[[DStep], torch.Tensor]]]  # (weight, regulariser) for D
    needs_real_grad: bool  # R1 differentiates D(real) with respect to the real images
    policies: tuple[str, ...]  # DiffAugment

    @classmethod
    def from_config(cls, cfg: GanConfig) -> StepParts:
        loss_d, loss_g = get_loss(cfg.loss)
        gp = cfg.gp_weight if cfg.loss == "wgan-gp" else 0.0  # the penalty is part of the WGAN-GP loss
        regs = active_regularisers({"gp": gp, "r1": cfg.r1_gamma, "bcr": cfg.bcr_weight})
        return cls(loss_d, loss_g, AUX_LOSSES[cfg.conditioning], cfg.acgan_weight, regs,
                   cfg.r1_gamma > 0, cfg.diffaugment)


def d_step(D: Discriminator, opt: torch.optim.Optimizer, p: StepParts, x_real: torch.Tensor,
           fake: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One D update; returns a detached (4,) tensor: loss_d, mean D(real), mean D(fake), regularisers."""
    with autocast(y.device):  # bf16 forward where configured; losses from fp32 logits
        xr = diff_augment(x_real, p.policies, gen).requires_grad_(p.needs_real_grad)
        xf = diff_augment(fake, p.policies, gen)
        d_real, c_real = _fp32(D.outputs(xr, y))  # (B,), (B, K) or None
        d_fake, c_fake = _fp32(D.outputs(xf, y))
        s = DStep(D, xr, xf, y, d_real, d_fake, gen)
        reg = sum((w * fn(s) for w, fn in p.regs), torch.zeros((), device=y.device))
        loss = p.loss_d(d_real, d_fake) + p.aux_weight * (p.aux(c_real, y) + p.aux(c_fake, y)) + reg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return torch.stack([loss, d_real.mean(), d_fake.mean(), reg]).detach()


def g_step(D: Discriminator, opt: torch.optim.Optimizer, p: StepParts, fake: torch.Tensor,
           y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    with autocast(y.device):
        d_fake, c_fake = _fp32(D.outputs(diff_augment(fake, p.policies, gen), y))
        loss = p.loss_g(d_fake) + p.aux_weight * p.aux(c_fake, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _fp32(outputs: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits, classes = outputs
    return logits.float(), None if classes is None else classes.float()


# --------------------------------------------------------------------------- training


def train_gan(cfg: GanConfig, real: Images, num_classes: int, *, seed: int,
              device: torch.device, tracker: Tracker = NULL_TRACKER,
              log_every: int = 50, scores: Scores = NO_SCORES,
              init: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
              progress: Progress = NO_PROGRESS) -> GanResult:
    """Train G and D for ``cfg.steps`` G steps on ``real``; return the sampling generator and metrics.
    ``scores.select`` is needed when ``cfg.eval_every`` > 0, ``scores.curve`` when ``cfg.curve_every`` > 0.
    ``init``: (G, D) state dicts to start from (a transfer's source GAN); D's first ``cfg.freeze_d``
    stages then stay as they are. ``progress``: where the training state is saved every few minutes
    and resumed from."""
    image_shape = tuple(real.x.shape[1:])
    with seeded(derive_seed(seed, "gan-init")):
        G = build_generator(cfg, image_shape, num_classes)
        D = build_discriminator(cfg, image_shape, num_classes)
    if init is not None:
        G.load_state_dict(init[0])
        D.load_state_dict(init[1])
        models.freeze_stages(D.trunk, cfg.freeze_d)
    G, D = prepare_model(G, device), prepare_model(D, device)
    G_core = G.core  # what trains against D, at D's resolution (seed-dcgan: 64x64)
    x_all = resize(real.x, G_core.size).to(device)  # the whole subset lives on the device
    y_all = real.y.to(device)
    G_ema = Ema(G, cfg.ema_decay) if cfg.ema_decay else None
    G_sample = G_ema.module if G_ema is not None else G
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), fused=True)
    d_params = [p for p in D.parameters() if p.requires_grad]  # gan.freeze_d: not the frozen stages
    opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), fused=True)
    parts = StepParts.from_config(cfg)
    selector = make_selector(cfg, scores.select, num_classes, seed, device)
    watch = make_curve(cfg, scores.curve, num_classes, seed, device)
    gen = make_generator(derive_seed(seed, "gan-train"), device)
    B = min(cfg.batch_size, len(x_all))

    def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(x_all), (B,), generator=gen, device=device)
        z = torch.randn(B, cfg.z_dim, generator=gen, device=device)
        return x_all[idx], y_all[idx], z  # (B, C, H, W), (B,), (B, Z); fakes share the real labels

    sums = torch.zeros(5, device=device)  # running loss_d, D(real), D(fake), reg, loss_g since last log
    tracker = progress.track(tracker)
    stateful = {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d, "selector": selector, "watch": watch,
                "gen": gen, **({"ema": G_ema} if G_ema is not None else {})}
    done, saved = progress.restore(stateful)
    sums = saved.get("sums", sums).to(device)
    last, metrics = int(saved.get("last", 0)), dict(saved.get("metrics", {}))
    t0 = time.perf_counter() - float(saved.get("seconds", 0.0))
    for step in range(done + 1, cfg.steps + 1):
        G.train(), D.train()
        for _ in range(cfg.d_steps - 1):  # extra critic steps: fresh batches, fakes without G's graph
            x_real, y, z = batch()
            with torch.no_grad(), autocast(device):
                fake = G_core(z, y)
            d_step(D, opt_d, parts, x_real, fake, y, gen)
        x_real, y, z = batch()
        with autocast(device):
            fake = G_core(z, y)  # (B, C, H, W); one forward serves D's last step and G's step
        d_parts = d_step(D, opt_d, parts, x_real, fake.detach(), y, gen)
        loss_g = g_step(D, opt_g, parts, fake, y, gen)
        if G_ema is not None:
            G_ema.update(G)
        sums += torch.cat([d_parts, loss_g.view(1)])
        if step % log_every == 0 or step == cfg.steps:
            metrics = _read_metrics(sums / (step - last), step, cfg)  # the only host sync in the loop
            tracker.log_metrics(metrics, step=step)
            sums.zero_()
            last = step
        selector.observe(step, G_sample, tracker)
        watch.observe(step, G_sample, tracker)
        progress.maybe_save(step, cfg.steps, stateful, {"sums": sums, "last": last, "metrics": metrics,
                                                         "seconds": time.perf_counter() - t0})

    return finish(G_sample, D.eval(), selector, watch, {**metrics, "gan/g_steps": float(cfg.steps)},
                  images=cfg.steps * B * cfg.d_steps, t0=t0, num_classes=num_classes, device=device)


def finish(sampler: nn.Module, D: nn.Module | None, selector: KeepLast | KeepBest, watch: KeepLast | KeepBest,
           metrics: dict[str, float], *, images: int, t0: float, num_classes: int, device: torch.device,
           sample_rate: bool = False) -> GanResult:
    """The end of a generator's training (a GAN's or a diffusion model's): the kept weights back in
    the sampler, its fixed-noise grid, and the metrics: ``metrics`` (the last logged losses, steps),
    training time and throughput (``images`` seen), the curve's and the selection's; with
    ``sample_rate`` also the grid's sampling throughput (``gan/sample_images_per_second``)."""
    seconds = time.perf_counter() - t0
    best = selector.restore(sampler)
    sampler.eval()
    t1 = time.perf_counter()
    samples = sample_grid(sampler, num_classes, device)
    final = {"gan/train_seconds": seconds, "gan/images_per_second": images / seconds}
    if sample_rate:
        final["gan/sample_images_per_second"] = len(samples) / (time.perf_counter() - t1)
    return GanResult(sampler, D, samples, {**metrics, **final, **curve_metrics(watch), **best})


def _read_metrics(means: torch.Tensor, step: int, cfg: GanConfig) -> dict[str, float]:
    """Mean losses since the last log (D outputs are raw logits / critic values); raises on NaN/inf."""
    names = ("gan/loss_d", "gan/d_real", "gan/d_fake", "gan/reg", "gan/loss_g")
    metrics = dict(zip(names, means.tolist(), strict=True))
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"non-finite {', '.join(bad)} in GAN training at step {step} "
                                 f"(lr_d={cfg.lr_d}, lr_g={cfg.lr_g}, loss={cfg.loss})")
    return metrics
