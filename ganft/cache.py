"""Content-addressed checkpoint caches: GANs, pretrained classifiers, quality extractors.

A key is a hash of what determines an entry (``content_key``): its config, the data it learns
from, and the source of the code that builds and trains it (``code_version``), so a grid that
varies only the ratio trains one GAN per (budget, seed) and reuses it for every ratio, and editing
code that does not train a GAN (a report, a CAS docstring) retrains nothing.

Entries are written atomically (temporary file, fsync, rename) beside a ``.sha256`` file with the
checksum of their bytes, and loaded with ``torch.load(weights_only=True)`` only after the checksum
matches: a torn, truncated, bit-flipped or mismatched entry is deleted and reported missing, never
used. Workers on one machine take a per-key file lock (``filelock``: released by the kernel when
its holder dies), so a GAN is trained once even when two trials that need it start together.
A ``sync`` object (study/shared_cache.py) extends the cache across machines: it fetches entries
published by others, makes the lock a claim that other machines wait for, and publishes new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import torch
from filelock import FileLock

from ganft import diffaugment, finetune, gan_train, losses, selection
from ganft.config import TrialConfig
from ganft.data import Budget, Images
from ganft.models import classifier as classifier_models
from ganft.models import gan as gan_models

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- keys


def code_version(*code: object) -> str:
    """sha256 (first 12 hex) of the source of the modules, classes or functions given: the code
    that determines a cache entry. Anything else can change without invalidating it."""
    h = hashlib.sha256()
    for obj in code:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:12]


def content_key(ident: dict[str, Any]) -> str:
    """The cache key of a JSON-able description of everything that determines an entry."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def images_digest(images: Images | None) -> str | None:
    """sha256 of an image set's pixels and labels (first 16 hex), None for no set."""
    if images is None:
        return None
    h = hashlib.sha256(images.x.contiguous().cpu().numpy().tobytes())
    h.update(images.y.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# The code that trains and builds a GAN; the best-step selection (gan.eval_every > 0) adds the
# code of the budget classifier whose features score it.
GAN_CODE = (gan_models, gan_train, losses, diffaugment)
SELECTION_CODE = (selection, finetune, classifier_models)


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's values (first 16 hex)."""
    return hashlib.sha256(x.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def gan_sources_ident(cfg: TrialConfig, budget: Budget, unlabelled: torch.Tensor | None) -> dict[str, Any]:
    """What else determines a GAN that does not learn from the budget alone (gan_sources.py): the
    unlabelled images by content, the real-subset classifier that labels them (its recipe, the
    budget images it selects on, its code), and a built-in transfer source's loader."""
    from ganft import datasets, gan_sources, synth

    g = cfg.gan
    if g.train_on == "budget":
        return {}
    ident: dict[str, Any] = {"sources_code": code_version(gan_sources)}
    if g.learns_unlabelled:
        if unlabelled is None:
            raise ValueError(f"gan.train_on {g.train_on} needs the trial's unlabelled images")
        ident["unlabelled"] = tensor_digest(unlabelled)
        ident["labeller"] = {**labeller_ident(cfg, budget), "code": code_version(
            finetune, classifier_models, synth.predict_labels)}
    if g.train_on == "transfer" and g.transfer_source != "unlabelled":
        ident["source_loader"] = datasets.LOADER_VERSION
    return ident


def labeller_ident(cfg: TrialConfig, budget: Budget) -> dict[str, Any]:
    """What determines the real-subset labeller (synth.real_labeller): its recipe, seed and the
    budget images it trains and selects on."""
    return {"recipe": finetune.helper_recipe(cfg.classifier).model_dump(mode="json"), "seed": cfg.seed,
            "train": images_digest(budget.train), "val": images_digest(budget.val)}


def labeller_key(cfg: TrialConfig, budget: Budget) -> str:
    return content_key({"role": "labeller", **labeller_ident(cfg, budget),
                        "code": code_version(finetune, classifier_models)})


def labeller_cache(gan_cache: CheckpointCache | None) -> CheckpointCache | None:
    """The labellers' cache: a folder inside the GAN cache, shared with the same machines."""
    return None if gan_cache is None else CheckpointCache(gan_cache.dir / "labellers", gan_cache.sync)


def gan_key(cfg: TrialConfig, budget: Budget, unlabelled: torch.Tensor | None = None) -> str:
    """Everything that determines the generator: the images it trains on (by content, so the
    validation protocol, N and the subset seed are covered), the images and classifier recipe
    that pick its best step (gan.eval_every > 0 only), its seed, the GAN config and the code that
    trains it. Not the ratio, and not the classifier unless it picks the best step."""
    selects = cfg.gan.eval_every > 0
    return content_key({
        "dataset": cfg.data.dataset, "train": images_digest(budget.train),
        "select": images_digest(budget.val) if selects else None,
        "select_features": cfg.classifier.model_dump(mode="json") if selects else None,
        "seed": cfg.seed, "gan": cfg.gan.model_dump(mode="json"),
        "code": code_version(*GAN_CODE, *(SELECTION_CODE if selects else ())),
        **gan_sources_ident(cfg, budget, unlabelled)})


# --------------------------------------------------------------------------- the cache


class Sync(Protocol):
    """Sharing a cache between machines (study/shared_cache.SharedStore)."""

    def fetch(self, key: str, dst: Path) -> bool: ...
    def hold(self, key: str) -> contextlib.AbstractContextManager[None]: ...
    def publish(self, key: str, path: Path) -> None: ...


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CheckpointCache:
    """A folder of checkpoints keyed by content hash: ``save(key, payload)`` / ``load(key)``.

    Payloads are dicts of tensors, numbers and strings (what ``weights_only=True`` loads). With
    ``sync``, a missing entry is first fetched from the machines' shared store, ``lock(key)``
    also claims the key there, and new entries are published to it.
    """

    def __init__(self, directory: Path, sync: Sync | None = None) -> None:
        self.dir = Path(directory)
        self.sync = sync

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        obj = self._load_local(key)
        if obj is None and self.sync is not None and self.sync.fetch(key, self.path(key)):
            self._write_checksum(key)  # the fetched bytes were checked against the published sha256
            obj = self._load_local(key)
        return obj

    def save(self, key: str, payload: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save({**payload, "key": key}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old state or the whole new file
        self._write_checksum(key)
        if self.sync is not None:
            self.sync.publish(key, path)
        return path

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes on this machine and, with ``sync``, a claim
        across machines (others wait for this process's entry instead of training their own)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(self.dir / f"{key}.lock"):
            self._sweep(key)
            if self.sync is not None and not self.path(key).is_file():
                with self.sync.hold(key):
                    yield
            else:
                yield

    # ------------------------------------------------------------ local files

    def _checksum_path(self, key: str) -> Path:
        return self.dir / f"{key}.pt.sha256"

    def _write_checksum(self, key: str) -> None:
        side = self._checksum_path(key)
        tmp = side.with_name(f"{side.name}.tmp-{os.getpid()}")
        tmp.write_text(file_sha256(self.path(key)) + "\n")
        os.replace(tmp, side)

    def _load_local(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            side = self._checksum_path(key)
            if not side.is_file() or side.read_text().strip() != file_sha256(path):
                raise ValueError("its bytes do not match their sha256 (damaged, or written by an older "
                                 "ganft without one)")
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("key") != key:
                raise ValueError(f"entry holds key {obj.get('key')!r}")
            return obj
        except Exception as exc:  # flipped bits, torn file, wrong content: never use it
            log.warning("discarding unusable cache entry %s (%s); it is made again", path, exc)
            path.unlink(missing_ok=True)
            self._checksum_path(key).unlink(missing_ok=True)
            return None

    def _sweep(self, key: str) -> None:
        """Delete leftovers of writers that died mid-write (their pid is gone): never read, but
        they would pile up."""
        for tmp in self.dir.glob(f"{key}.pt*.tmp-*"):  # files, and the folders of fetches
            pid = tmp.name.rsplit(".tmp-", 1)[1]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def load_or_make(cache: CheckpointCache | None, key: str, make: Callable[[], Any]) -> tuple[Any, bool]:
    """The entry for ``key`` and whether it came from the cache: loaded, else made by ``make()`` and
    saved, under the key's lock (a second process needing it waits, then loads it). Without a cache,
    made every time."""
    if cache is None:
        return make(), False
    with cache.lock(key):
        entry = cache.load(key)
        if entry is not None:
            return entry, True
        entry = make()
        cache.save(key, entry)
        return entry, False


# --------------------------------------------------------------------------- GANs


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


@dataclass
class CachedGan:
    state_dict: dict[str, torch.Tensor]  # the generator used for sampling (EMA when enabled)
    samples: torch.Tensor  # fixed-noise sample grid images
    metrics: dict[str, float]  # the training run's final gan/... metrics
    disc_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the trained discriminator


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
