"""Worker processes for ``ganft study run --workers N``: start, pin, watch, stop. No scheduling.

The work itself is handed out by Optuna's queue (study/queue.py); this module only starts N identical
processes, gives each ``cores / N`` torch threads so they do not oversubscribe the CPU, forwards
Ctrl-C, and tells the study runner which processes are alive. Processes are started with
``spawn`` (a fresh interpreter): forking a process that already initialised torch's thread pools
or a database connection is not safe.

Process identity (host, pid, start time, through psutil) is how trials left RUNNING by a dead
worker are found on this machine: a pid alone can be reused by a later process, its start time
cannot.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- process identity


@functools.cache
def _pid_namespace() -> str:
    """Containers on one host can share its hostname but not its pids (psutil does not say which
    namespace a process is in; the inode of /proc/self/ns/pid does)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def identity() -> dict[str, Any]:
    """This process as stored on trials and runs: host, pid, pid_start (its start time), boot (the
    machine's boot time) and pidns."""
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "pid_start": round(me.create_time(), 2),
            "boot": round(psutil.boot_time()), "pidns": _pid_namespace()}


def alive(record: Mapping[str, Any], prefix: str = "") -> bool:
    """Whether the process an ``identity()`` record names (keys with ``prefix``, e.g. MLflow tags
    ``ganft.pid``; values may be strings) still runs. Only this machine, booted once and in the
    same pid namespace, can tell; a process elsewhere is assumed alive, since a wrong "dead" would
    run its point twice. A record from an earlier boot of this machine is dead."""
    def get(key: str) -> str:
        return str(record.get(prefix + key) or "")

    if get("host") != socket.gethostname() or not get("pid").isdigit():
        return True
    if _number(get("boot")) is not None and abs(_number(get("boot")) - psutil.boot_time()) > BOOT_SLACK_S:
        return False  # this machine rebooted since (power loss)
    if get("pidns") and get("pidns") != _pid_namespace():
        return True
    return is_alive(get("host"), int(get("pid")), _number(get("pid_start")))


BOOT_SLACK_S = 2.0  # psutil derives the boot time from the uptime: it can move by a fraction of a second


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def is_alive(host: str | None, pid: int | None, pid_start: float | str | None = None) -> bool:
    """Whether a process on this host (``pid``, started at ``pid_start`` if known) still runs; a
    zombie does not, nor a later process that got the same pid."""
    if host != socket.gethostname() or not pid:
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False  # killed, not yet reaped by its parent: it runs no more
        return not (pid_start and abs(proc.create_time() - float(pid_start)) > 0.01)  # a reused pid
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


# --------------------------------------------------------------------------- the pool


def cpu_count() -> int:
    """Cores this process may run on (respects taskset / cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 ``cpu.max``, or v1 CFS quota),
    None where there is none."""
    candidates = [("/sys/fs/cgroup/cpu.max", None),
                  ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            fields = open(quota_file).read().split()
            if period_file:
                fields.append(open(period_file).read().strip())
        except OSError:
            continue
        if fields[0] in ("max", "-1"):
            return None
        return int(fields[0]) / int(fields[1])
    return None


def choose_threads(n_workers: int, sample_s: float = 0.5) -> int:
    """Torch threads per worker from the CPUs this process can really use: its affinity, its
    cgroup quota, and how busy those CPUs are right now (other jobs' threads compete with ours,
    and oversubscribed torch threads slow down far more than their fair share)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    usable = float(len(allowed) if allowed else cpu_count())
    quota = cgroup_cpus()
    if quota is not None:
        usable = min(usable, quota)
    per_cpu = psutil.cpu_percent(interval=sample_s, percpu=True)
    busy = sum(per_cpu[i] for i in allowed if i < len(per_cpu)) / 100 if allowed else sum(per_cpu) / 100
    free = max(1.0, usable - busy)
    return max(1, int(free + 0.25) // n_workers)  # a mostly idle core counts as free


def pin_threads(n_threads: int) -> None:
    """Give this (fresh) worker process ``n_threads`` intra-op torch threads and one inter-op thread."""
    import torch

    torch.set_num_threads(n_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; harmless if too late
        pass


def interrupt_once() -> None:
    """In a worker: the first SIGINT or SIGTERM raises KeyboardInterrupt (the trial ends as
    interrupted and its MLflow run as KILLED); later ones are ignored, so a second Ctrl-C, or the
    parent passing the first one on, cannot cut that clean-up short. A SIGINT the process was
    started ignoring stays ignored, as it does in the parent."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    # a parent started with SIGINT ignored (nohup, a background job) passes that on: keep it
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class ParentWatch:
    """In a worker: whether the process that started it has died (its ppid changes)."""

    def __init__(self) -> None:
        self.ppid = os.getppid()

    def gone(self) -> bool:
        return os.getppid() != self.ppid


def run_pool(n: int, target: Callable[..., None], args: tuple[Any, ...],
             on_tick: Callable[[], None] | None = None, tick_s: float = 2.0) -> list[int]:
    """Run ``target(index, *args)`` in ``n`` spawned processes and wait for all of them; call
    ``on_tick`` every ``tick_s`` seconds meanwhile (progress). Returns the exit codes (negative:
    killed by that signal). Ctrl-C is passed on to the workers, which end their trials as
    interrupted; the parent waits for them before re-raising."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(i, *args), name=f"ganft-worker-{i}") for i in range(n)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=tick_s / n)
            if on_tick is not None:
                on_tick()
    except KeyboardInterrupt:
        _stop(procs)
        raise
    return [p.exitcode if p.exitcode is not None else -1 for p in procs]


def _stop(procs: list[Any], grace_s: float = 60.0) -> None:
    """Interrupt the workers (a terminal's Ctrl-C reaches them already; a `kill` of the parent
    does not), give them time to end their runs, then terminate what is left. SIGTERM, not SIGINT:
    a study started under nohup or in the background has SIGINT ignored, and its workers keep it so
    (interrupt_once), so a SIGINT would let them train on; their SIGTERM handler is always set."""
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.warning("worker %s did not stop within %.0f s; terminating it", p.name, grace_s)
            p.terminate()
            p.join()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
