"""What a hostile tester broke (issue 23), kept as tests: each fails on the code before its fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ganft import redact as redact_mod
from ganft.cli import main
from ganft.redact import redact, remember


@pytest.fixture
def forget() -> None:
    """Each test starts with no remembered secret (the registry is per process)."""
    saved = set(redact_mod._KNOWN)
    redact_mod._KNOWN.clear()
    yield
    redact_mod._KNOWN.clear()
    redact_mod._KNOWN.update(saved)


# --------------------------------------------------------------------------- 1. secrets


@pytest.mark.parametrize("url", ["postgresql+psycopg2://user:Hunt3r-2@/db?host=/run/postgresql",
                                 "postgresql://user:Hunt3r-2@/db"])
def test_a_socket_url_with_an_empty_host_is_redacted(url: str, forget: None) -> None:
    out = redact(f"storage {url} unreachable")
    assert "Hunt3r-2" not in out and "user:***@" in out


@pytest.mark.parametrize(("typed", "driver_says"), [
    # an unencoded "@" then ":": the driver reads part of the password as the host
    ("postgresql://u:p@ss:w0rdX@db/optuna", 'could not translate host name "ss:w0rdX@db" to address'),
    ("postgresql://u:my secret pw@db/optuna", 'invalid dsn: "u:my secret pw" near "secret"'),
    ("https://u:T0k%40en@mlflow:5000", "401 for T0k@en"),  # the decoded form
])
def test_a_password_a_driver_quotes_out_of_its_uri_is_redacted(typed: str, driver_says: str,
                                                              forget: None) -> None:
    secret = typed.split("://", 1)[1].rpartition("@")[0].partition(":")[2]
    remember(typed)
    out = redact(driver_says)
    assert "w0rdX" not in out and "secret pw" not in out and "T0k" not in out, out
    assert redact(typed).count(secret) == 0


def test_environment_secrets_are_remembered(monkeypatch: pytest.MonkeyPatch, forget: None) -> None:
    monkeypatch.setenv("PGPASSWORD", "s0cket-pass")
    redact_mod.remember_environment()
    assert redact('FATAL: password "s0cket-pass" rejected') == 'FATAL: password "***" rejected'


def test_a_socket_storage_password_reaches_no_output(home: Path, tiny_study: Path, forget: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg2")
    url = "postgresql+psycopg2://ganft:Sock3t-pw@/optuna?host=/nonexistent-socket-dir"
    assert main(["study", "run", str(tiny_study), "--storage", url, "--no-progress"]) == 2
    out = capsys.readouterr()
    assert "Sock3t-pw" not in out.out + out.err and "***" in out.err
    assert not (home / "mlflow.db").exists()


# --------------------------------------------------------------------------- 3. script in the report


def test_user_text_cannot_put_a_script_link_or_raw_html_into_the_report(tmp_path: Path) -> None:
    from test_report import frame

    from ganft.report.text import ReportMeta
    from ganft.report.write import write_report

    evil = {0: "[click](javascript:alert(1))", 1: "<img src=x onerror=alert(2)>", 2: "ok"}
    meta = ReportMeta(study="s", command="ganft study run [x](javascript:alert(3))",
                      machine="<script>alert(4)</script>", class_names=evil)
    write_report(frame({(100, 1.0): 0.0}), tmp_path, meta)
    page, md = (tmp_path / "index.html").read_text(), (tmp_path / "index.md").read_text()
    assert "javascript:" not in "".join(re.findall(r'href="([^"]*)"', page))
    assert "<img src=x" not in page and "<script>" not in page  # escaped in the HTML...
    assert "<img src=x" not in md and "<script>" not in md  # ...and shown as text in the markdown
    assert "](javascript:" not in md and "click (javascript:alert(1)" in md
    assert '<a href="results.csv">results.csv</a>' in page and "[results.csv](results.csv)" in md  # ours stay


# --------------------------------------------------------------------------- 4. user images


def _png(path: Path, width: int, declared: int, rows: int) -> Path:
    """A grey PNG whose header declares ``declared`` rows and whose data holds ``rows`` of them."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = b"".join(b"\x00" + bytes([40 * (i % 5)] * width) for i in range(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">IIBBBBB", width, declared, 8, 0, 0, 0, 0)  # 8-bit grey, not interlaced
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(data))
                     + chunk(b"IEND", b""))
    return path


def _folder(root: Path) -> None:
    for c in ("cat", "dog"):
        for i in range(10):
            _png(root / c / f"{i}.png", 8, 8, 8)


@pytest.mark.parametrize(("make", "why"), [
    (lambda root: _png(root / "dog" / "short.png", 32, 64, 8),
     "its image data holds fewer rows than its header"),
    (lambda root: _png(root / "dog" / "bomb.png", 20000, 20000, 1), "more than the 40,000,000 pixels"),
])
def test_a_broken_or_huge_image_is_one_line_naming_it_and_can_be_skipped(
        make, why: str, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "imgs"
    _folder(root)
    bad = make(root)
    study = home / "s.yaml"
    study.write_text(f"name: s\nbase:\n  data: {{dataset: imagefolder, root: '{root}', image_size: 8, "
                     f"train_size: 10}}\n")
    assert main(["data", "check", str(study)]) == 2  # not a segmentation fault (exit 139)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and why in err[0]
    study.write_text(study.read_text().replace("train_size: 10}", "train_size: 10, skip_unreadable: true}"))
    assert main(["data", "check", str(study)]) == 0


def test_a_class_named_like_math_text_draws_its_figures() -> None:
    import io

    import numpy as np

    from ganft.evaluate import confusion_figure

    fig = confusion_figure(np.eye(2, dtype=int), ("$x^$", "ok"))
    fig.savefig(io.BytesIO(), format="png")  # matplotlib's math-text parser raised here
    assert "$x^$" in [t.get_text().replace("\\$", "$") for t in fig.axes[0].get_xticklabels()]


# --------------------------------------------------------------------------- 5. store creation


def test_a_store_creation_cut_short_leaves_no_half_migrated_store(
        home: Path, tiny_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from ganft.study import mlflow_store

    real = mlflow.MlflowClient.search_experiments

    def killed(self, *a, **k):  # the process dies in the middle of the schema migration
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.MlflowClient, "search_experiments", killed)
    with pytest.raises(KeyboardInterrupt):
        mlflow_store.create_sqlite_store(home / "mlflow.db")
    assert not (home / "mlflow.db").exists()  # nothing at the store's own name
    monkeypatch.setattr(mlflow.MlflowClient, "search_experiments", real)
    assert main(["study", "status", str(tiny_study)]) in (0, 1)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0  # the next run just works
    assert not list(home.glob(".mlflow.db.new-*"))  # the leftover was cleared


def test_a_half_migrated_store_is_one_sentence_that_says_what_to_run(
        home: Path, tiny_study: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    def refused(self, *a, **k):  # what MLflow says of a store whose migration stopped part of the way
        raise MlflowException("Detected out-of-date database schema (found version 451aebb31d03, but "
                              "expected 1b5f0d9ad7c1). Take a backup of your database, then run 'mlflow db "
                              "upgrade <database_uri>' to migrate your database to the latest schema.")

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", refused)
    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has a schema this MLflow cannot use" in err[0] and "move it aside" in err[0]


# --------------------------------------------------------------------------- 6. signals

SLOW_STUDY = """\
name: slow
base:
  data: {dataset: digits, train_size: 100}
  gan: {steps: 600, width: 16, z_dim: 16}
  classifier: {steps: 3000, width: 16, eval_every: 100}
grid:
  synth.ratio: [0, 1]
  seed: [0, 1]
"""  # a trial lasts long enough (several seconds even on an idle machine) that the one a test sees
# RUNNING is still running when its signal arrives (at 600 steps a loaded CI machine once saw the
# real-only trial finish in between, and its run end FINISHED, not KILLED)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_a_run_as_ctrl_c_does(workers: int, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna
    import psutil
    from mlflow import MlflowClient

    from ganft.study.storage import open_storage

    study = tmp_path / "slow.yaml"
    study.write_text(SLOW_STUDY)
    env = {**os.environ, "GANFT_HOME": str(tmp_path), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "ganft.cli", "study", "run", str(study), "--no-progress",
           "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def running() -> list:
        exp = client.get_experiment_by_name("slow") if (tmp_path / "mlflow.db").exists() else None
        return [] if exp is None else client.search_runs(
            [exp.experiment_id], "attributes.status = 'RUNNING' and tags.`ganft.role` = 'trial'")

    def training() -> bool:
        """A trial run is RUNNING and has logged a training loss: it is mid-training. Read with
        plain SQLite, a few ms a poll (an MlflowClient's first query takes seconds, long enough for
        a trial to finish before the signal is sent)."""
        import sqlite3

        db = tmp_path / "mlflow.db"
        if not db.exists():
            return False
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                return bool(conn.execute(
                    "SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid JOIN metrics m ON "
                    "m.run_uuid = r.run_uuid WHERE r.status = 'RUNNING' AND t.key = 'ganft.role' AND "
                    "t.value = 'trial' AND m.key = 'clf/loss' LIMIT 1").fetchone())
        except sqlite3.Error:  # the store is being created
            return False

    deadline = time.monotonic() + 120
    while not training() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert training(), "no trial started training"
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted; rerun the same command" in err
    time.sleep(1)
    left = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, (left, err[-2000:])
    assert not running(), ([r.info.run_name for r in running()], err[-2000:])  # the interrupted: KILLED
    killed = client.search_runs([client.get_experiment_by_name("slow").experiment_id],
                                "attributes.status = 'KILLED'")
    every = client.search_runs([client.get_experiment_by_name("slow").experiment_id], "")
    seen = [(r.data.tags.get("ganft.role"), r.info.status, r.data.tags.get("ganft.failure")) for r in every]
    assert {r.data.tags.get("ganft.role") for r in killed} == {"parent", "trial"}, (seen, err[-3000:])
    assert all(r.data.tags.get("ganft.failure") == "interrupted" for r in killed
               if r.data.tags.get("ganft.role") == "trial")
    st = optuna.load_study(study_name="slow", storage=open_storage(str(tmp_path / "optuna-journal.log")))
    failed = [t for t in st.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all("interrupted" in t.user_attrs.get("ganft.interrupted", "") for t in failed), \
        ([(t.number, t.user_attrs) for t in failed], err[-2000:])
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0  # it continues


# --------------------------------------------------------------------------- 8. a sentence, not a traceback


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, "{a: " * 2_000 + "1" + "}" * 2_000])
def test_a_deeply_nested_study_file_is_one_line_and_exit_2(value: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GANFT_HOME", str(tmp_path))
    (tmp_path / "deep.yaml").write_text(f"name: deep\nbase: {value}\n")
    assert main(["study", "run", str(tmp_path / "deep.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 2: values nested more than 32 levels deep" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.yaml"]  # no store written


def test_disk_full_is_recognised_however_a_library_wraps_it() -> None:
    import errno
    import sqlite3

    from ganft.study.storage import disk_full

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("(sqlite3.OperationalError) ...") from inner  # as MLflow wraps it
    except RuntimeError as outer:
        assert disk_full(outer)
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied")) and not disk_full(ValueError("x"))


@pytest.mark.slow  # a real full disk: a small tmpfs filled while a trial runs (root only)
def test_a_disk_that_fills_mid_trial_is_one_line_and_the_rerun_completes(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300M", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        home = small / "home"
        home.mkdir()
        (home / "slow.yaml").write_text(SLOW_STUDY)
        env = {**os.environ, "GANFT_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
        cmd = [sys.executable, "-m", "ganft.cli", "study", "run", str(home / "slow.yaml"), "--no-progress"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")

        def runs(status: str) -> list:
            exp = client.get_experiment_by_name("slow") if (home / "mlflow.db").exists() else None
            return [] if exp is None else client.search_runs(
                [exp.experiment_id], f"attributes.status = '{status}' and tags.`ganft.role` = 'trial'")

        deadline = time.monotonic() + 120
        while not runs("RUNNING") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert runs("RUNNING"), "no trial started"
        subprocess.run(["dd", "if=/dev/zero", f"of={small / 'filler'}", "bs=1M"], capture_output=True)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-3000:]
        assert "Traceback" not in err and len(err.splitlines()) <= 8, err[-3000:]
        assert "ganft: error: the disk is full" in err and "rerun the same command" in err
        (small / "filler").unlink()
        assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
        names = [r.info.run_name for r in runs("FINISHED")]
        assert sorted(names) == sorted(set(names)) and len(names) == 4  # one FINISHED run per point
        assert not runs("RUNNING")
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# --------------------------------------------------------------------------- 9. provenance


def test_every_run_records_which_ganft_made_it(home: Path, tiny_study: Path) -> None:
    from mlflow import MlflowClient

    import ganft

    assert main(["study", "run", str(tiny_study), "--no-progress"]) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.data.tags.get("ganft.role") for r in runs} == {"parent", "trial"}
    assert all(r.data.tags.get("ganft.version") == ganft.__version__ for r in runs)
    if (Path(ganft.__file__).resolve().parents[1] / ".git").exists():  # a checkout: its commit too
        assert all(len(r.data.tags.get("ganft.commit", "").split("+")[0]) == 40 for r in runs)


def test_a_huge_study_name_and_a_hopeless_class_are_said_briefly(tmp_path: Path) -> None:
    from ganft.catalog import check_sizes
    from ganft.config import ConfigError, DataConfig
    from ganft.study.schema import check_study_name

    with pytest.raises(ConfigError) as err:
        check_study_name("x/" * 5_000_000)
    assert len(str(err.value)) < 300 and "10,000,000 characters" in str(err.value)
    root = tmp_path / "imgs"  # one training image in a class, and one to train and one to validate
    # per class needed (from-budget): no N works
    for c, n in (("cat", 80), ("dog", 2)):
        for i in range(n):
            _png(root / c / f"{i}.png", 8, 8, 8)
    with pytest.raises(ConfigError) as err:
        check_sizes(DataConfig(dataset="imagefolder", root=str(root), image_size=8, train_size=50,
                               validation="from-budget"))
    msg = str(err.value)
    assert "allowed: none, whatever N" in msg and "'dog' has 1 training images" in msg, msg
    assert "add images to it or remove it" in msg and ".." not in msg.split("allowed")[1]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_ganft_home_that_is_not_a_folder_is_one_line_and_is_not_created(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    home = tmp_path / "typo"
    if kind == "file":
        home.write_text("")
    monkeypatch.setenv("GANFT_HOME", str(home))
    assert main(["study", "status", "quick"]) == 2
    err = capsys.readouterr().err
    assert f"GANFT_HOME {home}: " in err and err.count("\n") == 1, err
    assert ("no such folder; create it" in err) == (kind == "missing")
    assert home.exists() == (kind == "file") and sorted(p.name for p in tmp_path.iterdir()) == (
        ["typo"] if kind == "file" else [])


@pytest.mark.parametrize("flag", ["--storage", "--tracking-uri"])
def test_a_folder_or_a_device_as_a_store_file_is_one_line(
        flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("GANFT_HOME", str(tmp_path))
    (tmp_path / "tiny.yaml").write_text("name: tiny\nbase: {data: {dataset: digits}}\ngrid: {seed: [0]}\n")
    for store in (tmp_path / "a-folder", Path("/dev/full")):
        (tmp_path / "a-folder").mkdir(exist_ok=True)
        value = str(store) if flag == "--storage" else f"sqlite:///{store}"
        for command in (["study", "status"], ["study", "run"]):
            assert main([*command, str(tmp_path / "tiny.yaml"), flag, value]) == 2
            err = capsys.readouterr().err
            kind = "a folder" if store.name == "a-folder" else "not a regular file"
            assert f"{store} is {kind}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "tiny.yaml"]  # nothing written


def test_two_machines_tagging_one_new_experiment_at_once_is_not_an_error() -> None:
    """CI saw two machines prepare one study on an MLflow server at the same moment: both found
    mlflow.experimentKind unset, and the server refused the second insert (UniqueViolation)."""
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from ganft.study.mlflow_store import _tag_experiment

    class Client:
        def __init__(self, other_sets_it: bool) -> None:
            self.tags: dict[str, str] = {}
            self.other_sets_it = other_sets_it

        def get_experiment(self, _id: str) -> SimpleNamespace:
            return SimpleNamespace(tags=dict(self.tags))

        def set_experiment_tag(self, _id: str, key: str, value: str) -> None:
            if self.other_sets_it:
                self.tags[key] = value  # the other machine's insert landed first
            raise MlflowException("duplicate key value violates unique constraint \"experiment_tag_pk\"")

    _tag_experiment(Client(other_sets_it=True), "1", "mlflow.experimentKind", "custom_model_development")
    with pytest.raises(MlflowException):  # a refusal that left the tag unset is still an error
        _tag_experiment(Client(other_sets_it=False), "1", "mlflow.experimentKind", "custom_model_development")
