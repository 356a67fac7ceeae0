"""Is ganft's default classifier a baseline a practitioner would accept, and which augmentation should
it use? Real-only accuracy on Fashion-MNIST at N = 100 and 1,000 labelled images.

    python bench/baseline.py --jobs 2                 # N 100 and 1000, seeds 0-4, 1,500 and 3,000 steps
    python bench/baseline.py --sizes 100 --seeds 0 --steps 300 --long 0   # a quick look

Every run trains on all N images for a fixed number of optimiser steps of 64 images and keeps the
last weights (the selection-free protocol, ``data.validation none``); the same N images (chosen by
(N, seed) from the pool protocol's pool, as in every study) for every row of one (N, seed):

- ``plain``: conv 3x3 (32) - ReLU - max-pool - conv 3x3 (64) - ReLU - max-pool - linear 128 - ReLU
  - linear, Adam at 1e-3: the plain CNN a reviewer would reach for.
- ``default, augment A``: ganft's default classifier recipe (``ClassifierConfig()``: bn-cnn, cosine
  schedule) trained by ganft's own ``train_classifier`` with ``classifier.augment`` A in
  ``--augments`` (none, crop-flip: whole-pixel shifts and label-safe flips, affine: shifts plus a
  small rotation and scale, one bilinear resampling of every image), at ``--steps`` and at
  ``--long`` times as many (the convergence check: an augmented run fits its images more slowly).

Each run reports its training accuracy on its N images and its loss over the last 10% of steps
(has it fitted?), accuracy on a fixed held-out set of 10,000 labelled training-split images outside
every budget (the pool protocol's validation set: a developer's yardstick for choosing a default,
never a trial's), and test accuracy. The default augmentation is the one with the higher mean
held-out accuracy over every N and seed at the longer budget; test accuracy is printed and does
not choose. ``--jobs 2`` runs two trainings at once, one thread each (accuracy does not depend on it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cmdline import command_line  # bench/cmdline.py
from scipy import stats
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


HELD_OUT = 10_000  # the pool protocol's fixed validation set: outside every budget, not the test split


_DATA: dict = {}  # per process: the test split and every (n, seed) budget


def load_data(root: str | None, sizes: list[int], seeds: list[int], threads: int) -> None:
    """Fill ``_DATA`` (each worker loads the dataset once instead of receiving tensors per job):
    (n, seed) -> the budget's N training images and the fixed held-out set."""
    torch.set_num_threads(threads)
    splits = load_splits("fashion-mnist", root)
    _DATA["test"] = splits.test
    for n in sizes:
        for seed in seeds:
            cfg = DataConfig(dataset="fashion-mnist", root=root, train_size=n, validation="pool",
                             val_size=min(HELD_OUT, len(splits.train) // 4))
            _DATA[n, seed] = labelled_budget(splits, cfg, seed)


def one_run(job: dict) -> dict:
    """One training of ``job`` (n, seed, classifier, steps) on its budget: its accuracies and fit."""
    budget, test = _DATA[job["n"], job["seed"]], _DATA["test"]
    t0 = time.perf_counter()
    if job["classifier"] == "plain":
        model, fit = train_plain(budget.train, job["steps"], job["seed"]), {}
    else:
        aug = job["classifier"].removeprefix("default, augment ")
        cfg = ClassifierConfig(steps=job["steps"], augment=aug)
        res = train_classifier(cfg, budget.train, None, 10, seed=job["seed"], device=CPU,
                               start=Start(augment=classifier_augment(aug, "fashion-mnist", 28)))
        model = res.model
        fit = {"train_acc": res.metrics["clf/train_acc_last"], "loss_last": res.metrics["clf/loss_last_window"],
               "loss_prev": res.metrics["clf/loss_prev_window"]}
    return {**job, **fit, "held_out_acc": accuracy(model, budget.val), "test_acc": accuracy(model, test),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--long", type=int, default=2, help="also train the default at this many times "
                        "--steps (the convergence check); 0: only --steps")
    parser.add_argument("--augments", nargs="+", default=["none", "crop-flip", "affine"])
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, one thread each")
    parser.add_argument("--root", help="folder with the Fashion-MNIST IDX files (default: the Debian package)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    default = ClassifierConfig()
    step_list = [args.steps] + ([args.long * args.steps] if args.long else [])
    print(f"default recipe: {default.arch}, width {default.width}, schedule {default.schedule}, "
          f"lr {default.lr}, batch {default.batch_size}; steps {step_list}; all N trained on, last weights; "
          f"{args.jobs} job(s) at once")
    threads = torch.get_num_threads() if args.jobs == 1 else 1
    jobs = [{"n": n, "seed": seed, "classifier": c, "steps": steps}
            for n in args.sizes for seed in args.seeds
            for c, steps in [("plain", args.steps)] + [(f"default, augment {a}", s) for a in args.augments
                                                       for s in step_list]]
    t0 = time.perf_counter()
    setup = (args.root, args.sizes, args.seeds, threads)
    if args.jobs == 1:
        load_data(*setup)
        rows = [one_run(j) for j in jobs]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, initializer=load_data, initargs=setup) as pool:
            rows = list(pool.map(one_run, jobs))
    wall = time.perf_counter() - t0
    print("| N | seed | classifier | steps | train acc | loss last 10% (10% before) | held-out acc | test acc | seconds |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        fit = ("", "") if "train_acc" not in r else \
            (f"{100 * r['train_acc']:.1f}%", f"{r['loss_last']:.3f} ({r['loss_prev']:.3f})")
        print(f"| {r['n']:,} | {r['seed']} | {r['classifier']} | {r['steps']:,} | {fit[0]} | {fit[1]} "
              f"| {100 * r['held_out_acc']:.2f}% | {100 * r['test_acc']:.2f}% | {r['seconds']:.0f} |")
    print()

    def values(classifier: str, key: str, n: int | None = None, steps: int | None = None) -> list[float]:
        return [r[key] for r in rows if r["classifier"] == classifier and n in (None, r["n"])
                and steps in (None, r["steps"])]

    def mean(*a) -> float:
        v = values(*a)
        return sum(v) / len(v)

    longest = step_list[-1]
    held = {a: mean(f"default, augment {a}", "held_out_acc", None, longest) for a in args.augments}
    chosen = max(held, key=held.get)
    print(f"augmentation chosen on held-out accuracy at {longest:,} steps (mean over every N and seed): "
          f"{chosen} (" + ", ".join(f"{100 * v:.2f}% with {a}" for a, v in held.items()) + ")")
    print("| N | steps | plain CNN | " + " | ".join(f"augment {a}: test (held-out), train acc" for a in args.augments)
          + " | " + " | ".join(f"{a} - none, test (paired, 95% CI)" for a in args.augments if a != "none") + " |")
    print("| ---: | ---: | ---: | " + " | ".join("---:" for _ in args.augments)
          + " | " + " | ".join("---:" for a in args.augments if a != "none") + " |")
    summary = []
    for n in args.sizes:
        for steps in step_list:
            cells = {a: {"test": mean(f"default, augment {a}", "test_acc", n, steps),
                         "held_out": mean(f"default, augment {a}", "held_out_acc", n, steps),
                         "train": mean(f"default, augment {a}", "train_acc", n, steps)} for a in args.augments}
            diffs = {}
            for a in args.augments:
                if a != "none" and "none" in args.augments:
                    d = np.array(values(f"default, augment {a}", "test_acc", n, steps)) - \
                        np.array(values("default, augment none", "test_acc", n, steps))
                    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
                    diffs[a] = (float(d.mean()), float(half))
            plain = mean("plain", "test_acc", n, args.steps) if steps == args.steps else None
            summary.append({"n": n, "steps": steps, "plain": plain, "cells": cells,
                            "minus_none": {a: {"mean": m, "ci_half": h} for a, (m, h) in diffs.items()}})
            print(f"| {n:,} | {steps:,} | " + ("" if plain is None else f"{100 * plain:.2f}%") + " | "
                  + " | ".join(f"{100 * c['test']:.2f}% ({100 * c['held_out']:.2f}%), {100 * c['train']:.1f}%"
                               for c in cells.values()) + " | "
                  + " | ".join(f"{100 * m:+.2f} pp (±{100 * h:.2f})" for m, h in diffs.values()) + " |")
    print(f"\nwall time {wall / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "chosen_augment": chosen,
                                         "rows": rows, "summary": summary, "wall_seconds": wall}, indent=2))


if __name__ == "__main__":
    main()
