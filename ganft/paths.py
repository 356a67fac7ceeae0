"""Where ganft keeps its files: the project root that the default stores, caches and reports live
under. Imports nothing heavy, so every command can use it."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """Where the default stores (mlflow.db, the Optuna journal, the GAN cache) live.

    ``$GANFT_HOME`` if set; else the source checkout this package is installed from (an editable
    install, as in the README), so running from a sub-folder finds the same stores; else the
    current directory. Never silently the cwd of a checkout's sub-folder.
    """
    env = os.environ.get("GANFT_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "ganft").is_dir():
        return checkout
    return Path.cwd().resolve()
