"""What a study's storage says: the state of every grid point (``ganft study status``), and the
optimisation history and parameter importances a report shows. Reads only: opening a study here
never creates a store, and nothing here imports the training stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ganft.config import StudyConfig
from ganft.redact import redact
from ganft.study import workers
from ganft.study.grid import GRID_KEY_ATTR, survey
from ganft.study.mlflow_store import MlflowStore, sqlite_path
from ganft.study.storage import damaged_journal, is_journal, open_storage
from ganft.study.stores import Stores, probe_rdb

KINDS = ("complete", "running", "queued", "failed", "missing", "lost")


def study_status(cfg: StudyConfig, stores: Stores) -> tuple[list[str], int]:
    """The lines ``ganft study status`` prints and its exit status (0 only when all are complete,
    in both stores). Checks Optuna against MLflow: a point is complete when its trial is COMPLETE
    and its MLflow run FINISHED; any disagreement is said with the command that mends it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_journal(stores.storage):
        probe_rdb(stores.storage)
    runs = _finished_runs(cfg, stores)
    try:
        if is_journal(stores.storage) and not Path(stores.storage).is_file():
            raise KeyError(cfg.name)  # no journal yet (opening one would create the file)
        with damaged_journal(cfg, stores):
            study = optuna.load_study(study_name=cfg.name, storage=open_storage(stores.storage))
    except KeyError:
        lines = [f"study {cfg.name}: not started ({len(cfg.points())} grid points missing)"]
        if runs:
            lines.append(f"  but the MLflow store has {len(runs)} FINISHED run(s) of it (the Optuna storage "
                         f"was deleted or replaced?): `ganft study run {cfg.name}` adopts them without "
                         f"training again")
        return lines, 1
    states = survey(study, cfg)
    for ps in states:
        if ps.state == "running" and ps.owner and not workers.alive(ps.owner):
            ps.state = "lost"  # its worker is dead; the next `study run` fails it and runs it again
    finished_by_trial = {t.number: t.user_attrs.get("ganft.mlflow_run_id") in runs
                         for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    no_run = [ps for ps in states if ps.state == "complete"
              and not any(finished_by_trial.get(n, False) for n in ps.trials)]
    counts = {k: sum(ps.state == k for ps in states) for k in KINDS}
    lines = [f"study {cfg.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k != "lost")
             + f" of {len(states)}"]
    for ps in states:
        extra = f"  ({ps.attempts} attempt(s)) {ps.reason}" if ps.state == "failed" else ""
        if ps.state in ("running", "lost") and ps.owner:
            extra = f"  (pid {ps.owner.get('pid')} on {ps.owner.get('host')})"
        lines.append(f"  {ps.state:9s} {ps.name}{extra}")
    if no_run:
        lines.append(f"  {len(no_run)} complete point(s) have no FINISHED run in the MLflow store "
                     f"{redact(stores.tracking_uri)} (deleted or replaced?): `ganft study run {cfg.name}` "
                     f"runs them again")
    lost = counts["lost"]
    if lost:
        lines.append(f"  {lost} trial(s) lost their worker: `ganft study run {cfg.name}` runs them again")
    ok = counts["complete"] == len(states) and not no_run
    return lines, 0 if ok else 1


def _finished_runs(cfg: StudyConfig, stores: Stores) -> dict[str, dict[str, str]]:
    """FINISHED trial runs of the study in MLflow (none when the store does not exist: a SQLite file
    that does not exist is not created)."""
    db = sqlite_path(stores.tracking_uri)
    if db is not None and not Path(db).is_file():
        return {}
    try:
        return MlflowStore(stores.tracking_uri, cfg.name, create=False).finished_trial_runs()
    except LookupError:
        return {}


def optuna_frames(name: str, storage: str) -> tuple[Any, Any]:
    """A stored study's optimisation history and parameter importances as plain DataFrames, for
    the report (which never imports optuna).

    history: one row per COMPLETE trial in order: ``number``, ``value`` (validation accuracy),
    ``best_so_far``, ``from_grid`` (True for enqueued grid points, False for sampled ones).
    importances: ``param``, ``importance`` (fANOVA, seeded; empty with fewer than 4 complete trials
    or fewer than 2 parameters that vary). Both empty when the study is not in the storage."""
    import pandas as pd
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    empty = (pd.DataFrame(columns=["number", "value", "best_so_far", "from_grid"]),
             pd.DataFrame(columns=["param", "importance"]))
    if is_journal(storage) and not Path(storage).is_file():
        return empty
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return empty
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return empty
    history = pd.DataFrame({"number": [t.number for t in done], "value": [t.value for t in done],
                            "from_grid": [GRID_KEY_ATTR in t.user_attrs for t in done]})
    history["best_so_far"] = history["value"].cummax()
    varying = {k for k in done[0].params if len({repr(t.params.get(k)) for t in done}) > 1}
    if len(done) < 4 or len(varying) < 2:
        return history, empty[1]
    imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=sorted(varying))
    return history, pd.DataFrame({"param": list(imp), "importance": [float(v) for v in imp.values()]})
