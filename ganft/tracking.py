"""Tracking: the only module that imports mlflow.

Training code receives a ``Tracker`` (``MlflowTracker`` for a run, ``NULL_TRACKER`` in library use
and tests) and never branches on "is logging on". Store-level helpers (preflight, parent/child runs,
closing stale runs, reading runs back as a DataFrame) live here too, so the study runner and the
report never touch mlflow directly.

Every call goes through an ``MlflowClient`` with an explicit run id, never the fluent
``mlflow.start_run`` stack: that stack is per-thread and nests only within one process.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

PARENT_TAG = "ganft.role"  # "parent" (one per invocation) or "trial"


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_figure(self, fig: Any, name: str) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...


class NullTracker:
    """Accepts everything, keeps nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_figure(self, fig: Any, name: str) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass


NULL_TRACKER = NullTracker()


def redact(uri: str) -> str:
    """A storage or tracking URI with any password replaced by ***, safe for logs and tags."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def _quiet() -> None:
    # alembic prints every schema migration at INFO when a store is created
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


class MlflowStore:
    """One MLflow tracking store (SQLite file or server) and one experiment in it."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None,
                 create: bool = True) -> None:
        from mlflow import MlflowClient

        _quiet()
        self.uri, self.experiment_name = uri, experiment
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None and not create:
            raise LookupError(f"no MLflow experiment {experiment!r} in {redact(uri)}")
        if exp is None:
            # A SQLite store would otherwise fix <cwd>/mlruns as the artifact place: pin it to the root
            location = (artifact_root / experiment).as_uri() if artifact_root and _is_local(uri) else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id

    @classmethod
    def prepare(cls, uri: str, experiment: str, artifact_root: Path | None = None) -> MlflowStore:
        """Preflight: create the store (schema migration happens once, here), enable WAL on a
        SQLite file, create the experiment. Call before any worker starts."""
        store = cls(uri, experiment, artifact_root)
        path = sqlite_path(uri)
        if path is not None:
            with sqlite3.connect(path) as conn:  # stored in the file: later connections use WAL
                conn.execute("PRAGMA journal_mode=WAL")
        return store

    # ---------------------------------------------------------------- runs

    def start_run(self, name: str, tags: dict[str, Any], parent_id: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id  # what the UI nests child runs by
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def tracker(self, run_id: str) -> MlflowTracker:
        return MlflowTracker(self.client, run_id)

    def end_run(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        """End a run as FINISHED, FAILED or KILLED; a reason is kept as tag ``ganft.failure``."""
        if reason:
            self.client.set_tag(run_id, "ganft.failure", reason[:4000])
        self.client.set_terminated(run_id, status)

    def running_runs(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                       max_results=10000)

    def runs_frame(self, role: str = "trial") -> pd.DataFrame:
        """All runs of the experiment with ``ganft.role == role`` as one DataFrame row each:
        run_id, run_name, status, start/end times and ``params.*``, ``metrics.*``, ``tags.*``
        columns. Params come back as strings (MLflow stores them so); the report casts them."""
        rows, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.`{PARENT_TAG}` = '{role}'",
                                           max_results=1000, page_token=token)
            for r in page:
                row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                       "start_time": r.info.start_time, "end_time": r.info.end_time}
                row.update({f"params.{k}": v for k, v in r.data.params.items()})
                row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
                row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
                rows.append(row)
            token = page.token
            if not token:
                return pd.DataFrame(rows)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


class MlflowTracker:
    """Logs into one MLflow run by id (safe from any thread or process)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_figure(self, fig: Any, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))


def sqlite_path(uri: str) -> str | None:
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None


def _is_local(uri: str) -> bool:
    return uri.startswith("sqlite:") or "://" not in uri


def log_image_tensor(tracker: Tracker, images: Any, name: str, nrow: int) -> None:
    """Save a (B, C, H, W) tensor in [-1, 1] as a PNG grid and log it as an artifact ``name``."""
    from torchvision.utils import save_image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        save_image(images, path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
        tracker.log_artifact(path)


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
