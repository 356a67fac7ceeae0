"""Content-addressed GAN cache: one trained generator per (data subset x GAN config x GAN code).

A grid that varies only the ratio trains one GAN per (N, seed) and reuses it for every ratio.
Entries are written atomically (temporary file, fsync, rename) and loaded with
``torch.load(weights_only=True)``; a torn, truncated or mismatched entry is discarded, never used.
Workers on one machine take a per-key file lock, so a GAN is trained once even when two trials
that need it start together.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ganft import augment, gan_train, losses
from ganft.config import TrialConfig
from ganft.models import gan as gan_models

log = logging.getLogger(__name__)

# The code that determines a trained GAN: any change to these files makes new keys.
GAN_SOURCES = (gan_models, gan_train, losses, augment)


@functools.cache
def gan_code_version() -> str:
    h = hashlib.sha256()
    for module in GAN_SOURCES:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def gan_key(cfg: TrialConfig) -> str:
    """Everything that determines the generator: dataset, validation size (which fixes the pool),
    N, seed, the GAN config and the GAN code version. Not the ratio, the classifier or data.root."""
    ident = {"dataset": cfg.data.dataset, "val_size": cfg.data.val_size,
             "train_size": cfg.data.train_size, "seed": cfg.seed, "gan": cfg.gan.model_dump(mode="json"),
             "code": gan_code_version()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CachedGan:
    state_dict: dict[str, torch.Tensor]  # the generator used for sampling (EMA when enabled)
    samples: torch.Tensor  # fixed-noise sample grid images
    metrics: dict[str, float]  # the training run's final gan/... metrics
    disc_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the trained discriminator


class CheckpointCache:
    """A folder of checkpoints keyed by content hash: ``save(key, payload)`` / ``load(key)``.

    Payloads are dicts of tensors, numbers and strings (what ``weights_only=True`` loads). Writes
    are atomic (temporary file, fsync, rename); an unreadable or mismatched entry is deleted and
    reported as missing, so a torn write is never used. GANs and pretrained classifiers both use it.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("key") != key:
                raise ValueError(f"entry holds key {obj.get('key')!r}")
            return obj
        except Exception as exc:  # truncated zip, empty file, wrong content: never use it
            log.warning("discarding unreadable cache entry %s (%s)", path, exc)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, payload: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save({**payload, "key": key}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old state or the whole new file
        return path

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes on this machine (released if the holder dies)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{key}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


class GanCache(CheckpointCache):
    """The GAN cache: entries are ``CachedGan`` (generator, discriminator, samples, metrics)."""

    def load(self, key: str) -> CachedGan | None:  # type: ignore[override]
        obj = super().load(key)
        if obj is None:
            return None
        return CachedGan(obj["state_dict"], obj["samples"], dict(obj["metrics"]), obj.get("disc_state", {}))

    def save(self, key: str, entry: CachedGan) -> Path:  # type: ignore[override]
        return super().save(key, {"state_dict": _cpu(entry.state_dict), "samples": entry.samples.cpu(),
                                  "metrics": {k: float(v) for k, v in entry.metrics.items()},
                                  "disc_state": _cpu(entry.disc_state)})
