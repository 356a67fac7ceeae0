"""Device choice, explicit seeds and the project root that the default stores live under."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ganft.config import PRECISIONS, ConfigError, Speed, check_device  # noqa: F401 (re-exported)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``.

    ``torch.cuda.is_available()`` is used rather than ``torch.accelerator.current_accelerator()``,
    which reports ``cuda`` on a CUDA build of torch even when no GPU is present.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(check_device(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (try auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine (try auto or cpu)")
    return device


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts, e.g. ``derive_seed(seed, "gan")``.

    Python's ``hash`` is salted per process, so a hash of the text is used instead: the same parts
    give the same seed in every process and on every machine.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device`` (randomness is passed explicitly, not global)."""
    return torch.Generator(device=device).manual_seed(seed)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs too, for library code that draws from them (e.g. weight init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. model construction, whose init draws from the global RNG) under ``seed``,
    leaving the global RNG state as it was afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- speed settings


_speed = Speed()


def configure_speed(speed: Speed) -> None:
    global _speed
    _speed = speed


def current_speed() -> Speed:
    return _speed


def uses_bf16(device: torch.device) -> bool:
    if _speed.precision != "auto":
        return _speed.precision == "bf16"
    return device.type == "cpu" and cpu_has_native_bf16()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX-BF16 or AVX512-BF16). torch reports
    bf16 support on any AVX512 CPU, where it is emulated and slower, so the CPU flags decide
    (Linux's /proc/cpuinfo; elsewhere False, i.e. fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def uses_channels_last(device: torch.device) -> bool:
    if _speed.channels_last is None:
        return device.type == "cuda"
    return _speed.channels_last


def precision_name(device: torch.device) -> str:
    return "bf16" if uses_bf16(device) else "fp32"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when the speed settings ask for it, else a no-op. Weights,
    optimiser state and losses stay fp32; convs and linear layers run in bf16."""
    if not uses_bf16(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def eval_batch_size(device: torch.device) -> int:
    """Batch size for inference: large on accelerators; on the CPU, 256 keeps a small conv net's
    activations in cache (bench/settings.py compares batch sizes)."""
    return 256 if device.type == "cpu" else 4096


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to ``device`` in the configured memory format; compile its blocks if asked.

    ``nn.Module.compile`` compiles in place, so state_dict keys (and the caches built on them) stay
    the same; each direct child is compiled on its own because some callers use a model's parts
    (e.g. the discriminator's trunk and head) rather than its forward."""
    model = model.to(device)
    if uses_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    if _speed.compile:
        for child in model.children():
            child.compile()
    return model


def machine_description() -> str:
    """The machine a study runs on, for its parent run (tag ``ganft.machine``) and its report."""
    import platform

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; "
            f"torch {torch.__version__}")
