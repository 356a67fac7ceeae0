"""Device choice, explicit seeds and the project root that the default stores live under."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ganft.config import ConfigError


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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: unknown device; allowed: auto, cpu, cuda, cuda:N, mps") from None
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


def project_root() -> Path:
    """Where the default stores (mlflow.db, the Optuna journal, the GAN cache) live.

    ``$GANFT_HOME`` if set; else the source checkout this package is installed from (an editable
    install, as in the README), so running from a sub-folder finds the same stores; else the
    current directory. Never silently the cwd of a checkout's sub-folder.
    """
    env = os.environ.get("GANFT_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "ganft").is_dir():
        return checkout
    return Path.cwd().resolve()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. model construction, whose init draws from the global RNG) under ``seed``,
    leaving the global RNG state as it was afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
