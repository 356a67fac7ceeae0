"""What a study's storage says: the state of every grid point (``ganft study status``), and the
optimisation history and parameter importances a report shows. Reads only: opening a study here
never creates a store, and nothing here imports the training stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ganft.config import StudyConfig
from ganft.study.grid import GRID_KEY_ATTR, survey
from ganft.study.storage import is_journal, open_storage
from ganft.study.stores import Stores

KINDS = ("complete", "running", "queued", "failed", "missing")


def study_status(cfg: StudyConfig, stores: Stores) -> tuple[list[str], int]:
    """The lines ``ganft study status`` prints and its exit status (0 only when all are complete)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if is_journal(stores.storage) and not Path(stores.storage).is_file():
            raise KeyError(cfg.name)  # no journal yet (opening one would create the file)
        study = optuna.load_study(study_name=cfg.name, storage=open_storage(stores.storage))
    except KeyError:
        return [f"study {cfg.name}: not started ({len(cfg.points())} grid points missing)"], 1
    states = survey(study, cfg)
    counts = {k: sum(ps.state == k for ps in states) for k in KINDS}
    lines = [f"study {cfg.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(states)}"]
    for ps in states:
        extra = f"  ({ps.attempts} attempt(s)) {ps.reason}" if ps.state == "failed" else ""
        if ps.state == "running" and ps.owner:
            extra = f"  (pid {ps.owner.get('pid')} on {ps.owner.get('host')})"
        lines.append(f"  {ps.state:9s} {ps.name}{extra}")
    return lines, 0 if counts["complete"] == len(states) else 1


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
