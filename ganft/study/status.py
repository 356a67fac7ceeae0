"""What a study's storage says: the state of every grid point (``ganft study status``), and the
optimisation history and parameter importances a report shows. Reads only: opening a study here
never creates a store, and nothing here imports the training stack."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ganft.redact import redact
from ganft.study import workers
from ganft.study.grid import GRID_KEY_ATTR, lost_trials, survey
from ganft.study.mlflow_store import MlflowStore, sqlite_path
from ganft.study.schema import StudyConfig
from ganft.study.storage import damaged_journal, is_journal, open_storage
from ganft.study.stores import Stores, probe_rdb

KINDS = ("complete", "running", "queued", "failed", "missing", "lost")
# where progress.Progress notes how far a long training is (<key>.json), by the run tag naming the
# model: read here without importing progress (and torch)
PROGRESS_NOTES = {"gan.key": ("generator", Path(".ganft-cache/gan/progress")),
                  "ssgan.key": ("semi-supervised GAN", Path(".ganft-cache/gan/ssgan/progress"))}


def study_status(cfg: StudyConfig, stores: Stores) -> tuple[list[str], int]:
    """The lines ``ganft study status`` prints and its exit status (0 only when all are complete,
    in both stores). Checks Optuna against MLflow: a point is complete when its trial is COMPLETE
    and its MLflow run FINISHED; any disagreement is said with the command that mends it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_journal(stores.storage):
        probe_rdb(stores.storage)
    try:
        if is_journal(stores.storage) and not Path(stores.storage).is_file():
            raise KeyError(cfg.name)  # no journal yet (opening one would create the file)
        with damaged_journal(cfg.name, stores.storage):
            study = optuna.load_study(study_name=cfg.name, storage=open_storage(stores.storage))
    except KeyError:
        lines = [f"study {cfg.name}: not started ({len(cfg.points())} grid points missing)"]
        runs = _trial_runs(cfg, stores)
        if runs:
            lines.append(f"  but the MLflow store has {len(runs)} FINISHED run(s) of it (the Optuna storage "
                         f"was deleted or replaced?): `ganft study run {cfg.name}` adopts them without "
                         f"training again")
        return lines, 1
    if cfg.search is not None:
        return search_status(study, cfg)
    states = survey(study, cfg)
    for ps in states:
        if ps.state == "running" and ps.owner and not workers.alive(ps.owner):
            ps.state = "lost"  # its worker is dead; the next `study run` fails it and runs it again
    # A trial's run ends FINISHED just after the trial turns COMPLETE (objective's callback): a
    # COMPLETE trial whose run is still RUNNING under a live worker is finishing, not missing it.
    running = _trial_runs(cfg, stores, "RUNNING")  # of live workers, and of dead ones not yet closed
    runs = {**{k: v for k, v in running.items() if workers.alive(v, "ganft.")}, **_trial_runs(cfg, stores)}
    finished_by_trial = {t.number: t.user_attrs.get("ganft.mlflow_run_id") in runs
                         for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    no_run = [ps for ps in states if ps.state == "complete"
              and not any(finished_by_trial.get(n, False) for n in ps.trials)]
    counts = {k: sum(ps.state == k for ps in states) for k in KINDS}
    lines = [f"study {cfg.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k != "lost")
             + f" of {len(states)}"]
    open_runs = {tags.get("ganft.grid_point"): tags for tags in running.values()}
    for ps in states:
        extra = f"  ({ps.attempts} attempt(s)) {ps.reason}" if ps.state == "failed" else ""
        if ps.state in ("running", "lost") and ps.owner:
            trained = training_progress(stores.root, open_runs.get(ps.name, {}))
            extra = f"  (pid {ps.owner.get('pid')} on {ps.owner.get('host')}{trained})"
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


def stored_confirmation(name: str, stores: Stores) -> StudyConfig | None:
    """The confirmation ``<search>-confirm`` that ganft made and stored (it has no study file of
    its own): its config rebuilt from the base and grid its study records; None when there is no
    such study in the storage."""
    if not name.endswith("-confirm") or (is_journal(stores.storage) and not Path(stores.storage).is_file()):
        return None
    try:
        with damaged_journal(name, stores.storage):
            attrs = optuna.load_study(study_name=name, storage=open_storage(stores.storage)).user_attrs
    except KeyError:
        return None
    if "ganft.base" not in attrs or "ganft.grid" not in attrs:
        return None
    return StudyConfig(name=name, base=attrs["ganft.base"], grid=attrs["ganft.grid"],
                       description=f"the confirmation of {name.removesuffix('-confirm')}, as stored")


def _trial_runs(cfg: StudyConfig, stores: Stores, status: str = "FINISHED") -> dict[str, dict[str, str]]:
    """The study's trial runs in MLflow with this status, run id -> tags (none when the store does
    not exist: a SQLite file that does not exist is not created)."""
    db = sqlite_path(stores.tracking_uri)
    if db is not None and not Path(db).is_file():
        return {}
    try:
        return MlflowStore(stores.tracking_uri, cfg.name, create=False).trial_runs(status)
    except LookupError:
        return {}


def training_progress(root: Path, tags: dict[str, str]) -> str:
    """'; generator KEY trained to step S of T, saved YYYY-MM-DD HH:MM' for a run whose generator
    (or semi-supervised GAN) has saved training progress on this machine, else ''."""
    for tag, (what, folder) in PROGRESS_NOTES.items():
        key = tags.get(tag)
        note = Path(root) / folder / f"{key}.json"
        if key and note.is_file():
            try:
                got = json.loads(note.read_text())
                saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(got["saved"])))
                return f"; {what} {key} trained to step {int(got['step']):,} of " \
                       f"{int(got['steps']):,}, saved {saved}"
            except (OSError, ValueError, KeyError, TypeError):  # being replaced, or damaged: say nothing
                return ""
    return ""


def optuna_frames(name: str, storage: str) -> tuple[Any, Any]:
    """A stored study's optimisation history and parameter importances as plain DataFrames, for
    the report (which never imports optuna).

    history: one row per COMPLETE trial in order: ``number``, ``value`` (validation accuracy),
    ``best_so_far``, ``from_grid`` (True for enqueued grid points, False for sampled ones).
    importances: ``param``, ``importance`` (fANOVA, seeded; empty with fewer than 4 complete trials,
    fewer than 2 parameters that vary, or one objective value for every trial). Both empty when the
    study is not in the storage."""
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
    lost = lost_trials(study)  # their MLflow runs are gone and their points ran again: not counted twice
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.number not in lost]
    if not done:
        return empty
    history = pd.DataFrame({"number": [t.number for t in done], "value": [t.value for t in done],
                            "from_grid": [GRID_KEY_ATTR in t.user_attrs for t in done]})
    history["best_so_far"] = history["value"].cummax()
    shared = set.intersection(*(set(t.params) for t in done))  # a conditional parameter is left out
    varying = {k for k in shared if len({repr(t.params[k]) for t in done}) > 1}
    if len(done) < 4 or len(varying) < 2 or history["value"].nunique() < 2:
        return history, empty[1]  # fANOVA needs a spread to split (data.validation none: often all 1.0)
    imp = get_param_importances(_one_space(done, sorted(varying)),
                                evaluator=FanovaImportanceEvaluator(seed=0))
    return history, pd.DataFrame({"param": list(imp), "importance": [float(v) for v in imp.values()]})


def search_status(study: optuna.Study, cfg: StudyConfig) -> tuple[list[str], int]:
    """A search's standing: trials complete, pruned, running, failed against n_trials, and the best."""
    assert cfg.search is not None
    by_state = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in
                (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)}
    done = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
    lines = [f"study {cfg.name}: search ({cfg.sampler}, objective {cfg.search.objective}): {done} of "
             f"{cfg.search.n_trials} trials done ({by_state[TrialState.COMPLETE]} complete, "
             f"{by_state[TrialState.PRUNED]} pruned), {by_state[TrialState.RUNNING]} running, "
             f"{by_state[TrialState.FAIL]} failed"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: t.value)
        lines.append(f"  best: trial {best.number}, {best.value:+.4f} on budget validation; "
                     f"`ganft study best {cfg.name}` prints its config")
    return lines, 0 if done >= cfg.search.n_trials else 1


def search_trials(name: str, storage: str) -> Any:
    """A search's trials as a DataFrame: number, state, value, repeat_sd, repeats, repeat_values
    (the objective of each repeat), params (as sampled)."""
    import pandas as pd

    if is_journal(storage) and not Path(storage).is_file():
        return pd.DataFrame()
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return pd.DataFrame()
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.user_attrs.get("ganft.repeat_values") or []
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "repeat_sd": float(pd.Series(values).std()) if len(values) > 1 else float("nan"),
                     "repeats": len(values), "repeat_values": [float(v) for v in values],
                     "params": ", ".join(f"{k}={v}" for k, v in sorted(t.params.items()))})
    out = pd.DataFrame(rows)
    out.attrs["objective"] = (study.metric_names or ["the objective"])[0]
    return out


def _one_space(done: list[FrozenTrial], params: list[str]) -> optuna.Study:
    """The trials again, in memory, with one distribution per parameter: Optuna's importances
    refuse trials whose distributions differ, which they do once a grid was extended or sized down
    between runs (its range changed). Numeric ranges are widened to cover every trial, categorical
    choices united; Optuna has no such merge, hence by hand."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    spaces = {}
    for key in params:
        dists = [t.distributions[key] for t in done]
        first = dists[0]
        if isinstance(first, CategoricalDistribution):
            choices = list(dict.fromkeys(c for d in dists for c in d.choices))
            spaces[key] = CategoricalDistribution(choices)
        else:
            kind = IntDistribution if isinstance(first, IntDistribution) else FloatDistribution
            log = all(getattr(d, "log", False) for d in dists)
            spaces[key] = kind(min(d.low for d in dists), max(d.high for d in dists), log=log)
    study = optuna.create_study(direction="maximize")
    for t in done:
        study.add_trial(optuna.trial.create_trial(params={k: t.params[k] for k in params},
                                                  distributions=spaces, value=t.value))
    return study
