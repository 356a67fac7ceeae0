"""A checkpoint cache shared by machines through the MLflow tracking server (``SharedStore``, the
``sync`` of store.CheckpointCache when the tracking URI is remote).

A missing entry is fetched from the server (and verified by sha256) before anything is trained, a
new entry is published to it, and the per-key lock extends across machines as a claim with a
heartbeat: the second machine that needs a GAN waits for the first one's instead of training its
own; a claim whose heartbeat has not moved for ``stale_s`` (timed here, never comparing clocks of
different machines) is taken over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ganft.store import file_sha256
from ganft.study.workers import identity

log = logging.getLogger(__name__)


class RemoteStore(Protocol):
    """Where entries are shared between machines (study.mlflow_store.MlflowCheckpointStore).
    ``entries`` returns objects with ``run_id``, ``status`` (RUNNING: claimed, FINISHED: published,
    KILLED or FAILED: given up), ``beat`` (the owner's heartbeat counter) and ``sha256``, oldest first."""

    def entries(self, key: str) -> list[Any]: ...
    def claim(self, key: str, owner: dict[str, Any]) -> str: ...
    def beat(self, run_id: str, count: int) -> None: ...
    def publish(self, run_id: str, path: Path, sha256: str) -> None: ...
    def abandon(self, run_id: str, reason: str) -> None: ...
    def fetch(self, entry: Any, key: str, dst: Path) -> Path: ...


class SharedStore:
    """fetch / hold / publish over a RemoteStore: heartbeat every ``beat_s``, a claim still for
    ``stale_s`` is taken over, waiting polls every ``poll_s``."""

    def __init__(self, remote: RemoteStore, *, poll_s: float = 2.0, beat_s: float = 10.0,
                 stale_s: float = 60.0) -> None:
        self.remote = remote
        self.poll_s, self.beat_s, self.stale_s = poll_s, beat_s, stale_s
        self._claims: dict[str, _Claim] = {}

    def fetch(self, key: str, dst: Path) -> bool:
        """Download a published entry to ``dst`` (verified, then renamed into place)."""
        for entry in self.remote.entries(key):
            if entry.status != "FINISHED":
                continue
            tmp = dst.with_name(f"{dst.name}.fetch.tmp-{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            try:
                got = self.remote.fetch(entry, key, tmp)
                if not entry.sha256 or file_sha256(got) != entry.sha256:
                    raise ValueError("sha256 does not match the published one")
                os.replace(got, dst)
                log.info("cache %s: fetched from the shared store (run %s)", key, entry.run_id)
                return True
            except Exception as exc:  # a broken download is skipped, like a torn local file
                log.warning("cache %s: could not use shared entry %s (%s)", key, entry.run_id, exc)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return False

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Until the block ends: wait until the entry is published elsewhere, or hold the claim."""
        claim = self._claim(key)
        if claim is None:
            yield
            return
        self._claims[key] = claim
        try:
            yield
        finally:
            self._claims.pop(key, None)
            claim.release()

    def publish(self, key: str, path: Path) -> None:
        """Share a new entry. A failure is logged, not raised: the trial has its GAN; other
        machines will train their own."""
        claim = self._claims.get(key)
        try:
            run_id = claim.run_id if claim is not None else self.remote.claim(key, identity())
            self.remote.publish(run_id, path, file_sha256(path))
            if claim is not None:
                claim.published = True
        except Exception as exc:
            log.warning("cache %s: could not publish to the shared store (%s)", key, exc)

    def _claim(self, key: str) -> _Claim | None:
        """Wait until the entry is published (None) or this process holds the claim on it."""
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
