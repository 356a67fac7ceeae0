"""The queue of a grid study: its points are handed out through Optuna's queue
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
import logging
import warnings
from collections import Counter

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from ganft.study import workers
from ganft.study.grid import (
    GRID_KEY_ATTR,
    LOST_ATTR,
    PointState,
    config_hash,
    distribution,
    encode,
    grid_key,
    lost_trials,
    same_as_older_base,
    survey,
    trial_owner,
)
from ganft.study.mlflow_store import PARENT_TAG, MlflowStore
from ganft.study.schema import StudyConfig
from ganft.study.storage import StudyError
from ganft.study.stores import KILLED_RETRIES

log = logging.getLogger(__name__)
OBJECTIVE_NAME = "budget validation accuracy"  # never test accuracy (objective.objective_value)
PAIRED_OBJECTIVE_NAME = "paired gain in budget validation accuracy"  # a search's paired-gain objective
INTERRUPTED_ATTR = "ganft.interrupted"  # why a FAIL trial that is not the point's fault ended
UNCLAIMED_AFTER_S = 600  # a RUNNING trial that never named its worker (who does so at once) is dead


def owner_dead(t: FrozenTrial, claims_locked: bool = False) -> bool:
    """Whether the worker running ``t`` is gone. ``claims_locked``: the caller holds the coordination
    lock of a journal storage, under which every worker takes its trial and names itself
    (run.claim_trial), so a RUNNING trial with no name lost its worker in between (a SIGKILL)."""
    owner = trial_owner(t)
    if owner is None:  # its worker died between taking the trial and naming itself (milliseconds)
        if claims_locked:
            return True
        started = t.datetime_start
        return started is not None and (datetime.datetime.now() - started).total_seconds() > UNCLAIMED_AFTER_S
    return not workers.alive(owner)


def reap_dead_trials(study: optuna.Study, store: MlflowStore | None,
                     claims_locked: bool = False) -> list[FrozenTrial]:
    """Trials left RUNNING by a worker on this machine that no longer exists (kill -9, power loss,
    out of memory) become FAIL without a fail reason, so they do not count as attempts; their MLflow
    runs end as KILLED. Returns the reaped trials. ``claims_locked``: see owner_dead."""
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_dead(t, claims_locked):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        reaped.append(t)
        run_id = t.user_attrs.get("ganft.mlflow_run_id") if trial_owner(t) else None
        if store is not None and run_id:
            store.end_run(run_id, "KILLED", "its worker process died (reaped)", only_if_running=True)
    return reaped


def close_orphan_runs(study: optuna.Study, store: MlflowStore, storage_tag: str) -> int:
    """End MLflow runs left RUNNING whose trial has ended (a worker killed between Optuna's record
    and the run's end, a trial failed by heartbeat, Ctrl-C after MLflow wrote the run and before its
    id came back) or whose process died on this machine."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    closed = 0
    for run in store.running_runs():
        tags = run.data.tags
        t = trials.get(int(tags.get("ganft.trial_number", -1)))
        if tags.get(PARENT_TAG) == "trial" and tags.get("ganft.storage") == storage_tag and t is not None:
            if t.state == TrialState.COMPLETE:  # everything was logged before Optuna recorded COMPLETE
                closed += store.end_run(run.info.run_id, "FINISHED", only_if_running=True)
            elif t.state.is_finished():
                why = t.user_attrs.get("ganft.fail_reason") or t.user_attrs.get(INTERRUPTED_ATTR) or \
                    "its trial ended without it (worker died)"
                closed += store.end_run(run.info.run_id, "KILLED", why, only_if_running=True)
        elif not workers.alive(tags, prefix="ganft."):
            closed += store.end_run(run.info.run_id, "KILLED", "its process died (reaped)",
                                    only_if_running=True)
    return closed


# --------------------------------------------------------------------------- queue


def load_or_create_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=cfg.name, direction="maximize",
                                load_if_exists=True)
    name = PAIRED_OBJECTIVE_NAME if cfg.search is not None and cfg.search.objective == "paired-gain" \
        else OBJECTIVE_NAME
    if study.metric_names != [name]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([name])  # optuna-dashboard labels the value with it
    stored = study.user_attrs.get("ganft.base_hash")
    if stored is None:
        study.set_user_attr("ganft.base_hash", config_hash(cfg))
        study.set_user_attr("ganft.base", cfg.base.model_dump(mode="json"))
    elif stored != config_hash(cfg) and same_as_older_base(cfg, stored, study.user_attrs.get("ganft.base")):
        log.info("study %s was stored by an earlier ganft; the fields added since are at their defaults",
                 cfg.name)
        study.set_user_attr("ganft.base_hash", config_hash(cfg))
        study.set_user_attr("ganft.base", cfg.base.model_dump(mode="json"))
    elif stored != config_hash(cfg):
        raise StudyError(f"study {cfg.name!r} in this storage was run with a different base config; "
                         f"results would not be comparable. Give the study a new name, or use "
                         f"another --storage and --tracking-uri.")
    old_grid = study.user_attrs.get("ganft.grid", {})
    for key, values in cfg.grid_values.items():
        old = old_grid.get(key)
        if old is not None and isinstance(distribution(key, values), CategoricalDistribution) \
                and [encode(v) for v in old] != [encode(v) for v in values]:
            raise StudyError(f"grid.{key}: the values changed from {old} to {values}; Optuna cannot "
                             f"change a categorical parameter's choices within a study. Use a new name.")
    if {**old_grid, **cfg.grid_values} != old_grid:
        study.set_user_attr("ganft.grid", {**old_grid, **cfg.grid_values})
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


def reclaim(study: optuna.Study, cfg: StudyConfig, store: MlflowStore, claims_locked: bool = False) -> int:
    """Between trials: fail the trials of dead workers and queue their points again (each at most
    KILLED_RETRIES times). Journal: dead pids on this machine; RDB: also Optuna's heartbeats, whose
    retry callback does the queueing. Returns how many points were queued. ``claims_locked``: see
    owner_dead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no-op without heartbeats (journal)
    reaped = reap_dead_trials(study, store, claims_locked)
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


def find_lost_runs(study: optuna.Study, store: MlflowStore) -> int:
    """Mark the COMPLETE trials whose MLflow run is not FINISHED in the tracking store (a deleted or
    replaced ``mlflow.db``): their points count as missing and run again. Returns how many.

    A COMPLETE trial whose run is still RUNNING under a dead worker had logged everything (the
    trial turns COMPLETE only after its run's last metric); only the run's end was lost (the worker
    died, or the disk was full, between the two): the run is ended FINISHED instead."""
    from ganft.study import workers

    finished = store.finished_trial_runs()
    unended = {k: v for k, v in store.trial_runs("RUNNING").items() if not workers.alive(v, "ganft.")}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = t.user_attrs.get("ganft.mlflow_run_id")
        if run_id in unended and run_id not in finished:
            log.warning("trial %d: its MLflow run %s was never ended; ended FINISHED now", t.number, run_id)
            store.end_run(run_id, "FINISHED", only_if_running=True)
            finished[run_id] = unended[run_id]
    lost = lost_trials(study)
    new = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
           if GRID_KEY_ATTR in t.user_attrs and t.number not in lost
           and t.user_attrs.get("ganft.mlflow_run_id") not in finished]
    if new:
        study.set_user_attr(LOST_ATTR, sorted(lost | set(new)))
    return len(new)


def superseded(study: optuna.Study, number: int, key: str) -> str | None:
    """Another trial holds this grid point: one is COMPLETE, or an earlier one is running or queued.
    Two workers that take two copies of a point at once both see each other; the earlier wins."""
    lost = lost_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                      TrialState.WAITING)):
        if t.number != number and t.number not in lost and t.user_attrs.get(GRID_KEY_ATTR) == key \
                and (t.state == TrialState.COMPLETE or t.number < number):
            return f"trial {t.number} holds this grid point"
    return None


def check_config_sizes(cfg: StudyConfig) -> None:
    """Dataset checks for every grid point, before any work (raises ConfigError): data.root, the
    range of N, the oracle control's images; an image folder is also decoded (and cached) here, so a
    file that is not an image stops the study before any store is written."""
    from ganft.catalog import check_oracle, check_sizes, check_unlabelled_pool

    folders = set()
    for point in cfg.points():
        trial = cfg.trial_config(point)
        check_sizes(trial.data)
        if trial.synth.source == "oracle" and trial.synth.ratio:
            check_oracle(trial.data, trial.synth.ratio)
        if trial.synth.source == "fixmatch":
            fm, batch = trial.fixmatch.mu, trial.classifier.batch_size
            check_unlabelled_pool(trial.data, fm * batch, f"fixmatch.mu {fm} x classifier.batch_size {batch}",
                                  "fixmatch.mu or classifier.batch_size")
        if trial.synth.source == "ssgan":
            batch = trial.classifier.batch_size
            check_unlabelled_pool(trial.data, batch, f"synth.source ssgan: classifier.batch_size {batch}",
                                  "classifier.batch_size")
        if trial.data.dataset == "imagefolder":
            folders.add(trial.data)
    if folders:
        from ganft.data import splits_for

        for data in folders:
            splits_for(data)
