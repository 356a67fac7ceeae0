"""A tracker that keeps what it is given, for tests that check what a stage logs."""

from __future__ import annotations

from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.tags: dict[str, str] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tags.update(tags)

    def log_figure(self, fig: Any, name: str) -> None:
        pass

    def log_artifact(self, path: Any) -> None:
        pass

    def curve(self, key: str) -> dict[int, float]:
        """The logged values of one metric by step."""
        return {s: m[key] for s, m in self.metrics if key in m}
