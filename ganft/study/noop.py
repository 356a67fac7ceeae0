"""``ganft study run`` on a grid study that has nothing left to run, said in about a second: without
MLflow (its tracking store is read through ``peek``) and without torch.

It answers only where the full run would do nothing at all, and otherwise returns None so the full
run decides: a local SQLite tracking store and journal file that both exist; the study stored with
this base config and this grid; every grid point COMPLETE in Optuna, no trial RUNNING or WAITING,
no MLflow run of the study RUNNING (a trial's, or an invocation's parent run, which a killed run
leaves for the full run to close); and every COMPLETE trial's MLflow run FINISHED. Then the full run's
preflight (stores exist, nothing lost, stale, orphaned or missing) would find nothing to change.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ganft.study import peek
from ganft.study.grid import GRID_KEY_ATTR, config_hash, lost_trials, survey
from ganft.study.schema import StudyConfig
from ganft.study.storage import is_journal, open_storage
from ganft.study.stores import Stores


def nothing_to_run(cfg: StudyConfig, stores: Stores) -> str | None:
    """The line ``ganft study run`` prints for a complete grid study, or None (see the module)."""
    if cfg.search is not None or not is_journal(stores.storage) or not Path(stores.storage).is_file():
        return None
    runs = peek.trial_runs(stores.tracking_uri, cfg.name)
    if runs is None or runs[1]:
        return None
    finished = runs[0]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg.name, storage=open_storage(stores.storage))
    except Exception:  # no such study, a damaged journal, ...: the full run says what it is
        return None
    stored = study.user_attrs.get("ganft.grid", {})  # every grid key the study has had, with its values
    if study.user_attrs.get("ganft.base_hash") != config_hash(cfg) or \
            {**stored, **json.loads(json.dumps(cfg.grid_values))} != stored:
        return None
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        return None
    lost = lost_trials(study)
    if any(t.user_attrs.get("ganft.mlflow_run_id") not in finished
           for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
           if GRID_KEY_ATTR in t.user_attrs and t.number not in lost):
        return None
    states = survey(study, cfg)
    if any(ps.state != "complete" for ps in states):
        return None
    return f"study {cfg.name} is complete: {len(states)} of {len(states)} grid points done; nothing to run."
