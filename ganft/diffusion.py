"""The diffusion family in the GAN's place (``gan.arch ddpm``): a class-conditional DDPM.

Built from Hugging Face diffusers rather than by hand: its ``UNet2DModel`` (with a class embedding
of K + 1 entries, the last one the null class), its ``DDPMScheduler`` for the training noise schedule,
and its DPM-Solver++ / DDIM schedulers for sampling. What is written here is the glue that makes the
model a ganft generator, so that everything downstream (cache, exact class-balanced counts,
filtering, mixing, quality and CAS, sample grids, reports, resume and workers) works unchanged:

- ``DiffusionGenerator(z, y)`` maps a noise vector of length C x S' x S' (the padded image) and a
  label to an image in [-1, 1], deterministically (DDIM with eta 0 and DPM-Solver++ draw no noise of
  their own): the same seed gives the same samples, as for a GAN.
- Classifier-free guidance (Ho & Salimans, 2022): the label is replaced by the null class for
  ``diffusion.label_dropout`` of the training images; sampling mixes the two predictions,
  eps = eps(null) + w (eps(y) - eps(null)), so w = 0 is unconditional and w = 1 conditional.
- 28x28 images are padded to 32x32 with the background value -1 (the UNet halves the side twice),
  and samples are cropped back; 8x8 images use a UNet with two levels instead of three.
- Training: ``gan.steps`` AdamW steps of ``gan.batch_size`` images on the noise-prediction loss (MSE,
  Ho et al., 2020), an EMA of the weights samples (``gan_train.Ema``), the loss read back every
  ``log_every`` steps as ``gan/loss_denoise``; with ``gan.eval_every`` the budget-validation KID curve
  and the best step come from ``gan_train.KeepBest``, with ``gan.curve_every`` the convergence curve
  ``gan/budget_kid``, as for a GAN.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ganft.config import DiffusionConfig, GanConfig
from ganft.gan_train import (
    NO_SCORES,
    Ema,
    GanResult,
    NonFiniteLossError,
    Scores,
    finish,
    make_curve,
    make_selector,
)
from ganft.images import Images
from ganft.progress import NO_PROGRESS, Progress
from ganft.runtime import autocast, derive_seed, make_generator, prepare_model, seeded
from ganft.tracker import NULL_TRACKER, Tracker

# Bump when a diffusion model trained from the same config, images and seed changes (this file):
# it is part of every stored model's key.
DIFFUSION_VERSION = 2  # 2: DPM-Solver++ clips its x0 (a stored model holds grids and scores it sampled)
PAD_VALUE = -1.0  # the padding of 28x28 images: the background of the MNIST family


def padded_size(size: int) -> int:
    """The side the UNet works at: 8 for 8x8 images (two levels), else the next multiple of 8 (three
    levels: 28 -> 32)."""
    return 8 if size <= 8 else -(-size // 8) * 8


def build_unet(cfg: DiffusionConfig, *, channels: int, size: int, num_classes: int,
               conditional: bool) -> nn.Module:
    # imported here: diffusers is slow to import, and most trials never need it
    from diffusers import UNet2DModel

    side = padded_size(size)
    widths = (cfg.width, 2 * cfg.width) if side <= 8 else (cfg.width, 2 * cfg.width, 2 * cfg.width)
    down = ("DownBlock2D",) * (len(widths) - 1) + ("AttnDownBlock2D",)  # self-attention at the lowest level
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1)
    return UNet2DModel(sample_size=side, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=widths, down_block_types=down, up_block_types=up,
                       norm_num_groups=8, num_class_embeds=num_classes + 1 if conditional else None)


def training_schedule(cfg: DiffusionConfig):  # noqa: ANN201 - a diffusers DDPMScheduler
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps,
                         beta_schedule="squaredcos_cap_v2" if cfg.schedule == "cosine" else "linear")


def sampling_schedule(cfg: DiffusionConfig):  # noqa: ANN201 - a diffusers scheduler with the training betas
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    config = training_schedule(cfg).config
    if cfg.sampler == "ddim":
        return DDIMScheduler.from_config(config)
    # DPM-Solver++ predicts the clean image x0 = (x - sigma eps) / alpha, so at the first noise levels
    # (cosine: alpha_bar 2.4e-9 at the last one) it multiplies the network's noise error by up to 2e4,
    # and the samples ended as saturated speckle (tests/test_diffusion.py). As DDIM does (clip_sample)
    # x0 is clipped to the data's range [-1, 1] (thresholding at sample_max_value 1), and lambda is
    # clipped at -5.1, as diffusers advises for the cosine schedule (the linear one never goes below)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                   lambda_min_clipped=-5.1, thresholding=True,
                                                   sample_max_value=1.0)


class DiffusionGenerator(nn.Module):
    """A ganft generator: ``forward(z, y)`` samples images (B, C, S, S) in [-1, 1] from noise z
    (B, C * S'^2) and labels y (B,); ``denoise`` is the UNet's noise prediction, for training."""

    def __init__(self, cfg: DiffusionConfig, *, channels: int, size: int, num_classes: int,
                 conditional: bool) -> None:
        super().__init__()
        self.cfg, self.channels, self.size, self.num_classes = cfg, channels, size, num_classes
        self.conditional, self.side = conditional, padded_size(size)
        self.z_dim = channels * self.side ** 2
        self.unet = build_unet(cfg, channels=channels, size=size, num_classes=num_classes,
                               conditional=conditional)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.side - self.size) // 2
        return F.pad(x, (p, p, p, p), value=PAD_VALUE) if p else x

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.side - self.size) // 2
        return x[..., p:p + self.size, p:p + self.size] if p else x

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The predicted noise (B, C, S', S') of noisy padded images at timesteps t for labels y."""
        labels = y if self.conditional else None
        return self.unet(x_t, t, class_labels=labels).sample.float()

    def guided(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.cfg.guidance
        if not self.conditional or w == 1:
            return self.denoise(x_t, t, y)
        null = torch.full_like(y, self.null_class)
        if w == 0:
            return self.denoise(x_t, t, null)
        cond, uncond = self.denoise(torch.cat([x_t, x_t]), t, torch.cat([y, null])).chunk(2)
        return uncond + w * (cond - uncond)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scheduler = sampling_schedule(self.cfg)
        scheduler.set_timesteps(self.cfg.sample_steps, device=z.device)
        x = z.float().view(-1, self.channels, self.side, self.side) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(self.guided(x, t, y), t, x).prev_sample
        return self.crop(x).clamp(-1, 1)


def build_diffusion(gan: GanConfig, cfg: DiffusionConfig, image_shape: tuple[int, int, int],
                    num_classes: int) -> DiffusionGenerator:
    c, h, _ = image_shape
    return DiffusionGenerator(cfg, channels=c, size=h, num_classes=num_classes,
                              conditional=gan.conditioning != "none")


def train_diffusion(gan: GanConfig, cfg: DiffusionConfig, real: Images, num_classes: int, *, seed: int,
                    device: torch.device, tracker: Tracker = NULL_TRACKER, log_every: int = 50,
                    scores: Scores = NO_SCORES, progress: Progress = NO_PROGRESS) -> GanResult:
    """Train the denoiser ``gan.steps`` steps on ``real``; return the sampling (EMA) model as a
    GanResult without a discriminator, its fixed-noise grid and metrics. ``progress``: where the
    training state is saved every few minutes and resumed from."""
    with seeded(derive_seed(seed, "gan-init")):
        model = build_diffusion(gan, cfg, tuple(real.x.shape[1:]), num_classes)
    model = prepare_model(model, device)
    ema = Ema(model, cfg.ema_decay) if cfg.ema_decay else None
    sampler = ema.module if ema is not None else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = training_schedule(cfg)
    x_all, y_all = model.pad(real.x.to(device)), real.y.to(device)
    as_gan = gan.model_copy(update={"z_dim": model.z_dim})  # what the step selection and the curve sample
    selector = make_selector(as_gan, scores.select, num_classes, seed, device)
    watch = make_curve(as_gan, scores.curve, num_classes, seed, device)
    gen = make_generator(derive_seed(seed, "gan-train"), device)
    B = min(gan.batch_size, len(x_all))
    tracker = progress.track(tracker)
    stateful = {"model": model, "opt": opt, "selector": selector, "watch": watch, "gen": gen,
                **({"ema": ema} if ema is not None else {})}
    done, saved = progress.restore(stateful)
    total = saved.get("total", torch.zeros(())).to(device)
    last, metrics = int(saved.get("last", 0)), dict(saved.get("metrics", {}))
    t0 = time.perf_counter() - float(saved.get("seconds", 0.0))
    for step in range(done + 1, gan.steps + 1):
        model.train()
        idx = torch.randint(len(x_all), (B,), generator=gen, device=device)
        x0, y = x_all[idx], y_all[idx]
        if model.conditional:  # the null class, for classifier-free guidance
            dropped = torch.rand(B, generator=gen, device=device) < cfg.label_dropout
            y = torch.where(dropped, torch.full_like(y, model.null_class), y)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        t = torch.randint(cfg.train_timesteps, (B,), generator=gen, device=device)
        with autocast(device):
            loss = F.mse_loss(model.denoise(schedule.add_noise(x0, noise, t), t, y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)
        total += loss.detach()
        if step % log_every == 0 or step == gan.steps:
            mean = (total / (step - last)).item()  # the only host sync in the loop
            if not math.isfinite(mean):
                raise NonFiniteLossError(f"non-finite gan/loss_denoise in diffusion training at step {step} "
                                         f"(diffusion.lr={cfg.lr})")
            metrics = {"gan/loss_denoise": mean}
            tracker.log_metrics(metrics, step=step)
            total.zero_()
            last = step
        selector.observe(step, sampler, tracker)
        watch.observe(step, sampler, tracker)
        progress.maybe_save(step, gan.steps, stateful, {"total": total, "last": last, "metrics": metrics,
                                                        "seconds": time.perf_counter() - t0})
    return finish(sampler, None, selector, watch, {**metrics, "gan/g_steps": float(gan.steps)},
                  images=gan.steps * B, t0=t0, num_classes=num_classes, device=device, sample_rate=True)
