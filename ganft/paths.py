"""Where ganft keeps its files (the project root that the default stores, caches and reports live
under) and which ganft it is (version and commit, recorded on every run). Imports nothing heavy, so
every command can use it."""

from __future__ import annotations

import functools
import os
import subprocess
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


@functools.cache
def provenance() -> dict[str, str]:
    """Which ganft made a run: ``ganft.version`` (the installed package's), and where the package
    runs from a git checkout, ``ganft.commit`` (``+dirty`` when tracked files differ from it)."""
    from ganft import __version__

    out = {"ganft.version": __version__}
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        return out
    try:
        git = ["git", "-C", str(checkout)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine: the version says enough
        return out
    if commit.returncode == 0:
        out["ganft.commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return out
