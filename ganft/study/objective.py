"""One trial of a study: the Optuna objective, its MLflow child run, and the test hook that makes a
trial's training diverge. The training stack (torch) is imported only when an objective is made,
so commands that find nothing to run never load it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ganft.redact import redact
from ganft.study import workers
from ganft.study.grid import (
    GRID_KEY_ATTR,
    config_hash,
    distribution,
    encode,
    grid_key,
    point_name,
    suggest,
    trial_owner,
)
from ganft.study.mlflow_store import PARENT_TAG, MlflowStore
from ganft.study.queue import INTERRUPTED_ATTR, superseded
from ganft.study.schema import StudyConfig
from ganft.study.storage import disk_full
from ganft.study.stores import Stores

log = logging.getLogger(__name__)
# Test hook, read only in _injected_fault: grid point names (comma-separated) whose trials get a
# non-finite loss. It exists so a test can make a trial diverge inside a worker subprocess.
FAULT_ENV = "GANFT_TEST_NONFINITE"


# --------------------------------------------------------------------------- one trial


@contextlib.contextmanager
def _injected_fault(name: str) -> Iterator[None]:
    """Test hook: when ``$GANFT_TEST_NONFINITE`` names this grid point, every module output in its
    trial becomes NaN, so training meets a real non-finite loss and its own guard (gan_train,
    finetune) fails the trial. Never set it outside tests."""
    if name not in {p.strip() for p in os.environ.get(FAULT_ENV, "").split(",")}:
        yield
        return
    import torch

    def poison(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output * float("nan")
        return output

    log.warning("%s: %s is set; this trial's losses will be non-finite", name, FAULT_ENV)
    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        yield
    finally:
        handle.remove()


def make_objective(cfg: StudyConfig, store: MlflowStore, stores: Stores, parent_id: str,
                   device_name: str) -> Callable[[optuna.Trial], float]:
    import torch

    from ganft.pipeline import run_trial  # the training stack, loaded once there is work
    from ganft.runtime import current_speed, pick_device, precision_name, uses_channels_last

    device = pick_device(device_name)
    cache = stores.gan_cache()  # one per worker
    dists = {k: distribution(k, v) for k, v in cfg.grid_values.items()}
    by_key = {grid_key(p): p for p in cfg.points()}

    base_hash = config_hash(cfg)

    def objective(trial: optuna.Trial) -> float:
        me = workers.identity()  # run.claim_trial has named this worker on the trial
        trial.set_user_attr("ganft.parent_run_id", parent_id)
        point = _take_point(trial, by_key)
        for k, dist in dists.items():  # record the point as Optuna params (fixed by the queue)
            suggest(trial, k, dist)
        name, key = point_name(point), grid_key(point)
        adopted = store.finished_run_for(key, base_hash)
        if adopted is not None:  # its Optuna record was lost (torn journal, deleted journal)
            return _adopt(trial, adopted, name)
        tags = {PARENT_TAG: "trial", "ganft.study": cfg.name, "ganft.grid_point": name,
                "ganft.grid_key": key, "ganft.base_hash": base_hash,
                "ganft.trial_number": trial.number, "ganft.storage": redact(stores.storage),
                "ganft.device": str(device), "ganft.precision": precision_name(device),
                "ganft.channels_last": uses_channels_last(device),
                "ganft.compile": current_speed().compile, "ganft.threads": torch.get_num_threads(),
                **{f"ganft.{k}": v for k, v in me.items()},
                **{f"grid.{k}": encode(v) for k, v in point.items()}}
        with trial_run(trial, store, name, tags, parent_id) as run_id, _injected_fault(name):
            metrics = run_trial(cfg.trial_config(point), device=device, tracker=store.tracker(run_id),
                                cache=cache)
        trial.set_user_attr("test_acc", metrics["test/acc"])
        trial.set_user_attr("gan_trained", bool(metrics.get("gan/trained_here", 0.0)))
        return objective_value(metrics)

    return objective


def _adopt(trial: optuna.Trial, run: Any, name: str) -> float:
    """A grid point that already has a FINISHED MLflow run: the trial takes its result instead of
    training again, so the point keeps exactly one FINISHED run."""
    metrics = run.data.metrics
    log.warning("%s: adopting its FINISHED MLflow run %s (its Optuna record was lost); not training "
                "it again", name, run.info.run_id)
    trial.set_user_attr("ganft.mlflow_run_id", run.info.run_id)
    trial.set_user_attr("ganft.adopted", True)
    trial.set_user_attr("test_acc", metrics.get("test/acc"))
    trial.set_user_attr("gan_trained", False)
    return objective_value(metrics)


def objective_value(metrics: dict[str, float]) -> float:
    """The Optuna objective, from budget data only, never the test split: under data.validation
    kfold the mean true-class probability on the held-out folds (continuous, cross-validated inside
    the budget); else the kept checkpoint's validation accuracy; under data.validation none (no
    validation images) the last weights' accuracy on the budget's training images."""
    if "cv/true_class_prob" in metrics:
        return metrics["cv/true_class_prob"]
    return metrics.get("clf/best_val_acc", metrics["clf/train_acc_last"])


def _take_point(trial: optuna.Trial, by_key: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The grid point the queue gave this trial; prunes the trial as spare when another trial holds
    the point (a queue race) or the queue ran dry before this worker popped it."""
    key = trial.user_attrs.get(GRID_KEY_ATTR)
    spare = superseded(trial.study, trial.number, key) if key in by_key else "no grid point left"
    if spare:
        trial.set_user_attr("ganft.spare", spare)
        raise optuna.TrialPruned(spare)
    return by_key[key]


@contextlib.contextmanager
def trial_run(trial: optuna.Trial, store: MlflowStore, name: str, tags: dict[str, Any],
              parent_id: str) -> Iterator[str]:
    """One MLflow child run of a trial (a search trial has one per repeat, in
    ``ganft.mlflow_run_ids``). An error ends it FAILED with the reason (also the trial's
    ``ganft.fail_reason``: an attempt against max_retries); a pruned trial ends it KILLED with the
    tag ``ganft.pruned`` (not a failure); Ctrl-C ends it KILLED (not an attempt). On success it
    stays RUNNING: end_trial_run ends it once Optuna has stored COMPLETE."""
    run_id = None
    try:
        run_id = store.start_run(name, tags, parent_id=parent_id)
        trial.set_user_attr("ganft.mlflow_run_id", run_id)
        earlier = trial.user_attrs.get("ganft.mlflow_run_ids", [])
        trial.set_user_attr("ganft.mlflow_run_ids", [*earlier, run_id])
        yield run_id
    except optuna.TrialPruned:
        if run_id:
            store.tracker(run_id).set_tags({"ganft.pruned": "true"})
            store.end_run(run_id, "KILLED", "pruned by the search's pruner")
        raise
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {exc}")
        full = disk_full(exc)  # not the point's fault, not an attempt; the stores may not take a write
        try:
            if full:
                trial.set_user_attr(INTERRUPTED_ATTR, "the disk was full; it runs again next time")
            else:
                trial.set_user_attr("ganft.fail_reason", reason[:1000])
            if run_id:
                store.end_run(run_id, "KILLED" if full else "FAILED", "disk full" if full else reason)
        except Exception as record_exc:  # the trial's own error is the one to raise
            if not disk_full(record_exc):
                raise
            log.debug("could not record the failure of trial %d: the disk is full", trial.number)
        raise
    except BaseException:  # Ctrl-C, SIGTERM, SystemExit: not the point's fault, not an attempt
        trial.set_user_attr(INTERRUPTED_ATTR, "interrupted (Ctrl-C or SIGTERM); it runs again next time")
        if run_id:
            store.end_run(run_id, "KILLED", "interrupted")
        raise


def end_trial_run(store: MlflowStore) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna callback, called after the trial's state is stored: its MLflow run ends FINISHED only
    once the trial is COMPLETE (a worker killed in between leaves the trial RUNNING and the run
    RUNNING; the point runs again and the run ends KILLED, so a point never has two FINISHED runs)."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        run_ids = trial.user_attrs.get("ganft.mlflow_run_ids") or \
            [trial.user_attrs.get("ganft.mlflow_run_id")]
        if not any(run_ids) or trial_owner(trial) is None:
            return
        for run_id in filter(None, run_ids):
            try:
                if trial.state == TrialState.COMPLETE:
                    store.end_run(run_id, "FINISHED", only_if_running=True)  # an adopted run is already
                elif trial.state == TrialState.FAIL:  # e.g. Optuna refused the value (NaN)
                    store.end_run(run_id, "FAILED", "Optuna recorded the trial as FAIL",
                                  only_if_running=True)
            except Exception as exc:  # a full disk: the next trial's disk check stops the worker
                if not disk_full(exc):
                    raise
                log.debug("could not end MLflow run %s: the disk is full", run_id)

    return callback


