"""Running a study: the worker loop, ``--workers N`` and the study run that prepares the stores,
starts the workers and sums up. One trial's objective is in objective.py, the queue (survey,
reaping) in queue.py, the storages in storage.py.

MLflow: one experiment per study, one parent run per invocation that has work to do, one nested
child run per trial named after its grid point. A child run ends FINISHED only after Optuna has
recorded its trial COMPLETE, and the runs of dead workers end KILLED, so every point has exactly
one FINISHED run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ganft.config import check_device
from ganft.paths import provenance
from ganft.redact import redact, redact_argv, redact_logging, remember, remember_environment
from ganft.study import workers
from ganft.study.grid import OWNER_ATTR, PointState, survey, trial_owner
from ganft.study.mlflow_store import PARENT_TAG, MlflowStore
from ganft.study.objective import end_trial_run, make_objective
from ganft.study.queue import (
    close_orphan_runs,
    enqueue_missing,
    find_lost_runs,
    load_or_create_study,
    owner_dead,
    reap_dead_trials,
    reclaim,
)
from ganft.study.schema import StudyConfig
from ganft.study.storage import (
    DISK_FULL_TEXT,
    StudyError,
    check_disk,
    coordination,
    damaged_journal,
    disk_full,
    is_journal,
    repair_journal,
)
from ganft.study.stores import Stores

log = logging.getLogger(__name__)


class _ReasonOnly(logging.Filter):
    """Optuna logs every failed trial with its whole traceback (47 lines for a Ctrl-C); the line
    with the reason stays, the traceback only with -v (debug logging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        if not debug and disk_full(record.exc_info[1] if record.exc_info else None) or \
                not debug and any(t in record.getMessage().lower() for t in DISK_FULL_TEXT):
            return False  # a full disk: ganft says it once, in one line with what to do (cli.main)
        if record.exc_info and not debug:
            record.exc_info, record.exc_text = None, None
        return True


def quiet_optuna() -> None:
    """Optuna's warnings, each failed trial's on one line (its handler's, MLflow's and the root's);
    the tracebacks MLflow and Optuna log for a full disk, not at all."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("optuna", "mlflow", None):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _ReasonOnly) for f in handler.filters):
                handler.addFilter(_ReasonOnly())


# --------------------------------------------------------------------------- workers


def work(cfg: StudyConfig, stores: Stores, parent_id: str, device: str,
         on_trial_done: Callable[[FrozenTrial], None] | None = None,
         should_stop: Callable[[], bool] = lambda: False) -> None:
    """One worker: take queued grid points, one trial at a time, until the queue is empty."""
    quiet_optuna()
    store = MlflowStore(stores.tracking_uri, cfg.name)
    study = optuna.load_study(study_name=cfg.name, storage=stores.open(store))
    objective = make_objective(cfg, store, stores, parent_id, device)

    def queued(locked: bool) -> bool:  # reap dead workers' trials (queueing their points), then look
        reclaim(study, cfg, store, claims_locked=locked)
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    take_trials(study, stores, store, objective, queued, on_trial_done, should_stop)


def take_trials(study: optuna.Study, stores: Stores, store: MlflowStore,
                objective: Callable[[optuna.Trial], float], has_work: Callable[[bool], bool],
                on_trial_done: Callable[[FrozenTrial], None] | None, should_stop: Callable[[], bool]) -> None:
    """The loop of a worker, grid or search: under the coordination lock ``has_work`` (given whether
    that lock is held: see storage.coordination) reaps and says whether to go on, then a trial is
    claimed; it runs outside the lock, and its MLflow run ends once Optuna has its state."""
    done_callback = end_trial_run(store)
    while not should_stop():
        with coordination(stores.storage) as locked:
            if not has_work(locked):
                return
            check_disk(stores.local_paths())
            trial = claim_trial(study)
        frozen = run_claimed(study, trial, objective)
        done_callback(study, frozen)
        if on_trial_done is not None:
            on_trial_done(frozen)
    log.warning("the process that started this worker is gone; stopping after the trial")


def claim_trial(study: optuna.Study) -> optuna.Trial:
    """Take the next trial (a queued grid point first) and name this worker on it. Called under the
    coordination lock: on a journal storage no trial is then RUNNING without its worker's name
    except where the worker died in between, so reapers need not wait to tell (queue.owner_dead)."""
    trial = study.ask()
    trial.set_user_attr(OWNER_ATTR, {**workers.identity(), "trial": trial.number})
    return trial


def run_claimed(study: optuna.Study, trial: optuna.Trial,
                objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Run ``objective`` on a claimed trial and store its end as Optuna's ``optimize`` would: its
    value (a non-finite value is a FAIL), PRUNED, or FAIL for an error, which is logged on one line
    and does not stop the worker; Ctrl-C and SIGTERM store FAIL, then go on up. Written here, not
    left to ``optimize``, because the claim must happen under the lock and ``optimize`` asks itself."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except Exception as exc:  # the trial fails; the study goes on
        log.warning("trial %d (%s) failed: %s", trial.number, trial.user_attrs.get("ganft.grid_point", ""),
                    redact(f"{type(exc).__name__}: {exc}"))
        return study.tell(trial, state=TrialState.FAIL)
    except BaseException:
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    return study.tell(trial, value)


def _worker_main(index: int, threads: int, cfg: StudyConfig, stores: Stores, parent_id: str, device: str,
                 log_level: int, speed: Any) -> None:
    """Entry point of a spawned worker process (``--workers N``); ``speed`` is the parent's
    runtime.Speed."""
    from ganft.runtime import configure_speed

    logging.basicConfig(level=log_level, format=f"%(asctime)s w{index} %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    redact_logging()
    remember(stores.storage, stores.tracking_uri)  # a spawned interpreter remembers nothing
    remember_environment()
    configure_speed(speed)  # a spawned interpreter starts with the defaults
    workers.interrupt_once()
    workers.pin_threads(threads)
    watch = workers.ParentWatch()
    try:
        if cfg.search is not None:
            work_search(cfg, stores, parent_id, device, seed=index, should_stop=watch.gone)
        else:
            work(cfg, stores, parent_id, device, should_stop=watch.gone)
    except KeyboardInterrupt:
        sys.exit(130)
    except StudyError as exc:
        log.error("%s", exc)
        sys.exit(2)


# --------------------------------------------------------------------------- a study run


@dataclass
class Summary:
    total: int
    complete: int
    failed: list[PointState]
    ran: int = 0
    gans_trained: int = 0
    seconds: float = 0.0
    parent_run_id: str | None = None
    workers_lost: int = 0  # worker processes that died (their points run again on the next run)
    running: int = 0  # points still running in other invocations (other machines) when this one ended

    @property
    def ok(self) -> bool:
        """Nothing failed or left undone: every point is complete or running elsewhere."""
        return self.complete + self.running == self.total

    def lines(self, cfg: StudyConfig) -> list[str]:
        """What ``ganft study run`` prints when it ends."""
        if self.ran == 0 and self.complete == self.total:
            return [f"study {cfg.name} is complete: {self.complete} of {self.total} grid points done; "
                    f"nothing to run."]
        elsewhere = f"{self.running} running in other workers, " if self.running else ""
        out = [f"study {cfg.name}: {self.complete} of {self.total} grid points complete, "
               f"{elsewhere}{len(self.failed)} failed; this run: {_n(self.ran, 'trial')}, "
               f"{_n(self.gans_trained, 'generator')} trained, {self.seconds:.1f} s."]
        out += [f"  failed {ps.name} ({ps.attempts} attempt(s), max_retries {cfg.max_retries}): {ps.reason}"
                for ps in self.failed]
        if self.workers_lost:
            todo = self.total - self.complete - self.running
            out.append(f"  {self.workers_lost} worker process(es) died; " +
                       (f"rerun the same command to finish the {todo} point(s) left" if todo else
                        "the other workers finished their points"))
        return out


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _summary(study: optuna.Study, cfg: StudyConfig, **kw: Any) -> Summary:
    """Where the study stands: grid points (complete, running, failed), or a search's trials
    (complete or pruned, against search.n_trials)."""
    if cfg.search is not None:
        done, running = search_counts(study)
        return Summary(cfg.search.n_trials, min(done, cfg.search.n_trials), [], running=running, **kw)
    states = survey(study, cfg)
    return Summary(len(states), sum(ps.state == "complete" for ps in states),
                   [ps for ps in states if ps.state == "failed"],
                   running=sum(ps.state == "running" for ps in states), **kw)


def search_counts(study: optuna.Study) -> tuple[int, int]:
    """(trials COMPLETE or PRUNED, trials RUNNING) of a search: a search reaches n_trials of the
    first; a trial whose worker died is reaped to FAIL and counts for nothing."""
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return done, len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def work_search(cfg: StudyConfig, stores: Stores, parent_id: str, device: str, seed: int = 0,
                on_trial_done: Callable[[FrozenTrial], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> None:
    """One worker of a search: ask for a trial while fewer than n_trials are complete, pruned or
    running (counted under the machine's coordination lock, so workers never overshoot), run it,
    tell the result."""
    from ganft.runtime import derive_seed
    from ganft.study.search import make_pruner, make_sampler, make_search_objective

    assert cfg.search is not None
    quiet_optuna()
    store = MlflowStore(stores.tracking_uri, cfg.name)
    study = optuna.load_study(study_name=cfg.name, storage=stores.open(store), pruner=make_pruner(cfg))
    # seeded by worker and by how far the search got: a resumed search samples new points instead of
    # replaying the ones its first run drew (TPE's random start-up trials, a random sampler)
    study.sampler = make_sampler(cfg, derive_seed("sampler", seed, len(study.trials)) % 2**32)
    objective = make_search_objective(cfg, store, stores, parent_id, device)
    n_trials = cfg.search.n_trials

    def short(locked: bool) -> bool:  # fewer than n_trials complete, pruned or running
        reap_dead_trials(study, store, claims_locked=locked)
        return sum(search_counts(study)) < n_trials

    take_trials(study, stores, store, objective, short, on_trial_done, should_stop)


def preflight(cfg: StudyConfig, stores: Stores, workers_n: int) -> tuple[optuna.Study, MlflowStore, int]:
    """Create the stores once, before any worker starts (concurrent first use of a fresh SQLite
    store breaks its schema migration), reap what dead workers left, queue what is missing.
    Returns (study, MLflow store, points queued)."""
    if workers_n > 1 and stores.storage.startswith("sqlite"):
        raise StudyError("--storage sqlite:// is not safe for several workers (SQLite has no row "
                         "locks; two workers can take the same trial). Use the default journal file "
                         "or PostgreSQL.")
    stores.check()
    with stores.init_lock(), damaged_journal(cfg.name, stores.storage):
        store = MlflowStore.prepare(stores.tracking_uri, cfg.name, stores.root / "mlartifacts")
        study = load_or_create_study(cfg, stores.open(store))
    with coordination(stores.storage) as locked:
        lost = find_lost_runs(study, store)
        if lost:
            log.warning("%d complete grid point(s) have no FINISHED run in the MLflow store %s (deleted or "
                        "replaced?); they run again", lost, redact(stores.tracking_uri))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        reaped = reap_dead_trials(study, store, claims_locked=locked)
        if reaped:
            log.warning("reaped %d trial(s) whose worker had died; their points run again", len(reaped))
        closed = close_orphan_runs(study, store, redact(stores.storage))
        if closed:
            log.warning("closed %d MLflow run(s) left RUNNING by a dead worker", closed)
        queued = 0 if cfg.search is not None else enqueue_missing(study, survey(study, cfg), cfg.max_retries)
    _close_dead_claims(stores)
    return study, store, queued


def _close_dead_claims(stores: Stores) -> None:
    """Shared GAN cache: give up the claims of dead processes on this machine at once (other
    machines would take them over only after their heartbeat has been still for a minute)."""
    remote = stores.shared_store("gan")
    for run_id, tags in remote.running_claims() if remote is not None else []:
        if not workers.alive(tags, prefix="ganft."):
            remote.abandon(run_id, "its process died")


def run_study(cfg: StudyConfig, stores: Stores, *, device: str = "auto", progress: bool = True,
              workers_n: int = 1, speed: Any = None, threads: int | None = None) -> Summary:
    """Run every grid point of ``cfg`` that is not yet COMPLETE, exactly once each, in this process
    (``workers_n`` 1) or in ``workers_n`` worker processes, with the runtime.Speed ``speed``
    (default: the current one) and ``threads`` torch threads per worker (default: what
    workers.choose_threads finds free on this machine now)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    quiet_optuna()
    t0 = time.perf_counter()
    check_device(device)  # a malformed --device fails before anything is written
    study, store, queued = preflight(cfg, stores, workers_n)
    now = _summary(study, cfg)
    if cfg.search is not None:
        todo = now.total - now.complete - now.running
    else:
        todo = sum(ps.state == "queued" for ps in survey(study, cfg))
    if todo <= 0:  # nothing to run: the training stack is never loaded
        return _summary(study, cfg, seconds=time.perf_counter() - t0)
    from ganft.runtime import configure_speed, current_speed, machine_description, pick_device

    if speed is not None:
        configure_speed(speed)
    pick_device(device)  # an unavailable device (cuda without a GPU) fails before any trial

    earlier, now_code = store.last_provenance(), provenance()
    if earlier and any(earlier.get(k) != now_code.get(k) for k in earlier):
        log.warning("study %s was run before by %s; this run is %s: a changed trial could make its "
                    "points incomparable (each stage's version constant says whether its results change)",
                    cfg.name, _code(earlier), _code(now_code))
    n = max(1, min(workers_n, todo))
    threads = threads or workers.choose_threads(n)
    log.info("%d worker(s), %d torch thread(s) each", n, threads)
    parent_id = store.start_run(
        f"{cfg.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        {PARENT_TAG: "parent", "ganft.study": cfg.name,
         **{f"ganft.{k}": v for k, v in workers.identity().items()},
         "ganft.storage": redact(stores.storage), "ganft.tracking_uri": redact(stores.tracking_uri),
         "ganft.grid_points": now.total, "ganft.queued": queued, "ganft.workers": n,
         "ganft.argv": redact_argv(sys.argv), "ganft.machine": machine_description(),
         "ganft.threads": threads})
    bar = tqdm(total=now.total, initial=now.complete, desc=f"study {cfg.name}", unit="trial",
               disable=not progress, dynamic_ncols=True)

    def refresh(trial: FrozenTrial | None = None) -> None:
        bar.n = _summary(study, cfg).complete
        if trial is not None:
            bar.set_postfix_str(f"{trial.user_attrs.get('ganft.grid_point', '')} {trial.state.name.lower()}")
        bar.refresh()

    status, lost = "FINISHED", 0
    try:
        with logging_redirect_tqdm():  # log lines print above the bar, not through it
            if n == 1:
                workers.pin_threads(threads)
                if cfg.search is not None:
                    work_search(cfg, stores, parent_id, device, on_trial_done=refresh)
                else:
                    work(cfg, stores, parent_id, device, on_trial_done=refresh)
            else:
                codes = workers.run_pool(n, _worker_main, (threads, cfg, stores, parent_id, device,
                                                           logging.getLogger().getEffectiveLevel(),
                                                           current_speed()),
                                         on_tick=refresh)
                lost = _report_lost_workers(codes)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        bar.close()
        summary = _finish(study, cfg, store, stores, parent_id, status, t0)
        summary.workers_lost = lost
    return summary


def _code(tags: dict[str, str]) -> str:
    commit = tags.get("ganft.commit", "")
    short = commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")
    return f"ganft {tags.get('ganft.version', '?')}" + (f" (commit {short})" if commit else "")


def _report_lost_workers(codes: list[int]) -> int:
    lost = [(i, c) for i, c in enumerate(codes) if c not in (0, 130)]
    for i, code in lost:
        log.error("worker %d ended with %s", i, workers.describe_exit(code))
    return len(lost)


def _finish(study: optuna.Study, cfg: StudyConfig, store: MlflowStore, stores: Stores,
            parent_id: str, status: str, t0: float) -> Summary:
    """After the workers: fail what dead workers left RUNNING, end the runs no trial is left to
    end (a worker stopped inside a run's creation), sum up, end the parent run."""
    with coordination(stores.storage) as locked:
        reap_dead_trials(study, store, claims_locked=locked)
        close_orphan_runs(study, store, redact(stores.storage))
    mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                                 TrialState.PRUNED))
            if t.user_attrs.get("ganft.parent_run_id") == parent_id and trial_owner(t)]
    summary = _summary(study, cfg, ran=len(mine), parent_run_id=parent_id,
                       gans_trained=sum(bool(t.user_attrs.get("gan_trained")) for t in mine),
                       seconds=time.perf_counter() - t0)
    store.tracker(parent_id).log_metrics({"study/complete": summary.complete,
                                          "study/failed": len(summary.failed),
                                          "study/trials_run": summary.ran,
                                          "study/gans_trained": summary.gans_trained,
                                          "study/seconds": summary.seconds})
    store.end_run(parent_id, status)
    return summary


def repair_study(cfg: StudyConfig, stores: Stores) -> list[str]:
    """``ganft study repair``: make an unreadable journal readable again, fail trials of dead
    workers, end their MLflow runs. Refuses while a worker on this machine runs the study."""
    if is_journal(stores.storage) and not Path(stores.storage).is_file():
        return [f"study {cfg.name}: no journal at {stores.storage}; nothing to repair"]
    store = MlflowStore(stores.tracking_uri, cfg.name)
    notes: list[str] = []
    if is_journal(stores.storage):
        with contextlib.suppress(ValueError, KeyError):  # unreadable: nothing can be running on it
            _refuse_if_running(optuna.load_study(study_name=cfg.name, storage=stores.open()))
        notes = repair_journal(stores.storage)
    try:
        study = optuna.load_study(study_name=cfg.name, storage=stores.open(store))
    except KeyError:
        return [*notes, f"study {cfg.name} is not in {redact(stores.storage)}"]
    with coordination(stores.storage) as locked:
        reaped = reap_dead_trials(study, store, claims_locked=locked)
        closed = close_orphan_runs(study, store, redact(stores.storage))
    notes += [f"trial {t.number} ({t.user_attrs.get('ganft.grid_point', '?')}): its worker died; "
              f"marked FAIL (it runs again on the next study run)" for t in reaped]
    if closed:
        notes.append(f"ended {closed} MLflow run(s) left RUNNING by dead workers")
    return notes


def _refuse_if_running(study: optuna.Study) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_dead(t):
            owner = trial_owner(t) or {}
            raise StudyError(f"trial {t.number} is running (pid {owner.get('pid', '?')} on "
                             f"{owner.get('host', '?')}); stop the study's workers before repairing")
