"""Content-addressed GAN cache: one trained generator per (data subset x GAN config x GAN code).

A grid that varies only the ratio trains one GAN per (N, seed) and reuses it for every ratio.
Entries are written atomically (temporary file, fsync, rename) and loaded with
``torch.load(weights_only=True)``; a torn, truncated or mismatched entry is discarded, never used.
Workers on one machine take a per-key file lock, so a GAN is trained once even when two trials
that need it start together.

With a remote store (an MLflow tracking server, see tracking.MlflowCheckpointStore) the cache is
shared between machines: a missing entry is fetched from it (and verified by sha256) before
anything is trained, a new entry is published to it, and the per-key lock extends across machines
as a claim with a heartbeat, so the second machine that needs a GAN waits for the first one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ganft import augment, gan_train, losses, selection
from ganft.config import TrialConfig
from ganft.data import Budget, Images
from ganft.models import gan as gan_models
from ganft.workers import identity, is_alive

log = logging.getLogger(__name__)

# The code that determines a trained GAN: any change to these files makes new keys. selection.py
# holds the budget-validation KID that picks the best step (gan.eval_every).
GAN_SOURCES = (gan_models, gan_train, losses, augment, selection)


@functools.cache
def gan_code_version() -> str:
    h = hashlib.sha256()
    for module in GAN_SOURCES:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def images_digest(images: Images | None) -> str | None:
    """sha256 of an image set's pixels and labels (first 16 hex), None for no set."""
    if images is None:
        return None
    h = hashlib.sha256(images.x.contiguous().cpu().numpy().tobytes())
    h.update(images.y.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def gan_key(cfg: TrialConfig, budget: Budget) -> str:
    """Everything that determines the generator: the images it trains on (by content, so the
    validation protocol, N and the subset seed are covered), the images that pick its best step
    (gan.eval_every > 0), its seed, the GAN config and the GAN code version. Not the ratio or the
    classifier (except through the best-step features, when used: the classifier recipe)."""
    selects = cfg.gan.eval_every > 0
    ident = {"dataset": cfg.data.dataset, "train": images_digest(budget.train),
             "select": images_digest(budget.val) if selects else None,
             "select_features": cfg.classifier.model_dump(mode="json") if selects else None,
             "seed": cfg.seed, "gan": cfg.gan.model_dump(mode="json"), "code": gan_code_version()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CachedGan:
    state_dict: dict[str, torch.Tensor]  # the generator used for sampling (EMA when enabled)
    samples: torch.Tensor  # fixed-noise sample grid images
    metrics: dict[str, float]  # the training run's final gan/... metrics
    disc_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the trained discriminator


class RemoteStore(Protocol):
    """Where entries are shared between machines (tracking.MlflowCheckpointStore). ``entries``
    returns objects with ``run_id``, ``status`` (RUNNING: claimed, FINISHED: published, KILLED or
    FAILED: given up), ``beat`` (the owner's heartbeat counter) and ``sha256``, oldest first."""

    def entries(self, key: str) -> list[Any]: ...
    def claim(self, key: str, owner: dict[str, Any]) -> str: ...
    def beat(self, run_id: str, count: int) -> None: ...
    def publish(self, run_id: str, path: Path, sha256: str) -> None: ...
    def abandon(self, run_id: str, reason: str) -> None: ...
    def fetch(self, entry: Any, key: str, dst: Path) -> Path: ...


class CheckpointCache:
    """A folder of checkpoints keyed by content hash: ``save(key, payload)`` / ``load(key)``.

    Payloads are dicts of tensors, numbers and strings (what ``weights_only=True`` loads). Writes
    are atomic (temporary file, fsync, rename); an unreadable or mismatched entry is deleted and
    reported as missing, so a torn write is never used. GANs and pretrained classifiers both use it.
    With ``remote``, entries are also fetched from and published to a store shared by machines;
    ``lock(key)`` then also claims the key there (heartbeat every ``beat_s``; a claim whose
    heartbeat has not moved for ``stale_s`` is taken over; waiting polls every ``poll_s``).
    """

    def __init__(self, directory: Path, remote: RemoteStore | None = None, *, poll_s: float = 2.0,
                 beat_s: float = 10.0, stale_s: float = 60.0) -> None:
        self.dir = Path(directory)
        self.remote = remote
        self.poll_s, self.beat_s, self.stale_s = poll_s, beat_s, stale_s
        self._claims: dict[str, _Claim | None] = {}

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        obj = self._load_local(key)
        if obj is None and self.remote is not None and self._fetch(key):
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
        if self.remote is not None:
            self._publish(key, path)
        return path

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes on this machine (released if the holder dies)
        and, with a remote store, across machines (a claim that others wait for)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{key}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self._sweep(key)
                need_claim = self.remote is not None and not self.path(key).is_file()
                self._claims[key] = self._claim_remote(key) if need_claim else None
                try:
                    yield
                finally:
                    claim = self._claims.pop(key, None)
                    if claim is not None:
                        claim.release()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------ local files

    def _load_local(self, key: str) -> dict[str, Any] | None:
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

    def _sweep(self, key: str) -> None:
        """Delete leftovers of writers that died mid-write (their pid is gone): never read, but
        they would pile up."""
        for tmp in [*self.dir.glob(f"{key}.pt.tmp-*"), *self.dir.glob(f".fetch-{key}-*")]:
            pid = tmp.name.removeprefix(f"{key}.pt.tmp-").removeprefix(f".fetch-{key}-").split("-")[0]
            if not pid.isdigit() or is_alive(identity()["host"], int(pid)):
                continue
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------ remote store

    def _fetch(self, key: str) -> bool:
        """Download a published entry into the local folder (verified, then renamed into place)."""
        assert self.remote is not None
        for entry in self.remote.entries(key):
            if entry.status != "FINISHED":
                continue
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{key}-{os.getpid()}-", dir=self.dir))
            try:
                got = self.remote.fetch(entry, key, tmp)
                if not entry.sha256 or file_sha256(got) != entry.sha256:
                    raise ValueError("sha256 does not match the published one")
                os.replace(got, self.path(key))
                log.info("cache %s: fetched from the shared store (run %s)", key, entry.run_id)
                return True
            except Exception as exc:  # a broken download is skipped, like a torn local file
                log.warning("cache %s: could not use shared entry %s (%s)", key, entry.run_id, exc)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return False

    def _claim_remote(self, key: str) -> _Claim | None:
        """Wait until the entry is published (None) or this process holds the claim on it."""
        assert self.remote is not None
        watch, waited = _StaleWatch(self.stale_s), False
        while True:
            entries = self.remote.entries(key)
            if any(e.status == "FINISHED" for e in entries):
                return None
            if not self._live_claims(entries, watch):
                run_id = self.remote.claim(key, identity())
                rivals = [e for e in self.remote.entries(key) if e.run_id != run_id
                          and e.status in ("RUNNING", "FINISHED")]
                if not rivals:
                    return _Claim(self.remote, run_id, self.beat_s)
                # two claims at once: both step back and retry after a random pause
                self.remote.abandon(run_id, "another worker claimed this entry at the same time")
            elif not waited:
                log.info("cache %s: another worker is producing it; waiting", key)
                waited = True
            time.sleep(self.poll_s * random.uniform(0.5, 1.5))

    def _live_claims(self, entries: list[Any], watch: _StaleWatch) -> list[Any]:
        """RUNNING claims whose heartbeat still moves; stale ones are given up (their owner died)."""
        live = []
        for e in entries:
            if e.status != "RUNNING":
                continue
            if watch.stale(e):
                log.warning("cache: claim %s has had no heartbeat for %.0f s; taking over", e.run_id,
                            self.stale_s)
                self.remote.abandon(e.run_id, f"no heartbeat for {self.stale_s:.0f} s (owner gone)")
            else:
                live.append(e)
        return live

    def _publish(self, key: str, path: Path) -> None:
        """Share a new entry. A failure is logged, not raised: the trial has its GAN; other
        machines will train their own."""
        assert self.remote is not None
        claim = self._claims.get(key)
        try:
            run_id = claim.run_id if claim is not None else self.remote.claim(key, identity())
            self.remote.publish(run_id, path, file_sha256(path))
            if claim is not None:
                claim.published = True
        except Exception as exc:
            log.warning("cache %s: could not publish to the shared store (%s)", key, exc)


class _Claim:
    """A claim held by this process, kept alive by a heartbeat thread until released."""

    def __init__(self, remote: RemoteStore, run_id: str, beat_s: float) -> None:
        self.remote, self.run_id, self.published = remote, run_id, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(beat_s,), daemon=True,
                                        name=f"ganft-claim-{run_id[:8]}")
        self._thread.start()

    def _beat(self, beat_s: float) -> None:
        count = 0
        while not self._stop.wait(beat_s):
            count += 1
            try:
                self.remote.beat(self.run_id, count)
            except Exception as exc:  # a missed beat is not fatal; many in a row make the claim stale
                log.warning("cache claim %s: heartbeat failed (%s)", self.run_id, exc)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if not self.published:
            with contextlib.suppress(Exception):
                self.remote.abandon(self.run_id, "its worker stopped before the entry was saved")


class _StaleWatch:
    """Which claims have shown no heartbeat for ``stale_s`` seconds, as timed here: no clocks of
    different machines are compared."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self.seen: dict[str, tuple[str, float]] = {}  # run id -> (beat, when it was first seen)

    def stale(self, entry: Any) -> bool:
        now = time.monotonic()
        beat, since = self.seen.get(entry.run_id, (None, now))
        if beat != entry.beat:
            self.seen[entry.run_id] = (entry.beat, now)
            return False
        return now - since >= self.stale_s


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
