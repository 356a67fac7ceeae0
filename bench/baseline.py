"""Is ganft's default classifier a baseline a practitioner would accept? Real-only test accuracy on
Fashion-MNIST at N = 100 and 1,000 labelled images, against a plain two-conv CNN with max pooling.

    python bench/baseline.py                       # N 100 and 1000, seeds 0-2, 1,500 steps
    python bench/baseline.py --sizes 100 --seeds 0 --steps 300   # a quick look

Both get the same labelled budget (the same N images, chosen by (N, seed) as in every study) and
the same number of optimiser steps of 64 images:

- ``plain``: conv 3x3 (32) - ReLU - max-pool - conv 3x3 (64) - ReLU - max-pool - linear 128 - ReLU
  - linear, Adam at 1e-3, trained on all N images with no validation, the last weights kept: the
  plain CNN a reviewer would reach for.
- ``default``: ganft's default classifier recipe (``ClassifierConfig()``: bn-cnn, cosine schedule),
  trained by ganft's own ``train_classifier``: first as the plain CNN is (all N images, no
  validation, the last weights: the like-for-like comparison of the two classifiers), then under
  the default protocol (``data.validation from-budget``: it trains on 80% of the N images and
  keeps the checkpoint that is best on the other 20%: what holding out validation costs), once
  with ``classifier.augment: none`` and once with ``classic``.

The augmentation is chosen on budget data: the variant with the higher mean budget-validation
accuracy over every (N, seed) is the one the default recipe should use; the test accuracy is
printed for all of them, and is not what chooses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from cmdline import command_line  # bench/cmdline.py
from torch import nn

from ganft.classic_augment import classifier_augment
from ganft.config import ClassifierConfig, DataConfig
from ganft.data import labelled_budget, load_splits
from ganft.evaluate import accuracy
from ganft.finetune import Start, train_classifier
from ganft.runtime import make_generator, seeded

CPU = torch.device("cpu")


def plain_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes))


def train_plain(images, steps: int, seed: int) -> nn.Module:
    """Adam, batch 64 drawn with replacement, no validation, the last weights."""
    with seeded(seed):
        model = plain_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = make_generator(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (64,), generator=gen)
        loss = F.cross_entropy(model(images.x[idx]), images.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--root", help="folder with the Fashion-MNIST IDX files (default: the Debian package)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    splits = load_splits("fashion-mnist", args.root)
    test = splits.test
    default = ClassifierConfig(steps=args.steps)
    print(f"default recipe: {default.arch}, width {default.width}, schedule {default.schedule}, "
          f"lr {default.lr}, batch {default.batch_size}, {args.steps} steps; torch threads "
          f"{torch.get_num_threads()}")
    print("| N | seed | classifier | budget val acc | test acc | seconds |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    rows = []
    for n in args.sizes:
        for seed in args.seeds:
            everything = labelled_budget(splits, DataConfig(dataset="fashion-mnist", train_size=n,
                                                            validation="none"), seed)
            t0 = time.perf_counter()
            rows.append({"n": n, "seed": seed, "classifier": "plain", "val_acc": None,
                         "test_acc": accuracy(train_plain(everything.train, args.steps, seed), test),
                         "seconds": time.perf_counter() - t0})
            t0 = time.perf_counter()  # the same classifier trained as the plain CNN is: all N, last step
            res = train_classifier(default, everything.train, None, 10, seed=seed, device=CPU)
            rows.append({"n": n, "seed": seed, "classifier": "default, no validation", "val_acc": None,
                         "test_acc": accuracy(res.model, test), "seconds": time.perf_counter() - t0})
            budget = labelled_budget(splits, DataConfig(dataset="fashion-mnist", train_size=n,
                                                        validation="from-budget"), seed)
            for aug in ("none", "classic"):
                cfg = default.model_copy(update={"augment": aug})
                t0 = time.perf_counter()
                res = train_classifier(cfg, budget.train, budget.val, 10, seed=seed, device=CPU,
                                       start=Start(augment=classifier_augment(aug, "fashion-mnist", 28)))
                rows.append({"n": n, "seed": seed, "classifier": f"default, augment {aug}",
                             "val_acc": res.metrics["clf/best_val_acc"], "test_acc": accuracy(res.model, test),
                             "seconds": time.perf_counter() - t0})
            for r in rows[-4:]:
                val = "" if r["val_acc"] is None else f"{100 * r['val_acc']:.1f}%"
                print(f"| {n:,} | {seed} | {r['classifier']} | {val} | {100 * r['test_acc']:.2f}% "
                      f"| {r['seconds']:.0f} |", flush=True)
    print()

    def mean(classifier: str, key: str, n: int | None = None) -> float:
        values = [r[key] for r in rows if r["classifier"] == classifier and n in (None, r["n"])]
        return sum(values) / len(values)

    val = {aug: mean(f"default, augment {aug}", "val_acc") for aug in ("none", "classic")}
    chosen = max(val, key=val.get)
    print(f"augmentation chosen on budget validation accuracy (mean over every N and seed): {chosen} "
          f"({100 * val['none']:.1f}% with none, {100 * val['classic']:.1f}% with classic)")
    print("| N | plain CNN: all N images, last step | ganft default: all N images, last step | difference "
          f"| ganft default, from-budget (augment {chosen}) | difference |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = []
    for n in args.sizes:
        a = mean("plain", "test_acc", n)
        b = mean("default, no validation", "test_acc", n)
        c = mean(f"default, augment {chosen}", "test_acc", n)
        summary.append({"n": n, "plain": a, "default_no_validation": b, "default_from_budget": c})
        print(f"| {n:,} | {100 * a:.2f}% | {100 * b:.2f}% | {100 * (b - a):+.2f} pp | {100 * c:.2f}% "
              f"| {100 * (c - a):+.2f} pp |")
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "chosen_augment": chosen, "rows": rows,
                                         "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
