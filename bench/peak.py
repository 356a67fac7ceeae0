"""What this hardware can do, against what a ganft GAN step achieves.

    python bench/peak.py [--json out.json]
    python bench/peak.py --size 256 --reps 2     # a smoke run

Dense matmul throughput (torch.mm, 2048^3 in fp32 and bf16) is the practical arithmetic ceiling of
the machine; the FLOPs of one ganft default GAN training step on 28x28 Fashion-MNIST (D step + G
step, forward and backward, counted by torch.utils.flop_counter) divided by its measured time give
the rate the GAN actually reaches. The gap is what small convolutions, batch norm, elementwise
work and Python overhead cost.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ganft.config import GanConfig
from ganft.gan_train import StepParts, build_discriminator, build_generator, d_step, g_step
from ganft.models.gan import resize
from ganft.runtime import Speed, configure_speed, make_generator


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gan_step_rate(device: torch.device, cfg: GanConfig, reps: int = 20) -> tuple[float, float]:
    """(GFLOP per step, achieved GFLOP/s) of a ganft GAN step on 28x28 data at batch 64 (fp32)."""
    G = build_generator(cfg, (1, 28, 28), 10).to(device).to(memory_format=torch.channels_last)
    D = build_discriminator(cfg, (1, 28, 28), 10).to(device).to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    parts, gen = StepParts.from_config(cfg), make_generator(0, device)
    x = resize(torch.rand(64, 1, 28, 28, device=device) * 2 - 1, G.core.size)  # D's input size
    y = torch.randint(10, (64,), device=device)

    def step() -> None:
        fake = G.core(torch.randn(64, cfg.z_dim, device=device), y)
        d_step(D, opt_d, parts, x, fake.detach(), y, gen)
        g_step(D, opt_g, parts, fake, y, gen)

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    sync(device)
    seconds = (time.perf_counter() - t0) / reps
    gflop = counter.get_total_flops() / 1e9
    return gflop, gflop / seconds


def main() -> None:
    configure_speed(Speed(precision="fp32"))  # autocast off in d_step and g_step: the fp32 rate the table claims
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--size", type=int, default=2048, help="matmul side (default: 2048)")
    parser.add_argument("--reps", type=int, default=20, help="timed GAN steps (default: 20; 3 of the 64x64 one)")
    args = parser.parse_args()
    device = torch.device(args.device)
    fp32 = matmul_gflops(torch.float32, device, n=args.size)
    bf16 = matmul_gflops(torch.bfloat16, device, n=args.size)
    gflop, rate = gan_step_rate(device, GanConfig(), reps=args.reps)
    seed_gflop, seed_rate = gan_step_rate(device, GanConfig(recipe="seed-dcgan", width=64, z_dim=100),
                                          reps=min(3, args.reps))
    print(f"matmul fp32: {fp32:,.0f} GFLOP/s; matmul bf16: {bf16:,.0f} GFLOP/s")
    print(f"ganft default GAN step: {gflop:.2f} GFLOP per step, {rate:,.1f} GFLOP/s achieved "
          f"({100 * rate / fp32:.0f}% of fp32 matmul)")
    print(f"seed-dcgan step (64x64, width 64): {seed_gflop:.2f} GFLOP per step, {seed_rate:,.1f} GFLOP/s")
    if args.json:
        args.json.write_text(json.dumps({"matmul_fp32_gflops": fp32, "matmul_bf16_gflops": bf16,
                                         "gan_step_gflop": gflop, "gan_step_gflops": rate,
                                         "seed_step_gflop": seed_gflop, "seed_step_gflops": seed_rate},
                                        indent=2))


if __name__ == "__main__":
    main()
