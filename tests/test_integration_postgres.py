"""Scale-out as the README sets it up: a real PostgreSQL server (Optuna's RDB storage, and the
MLflow server's backend store) and a real `mlflow server` with its own artifact store, both on
loopback; two `ganft study run` invocations with separate project roots stand for two machines.

PostgreSQL comes from Debian's `postgresql` package (.ci/run installs it); without its server
binaries the test skips and says so.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # several processes, a minute or more each
PASSWORD = "pg-s3cret-5d1f"  # must never show up in any log, param, tag or attribute
POINTS = {f"n{n}-r{r}-s0" for n in (30, 60) for r in (0.0, 1.0, 2.0)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):  # Debian layout
        if (bindir / "initdb").is_file():
            return bindir
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """initdb and postgres refuse to run as root: run them as the `postgres` system user then."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with user `ganft` (password auth over TCP) and
    databases `optuna` and `mlflow`."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        pytest.skip("running as root without runuser or a postgres user: PostgreSQL refuses to run as root")
    root = Path(tempfile.mkdtemp(prefix="ganft-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
    _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                  "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {root} -F", "start"])
    try:
        sql = [f"CREATE USER ganft PASSWORD '{PASSWORD}'", "CREATE DATABASE optuna OWNER ganft",
               "CREATE DATABASE mlflow OWNER ganft"]
        _as_postgres([str(bindir / "psql"), "-h", str(root), "-p", str(port), "-U", "postgres",
                      "-v", "ON_ERROR_STOP=1", *[a for q in sql for a in ("-c", q)]])
        base = f"postgresql+psycopg2://ganft:{PASSWORD}@127.0.0.1:{port}"
        dump = [str(bindir / "pg_dump"), "-h", str(root), "-p", str(port), "-U", "postgres", "--data-only"]
        yield {"optuna": f"{base}/optuna", "mlflow": f"{base}/mlflow",
               "dump": lambda db: _as_postgres([*dump, db]).stdout}
    finally:
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on loopback: backend store in PostgreSQL, artifacts in its own folder, served
    to clients through the server (mlflow-artifacts:/)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", postgres["mlflow"], "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"], stdout=log, stderr=log, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _machine(home: Path, study_text: str, postgres: dict[str, str], server: str) -> subprocess.Popen:
    """`ganft study run` on one "machine": its own project root (so its own local GAN cache)."""
    home.mkdir(parents=True, exist_ok=True)
    study = home / "study.yaml"
    study.write_text(study_text)
    cmd = [sys.executable, "-m", "ganft.cli", "study", "run", str(study), "--no-progress",
           "--storage", postgres["optuna"], "--tracking-uri", server, "--heartbeat", "2"]
    env = {**os.environ, "GANFT_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    return out


def test_two_machines_share_one_study_on_postgres_and_an_mlflow_server(
        postgres: dict[str, str], mlflow_server: str, tiny_study: Path, tmp_path: Path) -> None:
    tiny = tiny_study.read_text()
    machines = [_machine(tmp_path / m, tiny, postgres, mlflow_server) for m in "ab"]  # at once
    logs = [_finish(m) for m in machines]

    study = optuna.load_study(study_name="tiny", storage=postgres["optuna"])
    done = Counter(t.user_attrs["ganft.grid_point"] for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE)
    assert done == Counter({p: 1 for p in POINTS})
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tiny")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # served by the tracking server
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags["ganft.role"] == "trial"]
    assert Counter(r.info.run_name for r in children if r.info.status == "FINISHED") == Counter(
        {p: 1 for p in POINTS})
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"confusion_matrix.png"}
    # one GAN per (N, seed) for both machines together: trained once, then reused
    assert sorted(r.data.tags["gan.cache"] for r in children if "gan.cache" in r.data.tags) == [
        "hit", "hit", "miss", "miss"]
    cache = client.search_runs([client.get_experiment_by_name("ganft-cache").experiment_id])
    published = [r for r in cache if r.info.status == "FINISHED"]
    assert len(published) == 2 and all(r.data.tags["ganft.sha256"] for r in published)

    # a third machine with an empty local cache runs another study with the same GANs: it trains none
    other = tiny.replace("name: tiny", "name: tiny_r3").replace("synth.ratio: [0, 1, 2]", "synth.ratio: [3]")
    logs.append(_finish(_machine(tmp_path / "c", other, postgres, mlflow_server)))
    assert "2 of 2 grid points complete, 0 failed; this run: 2 trials, 0 generators trained" in logs[-1]
    exp3 = client.get_experiment_by_name("tiny_r3")
    assert sorted(r.data.tags["gan.cache"] for r in client.search_runs([exp3.experiment_id])
                  if r.data.tags["ganft.role"] == "trial") == ["hit", "hit"]
    assert sorted(p.name for p in (tmp_path / "c" / ".ganft-cache" / "gan").glob("*.pt")) == sorted(
        f"{r.data.tags['ganft.cache_key']}.pt" for r in published)

    running = [r.info.run_name for e in client.search_experiments()
               for r in client.search_runs([e.experiment_id], "attributes.status = 'RUNNING'")]
    assert not running  # trials, parents and cache claims all ended

    # the password is in the URLs the workers were given, and nowhere they wrote
    assert all(PASSWORD not in log for log in logs)
    optuna_db, mlflow_db = postgres["dump"]("optuna"), postgres["dump"]("mlflow")  # every table
    assert "ganft:***@127.0.0.1" in mlflow_db  # the storage is recorded (parent and trial tags), redacted
    assert "n60-r2.0-s0" in optuna_db  # the dump holds the trials
    assert PASSWORD not in optuna_db and PASSWORD not in mlflow_db
