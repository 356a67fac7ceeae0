"""Tracking for the experiment: the ``Tracker`` a stage logs to, and the one that writes to MLflow.

Training code receives a ``Tracker`` (``MlflowTracker`` for a run, ``NULL_TRACKER`` in library use
and tests) and never branches on "is logging on". This and ``study/mlflow_store.py`` (the study's
side of the store: experiments, parent and child runs, reading runs back, shared checkpoints) are
the only modules that import mlflow. Every call goes through an ``MlflowClient`` with an explicit
run id, never the fluent ``mlflow.start_run`` stack: that stack is per-thread and nests only within
one process.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol


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


def log_image_tensor(tracker: Tracker, images: Any, name: str, nrow: int) -> None:
    """Save a (B, C, H, W) tensor in [-1, 1] as a PNG grid and log it as an artifact ``name``."""
    from torchvision.utils import save_image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        save_image(images, path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
        tracker.log_artifact(path)


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
