"""Where a study keeps its state: the Optuna storage, the MLflow tracking store and the project root
that the default stores, artifacts and the GAN cache live under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganft.paths import project_root
from ganft.study.mlflow_store import (
    MlflowCheckpointStore,
    MlflowStore,
    default_tracking_uri,
    is_remote,
    sqlite_path,
)
from ganft.study.storage import StaleTrialCallback, is_journal, open_storage

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
        return cls(storage or str(root / "optuna-journal.log"),
                   tracking_uri or default_tracking_uri(root), root, heartbeat)

    def gan_cache(self) -> Any:
        """The GAN cache (``.ganft-cache/gan/``), shared through the tracking server when it is
        remote. Built by the caller once per worker: it imports the training stack (torch)."""
        from ganft.cache import GanCache
        from ganft.study.shared_cache import SharedStore

        remote = self.shared_store("gan")
        return GanCache(self.root / ".ganft-cache" / "gan", SharedStore(remote) if remote else None)

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
