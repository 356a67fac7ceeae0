"""A tracker that keeps what it is given, for tests that check what a stage logs."""

from __future__ import annotations

from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []  # file names of logged artifacts and figures

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tags.update(tags)

    def log_figure(self, fig: Any, name: str) -> None:
        self.artifacts.append(name)

    def log_artifact(self, path: Any) -> None:
        from pathlib import Path

        self.artifacts.append(Path(path).name)

    def merged(self) -> dict[str, float]:
        """Every metric's last logged value."""
        out: dict[str, float] = {}
        for _, m in self.metrics:
            out |= m
        return out

    def steps(self, key: str) -> list[int | None]:
        """The steps at which a metric was logged, in order."""
        return [s for s, m in self.metrics if key in m]

    def curve(self, key: str) -> dict[int, float]:
        """The logged values of one metric by step."""
        return {s: m[key] for s, m in self.metrics if key in m}
