"""Optuna storages for a study: journal files and RDB databases, their locks and their repair.

- A path is a journal file (``JournalStorage(JournalFileBackend)``), the local default: unlike
  SQLite it is safe for several workers on one study. ganft locks it with ``filelock`` (an
  ``flock``), which the kernel releases when a worker dies (Optuna's default symlink lock stays
  behind after ``kill -9`` and makes everyone wait out a grace period), and whoever takes the lock
  first truncates a torn last line left by a writer that died mid-write (optuna #5138: a torn line
  followed by another makes every later load fail).
- A URL is an RDB storage (PostgreSQL for several machines) with Optuna's heartbeats: a trial whose
  worker stops beating is failed by ``fail_stale_trials`` and queued again by
  ``RetryHeartbeatStaleTrialCallback``; ganft's callback first ends its MLflow run as KILLED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from ganft.redact import redact

log = logging.getLogger(__name__)
MIN_FREE_BYTES = 256 * 2**20  # below this, a worker stops before its next trial rather than tear a file


class StudyError(RuntimeError):
    """The storage holds a study that this file cannot continue (e.g. a changed base config), or
    the study cannot run as asked (no disk space, an unsafe storage for several workers)."""


def is_journal(spec: str) -> bool:
    return "://" not in spec


# --------------------------------------------------------------------------- journal file


class FlockJournalLock:
    """The journal's write lock (``JournalFileBackend(lock_obj=...)``: acquire / release, like
    Optuna's own locks) as a ``filelock.FileLock`` on ``<journal>.ganft.lock`` (an ``flock``:
    released by the kernel when its holder dies). On acquiring it, a torn last line is repaired
    before anyone appends. Local filesystems only (flock is unreliable on NFS: use PostgreSQL
    across machines)."""

    def __init__(self, journal: str) -> None:
        self.journal = journal
        self._lock = FileLock(journal + ".ganft.lock", thread_local=False)

    def acquire(self) -> bool:
        self._lock.acquire()
        try:
            fixed = fix_torn_tail(self.journal)
        except BaseException:
            self.release()
            raise
        if fixed:
            log.warning("journal %s: %s (a writer died mid-write)", self.journal, fixed)
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def fix_torn_tail(path: str) -> str | None:
    """Make the journal end with a whole line. Bytes after the last newline are a write cut short:
    kept (a newline appended) when they are one whole JSON operation, else cut off. Call with the
    journal lock held. Returns what was done, or None."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        start = _last_newline(f, size) + 1
        f.seek(start)
        tail = f.read()
        if _is_op(tail):
            f.seek(size)
            f.write(b"\n")
            action = "completed a last line that lacked its newline"
        else:
            f.truncate(start)
            action = f"cut off a torn last line ({size - start} bytes)"
        f.flush()
        os.fsync(f.fileno())
    return action


def _last_newline(f: Any, size: int, block: int = 1 << 16) -> int:
    """Offset of the last b"\\n" before ``size``, or -1."""
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        i = f.read(end - start).rfind(b"\n")
        if i >= 0:
            return start + i
        end = start
    return -1


def _is_op(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def repair_journal(path: str) -> list[str]:
    """Rewrite a journal whose lines cannot all be read (``ganft study repair``): a line that is a
    torn write followed by a whole one keeps the whole one; an unreadable line is dropped, unless it
    created a trial (``_placeholders``: trial ids count creations, so dropping one would shift every
    later trial onto another's record): then a FAIL trial stands in its place, and the point runs
    again (or adopts its FINISHED MLflow run). When the damage cannot be placed with certainty the
    journal is left as it is and a StudyError says so. The old file is kept as
    ``<journal>.bak-<time>``. Run only while no worker uses the journal: readers keep byte offsets
    into it. Returns what was done (empty: nothing to repair)."""
    lock = FlockJournalLock(path)
    lock.acquire()  # also repairs a torn tail
    try:
        lines = Path(path).read_bytes().splitlines(keepends=True)
        raw: list[bytes | None] = []  # each line as it is kept (None: unreadable)
        notes = []
        for number, line in enumerate(lines, start=1):
            if _is_op(line):
                raw.append(line)
                continue
            whole = line[line.rfind(b'{"op_code"'):] if b'{"op_code"' in line else b""
            if whole and _is_op(whole):
                raw.append(whole)
                notes.append(f"line {number}: kept the whole operation after a torn write")
            else:
                raw.append(None)
                notes.append(f"line {number}: dropped an unreadable line ({len(line)} bytes)")
        if not notes:
            return []
        ops = [None if line is None else json.loads(line) for line in raw]
        placeholders = _placeholders(ops, path)
        notes += [f"line {i + 1}: it created trial id {tid}; a FAIL trial stands in its place so later "
                  f"trials keep their ids (its point runs again, or adopts its FINISHED MLflow run)"
                  for i, (tid, _) in placeholders.items()]
        kept = [(json.dumps(placeholders[i][1]) + "\n").encode() if i in placeholders else line
                for i, line in enumerate(raw) if line is not None or i in placeholders]
        backup = f"{path}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.copy2(path, backup)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        notes.append(f"the old journal is kept as {backup}")
        return notes
    finally:
        lock.release()


CREATE_TRIAL, FAIL = 4, 3  # optuna's JournalOperation.CREATE_TRIAL and TrialState.FAIL


def _placeholders(ops: list[dict[str, Any] | None], path: str) -> dict[int, tuple[int, dict[str, Any]]]:
    """The unreadable lines (None) that created a trial. Trial ids count creations in order, so an
    operation on trial id t while fewer than t + 1 creations have been read means the missing ones
    are unreadable lines before it; when exactly that many are unaccounted for, they are them.
    Line index -> (trial id, a FAIL creation to write there). Raises StudyError when more lines are
    unaccounted for than creations are missing (which of them created a trial cannot be told)."""
    created, unknown, creations = 0, [], set()
    for i, op in enumerate(ops):
        if op is None:
            unknown.append(i)
        elif op.get("op_code") == CREATE_TRIAL:
            created += 1
        elif "trial_id" in op and op["trial_id"] >= created:
            missing = op["trial_id"] - created + 1
            if len(unknown) != missing:
                lines = ", ".join(str(g + 1) for g in unknown)
                raise StudyError(f"{path}: {missing} trial creation(s) before line {i + 1} are unreadable, "
                                 f"among lines {lines or 'none'}, and which cannot be told; the journal is "
                                 f"left as it is: restore it from a copy, or delete it and let `ganft study "
                                 f"run` adopt the FINISHED MLflow runs")
            creations.update(unknown)
            created += missing
            unknown = []
    out, tid, study = {}, 0, 0
    for i, op in enumerate(ops):
        if op is not None and op.get("op_code") == CREATE_TRIAL:
            tid, study = tid + 1, op["study_id"]
        elif i in creations:  # of the study whose creations surround it (a journal usually holds one)
            after = next((o["study_id"] for o in ops[i:] if o and o.get("op_code") == CREATE_TRIAL), study)
            now = datetime.now(UTC).isoformat(timespec="microseconds")
            out[i] = (tid, {"op_code": CREATE_TRIAL, "worker_id": "ganft-repair", "study_id": after,
                            "datetime_start": now, "state": FAIL, "value": None, "values": None,
                            "datetime_complete": now, "distributions": {}, "params": {},
                            "user_attrs": {"ganft.repaired": "its creation line was unreadable"},
                            "system_attrs": {}, "intermediate_values": {}})
            tid += 1
    return out


@contextlib.contextmanager
def coordination(spec: str) -> Iterator[bool]:
    """Serialises survey / reap / enqueue / claim among the processes of this machine that share a
    journal, so they do not queue the same point twice (the objective's own check keeps points
    exactly-once without it; this only spares the wasted trials). Nothing for an RDB storage.
    Yields whether the lock is held, i.e. every worker claims its trial under it (run.claim_trial),
    which lets a reaper take a RUNNING trial without its worker's name as dead (queue.owner_dead)."""
    if not is_journal(spec):
        yield False
        return
    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(spec + ".ganft-coord.lock"):
        yield True


@contextlib.contextmanager
def damaged_journal(study: str, storage: str) -> Iterator[None]:
    """A journal line that cannot be read (a damaged middle line) is a StudyError pointing to
    `ganft study repair`, not a JSONDecodeError or UnicodeDecodeError traceback."""
    try:
        yield
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError, Optuna's "invalid log" errors
        if not is_journal(storage):
            raise
        why = str(exc).splitlines()[0][:200]
        raise StudyError(f"the Optuna journal {storage} has a line that cannot be read ({why}); run "
                         f"`ganft study repair {study}` (it keeps a .bak copy), then this command "
                         f"again") from None


# --------------------------------------------------------------------------- opening


def open_storage(spec: str, *, heartbeat: int | None = None,
                 on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
                 ) -> optuna.storages.BaseStorage:
    """A path is a journal file (safe for several local workers); a URL is an RDB storage, with
    heartbeats every ``heartbeat`` seconds (stale after three missed) when given."""
    if is_journal(spec):
        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(spec, lock_obj=FlockJournalLock(spec))  # type: ignore[arg-type]
        return optuna.storages.JournalStorage(backend)
    return _rdb(spec, heartbeat, on_stale)


def _rdb(url: str, heartbeat: int | None, on_stale: Any) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    beat = ({"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat,
             "heartbeat_stale_trial_callback": on_stale} if heartbeat else {})
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beat)
        except ImportError:
            raise StudyError(f"{redact(url)}: its database driver is not installed; for PostgreSQL: "
                             f"pip install 'ganft[postgres]'") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # several machines creating the tables of a fresh database at once: one wins, retry
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


class StaleTrialCallback:
    """Optuna calls this (RDB storage) for a trial whose worker stopped sending heartbeats: its MLflow
    run ends as KILLED, then ``RetryHeartbeatStaleTrialCallback`` queues the point again, at most
    ``max_retry`` times (a point that kills its worker every time, e.g. out of memory, stops)."""

    def __init__(self, end_run: Callable[[str, str], None], max_retry: int) -> None:
        self.end_run = end_run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        owner = trial.user_attrs.get("ganft.owner") or {}
        run_id = trial.user_attrs.get("ganft.mlflow_run_id")
        if run_id and owner.get("trial") == trial.number:
            try:
                self.end_run(run_id, f"no heartbeat from its worker on {owner.get('host')} "
                                     f"(pid {owner.get('pid')}); the point runs again")
            except Exception as exc:  # the retry matters more than the run's status
                log.warning("trial %d: could not end its MLflow run (%s)", trial.number, exc)
        log.warning("trial %d (%s) went stale: its worker stopped; queued again", trial.number,
                    trial.user_attrs.get("ganft.grid_point", "?"))
        self.retry(study, trial)


DISK_FULL_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")


def disk_full(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) is a full disk or quota: OSError ENOSPC/EDQUOT,
    or what SQLite and MLflow say of it (they wrap it in their own exceptions)."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc).lower() for t in DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check_disk(paths: list[Path], min_free: int = MIN_FREE_BYTES) -> None:
    """Stop before a trial when a store's filesystem is nearly full: a full disk is what tears a
    journal line or a checkpoint."""
    for path in paths:
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None:
            continue
        free = shutil.disk_usage(existing).free
        if free < min_free:
            raise StudyError(f"only {free / 2**20:.0f} MiB free on {existing}; a trial needs at least "
                             f"{min_free / 2**20:.0f} MiB for its journal entries, runs and checkpoints")
