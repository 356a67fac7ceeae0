"""Before/after figures for ganft's speed settings, one change at a time.

    python bench/settings.py [--json out.json]
    python bench/settings.py --rounds 1 --scale 0.1   # a smoke run: every case once, few steps

- GAN and classifier training steps (28x28, batch 64, ganft defaults) in NCHW fp32 (before),
  channels_last fp32 (the CUDA default), NCHW bf16 autocast (the default on CPUs with native bf16)
  and channels_last bf16.
- Sampling 5,000 synthetic images: plain autograd-recording forward (before) vs
  ``torch.inference_mode`` (what synth.py does).
- Evaluating 10,000 test images in batches of 64, 256 (ganft's CPU batch) and 4,096 (its GPU batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ganft.config import ClassifierConfig, GanConfig
from ganft.data import labelled_subset, load_splits
from ganft.finetune import train_classifier
from ganft.gan_train import build_generator, train_gan
from ganft.models.classifier import build_classifier
from ganft.runtime import Speed, configure_speed

DEVICE = torch.device("cpu")  # set by --device
ROUNDS = 5  # set by --rounds


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median wall seconds of each case over ROUNDS rounds that run every case in turn (so a busy
    moment on the machine hits all cases alike), after one warm-up call each."""
    for fn in cases.values():
        fn()
    seen: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            seen[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in seen.items()}


def with_speed(speed: Speed, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        configure_speed(speed)
        try:
            return fn()
        finally:
            configure_speed(Speed())
    return run


SPEEDS = {"NCHW fp32 (before)": Speed("fp32", channels_last=False),
          "channels_last fp32": Speed("fp32", channels_last=True),
          "NCHW bf16": Speed("bf16", channels_last=False),
          "channels_last bf16": Speed("bf16", channels_last=True)}


def training_steps(real, val, scale: float = 1.0) -> dict[str, float]:
    gan_steps, clf_steps = max(1, round(20 * scale)), max(1, round(40 * scale))
    cases = {}
    for label, speed in SPEEDS.items():
        cases[f"GAN step ms, {label}"] = with_speed(speed, lambda: train_gan(
            GanConfig(steps=gan_steps), real, 10, seed=0, device=DEVICE, log_every=gan_steps))
        cases[f"classifier step ms, {label}"] = with_speed(speed, lambda: train_classifier(
            ClassifierConfig(arch="seed-cnn", steps=clf_steps, eval_every=clf_steps), real, val, 10, seed=0,
            device=DEVICE))
    per_call = interleaved(cases)
    return {k: v * 1000 / (gan_steps if k.startswith("GAN") else clf_steps) for k, v in per_call.items()}


def sampling_and_eval(test) -> dict[str, float]:
    G = build_generator(GanConfig(), (1, 28, 28), 10).to(DEVICE).eval()
    z, y = torch.randn(5000, 64, device=DEVICE), torch.arange(5000, device=DEVICE) % 10

    def plain() -> None:
        for zz, yy in zip(z.split(1000), y.split(1000), strict=True):
            G(zz, yy)

    def inference() -> None:
        with torch.inference_mode():
            plain()

    clf = build_classifier("seed-cnn", (1, 28, 28), 10, width=32).to(DEVICE).eval()
    x = test.x.to(DEVICE)

    def eval_batches(bs: int) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for chunk in x.split(bs):
                    clf(chunk).argmax(1).cpu()
        return run

    return interleaved({"sample 5,000 images s, autograd recording (before)": plain,
                        "sample 5,000 images s, inference_mode": inference,
                        **{f"evaluate 10,000 images s, batch {bs:,}": eval_batches(bs) for bs in (64, 256, 4096)}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", help="Fashion-MNIST IDX folder (default: the Debian package's)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default: 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the training steps timed (default: 1)")
    args = parser.parse_args()
    global DEVICE, ROUNDS
    DEVICE, ROUNDS = torch.device(args.device), args.rounds
    splits = load_splits("fashion-mnist", args.root)
    real = labelled_subset(splits.train, 1000, 0)
    val = splits.test.take(torch.arange(64))  # any 64 real images: this times evaluation only
    figures = {**training_steps(real, val, args.scale), **sampling_and_eval(splits.test)}
    for k, v in figures.items():
        print(f"{k:58s} {v:8.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
