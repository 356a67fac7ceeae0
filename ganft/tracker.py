"""The ``Tracker`` a stage logs to, with no backend: the interface, a null tracker and the sample
grid image helper.

Training code receives a ``Tracker`` (``study.mlflow_store.MlflowTracker`` for a study's run,
``NULL_TRACKER`` in library use and tests) and never branches on "is logging on". No stage imports
the MLflow tracker or mlflow: the study package hands a tracker in.
"""

from __future__ import annotations

import tempfile
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

