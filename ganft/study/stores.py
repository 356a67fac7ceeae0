"""Where a study keeps its state: the Optuna storage, the MLflow tracking store and the project root
that the default stores, artifacts and the GAN cache live under."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from ganft.paths import project_root
from ganft.redact import redact, remember
from ganft.study.mlflow_store import (
    MlflowCheckpointStore,
    MlflowStore,
    default_tracking_uri,
    is_remote,
    sqlite_path,
)
from ganft.study.storage import StaleTrialCallback, StudyError, is_journal, open_storage

KILLED_RETRIES = 3  # a point whose worker dies is queued again at most this often (then on rerun)


@dataclass(frozen=True)
class Stores:
    storage: str  # Optuna: a journal file path, or an RDB URL (postgresql://, sqlite://)
    tracking_uri: str  # MLflow
    root: Path  # where the default stores, artifacts and the GAN cache live
    heartbeat: int = 30  # RDB storage: seconds between a trial's heartbeats (stale after 3 missed)

    @classmethod
    def resolve(cls, storage: str | None = None, tracking_uri: str | None = None,
                root: Path | None = None, heartbeat: int = 30) -> Stores:
        root = root or project_root()
        remember(storage, tracking_uri)  # redact them wherever a driver quotes them
        stores = cls(storage or str(root / "optuna-journal.log"),
                     tracking_uri or default_tracking_uri(root), root, heartbeat)
        journal = stores.storage if is_journal(stores.storage) else None
        for path, what, flag in ((journal, "the Optuna journal", "--storage"),
                                 (sqlite_path(stores.tracking_uri), "the MLflow store", "--tracking-uri")):
            # a folder or a device (/dev/full) as a store file: said now, before anything reads
            # "not started" from it or waits on a write that can never succeed
            if path is not None and Path(path).exists() and not Path(path).is_file():
                kind = "a folder" if Path(path).is_dir() else "not a regular file"
                raise StudyError(f"{what} {path} is {kind}; give a file path ({flag} FILE), new or one "
                                 f"ganft wrote")
        return stores

    def gan_cache(self) -> Any:
        """The GAN cache (``.ganft-cache/gan/``, a ``store.CheckpointCache``; labellers in its
        ``labellers/``), shared through the tracking server when it is remote. Built by the caller
        once per worker: it imports the training stack (torch)."""
        from ganft.store import CheckpointCache
        from ganft.study.shared_cache import SharedStore

        remote = self.shared_store("gan")
        return CheckpointCache(self.root / ".ganft-cache" / "gan", SharedStore(remote) if remote else None)

    def shared_store(self, kind: str) -> MlflowCheckpointStore | None:
        """Where ``kind`` checkpoints are shared between machines: the tracking server's artifact
        store when the tracking URI is remote, else nowhere (None)."""
        return MlflowCheckpointStore(self.tracking_uri, kind) if is_remote(self.tracking_uri) else None

    def open(self, store: MlflowStore | None = None) -> Any:
        """The Optuna storage; on RDB with heartbeats whose stale trials end their MLflow runs."""
        on_stale = None
        if store is not None:
            on_stale = StaleTrialCallback(lambda run_id, why: store.end_run(
                run_id, "KILLED", why, only_if_running=True), KILLED_RETRIES)
        return open_storage(self.storage, heartbeat=self.heartbeat, on_stale=on_stale)

    def local_paths(self) -> list[Path]:
        """Files on this machine that grow while a study runs (for the free-space check)."""
        paths = [self.root / ".ganft-cache"]
        if is_journal(self.storage):
            paths.append(Path(self.storage))
        db = sqlite_path(self.tracking_uri)
        if db:
            paths.append(Path(db))
        return paths

    def check(self) -> None:
        """Before anything is created or started: each store is reachable and writable, or one
        StudyError line says which and what to do (nothing is written either way)."""
        if is_journal(self.storage):
            _writable(Path(self.storage), "the Optuna journal", "--storage")
        else:
            probe_rdb(self.storage)
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            _writable(Path(db), "the MLflow store", "--tracking-uri")
        elif is_remote(self.tracking_uri):
            probe_tracking_server(self.tracking_uri)

    @contextlib.contextmanager
    def init_lock(self) -> Iterator[None]:
        """Held while the stores are created (schema migrations, experiment, study): two `ganft
        study run` started at once on a fresh store would otherwise break its migration."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / ".ganft-init.lock"):
            yield


def _writable(path: Path, what: str, flag: str) -> None:
    folder = next((p for p in path.parents if p.exists()), None)
    if path.exists() and not os.access(path, os.W_OK):
        raise StudyError(f"{what} {path} is read-only for this user; make it writable, or give another "
                         f"{flag}")
    if folder is None or not os.access(folder, os.W_OK | os.X_OK):
        raise StudyError(f"{what} {path}: its folder {folder} is not writable for this user; give another "
                         f"{flag} or set GANFT_HOME")


def probe_rdb(url: str, timeout_s: int = 10) -> None:
    """Connect once to an RDB storage, with a timeout; a failure is a StudyError naming the store
    (password redacted), not a traceback."""
    import sqlalchemy

    args = {"connect_timeout": timeout_s} if url.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except ImportError:
        raise StudyError(f"{redact(url)}: its database driver is not installed; for PostgreSQL: "
                         f"pip install 'ganft[postgres]'") from None
    except Exception as exc:  # OperationalError, ArgumentError, ...: say it in one line
        reason = redact(str(getattr(exc, "orig", None) or exc)).strip().splitlines()[0]
        raise StudyError(f"cannot reach the Optuna storage {redact(url)}: {reason}; check its host, port "
                         f"and credentials (PGPASSWORD or ~/.pgpass), or give another --storage") from None


def probe_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """One GET of the tracking server's /health, with a timeout (MLflow's own client retries for
    minutes before it gives up)."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)  # credentials stay out of the probe's URL (and of its error)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port}" if parts.port else str(host)
    health = urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
            resp.read(64)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = redact(str(getattr(exc, "reason", exc)))
        raise StudyError(f"cannot reach the MLflow tracking server {redact(uri)} ({reason}); start it, or "
                         f"check --tracking-uri") from None
