"""Shared fixtures: every test writes into its own temporary project root, never the repo's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

TINY_STUDY = """\
name: {name}
base:
  data: {{dataset: digits}}
  gan: {{steps: 12, width: 8, z_dim: 16, batch_size: 32}}
  classifier: {{steps: 12, width: 8, eval_every: 6, batch_size: 32}}
grid:
  data.train_size: [30, 60]
  synth.ratio: [0, 1, 2]
  seed: [0]
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project root: default stores, artifacts, caches and reports go here."""
    monkeypatch.setenv("GANFT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def tiny_study(home: Path) -> Path:
    """A 6-point digits study (2 sizes x 3 ratios) that runs in a few seconds."""
    path = home / "tiny.yaml"
    path.write_text(TINY_STUDY.format(name="tiny"))
    return path
