"""What a command can tell from a local MLflow store without importing MLflow: whether a study has
finished trial runs, and which. ``ganft report NAME`` asks this first, so a study that never ran is
said at once, and ``ganft study run`` on a complete study says so without loading MLflow or torch
(``nothing_to_run``; importing MLflow and the training or plotting stack takes seconds on a small
machine).

Hand-written on purpose: MLflow has no cheaper reader than its client, and this reads three columns
of two tables of its SQLite schema, read-only. Where the schema or the store is not what it expects
(a tracking server, another MLflow's tables), it answers None and the caller asks MLflow itself.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ganft.paths import project_root

PARENT_TAG = "ganft.role"  # a run's role: "parent" (one per invocation) or "trial" (study/mlflow_store.py)


def default_tracking_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def _select(tracking_uri: str, sql: str, params: tuple) -> list[tuple] | None:
    """The rows of one read-only query of a local SQLite store (none when the file does not exist);
    None when this cannot tell (a remote store, an unreadable file, an unexpected schema). Never
    creates or writes the store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if not db.exists():
        return []
    try:
        uri = f"{db.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return None


def finished_trials(tracking_uri: str) -> dict[str, int] | None:
    """Per study (active experiment) in a local SQLite store, its number of FINISHED trial runs
    (studies without any are left out; an empty dict when the file does not exist); None when this
    cannot tell."""
    rows = _select(tracking_uri,
                   "SELECT e.name, count(*) FROM runs r "
                   "JOIN experiments e ON r.experiment_id = e.experiment_id "
                   "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? AND t.value = 'trial' "
                   "WHERE e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active' "
                   "AND r.status = 'FINISHED' GROUP BY e.name", (PARENT_TAG,))
    return None if rows is None else {str(name): int(n) for name, n in rows}


def trial_runs(tracking_uri: str, experiment: str) -> tuple[set[str], int] | None:
    """(ids of the FINISHED trial runs, number of RUNNING runs of any role: trials and the parent
    runs of invocations) of one study's active experiment in a local SQLite store (none of either
    when the file does not exist); None when this cannot tell."""
    rows = _select(tracking_uri,
                   "SELECT r.run_uuid, r.status, t.value FROM runs r "
                   "JOIN experiments e ON r.experiment_id = e.experiment_id "
                   "LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? "
                   "WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active'",
                   (PARENT_TAG, experiment))
    if rows is None:
        return None
    finished = {str(run) for run, status, role in rows if status == "FINISHED" and role == "trial"}
    return finished, sum(status == "RUNNING" for _, status, _ in rows)


def run_hint(study: str, with_runs: list[str]) -> str:
    """What to run: the study file if there is one, else which studies exist."""
    files = sorted(p.stem for p in (project_root() / "studies").glob("*.yaml"))
    if study in files:
        return f"run `ganft study run {study}` first"
    have = f"studies with runs here: {', '.join(with_runs)}; " if with_runs else ""
    return f"there is no studies/{study}.yaml either ({have}study files: {', '.join(files) or 'none'})"
