"""FixMatch (Sohn et al., NeurIPS 2020): the consistency-based semi-supervised baseline a GAN's
images have to beat when unlabelled images are at hand (``synth.source fixmatch``).

Every step trains on a labelled batch of the budget (weak view, cross-entropy) and on mu x batch
unlabelled images drawn from the whole pool (``pool_batches``: each pass over the pool is a fresh
permutation, so every image is drawn once per pass). An unlabelled image whose weak view the model
gives a class with probability at least tau gets that class as its pseudo-label, and the
cross-entropy of its strong view against it, weighted lambda_u, joins the loss (the others are
masked out). The classifier the trial evaluates is the EMA of the weights (``AveragedModel`` with an
EMA average, BatchNorm buffers included), after exactly ``classifier.steps`` steps: nothing is
selected.

The unlabelled images' true labels never reach the loss: ``LabelProbe`` holds them and is only
asked, after each step's pseudo-labels are made, how many are right (``fixmatch/pseudo_label_acc``,
the precision of the masked pseudo-labels). A test poisons them and checks every weight is unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ganft.config import ClassifierConfig, FixMatchConfig
from ganft.evaluate import accuracy
from ganft.finetune import SCHEDULES, FinetuneResult, build_model, draw_batches, loss_windows
from ganft.gan_train import NonFiniteLossError
from ganft.images import Images, LabelProbe
from ganft.runtime import autocast, derive_seed, make_generator, prepare_model, seeded
from ganft.tracker import NULL_TRACKER, Tracker

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
NO_PROBE = LabelProbe(None)  # the true labels are not known: pseudo-label accuracy is NaN


@dataclass(frozen=True)
class Views:
    """The two views of an image: weak (the trial's ``classifier.augment``) and strong."""

    weak: Augment
    strong: Augment


def pool_batches(pool_size: int, steps: int, per_step: int, gen: torch.Generator) -> torch.Tensor:
    """(steps, per_step) positions in the unlabelled pool: consecutive random permutations of the
    whole pool, cut into rows, so every image is drawn once per pass (and each row has distinct
    images when per_step <= pool_size)."""
    need = steps * per_step
    passes = -(-need // pool_size)
    order = torch.cat([torch.randperm(pool_size, generator=gen) for _ in range(passes)])
    return order[:need].view(steps, per_step)


def pseudo_labels(weak_logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's pseudo-labels of (m, K) weak-view logits: the argmax class (m,) and the mask (m,)
    of the images whose max probability is at least ``tau``. No gradient flows through them."""
    with torch.no_grad():
        conf, pseudo = F.softmax(weak_logits.detach().float(), dim=1).max(dim=1)
    return pseudo, conf >= tau


def ema_model(model: nn.Module, decay: float) -> AveragedModel | None:
    """The EMA of ``model``'s weights and BatchNorm buffers (None for decay 0: the raw weights)."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_fixmatch(cfg: ClassifierConfig, fm: FixMatchConfig, real: Images, unlabelled: torch.Tensor,
                   num_classes: int, *, seed: int, device: torch.device, views: Views,
                   tracker: Tracker = NULL_TRACKER, probe: LabelProbe = NO_PROBE) -> FinetuneResult:
    """``cfg.steps`` FixMatch steps on the ``real`` budget images and the ``unlabelled`` pool
    (U, C, H, W); returns the EMA model (eval mode) and its metrics (``clf/...`` as every arm logs
    them, ``fixmatch/mask_rate`` and ``fixmatch/pseudo_label_acc`` over the last 10% of steps)."""
    B, m = cfg.batch_size, fm.mu * cfg.batch_size
    if len(unlabelled) < m:
        raise ValueError(f"fixmatch.mu {fm.mu} x classifier.batch_size {B} = {m} unlabelled images a step, "
                         f"and the pool has {len(unlabelled)}")
    real, pool, probe = real.to(device), unlabelled.to(device), probe.to(device)
    model = prepare_model(build_model(cfg, tuple(real.x.shape[1:]), num_classes, seed, None), device)
    ema = ema_model(model, fm.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched: lr_scheduler.LRScheduler = SCHEDULES[cfg.schedule](opt, cfg.steps, cfg)
    labelled_idx = draw_batches(torch.ones(len(real)), cfg.steps, B,
                                make_generator(derive_seed(seed, "clf-batches"))).to(device)  # (steps, B)
    pool_idx = pool_batches(len(pool), cfg.steps, m,
                            make_generator(derive_seed(seed, "fixmatch-pool"))).to(device)  # (steps, m)
    aug_gen = make_generator(derive_seed(seed, "clf-augment"), device)
    # per step: supervised loss, unlabelled loss, mask rate, correct masked pseudo-labels
    log = torch.zeros(cfg.steps, 4, device=device)
    t0 = time.perf_counter()
    with seeded(derive_seed(seed, "clf-dropout")):
        for step in range(cfg.steps):
            model.train()
            bl, bu = labelled_idx[step], pool_idx[step]
            xu = pool[bu]
            x = torch.cat([views.weak(real.x[bl], aug_gen), views.weak(xu, aug_gen),
                           views.strong(xu, aug_gen)])  # (B + 2m, C, H, W)
            with autocast(device):
                logits = model(x).float()  # (B + 2m, K)
            lx, lw, ls = logits.split([B, m, m])
            pseudo, mask = pseudo_labels(lw, fm.tau)  # the weak view's guess, no gradient
            loss_x = F.cross_entropy(lx, real.y[bl], label_smoothing=cfg.label_smoothing)
            loss_u = (F.cross_entropy(ls, pseudo, reduction="none") * mask).mean()
            loss = loss_x + fm.lambda_u * loss_u
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr = sched.get_last_lr()[0]
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            log[step] = torch.stack([loss_x.detach(), loss_u.detach(), mask.float().mean(),
                                     probe.correct(bu, pseudo, mask).to(device)])
            if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
                _log_window(log[step + 1 - min(cfg.eval_every, step + 1): step + 1], step + 1, lr, m, tracker)
    last = log[-max(1, cfg.steps // 10):]
    return fixed_budget_result(model, ema, real, cfg.steps, time.perf_counter() - t0, log[:, 0], {
        "fixmatch/loss_u_last_window": float(last[:, 1].mean()),
        "fixmatch/mask_rate": float(last[:, 2].mean()), "fixmatch/pseudo_label_acc": _precision(last, m),
        "fixmatch/pool_size": float(len(pool)),
        "fixmatch/pool_passes": cfg.steps * m / len(pool)})


def fixed_budget_result(model: nn.Module, ema: AveragedModel | None, real: Images, steps: int, seconds: float,
                        losses: torch.Tensor, extra: dict[str, float]) -> FinetuneResult:
    """What a fixed-budget training of its own (FixMatch, the semi-supervised GAN) hands the trial:
    the EMA of the weights (the raw ones without an EMA) in eval mode, the raw last weights for
    ``test/acc_last``, and the ``clf/...`` metrics every arm logs (nothing selected), with ``extra``."""
    final = ema.module if ema is not None else model
    final.eval()
    metrics = {"clf/stopped_step": steps, "clf/stopped_early": 0.0, "clf/best_step": steps,
               "clf/train_seconds": seconds, "clf/train_images": len(real),
               "clf/train_acc_last": accuracy(final, real), **loss_windows(losses), **extra}
    raw = None if ema is None else {k: v.detach().clone() for k, v in model.state_dict().items()}
    return FinetuneResult(final, metrics, last_state=raw)


def _precision(rows: torch.Tensor, m: int) -> float:
    """Share of the masked pseudo-labels that were right over ``rows`` of the step log."""
    masked = float((rows[:, 2] * m).sum())
    return float(rows[:, 3].sum()) / masked if masked else math.nan


def _log_window(rows: torch.Tensor, step: int, lr: float, m: int, tracker: Tracker) -> None:
    loss = float(rows[:, 0].mean())
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"non-finite clf/loss in FixMatch training at step {step}")
    tracker.log_metrics({"clf/loss": loss, "clf/lr": lr, "fixmatch/loss_u": float(rows[:, 1].mean()),
                         "fixmatch/mask_rate": float(rows[:, 2].mean()),
                         "fixmatch/pseudo_label_acc": _precision(rows, m)}, step=step)
