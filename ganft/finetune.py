"""Train a classifier on real and synthetic images for a fixed number of optimiser steps.

Equal budget: every arm of a comparison gets ``cfg.steps`` steps of ``cfg.batch_size`` images,
whatever the ratio, the mixing or the freezing; only the data differs. A run is a list of phases
(``plan_phases``) whose lengths add up to exactly ``cfg.steps``:

- mixing (``synth.mix``) decides which images a phase draws from: ``union`` draws uniformly from
  real ∪ synthetic; ``weighted`` makes a synthetic image count ``synth.weight`` times a real one;
  ``pretrain-then-finetune`` spends the first ``synth_fraction`` of the steps on synthetic images
  only and the rest on real images only. Without synthetic images every mix is real-only.
- freezing (``classifier.freeze``) decides what trains in the last phase, the one that ends on
  real images: ``full`` (everything), ``linear-probe`` (the head only, in every phase; the frozen
  trunk stays in eval mode so even its BatchNorm statistics do not move), ``head-then-full`` (the
  head alone for ``head_fraction`` of that phase, then all layers at ``lr * full_lr_scale``).

Each phase gets its own AdamW optimiser and learning-rate schedule over its own steps. Validation
accuracy every ``eval_every`` steps and at the end of every phase decides which weights are kept
(the best, earliest on ties). Early stopping (``patience`` > 0) acts in the last phase only: the
earlier phases are a prescribed part of the recipe, not a training run to cut short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from ganft.config import ClassifierConfig, SynthConfig, split_steps
from ganft.evaluate import accuracy
from ganft.gan_train import NonFiniteLossError
from ganft.images import Images
from ganft.models.classifier import build_classifier, trunk_norm
from ganft.runtime import autocast, derive_seed, make_generator, prepare_model, seeded
from ganft.tracker import NULL_TRACKER, Tracker

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (B, C, H, W) -> same shape


@dataclass
class FinetuneResult:
    model: nn.Module  # the kept weights (best on validation, or the last without validation), eval mode
    metrics: dict[str, float]
    last_state: dict[str, torch.Tensor] | None = None  # the last step's weights, when not the kept ones

    def last_accuracy(self, images: Images) -> float:
        """Accuracy of the last step's weights (``test/acc_last``: how much selection mattered)."""
        if self.last_state is None:
            return accuracy(self.model, images)
        kept = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.last_state)
        try:
            return accuracy(self.model, images)
        finally:
            self.model.load_state_dict(kept)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Phase:
    name: str  # "real", "mixed", "synthetic", "real-head", ...: part of an MLflow metric name
    steps: int
    real_weight: float  # sampling weight of each real image (0: never drawn in this phase)
    synth_weight: float  # ... of each synthetic image
    trunk_trains: bool = True
    lr_scale: float = 1.0
    real_fraction: float | None = None  # share of each batch drawn from the real images (None: by weight)


# mixing: (steps, synth.weight, synth_fraction) -> data phases
def _union(steps: int, weight: float, fraction: float) -> list[Phase]:
    return [Phase("mixed", steps, 1.0, 1.0)]


def _weighted(steps: int, weight: float, fraction: float) -> list[Phase]:
    return [Phase("mixed", steps, 1.0, weight)]


def _pretrain_then_finetune(steps: int, weight: float, fraction: float) -> list[Phase]:
    first, rest = split_steps(steps, fraction)
    return [Phase("synthetic", first, 0.0, 1.0), Phase("real", rest, 1.0, 0.0)]


MIXES = {"union": _union, "weighted": _weighted, "pretrain-then-finetune": _pretrain_then_finetune}


# freezing: the last data phase -> the phases it becomes
def _full(p: Phase, cfg: ClassifierConfig) -> list[Phase]:
    return [p]


def _linear_probe(p: Phase, cfg: ClassifierConfig) -> list[Phase]:
    return [replace(p, trunk_trains=False)]


def _head_then_full(p: Phase, cfg: ClassifierConfig) -> list[Phase]:
    head, full = split_steps(p.steps, cfg.head_fraction)
    return [replace(p, name=f"{p.name}-head", steps=head, trunk_trains=False),
            replace(p, name=f"{p.name}-full", steps=full, lr_scale=cfg.full_lr_scale)]


FREEZES = {"full": _full, "linear-probe": _linear_probe, "head-then-full": _head_then_full}


def plan_phases(cfg: ClassifierConfig, mix: str = "union", synth_weight: float = 1.0,
                has_synthetic: bool = False, real_fraction: float | None = None) -> list[Phase]:
    """The phases of one run; their steps add up to exactly ``cfg.steps`` (the equal budget).
    ``real_fraction`` (``synth.real_fraction``) fixes the real share of every mixed batch."""
    if mix not in MIXES:
        raise ValueError(f"unknown synth.mix {mix!r}; known: {', '.join(MIXES)}")
    if cfg.freeze not in FREEZES:
        raise ValueError(f"unknown classifier.freeze {cfg.freeze!r}; known: {', '.join(FREEZES)}")
    if has_synthetic:
        data = [replace(p, real_fraction=real_fraction) if p.real_weight and p.synth_weight else p
                for p in MIXES[mix](cfg.steps, synth_weight, cfg.synth_fraction)]
    else:
        data = [Phase("real", cfg.steps, 1.0, 0.0)]  # ratio 0: the real-only baseline, any mix
    trunk = cfg.freeze != "linear-probe"
    phases = [replace(p, trunk_trains=trunk) for p in data[:-1]] + FREEZES[cfg.freeze](data[-1], cfg)
    assert sum(p.steps for p in phases) == cfg.steps and all(p.steps > 0 for p in phases), phases
    return phases


def draw_batches(weights: torch.Tensor, steps: int, batch_size: int,
                 gen: torch.Generator) -> torch.Tensor:
    """(steps, batch_size) indices drawn with replacement, with probability proportional to
    ``weights`` (n,), from a CPU generator.

    Inverse-CDF sampling written out (``torch.multinomial`` would do the same, but without a
    guarantee): a zero-weight image is never drawn, and the same generator state gives the same
    indices whatever zero-weight images follow the others, so ``weighted`` with weight 0 draws
    exactly the batches of the real-only run. float64, because a float32 u * total can round up
    to total on large sets.
    """
    cdf = weights.double().cumsum(0)  # (n,)
    u = torch.rand(steps, batch_size, generator=gen, dtype=torch.float64)
    return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_(max=len(weights) - 1)


# --------------------------------------------------------------------------- schedules


def _constant(opt: torch.optim.Optimizer, steps: int, cfg: ClassifierConfig) -> lr_scheduler.LRScheduler:
    return lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _cosine(opt: torch.optim.Optimizer, steps: int, cfg: ClassifierConfig) -> lr_scheduler.LRScheduler:
    return lr_scheduler.CosineAnnealingLR(opt, T_max=steps)  # to 0 at the phase's last step


def _step(opt: torch.optim.Optimizer, steps: int, cfg: ClassifierConfig) -> lr_scheduler.LRScheduler:
    return lr_scheduler.MultiStepLR(opt, milestones=[steps // 2, 3 * steps // 4], gamma=cfg.step_gamma)


SCHEDULES = {"constant": _constant, "cosine": _cosine, "step": _step}


# --------------------------------------------------------------------------- the loop


@dataclass
class _Best:
    """The best validation accuracy so far, its step and weights; evaluations since it improved."""

    acc: float = -1.0
    step: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    since: int = 0

    def update(self, acc: float, step: int, model: nn.Module) -> None:
        if acc > self.acc:  # strictly better: the earliest of equal checkpoints is kept
            self.acc, self.step, self.since = acc, step, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since += 1


@dataclass
class _Run:
    """What every phase of one training run shares."""

    cfg: ClassifierConfig
    model: nn.Module
    train: Images  # real images first, then synthetic ones, on the device
    n_real: int
    val: Images | None  # None: no selection (the last weights are kept)
    batch_gen: torch.Generator  # CPU: batch indices
    augment: Augment | None
    aug_gen: torch.Generator  # on the device: augmentation parameters
    tracker: Tracker
    best: _Best = field(default_factory=_Best)
    step: int = 0  # optimiser steps taken so far, over all phases
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation accuracy)
    on_eval: Callable[[int, float], None] | None = None  # told every validation accuracy (may stop the run)
    losses: torch.Tensor | None = None  # (cfg.steps,) on the device: every step's training loss


# Bump when a classifier trained from the same recipe, data and seed changes (this file,
# models/classifier.py, classic_augment.py): every stored classifier (labellers, pretrained trunks)
# and every key that depends on one (a GAN selected in a labeller's features) changes with it.
CLASSIFIER_VERSION = 1


@dataclass(frozen=True)
class Mix:
    """The images an arm adds to the real ones, and how batches draw from them (``synth.mix``,
    ``synth.weight``, ``synth.real_fraction`` of ``cfg``)."""

    images: Images
    cfg: SynthConfig


@dataclass(frozen=True)
class Start:
    """How a run starts: the trunk weights of ``classifier.init`` (None: DCGAN's random init), the
    augmentation its batches get (None: none; built by the caller, who knows the dataset: a
    horizontal flip preserves some datasets' labels, not others') and the seed of its batch order
    (None: the run's own; the placebo control draws another order and changes nothing else)."""

    trunk_state: dict[str, torch.Tensor] | None = None
    augment: Augment | None = None
    order_seed: int | None = None


SCRATCH = Start()


def train_classifier(cfg: ClassifierConfig, real: Images, val: Images | None, num_classes: int, *,
                     seed: int, device: torch.device, added: Mix | None = None, start: Start = SCRATCH,
                     tracker: Tracker = NULL_TRACKER,
                     on_eval: Callable[[int, float], None] | None = None) -> FinetuneResult:
    """Train for ``cfg.steps`` steps (fewer only if early stopping ends the last phase) on ``real``
    and the images ``added`` (none: real only) and return the best-on-validation model, or the last
    one when ``val`` is None (no selection). ``on_eval(step, val_acc)`` is called after every
    validation (a search's pruner: it may raise to stop the run)."""
    if val is None and cfg.patience:
        raise ValueError("classifier.patience needs validation images (early stopping selects on them)")
    synthetic = added.images if added is not None and len(added.images) else None
    mix = added.cfg if added is not None else SynthConfig()
    if cfg.budget == "equal-presentations" and synthetic is not None:  # each real image as often as alone
        cfg = cfg.model_copy(update={"steps": round(cfg.steps * (len(real) + len(synthetic)) / len(real))})
    train = real.to(device)
    if synthetic is not None:
        synthetic = synthetic.to(device)
        train = Images(torch.cat([train.x, synthetic.x]), torch.cat([train.y, synthetic.y]))
    model = prepare_model(build_model(cfg, tuple(real.x.shape[1:]), num_classes, seed, start.trunk_state),
                          device)
    order = derive_seed(seed, "clf-batches") if start.order_seed is None else start.order_seed
    run = _Run(cfg, model, train, len(real), None if val is None else val.to(device), make_generator(order),
               start.augment, make_generator(derive_seed(seed, "clf-augment"), device), tracker,
               on_eval=on_eval, losses=torch.zeros(cfg.steps, device=device))
    phases = plan_phases(cfg, mix.mix, mix.weight, synthetic is not None, mix.real_fraction)
    t0 = time.perf_counter()
    phase_steps: dict[str, float] = {}
    with seeded(derive_seed(seed, "clf-dropout")):  # dropout draws from the global RNG
        for i, phase in enumerate(phases):
            begun = run.step
            stopped = _run_phase(run, phase, last=i == len(phases) - 1)
            phase_steps[f"clf/phase_steps/{phase.name}"] = run.step - begun
            if stopped:
                break
    model.requires_grad_(True)
    model.eval()
    metrics = {"clf/stopped_step": run.step, "clf/stopped_early": float(run.step < cfg.steps),
               "clf/train_seconds": time.perf_counter() - t0, "clf/train_images": len(train),
               "clf/train_acc_last": accuracy(model, Images(train.x[: len(real)], train.y[: len(real)])),
               **phase_steps, **loss_windows(run.losses[: run.step])}
    if run.val is None:  # no selection: the last weights are the result
        return FinetuneResult(model, {**metrics, "clf/best_step": run.step})
    last_state = None
    if run.best.step != run.step:
        last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(run.best.state)
    return FinetuneResult(model, {**metrics, "clf/best_val_acc": run.best.acc, "clf/best_step": run.best.step,
                                  "clf/improved_last_10pct": late_improvement(run.curve, cfg.steps)},
                          last_state)


def loss_windows(losses: torch.Tensor, fraction: float = 0.1) -> dict[str, float]:
    """Whether a run had fitted its data: the mean training loss over its last ``fraction`` of steps
    (``clf/loss_last_window``) and over the window before (``clf/loss_prev_window``; NaN for runs
    shorter than two windows). A loss still falling between the two means the budget ended early."""
    w = max(1, int(len(losses) * fraction))
    out = {"clf/loss_last_window": float(losses[-w:].mean()) if len(losses) else math.nan,
           "clf/loss_prev_window": math.nan}
    if len(losses) >= 2 * w:
        out["clf/loss_prev_window"] = float(losses[-2 * w:-w].mean())
    return out


def late_improvement(curve: list[tuple[int, float]], steps: int) -> float:
    """1.0 if the validation accuracy in the last 10% of the step budget beats every earlier one
    (the run was still improving: its budget did not converge), 0.0 if not, NaN when no
    validation falls before the last 10%."""
    cut = 0.9 * steps
    early = [acc for step, acc in curve if step <= cut]
    late = [acc for step, acc in curve if step > cut]
    if not early or not late:
        return math.nan
    return float(max(late) > max(early))


def build_model(cfg: ClassifierConfig, image_shape: tuple[int, int, int], num_classes: int, seed: int,
           trunk_state: dict[str, torch.Tensor] | None) -> nn.Module:
    norm = trunk_norm(trunk_state) if trunk_state else "batch"  # seed-cnn follows the trunk it loads
    with seeded(derive_seed(seed, "clf-init")):  # the same head init for every ratio and every init
        model = build_classifier(cfg.arch, image_shape, num_classes, cfg.width, norm=norm)
    if trunk_state is not None:
        try:
            model.trunk.load_state_dict(trunk_state)
        except RuntimeError as exc:
            raise ValueError(f"classifier.init {cfg.init}: the starting weights do not fit a "
                             f"{cfg.arch} trunk of width {cfg.width}: {exc}") from None
    return model


def _run_phase(run: _Run, phase: Phase, *, last: bool) -> bool:
    """``phase.steps`` optimiser steps (fewer if early stopping ends the last phase); True if stopped."""
    cfg, model = run.cfg, run.model
    model.requires_grad_(True)
    model.trunk.requires_grad_(phase.trunk_trains)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr * phase.lr_scale, weight_decay=cfg.weight_decay, fused=True)
    sched = SCHEDULES[cfg.schedule](opt, phase.steps, cfg)
    n_synth = len(run.train) - run.n_real
    weights = torch.cat([torch.full((run.n_real,), phase.real_weight),
                         torch.full((n_synth,), phase.synth_weight)])  # (n_real + n_synth,)
    batches = _phase_batches(phase, run, weights, n_synth).to(run.train.x.device)
    loss_sum, since = torch.zeros((), device=run.train.x.device), 0
    if last:
        run.best.since = 0  # patience counts evaluations of the last phase only
    for i in range(phase.steps):
        model.train()
        if not phase.trunk_trains:
            model.trunk.eval()  # a frozen trunk's BatchNorm statistics stay as they were
        x, y = run.train.x[batches[i]], run.train.y[batches[i]]  # (B, C, H, W), (B,)
        if run.augment is not None:
            x = run.augment(x, run.aug_gen)
        with autocast(x.device):  # bf16 forward where configured; the loss from fp32 logits
            logits = model(x).float()  # (B, K)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)  # logits in, no Softmax
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr = sched.get_last_lr()[0]  # the rate this step used
        sched.step()
        run.losses[run.step] = loss.detach()
        run.step += 1
        loss_sum += loss.detach()
        since += 1
        if run.step % cfg.eval_every == 0 or i == phase.steps - 1:
            _evaluate(run, (loss_sum / since).item(), lr)
            loss_sum.zero_()
            since = 0
            if last and 0 < cfg.patience <= run.best.since:
                return True
    return False


def _phase_batches(phase: Phase, run: _Run, weights: torch.Tensor, n_synth: int) -> torch.Tensor:
    """(steps, batch_size) indices into ``run.train``: drawn by weight from real ∪ synthetic, or with
    ``phase.real_fraction`` set, that share of every batch from the real images and the rest from
    the synthetic ones (real first in each row; the order within a batch does not matter)."""
    B = run.cfg.batch_size
    if phase.real_fraction is None:
        return draw_batches(weights, phase.steps, B, run.batch_gen)
    n_real_b = round(phase.real_fraction * B)
    real = draw_batches(weights[: run.n_real], phase.steps, n_real_b, run.batch_gen)
    synth = draw_batches(weights[run.n_real:], phase.steps, B - n_real_b, run.batch_gen) + run.n_real
    return torch.cat([real, synth], dim=1)


def _evaluate(run: _Run, mean_loss: float, lr: float) -> None:
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"non-finite clf/loss in classifier training at step {run.step} "
                                 f"(lr={run.cfg.lr})")
    logged = {"clf/loss": mean_loss, "clf/lr": lr}
    if run.val is not None:
        logged["clf/val_acc"] = val_acc = accuracy(run.model, run.val)
        run.curve.append((run.step, val_acc))
        run.best.update(val_acc, run.step, run.model)
    run.tracker.log_metrics(logged, step=run.step)
    if run.on_eval is not None and run.val is not None:
        run.on_eval(run.step, logged["clf/val_acc"])
