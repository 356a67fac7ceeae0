"""Several `ganft study run` worker processes on one machine, on the default local stores (Optuna
journal file, MLflow SQLite in WAL mode), run as a user runs them: as subprocesses, killed with
SIGKILL, with a trial made to diverge inside a worker process."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import psutil
import pytest
from mlflow import MlflowClient

from ganft.study.grid import trial_owner
from ganft.study.objective import FAULT_ENV
from ganft.study.storage import open_storage
from ganft.study.workers import alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # several processes, a minute or more each
POINTS = {f"n{n}-r{r}-s0" for n in (30, 60) for r in (0.0, 1.0, 2.0)}
LOCK_ERRORS = ("database is locked", "database table is locked", "UNIQUE constraint failed",
               "already exists", "Invalid log format")


def ganft(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganft.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def trials(home: Path) -> list[optuna.trial.FrozenTrial]:
    st = optuna.load_study(study_name="tiny", storage=open_storage(str(home / "optuna-journal.log")))
    return st.get_trials(deepcopy=False)


def complete_once(home: Path) -> Counter:
    return Counter(t.user_attrs["ganft.grid_point"] for t in trials(home)
                   if t.state == optuna.trial.TrialState.COMPLETE)


def child_runs(home: Path) -> list:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], max_results=1000)


def finished_children(home: Path) -> Counter:
    return Counter(r.info.run_name for r in child_runs(home)
                   if r.data.tags.get("ganft.role") == "trial" and r.info.status == "FINISHED")


def test_four_workers_complete_every_point_once_without_lock_errors(tiny_study: Path, home: Path) -> None:
    proc = ganft("study", "run", str(tiny_study), "--no-progress", "--workers", "4")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert not [e for e in LOCK_ERRORS if e in log], log
    assert "Traceback" not in log, log
    assert complete_once(home) == Counter({p: 1 for p in POINTS})
    assert finished_children(home) == Counter({p: 1 for p in POINTS})
    runs = child_runs(home)
    parents = [r for r in runs if r.data.tags.get("ganft.role") == "parent"]
    assert len(parents) == 1 and parents[0].data.tags["ganft.workers"] == "4"
    children = [r for r in runs if r.data.tags.get("ganft.role") == "trial"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert len({r.data.tags["ganft.pid"] for r in children}) >= 2  # the work was shared
    # one GAN per (N, seed), trained once even when two workers needed it at the same moment
    assert sorted(r.data.tags.get("gan.cache") for r in children if "gan.cache" in r.data.tags) == [
        "hit", "hit", "miss", "miss"]


def test_a_diverging_trial_in_a_worker_fails_with_its_reason_and_the_rest_complete(
        tiny_study: Path, home: Path) -> None:
    proc = ganft("study", "run", str(tiny_study), "--no-progress", "--workers", "2",
                 env={FAULT_ENV: "n30-r2.0-s0"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "5 of 6 grid points complete, 1 failed" in proc.stdout
    failed = [t for t in trials(home) if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["ganft.grid_point"] for t in failed] == ["n30-r2.0-s0"]
    assert failed[0].user_attrs["ganft.fail_reason"].startswith("NonFiniteLossError: non-finite")
    assert complete_once(home) == Counter({p: 1 for p in POINTS - {"n30-r2.0-s0"}})
    bad = [r for r in child_runs(home) if r.info.status == "FAILED"]
    assert [r.info.run_name for r in bad] == ["n30-r2.0-s0"]
    assert bad[0].data.tags["ganft.failure"].startswith("NonFiniteLossError: non-finite")

    status = ganft("study", "status", str(tiny_study))
    assert status.returncode == 1
    line = next(ln for ln in status.stdout.splitlines() if "n30-r2.0-s0" in ln)
    assert line.split()[0] == "failed" and "(1 attempt(s)) NonFiniteLossError: non-finite" in line


def _running_trials(home: Path, live_only: bool = False) -> list[int]:
    """RUNNING trials; with ``live_only``, only those whose worker process is alive (not the ones a
    killed run left behind)."""
    if not (home / "optuna-journal.log").exists():
        return []
    try:
        running = [t for t in trials(home) if t.state == optuna.trial.TrialState.RUNNING]
    except KeyError:  # the study is not created yet
        return []
    if live_only:
        owners = [(t, trial_owner(t)) for t in running]
        running = [t for t, o in owners if o and alive(o)]
    return [t.number for t in running]


def _wait_for_a_live_trial(home: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until a worker of ``proc`` runs a trial (or ``proc`` ends)."""
    deadline = time.monotonic() + timeout
    while not _running_trials(home, live_only=True) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _wait_until_gone(group: int, timeout: float = 30) -> None:
    """Until no process of the killed process group still runs (SIGKILL is delivered at once, but a
    worker's exit takes a moment: until then it looks alive to the next run and to this test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = []
        for p in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(p.pid) == group and p.info["status"] != psutil.STATUS_ZOMBIE:
                    left.append(p.pid)
        if not left:
            return
        time.sleep(0.05)


def _journal_lines(home: Path) -> int:
    path = home / "optuna-journal.log"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_at_random_moments_then_rerun_completes_every_point_once(
        tiny_study: Path, home: Path) -> None:
    seed = int(os.environ.get("GANFT_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    tiny_study.write_text(tiny_study.read_text().replace("seed: [0]", "seed: [0, 1]"))  # 12 points
    points = {p.replace("-s0", f"-s{s}") for p in POINTS for s in (0, 1)}
    cmd = [sys.executable, "-m", "ganft.cli", "study", "run", str(tiny_study), "--no-progress",
           "--workers", "2"]
    kills = []
    for _ in range(3):
        lines = _journal_lines(home)
        with open(home / "killed.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
            # wait until a worker runs a trial, then a random moment more: mid-GAN, mid-classifier,
            # mid-write to the journal, the MLflow store or the cache, or between trials
            _wait_for_a_live_trial(home, proc)
            time.sleep(rng.uniform(0.0, 2.0))
            kills.append(_journal_lines(home) - lines)
            with contextlib.suppress(ProcessLookupError):  # it may have finished
                os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, like a power cut
            proc.wait()
            _wait_until_gone(proc.pid)
    why = f"seed {seed} (GANFT_KILL_SEED), journal lines written before each kill {kills}\n"

    # Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a trial runs: the
    # run stops by itself and leaves nothing RUNNING behind
    with open(home / "interrupted.log", "wb") as out:
        # SIGINT at its default even where pytest runs with it ignored (a background job, nohup),
        # which the study's processes would inherit
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _wait_for_a_live_trial(home, proc)
        time.sleep(rng.uniform(0.0, 2.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            code, log = proc.wait(timeout=180), (home / "interrupted.log").read_text()
            # 130: stopped mid-study; 0 only where the last trial had finished before the signal
            assert code == 130 or code == 0 and "grid points complete, 0 failed" in log, why + log
            assert not _running_trials(home), why
            assert not [r.info.run_name for r in child_runs(home) if r.info.status == "RUNNING"], why

    final = ganft("study", "run", str(tiny_study), "--no-progress", "--workers", "2")
    assert final.returncode == 0, why + final.stdout + final.stderr
    assert "Traceback" not in final.stderr, why + final.stderr
    assert complete_once(home) == Counter({p: 1 for p in points}), why
    assert not _running_trials(home), why
    runs = child_runs(home)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], why
    assert finished_children(home) == Counter({p: 1 for p in points}), why
    assert ganft("study", "status", str(tiny_study)).returncode == 0
    # the kills did hit running trials: later runs found them and ran their points again
    logs = (home / "killed.log").read_text() + (home / "interrupted.log").read_text() + final.stderr
    assert "whose worker had died; their points run again" in logs, why + logs
