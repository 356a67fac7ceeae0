"""The study's side of MLflow: one experiment per study, parent and child runs, the tracker a trial
logs to, closing runs of dead workers, reading runs back as a DataFrame, and checkpoints shared
through a tracking server. The only module that imports mlflow.

Every call goes through an ``MlflowClient`` with an explicit run id, never the fluent
``mlflow.start_run`` stack: that stack is per-thread and nests only within one process."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ganft.paths import provenance
from ganft.redact import redact
from ganft.study.peek import PARENT_TAG, default_tracking_uri
from ganft.study.storage import StudyError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by the MLflow 3 UI to choose its view
MODEL_TRAINING = "custom_model_development"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def is_remote(uri: str) -> bool:
    """A tracking server (http/https), as opposed to a local file store: the GAN cache is then
    shared through its artifact store."""
    return uri.startswith(("http://", "https://"))


def _quiet() -> None:
    # alembic prints every schema migration at INFO when a store is created
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


class MlflowTracker:
    """The ``tracker.Tracker`` of one MLflow run, by id (safe from any thread or process)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_figure(self, fig: Any, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))


class StoreSchemaError(StudyError):
    """A tracking store whose schema MLflow refuses; the message says what to do (one line)."""


class MlflowStore:
    """One MLflow tracking store (SQLite file or server) and one experiment in it."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None,
                 create: bool = True) -> None:
        from mlflow import MlflowClient

        _quiet()
        self.uri, self.experiment_name = uri, experiment
        self.client = MlflowClient(tracking_uri=uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as exc:  # MlflowException; mlflow is imported here, not at module level
            if "out-of-date database schema" not in str(exc):
                raise
            raise StoreSchemaError(
                f"the MLflow store {redact(uri)} has a schema this MLflow cannot use (made by another "
                f"MLflow version, or its creation was cut short); move it aside (e.g. mv mlflow.db "
                f"mlflow.db.old) and rerun: the Optuna journal keeps every result, and points without a "
                f"FINISHED run in the new store run again") from None
        if exp is None and not create:
            raise LookupError(f"no MLflow experiment {experiment!r} in {redact(uri)}")
        if exp is None:
            # A SQLite store would otherwise fix <cwd>/mlruns as the artifact place: pin it to the root
            location = (artifact_root / experiment).as_uri() if artifact_root and _is_local(uri) else None
            self.experiment_id = _create_experiment(self.client, experiment, location)
        else:
            self.experiment_id = exp.experiment_id

    @classmethod
    def prepare(cls, uri: str, experiment: str, artifact_root: Path | None = None) -> MlflowStore:
        """Preflight: create the store (schema migration happens once, here), enable WAL on a
        SQLite file, create the experiment. Call before any worker starts."""
        path = sqlite_path(uri)
        if path is not None:
            create_sqlite_store(Path(path))
        store = cls(uri, experiment, artifact_root)
        # MLflow 3 opens an experiment without this tag in its GenAI view (traces, evaluations, child
        # runs collapsed); a model-training experiment opens on its runs table
        _tag_experiment(store.client, store.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        if path is not None:
            with sqlite3.connect(path) as conn:  # stored in the file: later connections use WAL
                conn.execute("PRAGMA journal_mode=WAL")
        return store

    # ---------------------------------------------------------------- runs

    def start_run(self, name: str, tags: dict[str, Any], parent_id: str | None = None) -> str:
        """A run with ``tags`` and which ganft made it (``paths.provenance``: version, commit)."""
        tags = {k: str(v) for k, v in {**provenance(), **tags}.items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id  # what the UI nests child runs by
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def tracker(self, run_id: str) -> MlflowTracker:
        return MlflowTracker(self.client, run_id)

    def end_run(self, run_id: str, status: str = "FINISHED", reason: str | None = None,
                only_if_running: bool = False) -> bool:
        """End a run as FINISHED, FAILED or KILLED; a reason is kept as tag ``ganft.failure``.
        With ``only_if_running``, a run that already ended is left as it is. Returns whether it
        was ended here."""
        if only_if_running and self.client.get_run(run_id).info.status != "RUNNING":
            return False
        if reason:
            self.client.set_tag(run_id, "ganft.failure", redact(reason)[:4000])
        self.client.set_terminated(run_id, status)
        return True

    def last_provenance(self) -> dict[str, str]:
        """Which ganft made the study's latest earlier invocation (its parent run's tags), if any."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = 'parent'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return {k: v for k, v in runs[0].data.tags.items() if k in ("ganft.version", "ganft.commit")} \
            if runs else {}

    def finished_trial_runs(self) -> dict[str, dict[str, str]]:
        """run id -> tags of every FINISHED trial run of the experiment."""
        return self.trial_runs("FINISHED")

    def trial_runs(self, status: str) -> dict[str, dict[str, str]]:
        """run id -> tags of every trial run of the experiment with this status (FINISHED, RUNNING)."""
        runs = self.client.search_runs([self.experiment_id], max_results=50000, filter_string=(
            f"attributes.status = '{status}' and tags.`{PARENT_TAG}` = 'trial'"))
        return {r.info.run_id: r.data.tags for r in runs}

    def generator_trainers(self) -> dict[str, list[str]]:
        """Generator key (tag ``gan.key``) -> the trial runs that trained it (tag ``gan.cache`` miss),
        whatever their status: FINISHED ones first, then by start time."""
        runs = self.client.search_runs([self.experiment_id], max_results=50000, filter_string=(
            f"tags.`{PARENT_TAG}` = 'trial' and tags.`gan.cache` = 'miss'"))
        out: dict[str, list[str]] = {}
        for r in sorted(runs, key=lambda r: (r.info.status != "FINISHED", r.info.start_time)):
            if r.data.tags.get("gan.key"):
                out.setdefault(r.data.tags["gan.key"], []).append(r.info.run_id)
        return out

    def finished_run_for(self, grid_key: str, base_hash: str) -> Any | None:
        """The latest FINISHED trial run of one grid point of this study's base config, if any."""
        runs = self.client.search_runs([self.experiment_id], max_results=100, filter_string=(
            f"attributes.status = 'FINISHED' and tags.`{PARENT_TAG}` = 'trial' and "
            f"tags.`ganft.base_hash` = '{base_hash}'"), order_by=["attributes.start_time DESC"])
        return next((r for r in runs if r.data.tags.get("ganft.grid_key") == grid_key), None)

    def running_runs(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                       max_results=10000)

    def runs_frame(self, role: str = "trial") -> pd.DataFrame:
        """All runs of the experiment with ``ganft.role == role`` as one DataFrame row each:
        run_id, run_name, status, start/end times and ``params.*``, ``metrics.*``, ``tags.*``
        columns. Params come back as strings (MLflow stores them so); the report casts them."""
        rows, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.`{PARENT_TAG}` = '{role}'",
                                           max_results=1000, page_token=token)
            for r in page:
                row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                       "start_time": r.info.start_time, "end_time": r.info.end_time}
                row.update({f"params.{k}": v for k, v in r.data.params.items()})
                row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
                row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
                rows.append(row)
            token = page.token
            if not token:
                return pd.DataFrame(rows)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


def experiment_names(uri: str) -> list[str]:
    """The experiments (studies) in a store, sorted."""
    from mlflow import MlflowClient

    _quiet()
    return sorted(e.name for e in MlflowClient(tracking_uri=uri).search_experiments() if e.name != "Default")


def _tag_experiment(client: Any, experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag unless it holds ``value`` already. Two machines preparing one study at
    once can both find it unset: the server then refuses the second insert (a unique-key violation),
    which is fine when the tag it finds afterwards is the value wanted."""
    from mlflow.exceptions import MlflowException

    if client.get_experiment(experiment_id).tags.get(key) == value:
        return
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        if client.get_experiment(experiment_id).tags.get(key) != value:
            raise


def _create_experiment(client: Any, name: str, location: str | None) -> str:
    """Create an experiment; if another worker or machine created it a moment earlier, use theirs."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------- shared checkpoints

CACHE_EXPERIMENT = "ganft-cache"  # one experiment for all studies: entries are content-addressed


@dataclass(frozen=True)
class RemoteEntry:
    """One MLflow run holding (or about to hold) a checkpoint file."""

    run_id: str
    status: str  # RUNNING: claimed, its owner is producing it; FINISHED: published; KILLED/FAILED: given up
    start_time: int
    beat: str  # the owner's heartbeat counter; a value that stops changing means the owner is gone
    sha256: str  # of the published file ("" until published)


class MlflowCheckpointStore:
    """Checkpoint files shared through a tracking server's artifact store, so that a GAN trained on
    one machine is reused on another (study.shared_cache.SharedStore over it is the cache's sync when
    the tracking URI is remote).

    Each entry is one run in experiment ``ganft-cache`` named ``<kind>/<key>``, tagged with the key;
    the file is its artifact ``checkpoint/<key>.pt``. A run is created RUNNING when a worker claims
    the key (others then wait instead of training the same GAN), and ends FINISHED only after the
    file is uploaded with its sha256 as a tag: an upload cut short is never FINISHED, never used.
    """

    def __init__(self, uri: str, kind: str) -> None:
        from mlflow import MlflowClient

        _quiet()
        self.uri, self.kind = uri, kind
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(CACHE_EXPERIMENT)
        self.experiment_id = (exp.experiment_id if exp
                              else _create_experiment(self.client, CACHE_EXPERIMENT, None))

    def entries(self, key: str) -> list[RemoteEntry]:
        runs = self.client.search_runs([self.experiment_id], max_results=1000, filter_string=(
            f"tags.`ganft.cache_key` = '{key}' and tags.`ganft.cache_kind` = '{self.kind}'"))
        return sorted((RemoteEntry(r.info.run_id, r.info.status, r.info.start_time,
                                   r.data.tags.get("ganft.beat", ""), r.data.tags.get("ganft.sha256", ""))
                        for r in runs), key=lambda e: (e.start_time, e.run_id))

    def claim(self, key: str, owner: dict[str, Any]) -> str:
        tags = {"ganft.cache_key": key, "ganft.cache_kind": self.kind, "ganft.beat": "0",
                **{f"ganft.{k}": str(v) for k, v in owner.items()}}
        run = self.client.create_run(self.experiment_id, run_name=f"{self.kind}/{key}", tags=tags)
        return run.info.run_id

    def running_claims(self) -> list[tuple[str, dict[str, str]]]:
        """(run id, tags) of every claim still RUNNING, of any kind."""
        runs = self.client.search_runs([self.experiment_id], max_results=10000,
                                       filter_string="attributes.status = 'RUNNING'")
        return [(r.info.run_id, r.data.tags) for r in runs]

    def beat(self, run_id: str, count: int) -> None:
        self.client.set_tag(run_id, "ganft.beat", str(count))

    def publish(self, run_id: str, path: Path, sha256: str) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path="checkpoint")
        self.client.set_tag(run_id, "ganft.sha256", sha256)
        self.client.set_terminated(run_id, "FINISHED")  # last: FINISHED means the upload is whole

    def abandon(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, "ganft.failure", reason)
        self.client.set_terminated(run_id, "KILLED")

    def fetch(self, entry: RemoteEntry, key: str, dst: Path) -> Path:
        return Path(self.client.download_artifacts(entry.run_id, f"checkpoint/{key}.pt", str(dst)))


def create_sqlite_store(path: Path) -> None:
    """A new SQLite tracking store is migrated to MLflow's schema under a temporary name beside it
    and then renamed into place, so a process killed during the migration (which takes seconds and
    many statements) leaves no half-migrated store that every later run would refuse. An existing,
    non-empty store is left as it is; leftovers of killed creations are removed."""
    from mlflow import MlflowClient

    for old in path.parent.glob(f".{path.name}.new-*"):
        pid = old.name.split(".new-", 1)[1].split("-")[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            old.unlink(missing_ok=True)
    if path.is_file() and path.stat().st_size:
        return
    # a name of its own per attempt: MLflow keeps one store object per URI for the process's life
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # the migration
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def sqlite_path(uri: str) -> str | None:
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None


def _is_local(uri: str) -> bool:
    return uri.startswith("sqlite:") or "://" not in uri


LOOPBACK = ("127.0.0.1", "localhost", "::1")


VIEW_KEY = "ganft"  # the shared view ganft ui opens: experiment tag mlflow.sharedViewState.ganft
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def runs_view(client: Any, experiment_id: str) -> dict[str, Any]:
    """The MLflow UI view of a study that a newcomer should land on: every trial run in one flat
    table (a sort key other than the start time makes MLflow list child runs unfolded), in grid
    order by run name, with ``test/acc`` and the settings that vary between trials as columns."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = 'trial'",
                              max_results=5000)
    values: dict[str, set[str]] = {}
    for r in runs:
        for k, v in r.data.params.items():
            values.setdefault(k, set()).add(v)
    varying = sorted(k for k, v in values.items() if len(v) > 1 or any(k not in r.data.params for r in runs))
    return {"orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,
            "selectedColumns": ["metrics.`test/acc`", *(f"params.`{k}`" for k in varying)]}


def ui_address(uri: str, study: str | None) -> tuple[str, str]:
    """(experiment id, study name) of ``study``, or of the study whose latest run is newest; its
    shared runs view (``runs_view``) is written to the experiment's tag VIEW_TAG on the way.
    LookupError when there is no such study."""
    import json

    from mlflow import MlflowClient

    _quiet()
    client = MlflowClient(tracking_uri=uri)
    exps = [e for e in client.search_experiments() if e.name not in ("Default", CACHE_EXPERIMENT)]
    if study is not None:
        exps = [e for e in exps if e.name == study]
    if not exps:
        where = redact(uri)
        raise LookupError(f"no study {study!r} in {where}" if study else f"no study in {where} yet")
    newest = client.search_runs([e.experiment_id for e in exps], order_by=["attributes.start_time DESC"],
                                max_results=1)
    exp = next((e for e in exps if newest and e.experiment_id == newest[0].info.experiment_id), exps[0])
    _tag_experiment(client, exp.experiment_id, VIEW_TAG, json.dumps(runs_view(client, exp.experiment_id)))
    return exp.experiment_id, exp.name


def ui_workers(cpus: int | None = None) -> int:
    """Server processes for ``ganft ui``: one per 4 CPUs, 1 to 4 (MLflow starts 4, which on a
    2-core machine took a minute to answer); one person browsing needs few."""
    return max(1, min(4, (cpus or os.cpu_count() or 1) // 4))


def serve_ui(tracking_uri: str | None, host: str, port: int, study: str | None = None,
             wait_s: float = 300.0) -> int:
    """``ganft ui``: the MLflow UI (``mlflow ui``) on the store, in a process group of its own that
    is stopped whole (the server and its workers) on Ctrl-C or SIGTERM. The address it prints (once
    the server answers) opens ``study``'s runs table (or the newest study's) in the model-training
    view, child runs listed, ``test/acc`` and the varying settings as columns."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from ganft.paths import project_root

    uri = tracking_uri or default_tracking_uri(project_root())
    if host not in LOOPBACK:
        print(f"ganft ui: warning: --host {host} exposes the MLflow UI to the network, and it has no "
              f"authentication: anyone who reaches port {port} can read, change and delete every run. "
              f"Keep it on 127.0.0.1 and reach it through an SSH tunnel (ssh -L {port}:127.0.0.1:{port} "
              f"HOST), or put it behind a reverse proxy that authenticates (or mlflow server "
              f"--app-name basic-auth).", file=sys.stderr, flush=True)
    try:
        experiment_id, name = ui_address(uri, study)
        page = (f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                f"&viewStateShareKey={VIEW_KEY}")
    except LookupError as exc:
        if study is not None:
            raise StudyError(f"ganft ui: {exc}; `ganft ui` without a study opens the newest one") from None
        print(f"ganft ui: {exc}; the UI opens on its experiment list", file=sys.stderr, flush=True)
        name, page = "", ""
    workers = ui_workers()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", str(workers)]
    # its own group: one signal stops it all; its output goes to stderr, so stdout is the address alone
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=sys.stderr)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        deadline = time.monotonic() + wait_s
        while proc.poll() is None:  # the address is printed once it answers, not before
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    print(f"ganft ui: the MLflow server did not answer on {base} within {wait_s:.0f} s",
                          file=sys.stderr, flush=True)
                    return _stop_group(proc) or 1
                time.sleep(0.3)
        else:
            return proc.returncode
        what = f"study {name}'s runs" if name else "the experiments"
        print(f"MLflow UI for {redact(uri)}, {workers} server worker{'s' if workers > 1 else ''}; "
              f"{what}: {base}/{page} (Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return _stop_group(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_group(proc: Any, grace_s: float = 10.0) -> int:
    import os
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    return 0
