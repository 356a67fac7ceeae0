"""Study state: the only modules that import optuna are this one, study_run.py (running trials
and workers), study_storage.py (storages and their locks) and cli.py.

A grid study is enumerated here and its points are handed out through Optuna's queue
(``enqueue_trial``), which gives each point to one worker on a journal or RDB storage
(GridSampler counts failed cells as visited and runs extra trials on resume; see DESIGN.md).
Before a trial runs, its worker checks that no other trial holds the point (COMPLETE, or an
earlier one running or queued), so a point queued twice by two machines still completes once.

Resume: rerunning the same command surveys the storage, reaps trials whose worker died (a dead pid
on this machine; on RDB also Optuna's heartbeats), re-queues what is missing (failed points up to
``max_retries`` times) and runs only that. Workers also reap each other's trials between trials, so
the points of a worker killed mid-study run again in the same study run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from ganft import workers
from ganft.cache import CheckpointCache, GanCache
from ganft.config import StudyConfig, TrialConfig, config_keys
from ganft.runtime import project_root
from ganft.study_storage import StaleTrialCallback, StudyError, is_journal, open_storage
from ganft.tracking import (
    PARENT_TAG,
    MlflowCheckpointStore,
    MlflowStore,
    default_tracking_uri,
    is_remote,
    sqlite_path,
)

log = logging.getLogger(__name__)
GRID_KEY_ATTR = "ganft.grid_key"  # user attr: canonical JSON of the trial's grid point
OWNER_ATTR = "ganft.owner"  # user attr: {host, pid, pid_start, trial} of the worker running it
SHORT_NAMES = {"data.train_size": "n", "synth.ratio": "r", "seed": "s"}
KILLED_RETRIES = 3  # a point whose worker dies is queued again at most this often (then on rerun)
UNCLAIMED_AFTER_S = 600  # a RUNNING trial that never named its worker (who does so at once) is dead

__all__ = ["Stores", "StudyError", "survey", "config_keys", "check_config_sizes", "open_storage",
           "optuna_frames"]


def __getattr__(name: str) -> Any:
    """``run_study`` and the rest of running a study live in study_run.py (which imports this
    module); they stay importable from here."""
    if name in ("run_study", "repair_study", "Summary", "FAULT_ENV"):
        from ganft import study_run

        return getattr(study_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- storage & names


@dataclass(frozen=True)
class Stores:
    storage: str  # Optuna: a journal file path, or an RDB URL (postgresql://, sqlite://)
    tracking_uri: str  # MLflow
    root: Path  # where the default stores, artifacts and the GAN cache live
    heartbeat: int = 30  # RDB storage: seconds between a trial's heartbeats (stale after 3 missed)

    @classmethod
    def resolve(cls, storage: str | None = None, tracking_uri: str | None = None,
                root: Path | None = None, heartbeat: int = 30) -> Stores:
        root = root or project_root()
        return cls(storage or str(root / "optuna-journal.log"),
                   tracking_uri or default_tracking_uri(root), root, heartbeat)

    @property
    def cache(self) -> GanCache:
        return GanCache(self.root / ".ganft-cache" / "gan", remote=self.shared_store("gan"))

    def checkpoint_cache(self, kind: str) -> CheckpointCache:
        """``.ganft-cache/<kind>/``, shared through the tracking server when it is remote."""
        return CheckpointCache(self.root / ".ganft-cache" / kind, remote=self.shared_store(kind))

    def shared_store(self, kind: str) -> MlflowCheckpointStore | None:
        """Where ``kind`` checkpoints are shared between machines: the tracking server's artifact
        store when the tracking URI is remote, else nowhere (None)."""
        return MlflowCheckpointStore(self.tracking_uri, kind) if is_remote(self.tracking_uri) else None

    def open(self, store: MlflowStore | None = None) -> optuna.storages.BaseStorage:
        """The Optuna storage; on RDB with heartbeats whose stale trials end their MLflow runs."""
        on_stale = None
        if store is not None:
            on_stale = StaleTrialCallback(lambda run_id, why: store.end_run(
                run_id, "KILLED", why, only_if_running=True), KILLED_RETRIES)
        return open_storage(self.storage, heartbeat=self.heartbeat, on_stale=on_stale)

    def local_paths(self) -> list[Path]:
        """Files on this machine that grow while a study runs (for the free-space check)."""
        paths = [self.root / ".ganft-cache"]
        if is_journal(self.storage):
            paths.append(Path(self.storage))
        db = sqlite_path(self.tracking_uri)
        if db:
            paths.append(Path(db))
        return paths


def grid_key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def point_name(point: dict[str, Any]) -> str:
    """``n100-r1.0-s0`` for the common keys, then ``key=value`` for any other grid key."""
    parts = []
    for key, short in SHORT_NAMES.items():
        if key in point:
            value = float(point[key]) if key == "synth.ratio" else point[key]
            parts.append(f"{short}{value}")
    for key, value in point.items():
        if key not in SHORT_NAMES:
            shown = "+".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{key}={shown}")
    return "-".join(parts) or "base"


def distribution(key: str, values: list[Any]) -> BaseDistribution:
    """Int/float grid keys get numeric distributions (their range may grow when a grid is extended,
    and the dashboard plots them as numbers); anything else is categorical."""
    kind = _field_type(key)
    if kind is int and all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values))
    if kind is float:
        return FloatDistribution(float(min(values)), float(max(values)))
    return CategoricalDistribution([encode(v) for v in values])


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(key, dist.low, dist.high)
    return trial.suggest_categorical(key, dist.choices)


def _field_type(key: str) -> type | None:
    model: Any = TrialConfig
    *parents, leaf = key.split(".")
    for p in parents:
        model = model.model_fields[p].annotation
    ann = model.model_fields[leaf].annotation
    return ann if ann in (int, float) else None


def encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | tuple | dict) else value


def config_hash(cfg: StudyConfig) -> str:
    return hashlib.sha256(cfg.base.model_dump_json().encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- survey


@dataclass
class PointState:
    point: dict[str, Any]
    name: str
    state: str = "missing"  # complete | running | queued | failed | missing
    attempts: int = 0  # finished FAIL trials that count against max_retries
    reason: str = ""
    trials: list[int] = field(default_factory=list)
    owner: dict[str, Any] | None = None  # running: the worker running it


def survey(study: optuna.Study, cfg: StudyConfig) -> list[PointState]:
    """The state of every grid point, from the trials in the storage."""
    points = {grid_key(p): PointState(p, point_name(p)) for p in cfg.points()}
    rank = {"complete": 4, "running": 3, "queued": 2, "failed": 1, "missing": 0}
    for t in study.get_trials(deepcopy=False):
        ps = points.get(t.user_attrs.get(GRID_KEY_ATTR, ""))
        if ps is None:
            continue  # spare trials and points no longer in the grid
        ps.trials.append(t.number)
        state = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running",
                 TrialState.WAITING: "queued", TrialState.FAIL: "failed"}.get(t.state, "missing")
        if t.state == TrialState.FAIL:
            # only the point's own errors count as attempts; a killed or interrupted worker does not
            reason = t.user_attrs.get("ganft.fail_reason")
            ps.attempts += reason is not None
            ps.reason = reason or "interrupted (its worker stopped before the trial ended)"
        if t.state == TrialState.RUNNING:
            ps.owner = trial_owner(t)
        if rank[state] > rank[ps.state]:
            ps.state = state
    return list(points.values())


def trial_owner(t: FrozenTrial) -> dict[str, Any] | None:
    """The worker running ``t``, as it recorded itself. Attrs copied from another trial (Optuna's
    retry callback copies them) name that trial's number and do not count."""
    owner = t.user_attrs.get(OWNER_ATTR)
    return owner if isinstance(owner, dict) and owner.get("trial") == t.number else None


def owner_dead(t: FrozenTrial) -> bool:
    owner = trial_owner(t)
    if owner is None:  # its worker died between taking the trial and naming itself (milliseconds)
        started = t.datetime_start
        return started is not None and (datetime.datetime.now() - started).total_seconds() > UNCLAIMED_AFTER_S
    return not workers.alive(owner)


def reap_dead_trials(study: optuna.Study, store: MlflowStore | None) -> list[FrozenTrial]:
    """Trials left RUNNING by a worker on this machine that no longer exists (kill -9, power loss,
    out of memory) become FAIL without a fail reason, so they do not count as attempts; their MLflow
    runs end as KILLED. Returns the reaped trials."""
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_dead(t):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        reaped.append(t)
        run_id = t.user_attrs.get("ganft.mlflow_run_id") if trial_owner(t) else None
        if store is not None and run_id:
            store.end_run(run_id, "KILLED", "its worker process died (reaped)", only_if_running=True)
    return reaped


def close_orphan_runs(study: optuna.Study, store: MlflowStore, storage_tag: str) -> int:
    """End MLflow runs left RUNNING whose trial has ended (a worker killed between Optuna's record
    and the run's end, or a trial failed by heartbeat) or whose process died on this machine."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    closed = 0
    for run in store.running_runs():
        tags = run.data.tags
        t = trials.get(int(tags.get("ganft.trial_number", -1)))
        if tags.get(PARENT_TAG) == "trial" and tags.get("ganft.storage") == storage_tag and t is not None:
            if t.state == TrialState.COMPLETE:  # everything was logged before Optuna recorded COMPLETE
                closed += store.end_run(run.info.run_id, "FINISHED", only_if_running=True)
            elif t.state.is_finished():
                why = t.user_attrs.get("ganft.fail_reason") or "its trial ended without it (worker died)"
                closed += store.end_run(run.info.run_id, "KILLED", why, only_if_running=True)
        elif not workers.alive(tags, prefix="ganft."):
            closed += store.end_run(run.info.run_id, "KILLED", "its process died (reaped)",
                                    only_if_running=True)
    return closed


# --------------------------------------------------------------------------- queue


def load_or_create_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=cfg.name, direction="maximize",
                                load_if_exists=True)
    stored = study.user_attrs.get("ganft.base_hash")
    if stored is None:
        study.set_user_attr("ganft.base_hash", config_hash(cfg))
        study.set_user_attr("ganft.base", cfg.base.model_dump(mode="json"))
    elif stored != config_hash(cfg):
        raise StudyError(f"study {cfg.name!r} in this storage was run with a different base config; "
                         f"results would not be comparable. Give the study a new name, or use "
                         f"another --storage and --tracking-uri.")
    old_grid = study.user_attrs.get("ganft.grid", {})
    for key, values in cfg.grid.items():
        old = old_grid.get(key)
        if old is not None and isinstance(distribution(key, values), CategoricalDistribution) \
                and [encode(v) for v in old] != [encode(v) for v in values]:
            raise StudyError(f"grid.{key}: the values changed from {old} to {values}; Optuna cannot "
                             f"change a categorical parameter's choices within a study. Use a new name.")
    if {**old_grid, **cfg.grid} != old_grid:
        study.set_user_attr("ganft.grid", {**old_grid, **cfg.grid})
    return study


def enqueue_point(study: optuna.Study, ps: PointState) -> None:
    params = {k: encode(v) for k, v in ps.point.items()}
    study.enqueue_trial(params, user_attrs={GRID_KEY_ATTR: grid_key(ps.point), "ganft.grid_point": ps.name})


def enqueue_missing(study: optuna.Study, states: list[PointState], max_retries: int) -> int:
    n = 0
    for ps in states:
        if ps.state == "missing" or (ps.state == "failed" and ps.attempts <= max_retries):
            enqueue_point(study, ps)
            n += 1
    return n


def reclaim(study: optuna.Study, cfg: StudyConfig, store: MlflowStore) -> int:
    """Between trials: fail the trials of dead workers and queue their points again (each at most
    KILLED_RETRIES times). Journal: dead pids on this machine; RDB: also Optuna's heartbeats, whose
    retry callback does the queueing. Returns how many points were queued."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no-op without heartbeats (journal)
    reaped = reap_dead_trials(study, store)
    if not reaped:
        return 0
    states = {grid_key(ps.point): ps for ps in survey(study, cfg)}
    kills = Counter(t.user_attrs.get(GRID_KEY_ATTR, "") for t in study.get_trials(
        deepcopy=False, states=(TrialState.FAIL,)) if "ganft.fail_reason" not in t.user_attrs)
    queued = 0
    for t in reaped:
        ps = states.get(t.user_attrs.get(GRID_KEY_ATTR, ""))
        if ps is not None and ps.state == "failed" and kills[grid_key(ps.point)] <= KILLED_RETRIES:
            log.warning("trial %d (%s): its worker died; queued again", t.number, ps.name)
            enqueue_point(study, ps)
            ps.state = "queued"
            queued += 1
    return queued


def superseded(study: optuna.Study, number: int, key: str) -> str | None:
    """Another trial holds this grid point: one is COMPLETE, or an earlier one is running or queued.
    Two workers that take two copies of a point at once both see each other; the earlier wins."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                      TrialState.WAITING)):
        if t.number != number and t.user_attrs.get(GRID_KEY_ATTR) == key \
                and (t.state == TrialState.COMPLETE or t.number < number):
            return f"trial {t.number} holds this grid point"
    return None


def check_config_sizes(cfg: StudyConfig) -> None:
    """Dataset-size range checks for every grid point, before any work (raises ConfigError)."""
    from ganft.data import check_sizes

    for point in cfg.points() or [{}]:
        check_sizes(cfg.trial_config(point).data)


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
