"""The default diffusion model against the default GAN: training and sampling speed, side by side.

    python bench/generators.py                 # 3 alternating rounds on this machine, prints a table
    python bench/generators.py --json out.json # also saves the figures

On 1,000 Fashion-MNIST training images (28x28, padded to 32x32 for the diffusion model): training
images per second at batch 64 (``gan/images_per_second`` of ``gan.steps`` steps, after a 2-step
warm-up), and sampling images per second (``synth.sample_synthetic`` of ``--samples`` class-balanced
images in ``torch.inference_mode``, the way a trial draws them; the diffusion model at its default
``diffusion.sample_steps`` with guidance 1, one UNet pass a step). Rounds alternate the two
generators so that a busy moment hits both alike; the median round is reported. A diffusion model
needs many more training steps than a GAN to converge, so read the training figures with the
steps each study gives them, and the sampling figures with the number of images a study draws.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from cmdline import command_line  # bench/cmdline.py
from throughput import machine  # bench/throughput.py

from ganft.config import TrialConfig
from ganft.data import labelled_subset, load_splits
from ganft.images import Images
from ganft.keys import with_overrides
from ganft.synth import sample_synthetic
from ganft.trial_gan import TrialGan, train_stored

GENERATORS = {"default GAN (gan.recipe default)": {"gan.recipe": "default"},
              "default diffusion (gan.recipe ddpm)": {"gan.recipe": "ddpm"},
              # the diffusion model of studies/gan_vs_diffusion.yaml
              "diffusion at width 16 (gan_vs_diffusion)": {"gan.recipe": "ddpm", "diffusion.width": 16}}


def one_round(overrides: dict, real: Images, steps: int, samples: int,
              device: torch.device) -> tuple[float, float]:
    cfg = with_overrides(TrialConfig(), {**overrides, "gan.batch_size": 64})
    warm = cfg.gan.model_copy(update={"steps": 2})
    train_stored(warm, real, 10, seed=0, device=device, diffusion=cfg.diffusion)
    made = train_stored(cfg.gan.model_copy(update={"steps": steps}), real, 10, seed=0, device=device,
                        diffusion=cfg.diffusion)
    train = made.metrics["gan/images_per_second"]
    G = TrialGan(cfg.gan, made, tuple(real.x.shape[1:]), 10, trained=True,
                 diffusion=cfg.diffusion).generator(device)
    t0 = time.perf_counter()
    sample_synthetic(G, samples, 10, seed=1, device=device)
    return train, samples / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per round")
    parser.add_argument("--samples", type=int, default=500, help="images sampled per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", help="Fashion-MNIST IDX folder (default: the Debian package's)")
    parser.add_argument("--json", type=Path, help="save the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    real = labelled_subset(load_splits("fashion-mnist", args.root).train, 1000, 0)
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in GENERATORS}
    for r in range(args.rounds):
        for name, overrides in GENERATORS.items():
            seen[name].append(one_round(overrides, real, args.steps, args.samples, device))
            train, sample = seen[name][-1]
            print(f"  round {r + 1}: {name:42s} train {train:9.1f} images/s, sample {sample:9.1f} images/s",
                  flush=True)
    figures = {name: {"train_images_per_second": statistics.median(t for t, _ in runs),
                      "sample_images_per_second": statistics.median(s for _, s in runs)}
               for name, runs in seen.items()}
    print("| generator | training images/s | sampling images/s |\n| --- | ---: | ---: |")
    for name, f in figures.items():
        print(f"| {name} | {f['train_images_per_second']:,.1f} | {f['sample_images_per_second']:,.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "device": str(device),
                                         "command": command_line(), "figures": figures,
                                         "steps": args.steps, "samples": args.samples,
                                         "rounds": args.rounds}, indent=2))


if __name__ == "__main__":
    main()
