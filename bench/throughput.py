"""Training throughput, ganft against the seed article's pipeline, measured side by side.

    python bench/throughput.py                 # 3 alternating rounds on this machine, prints a table
    python bench/throughput.py --json out.json # also saves the figures (bench/run_all.py reads them)

Images per second for GAN training steps and classifier training steps at batch 64 on
Fashion-MNIST, in alternating rounds (reference, then each ganft variant, then again) so that a
busy moment on the machine hits every variant alike; the median round is reported. Variants:

- ``seed reference``: bench/seed_reference.py, the article's 64x64 DCGAN / classifier pipeline.
- ``ganft default, fp32`` / ``bf16``: ganft's default 28x28 models through ganft's pipeline
  (train_gan, train_classifier with default configs, the classifier as seed-cnn: the rows compare
  pipelines on the article's classifier design; the default bn-cnn's cost is in the seconds column of
  bench/baseline.py) with ``--precision fp32`` and ``bf16``; the JSON records which one
  ``--precision auto`` picks on the machine.
- ``seed arch via ganft``: the article's exact architecture (``gan.recipe: seed-dcgan``, width 64,
  z 100; the classifier as seed-cnn at 64x64, width 64) through ganft's pipeline: this separates
  pipeline overhead (PIL decoding, DataLoader, per-step copies, unfused optimisers) from
  architecture cost.

Ratios are ganft / seed reference images per second, from the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from cmdline import command_line  # bench/cmdline.py

from ganft.config import ClassifierConfig, GanConfig
from ganft.data import labelled_subset, load_splits
from ganft.finetune import train_classifier
from ganft.gan_train import train_gan
from ganft.images import Images
from ganft.models.gan import resize
from ganft.runtime import Speed, precision_name

BATCH = 64
SEED_GAN = {"recipe": "seed-dcgan", "width": 64, "z_dim": 100}


def ganft_gan(cfg: GanConfig, real: Images, steps: int, device: torch.device) -> float:
    train_gan(cfg.model_copy(update={"steps": 2}), real, 10, seed=0, device=device)  # warm-up
    res = train_gan(cfg.model_copy(update={"steps": steps}), real, 10, seed=0, device=device,
                    log_every=steps)
    return res.metrics["gan/images_per_second"]


def ganft_classifier(cfg: ClassifierConfig, real: Images, steps: int, device: torch.device) -> float:
    tiny_val = real.take(torch.arange(BATCH))  # one cheap evaluation: the steps are what is timed
    train_classifier(cfg.model_copy(update={"steps": 2, "eval_every": 2}), real, tiny_val, 10, seed=0,
                     device=device)  # warm-up
    t0 = time.perf_counter()
    train_classifier(cfg.model_copy(update={"steps": steps, "eval_every": steps}), real, tiny_val, 10,
                     seed=0, device=device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def variants(device: torch.device, steps: dict[str, int], root: str | None) -> dict[str, Callable[[], float]]:
    import seed_reference as ref
    from settings import with_speed  # bench/settings.py: run under a speed setting, then restore it

    images, labels = ref.fashion_arrays(root)
    data = ref.loader(images, labels, batch_size=BATCH)
    splits = load_splits("fashion-mnist", root)
    real = labelled_subset(splits.train, 1000, 0)
    real64 = Images(resize(real.x, 64), real.y)
    fp32, bf16 = Speed(precision="fp32"), Speed(precision="bf16")
    g, c, gs = steps["gan"], steps["clf"], steps["seed_gan"]
    return {
        "gan/seed reference": lambda: ref.gan_images_per_second(data, gs, device),
        "gan/ganft default, fp32": with_speed(fp32, lambda: ganft_gan(GanConfig(), real, g, device)),
        "gan/ganft default, bf16": with_speed(bf16, lambda: ganft_gan(GanConfig(), real, g, device)),
        "gan/seed arch via ganft, fp32": with_speed(fp32, lambda: ganft_gan(GanConfig(**SEED_GAN), real, gs, device)),
        "gan/seed arch via ganft, bf16": with_speed(bf16, lambda: ganft_gan(GanConfig(**SEED_GAN), real, gs,
                                                                            device)),
        "clf/seed reference": lambda: ref.classifier_images_per_second(data, c, device),
        "clf/ganft default, fp32": with_speed(fp32, lambda: ganft_classifier(ClassifierConfig(arch="seed-cnn"), real, c, device)),
        "clf/ganft default, bf16": with_speed(bf16, lambda: ganft_classifier(ClassifierConfig(arch="seed-cnn"), real, c,
                                                                             device)),
        "clf/seed arch via ganft, fp32": with_speed(fp32, lambda: ganft_classifier(ClassifierConfig(arch="seed-cnn", width=64), real64,
                                                                             c, device)),
    }


def measure(device: torch.device, rounds: int, steps: dict[str, int], root: str | None) -> dict[str, float]:
    runs = variants(device, steps, root)
    seen: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name, fn in runs.items():
            seen[name].append(fn())
            print(f"  round {r + 1}: {name:32s} {seen[name][-1]:9.1f} images/s", flush=True)
    return {k: statistics.median(v) for k, v in seen.items()}


def table(figures: dict[str, float]) -> list[str]:
    rows = []
    for name, value in figures.items():
        stage = name.split("/")[0]
        ratio = value / figures[f"{stage}/seed reference"]
        rows.append(f"| {name} | {value:,.1f} | {ratio:.2f}x |")
    return ["| variant | images/s | vs seed reference |", "| --- | ---: | ---: |", *rows]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", help="Fashion-MNIST IDX folder (default: the Debian package's)")
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--scale", type=float, default=1, help="multiply step counts (e.g. 20 on a GPU, "
                        "0.1 for a smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = {k: max(1, round(v * args.scale)) for k, v in {"gan": 30, "clf": 60, "seed_gan": 6}.items()}
    figures = measure(device, args.rounds, steps, args.root)
    print("\n".join(table(figures)))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "device": str(device),
                                         "auto_precision": precision_name(device),
                                         "command": command_line(), "figures": figures,
                                         "steps": steps, "rounds": args.rounds}, indent=2))


if __name__ == "__main__":
    main()
