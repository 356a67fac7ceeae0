"""Study runner: the only module (with cli) that imports optuna.

A grid study is enumerated here and its points are handed out through Optuna's queue
(``enqueue_trial``), which gives each point to exactly one worker on a journal or RDB storage
(GridSampler counts failed cells as visited and runs extra trials on resume; see DESIGN.md).
Rerunning the same command surveys the storage, reaps trials whose worker died, re-queues what is
missing (failed points up to ``max_retries`` times) and runs only that.

MLflow: one experiment per study, one parent run per invocation that has work to do, one nested
child run per trial named after its grid point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
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
from optuna.trial import TrialState

from ganft.cache import GanCache
from ganft.config import StudyConfig, TrialConfig, config_keys
from ganft.pipeline import run_trial
from ganft.runtime import pick_device, project_root
from ganft.tracking import PARENT_TAG, MlflowStore, default_tracking_uri, redact

log = logging.getLogger(__name__)
GRID_KEY_ATTR = "ganft.grid_key"  # user attr: canonical JSON of the trial's grid point
SHORT_NAMES = {"data.train_size": "n", "synth.ratio": "r", "seed": "s"}


class StudyError(RuntimeError):
    """The storage holds a study that this file cannot continue (e.g. a changed base config)."""


# --------------------------------------------------------------------------- storage & names


@dataclass(frozen=True)
class Stores:
    storage: str  # Optuna: a journal file path, or an RDB URL (postgresql://, sqlite://)
    tracking_uri: str  # MLflow
    root: Path  # where the default stores, artifacts and the GAN cache live

    @classmethod
    def resolve(cls, storage: str | None = None, tracking_uri: str | None = None,
                root: Path | None = None) -> Stores:
        root = root or project_root()
        return cls(storage or str(root / "optuna-journal.log"),
                   tracking_uri or default_tracking_uri(root), root)

    @property
    def cache(self) -> GanCache:
        return GanCache(self.root / ".ganft-cache" / "gan")


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """A path is a journal file (safe for several local workers); a URL is an RDB storage."""
    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(spec))


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


def _distribution(key: str, values: list[Any]) -> BaseDistribution:
    """Int/float grid keys get numeric distributions (their range may grow when a grid is extended,
    and the dashboard plots them as numbers); anything else is categorical."""
    kind = _field_type(key)
    if kind is int and all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values))
    if kind is float:
        return FloatDistribution(float(min(values)), float(max(values)))
    return CategoricalDistribution([_encode(v) for v in values])


def _suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
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


def _encode(value: Any) -> Any:
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
        if rank[state] > rank[ps.state]:
            ps.state = state
    return list(points.values())


def _alive(host: str | None, pid: int | None) -> bool:
    """Whether a worker process is still running; unknown hosts are assumed alive."""
    if host != socket.gethostname() or not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_trials(study: optuna.Study, store: MlflowStore | None) -> int:
    """Trials left RUNNING by a worker on this machine that no longer exists (kill -9, power
    loss) become FAIL (without a fail reason, so they do not count as attempts); their MLflow runs
    end as KILLED. Returns how many were reaped."""
    reaped = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(t.user_attrs.get("ganft.host"), t.user_attrs.get("ganft.pid")):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        run_id = t.user_attrs.get("ganft.mlflow_run_id")
        if store is not None and run_id:
            store.end_run(run_id, "KILLED", "worker process died (reaped on resume)")
        reaped += 1
    if store is not None:  # runs of dead workers that never got a trial attr, and dead parents
        for run in store.running_runs():
            tags = run.data.tags
            if not _alive(tags.get("ganft.host"), int(tags.get("ganft.pid", 0) or 0)):
                store.end_run(run.info.run_id, "KILLED", "process died (reaped on resume)")
    return reaped


# --------------------------------------------------------------------------- running


@dataclass
class Summary:
    total: int
    complete: int
    failed: list[PointState]
    ran: int = 0
    gans_trained: int = 0
    seconds: float = 0.0
    parent_run_id: str | None = None


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
        if old is not None and isinstance(_distribution(key, values), CategoricalDistribution) \
                and [_encode(v) for v in old] != [_encode(v) for v in values]:
            raise StudyError(f"grid.{key}: the values changed from {old} to {values}; Optuna cannot "
                             f"change a categorical parameter's choices within a study. Use a new name.")
    study.set_user_attr("ganft.grid", {**old_grid, **cfg.grid})
    return study


def enqueue_missing(study: optuna.Study, states: list[PointState], max_retries: int) -> int:
    n = 0
    for ps in states:
        if ps.state == "missing" or (ps.state == "failed" and ps.attempts <= max_retries):
            params = {k: _encode(v) for k, v in ps.point.items()}
            study.enqueue_trial(params, user_attrs={GRID_KEY_ATTR: grid_key(ps.point),
                                                    "ganft.grid_point": ps.name})
            n += 1
    return n


def make_objective(cfg: StudyConfig, store: MlflowStore, stores: Stores, parent_id: str,
                   device_name: str):
    device = pick_device(device_name)
    dists = {k: _distribution(k, v) for k, v in cfg.grid.items()}
    by_key = {grid_key(p): p for p in cfg.points()}

    def objective(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get(GRID_KEY_ATTR)
        if key not in by_key:  # a spare trial: another worker popped the last queued point
            trial.set_user_attr("ganft.spare", True)
            raise optuna.TrialPruned("no grid point left for this worker")
        point = by_key[key]
        for k, dist in dists.items():  # record the point as Optuna params (fixed by the queue)
            _suggest(trial, k, dist)
        name = point_name(point)
        tags = {PARENT_TAG: "trial", "ganft.study": cfg.name, "ganft.grid_point": name,
                "ganft.trial_number": trial.number, "ganft.host": socket.gethostname(),
                "ganft.pid": os.getpid(), "ganft.device": str(device),
                **{f"grid.{k}": _encode(v) for k, v in point.items()}}
        run_id = store.start_run(name, tags, parent_id=parent_id)
        for attr, value in (("ganft.mlflow_run_id", run_id), ("ganft.host", socket.gethostname()),
                            ("ganft.pid", os.getpid())):
            trial.set_user_attr(attr, value)
        try:
            metrics = run_trial(cfg.trial_config(point), device=device, tracker=store.tracker(run_id),
                                cache=stores.cache)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("ganft.fail_reason", reason[:1000])
            store.end_run(run_id, "FAILED", reason)
            raise
        except BaseException:  # Ctrl-C, SystemExit: not the point's fault, not an attempt
            store.end_run(run_id, "KILLED", "interrupted")
            raise
        trial.set_user_attr("test_acc", metrics["test/acc"])
        trial.set_user_attr("gan_trained", bool(metrics.get("gan/trained_here", 0.0)))
        store.end_run(run_id, "FINISHED")
        return metrics["clf/best_val_acc"]  # the objective is validation accuracy, never test

    return objective


def work(cfg: StudyConfig, stores: Stores, parent_id: str, device: str,
         on_trial_done: Any = None) -> None:
    """One worker: take queued grid points until the queue is empty."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=cfg.name, storage=open_storage(stores.storage))
    store = MlflowStore(stores.tracking_uri, cfg.name)
    objective = make_objective(cfg, store, stores, parent_id, device)

    def queue_empty() -> bool:
        return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial_done is not None:
            on_trial_done(trial)
        if queue_empty():
            study.stop()

    if not queue_empty():
        study.optimize(objective, callbacks=[callback], catch=(Exception,), gc_after_trial=False)


def run_study(cfg: StudyConfig, stores: Stores, *, device: str = "auto",
              progress: bool = True) -> Summary:
    """Run every grid point of ``cfg`` that is not yet COMPLETE, exactly once each."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    pick_device(device)  # fail on a bad --device before anything is written
    study = load_or_create_study(cfg, open_storage(stores.storage))
    store = MlflowStore.prepare(stores.tracking_uri, cfg.name, stores.root / "mlartifacts")
    reaped = reap_dead_trials(study, store)
    if reaped:
        log.warning("reaped %d trial(s) whose worker had died; their points run again", reaped)
    states = survey(study, cfg)
    queued = enqueue_missing(study, states, cfg.max_retries)
    states = survey(study, cfg)
    todo = sum(ps.state == "queued" for ps in states)
    done = sum(ps.state == "complete" for ps in states)
    if todo == 0:
        return Summary(len(states), done, [ps for ps in states if ps.state == "failed"],
                       seconds=time.perf_counter() - t0)

    parent_id = store.start_run(
        f"{cfg.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        {PARENT_TAG: "parent", "ganft.study": cfg.name, "ganft.host": socket.gethostname(),
         "ganft.pid": os.getpid(), "ganft.storage": redact(stores.storage),
         "ganft.grid_points": len(states), "ganft.queued": queued, "ganft.argv": " ".join(sys.argv)})
    bar = tqdm(total=len(states), initial=done, desc=f"study {cfg.name}", unit="trial",
               disable=not progress, dynamic_ncols=True)
    ran, gans = 0, 0

    def on_trial_done(trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran, gans
        ran += 1
        gans += bool(trial.user_attrs.get("gan_trained"))
        if trial.state == TrialState.COMPLETE:
            bar.update(1)
        bar.set_postfix_str(f"{trial.user_attrs.get('ganft.grid_point', '')} "
                            f"{trial.state.name.lower()}")

    status = "FINISHED"
    try:
        with logging_redirect_tqdm():  # log lines print above the bar, not through it
            work(cfg, stores, parent_id, device, on_trial_done)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        bar.close()
        states = survey(study, cfg)
        failed = [ps for ps in states if ps.state == "failed"]
        done = sum(ps.state == "complete" for ps in states)
        seconds = time.perf_counter() - t0
        store.tracker(parent_id).log_metrics({"study/complete": done, "study/failed": len(failed),
                                              "study/trials_run": ran, "study/gans_trained": gans,
                                              "study/seconds": seconds})
        store.end_run(parent_id, status)
    return Summary(len(states), done, failed, ran, gans, seconds, parent_id)


def check_config_sizes(cfg: StudyConfig) -> None:
    """Dataset-size range checks for every grid point, before any work (raises ConfigError)."""
    from ganft.data import check_sizes

    for point in cfg.points() or [{}]:
        check_sizes(cfg.trial_config(point).data)


__all__ = ["Stores", "run_study", "survey", "config_keys", "check_config_sizes"]
