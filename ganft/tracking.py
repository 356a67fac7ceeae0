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


MIN_GRID_WIDTH = 256  # px: a sample grid narrower than this is unreadable in the MLflow UI


def sample_grid_image(images: Any, nrow: int, row_labels: list[str] | None = None) -> Any:
    """A (B, C, H, W) tensor in [-1, 1] as a PIL image: ``nrow`` images per row, upscaled by an
    integer factor (nearest neighbour: pixels stay pixels) to at least MIN_GRID_WIDTH wide, each
    row labelled on the left (e.g. with its class name)."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    grid = make_grid(images.float(), nrow=nrow, padding=1, normalize=True, value_range=(-1, 1),
                     pad_value=1.0)  # (3, H', W') in [0, 1]
    pixels = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    tile = Image.fromarray(pixels)
    scale = max(1, -(-MIN_GRID_WIDTH // tile.width))  # ceil
    tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
    if not row_labels:
        return tile
    draw = ImageDraw.Draw(tile)
    margin = 8 + max(int(draw.textlength(label)) for label in row_labels)
    out = Image.new("RGB", (tile.width + margin, tile.height), "white")
    out.paste(tile, (margin, 0))
    draw = ImageDraw.Draw(out)
    row_h = tile.height / max(1, len(row_labels))
    for i, label in enumerate(row_labels):
        draw.text((4, i * row_h + row_h / 2 - 5), label, fill="black")
    return out


def log_image_tensor(tracker: Tracker, images: Any, name: str, nrow: int,
                     row_labels: list[str] | None = None) -> None:
    """Log ``sample_grid_image`` of a (B, C, H, W) tensor in [-1, 1] as the PNG artifact ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        sample_grid_image(images, nrow, row_labels).save(path)
        tracker.log_artifact(path)


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
