"""Train a classifier on real ∪ synthetic images for a fixed number of optimiser steps.

Equal budget: every arm of a comparison gets ``cfg.steps`` steps of ``cfg.batch_size`` images,
whatever the ratio; only the data differs. Validation accuracy every ``eval_every`` steps decides
which weights are kept (the best, earliest on ties), so no arm is judged on an unlucky last step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ganft.config import ClassifierConfig
from ganft.data import Images
from ganft.evaluate import accuracy
from ganft.gan_train import NonFiniteLossError
from ganft.models.classifier import build_classifier
from ganft.runtime import derive_seed, make_generator, seeded
from ganft.tracking import NULL_TRACKER, Tracker


@dataclass
class FinetuneResult:
    model: nn.Module  # best-on-validation weights, eval mode
    metrics: dict[str, float]


def train_classifier(cfg: ClassifierConfig, real: Images, synthetic: Images | None, val: Images,
                     num_classes: int, *, seed: int, device: torch.device,
                     tracker: Tracker = NULL_TRACKER) -> FinetuneResult:
    """Union mixing: each batch is drawn uniformly from real ∪ synthetic."""
    train = real.to(device)
    if synthetic is not None and len(synthetic):
        synthetic = synthetic.to(device)
        train = Images(torch.cat([train.x, synthetic.x]), torch.cat([train.y, synthetic.y]))
    val = val.to(device)
    with seeded(derive_seed(seed, "clf-init")):  # same init for every ratio of a (N, seed) pair
        model = build_classifier(cfg.arch, tuple(real.x.shape[1:]), num_classes, cfg.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    gen = make_generator(derive_seed(seed, "clf-batches"), device)
    B = min(cfg.batch_size, len(train))
    t0 = time.perf_counter()
    with seeded(derive_seed(seed, "clf-dropout")):  # dropout draws from the global RNG
        best_acc, best_step, best_state = _loop(cfg, model, opt, train, val, gen, B, tracker, device)
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - t0
    return FinetuneResult(model, {"clf/best_val_acc": best_acc, "clf/best_step": best_step,
                                  "clf/train_seconds": seconds, "clf/train_images": len(train)})


def _loop(cfg: ClassifierConfig, model: nn.Module, opt: torch.optim.Optimizer, train: Images,
          val: Images, gen: torch.Generator, B: int, tracker: Tracker,
          device: torch.device) -> tuple[float, int, dict[str, torch.Tensor]]:
    """cfg.steps optimiser steps; returns (best val accuracy, its step, its weights)."""
    best_acc, best_step, best_state = -1.0, 0, {}
    loss_sum, since = torch.zeros((), device=device), 0
    for step in range(1, cfg.steps + 1):
        model.train()
        idx = torch.randint(len(train), (B,), generator=gen, device=device)
        loss = F.cross_entropy(model(train.x[idx]), train.y[idx])  # logits in, no Softmax
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
        since += 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            mean_loss = (loss_sum / since).item()
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(f"non-finite clf/loss in classifier training at step {step} "
                                         f"(lr={cfg.lr})")
            val_acc = accuracy(model, val)
            tracker.log_metrics({"clf/loss": mean_loss, "clf/val_acc": val_acc}, step=step)
            if val_acc > best_acc:
                best_acc, best_step = val_acc, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            loss_sum.zero_()
            since = 0
    return best_acc, best_step, best_state
