"""The checkpoint store every stage caches into: atomic, checksummed, locked, keyed by content.

A key is a hash of a JSON description of what determines an entry (``content_key``). The stage
that makes an entry owns its key: it lists what determines the content (configs, the data by
digest, seeds) and an explicit version constant of its own code (``gan_train.GAN_VERSION``,
``datasets.LOADER_VERSION``, ...), bumped by hand when the code's output changes. No key hashes
source code, so editing a comment or a report retrains nothing, and this module imports no stage.

Entries are written atomically (temporary file, fsync, rename) beside a ``.sha256`` file with the
checksum of their bytes, and loaded with ``torch.load(weights_only=True)`` only after the checksum
matches: a torn, truncated, bit-flipped or mismatched entry is deleted and reported missing, never
used. Workers on one machine take a per-key file lock (``filelock``: released by the kernel when
its holder dies), so an entry is made once even when two trials that need it start together.
A ``sync`` object (study/shared_cache.py) extends the store across machines: it fetches entries
published by others, makes the lock a claim that other machines wait for, and publishes new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psutil
import torch
from filelock import FileLock

from ganft.images import Images

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- keys


def content_key(ident: dict[str, Any]) -> str:
    """The cache key of a JSON-able description of everything that determines an entry."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def config_ident(cfg: Any, added_at: dict[str, Any],
                 exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """A pydantic config as a cache key holds it: without ``exclude`` (settings that change nothing
    stored) and without each setting of ``added_at`` that sits at the value it was added with, so
    entries stored before that setting existed keep their keys."""
    return cfg.model_dump(mode="json", exclude=set(exclude) | {k for k, v in added_at.items()
                                                                if getattr(cfg, k) == v})


def images_digest(images: Images | None) -> str | None:
    """sha256 of an image set's pixels and labels (first 16 hex), None for no set."""
    if images is None:
        return None
    h = hashlib.sha256(images.x.contiguous().cpu().numpy().tobytes())
    h.update(images.y.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's values (first 16 hex)."""
    return hashlib.sha256(x.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- the store


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

    def child(self, name: str) -> CheckpointCache:
        """A folder inside this store for another kind of entry, shared with the same machines."""
        return CheckpointCache(self.dir / name, self.sync)

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

    def discard(self, key: str) -> None:
        """Delete the entry and its checksum, if there are any (this machine's copy only)."""
        self.path(key).unlink(missing_ok=True)
        self._checksum_path(key).unlink(missing_ok=True)

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
            self.discard(key)
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
