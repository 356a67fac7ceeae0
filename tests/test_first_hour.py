"""The first hour of a new user (issue 13): names everywhere, --version, read-only commands that
write nothing, the MLflow UI on the runs table and stopped whole, reports that read right."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import psutil
import pytest
import torch
from mlflow import MlflowClient
from test_report import frame
from test_report_browser import FLAGS, chrome_paths  # noqa: F401 (a fixture)

from ganft.cli import main
from ganft.report.stats import class_cells
from ganft.report.text import ReportMeta
from ganft.report.write import write_report
from ganft.study.storage import open_storage
from ganft.tracker import sample_grid_image

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ONE_POINT = """\
name: one
base:
  data: {dataset: digits, train_size: 30}
  gan: {steps: 6, width: 8, z_dim: 8, batch_size: 16}
  classifier: {steps: 6, width: 8, eval_every: 3, batch_size: 16}
grid:
  synth.ratio: [0, 1]
"""


@pytest.fixture
def studies(home: Path) -> Path:
    (home / "studies").mkdir()
    (home / "studies" / "one.yaml").write_text(ONE_POINT)
    return home


def test_a_study_name_works_everywhere_and_says_which_file(studies: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        assert main(["study", "run", "one", "--no-progress"]) == 0
    assert f"study one: {studies / 'studies' / 'one.yaml'}" in caplog.text
    assert main(["study", "status", "one"]) == 0
    assert main(["report", "one"]) == 0 and (studies / "reports" / "one" / "index.html").is_file()
    md = (studies / "reports" / "one" / "index.md").read_text()
    assert "## What the generator made" in md and "(samples_n30.png)" in md  # one grid per N
    assert (studies / "reports" / "one" / "samples_n30.png").stat().st_size > 1000
    assert main(["study", "run", str(studies / "studies" / "one.yaml"), "--no-progress"]) == 0  # a path too


def test_version_and_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"ganft {version('ganft')}"
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    assert "port to serve on" in capsys.readouterr().out


def test_read_only_commands_create_no_store_and_list_the_studies_that_exist(
        studies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "nosuchstudy"]) == 2
    err = capsys.readouterr().err
    assert "there is no studies/nosuchstudy.yaml either" in err and "study files: one" in err
    assert "studies/nosuchstudy.yaml`" not in err  # never a command that cannot work
    assert main(["study", "status", "nosuchstudy"]) == 2
    assert "one of: one" in capsys.readouterr().err
    assert main(["study", "status", "one"]) == 1
    assert "not started" in capsys.readouterr().out
    assert sorted(p.name for p in studies.iterdir()) == ["studies"]  # no mlflow.db, no journal


def test_experiments_open_on_the_runs_table_and_the_objective_has_a_name(studies: Path) -> None:
    assert main(["study", "run", "one", "--no-progress"]) == 0
    exp = MlflowClient(f"sqlite:///{studies / 'mlflow.db'}").get_experiment_by_name("one")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    st = optuna.load_study(study_name="one", storage=open_storage(str(studies / "optuna-journal.log")))
    assert st.metric_names == ["budget validation accuracy"]
    client = MlflowClient(f"sqlite:///{studies / 'mlflow.db'}")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`ganft.grid_point` = 'r1.0'")[0]
    assert int(run.data.tags["ganft.threads"]) >= 1
    grid = Path(client.download_artifacts(run.info.run_id, "gan_samples.png", str(studies)))
    from PIL import Image

    assert Image.open(grid).width >= 256


def test_sample_grid_is_upscaled_and_labelled() -> None:
    images = torch.rand(20, 1, 8, 8) * 2 - 1
    plain = sample_grid_image(images, nrow=2)
    labelled = sample_grid_image(images, nrow=2, row_labels=[f"class {i}" for i in range(10)])
    assert plain.width >= 256 and labelled.width > plain.width and labelled.height == plain.height
    pixels = np.asarray(plain)
    assert (pixels[::2, ::2] == pixels[1::2, 1::2]).mean() > 0.9  # nearest neighbour: blocks


def test_per_class_rows_with_fewer_than_3_pairs_show_no_interval_and_classes_are_listed_once(
        tmp_path: Path) -> None:
    df = frame({(100, 1.0): 0.0, (100, 4.0): 0.0}, seeds=(0, 1), noise=0.3)
    rng = np.random.default_rng(0)
    for k in range(3):
        df[f"test/acc_class_{k}"] = np.clip(df["test/acc"] + rng.normal(0, 0.3, len(df)), 0, 1)
    classes = class_cells(df, {0: "cat", 1: "dog", 2: "bird"})
    assert classes["ci_low"].isna().all() and (classes["note"] == "2 pairs: no CI (needs 3)").all()
    write_report(df, tmp_path, ReportMeta("few"))
    md = (tmp_path / "index.md").read_text()
    section = md[md.index("## Classes that gain"):md.index("## Generator quality")]
    gains = [line for line in section.splitlines() if line.startswith("| gains most")]
    assert len({line.split("|")[2].strip() for line in gains}) == len(gains)  # a class once
    assert gains and all("2 pairs: no CI (needs 3)" in line for line in gains)  # no interval, and why


def test_report_numbers_read_one_way(tmp_path: Path) -> None:
    df = frame({(5000, 1.0): 0.0, (100, 1.0): 0.0004}, noise=0.0)
    write_report(df, tmp_path, ReportMeta("numbers"))
    md = (tmp_path / "index.md").read_text()
    assert "| 5,000 |" in md and "| 5000 |" not in md
    assert not re.search(r"(?<![\d.])-0\.0+(?![\d])", md)  # never "-0.0"
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert (cells["data.train_size"] == [100, 5000]).all()  # the CSV keeps plain numbers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@pytest.mark.slow  # starts the MLflow server: over 10 s
def test_ganft_ui_stops_its_whole_process_group_on_sigterm(studies: Path) -> None:
    port = _free_port()
    env = {**os.environ, "GANFT_HOME": str(studies), "MLFLOW_DISABLE_TELEMETRY": "true"}
    ui = subprocess.Popen([sys.executable, "-m", "ganft.cli", "ui", "--port", str(port)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health")
        family = psutil.Process(ui.pid).children(recursive=True)
        assert family  # mlflow's server and its workers
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if ui.poll() is None:
            ui.kill()


@pytest.mark.slow  # a study, the MLflow server and a browser
def test_the_address_ganft_ui_prints_opens_the_runs_table_with_child_runs_and_test_acc(
        studies: Path, chrome_paths) -> None:  # noqa: F811
    """What a newcomer sees (issue 25): the address `ganft ui` prints, opened in a fresh browser
    profile, is the study's runs table in the model-training view, every trial run listed (not folded
    under its parent) with test/acc and the grid's settings as columns. It is printed once the server
    answers, not before."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (studies / "studies" / "one.yaml").write_text(ONE_POINT + "  seed: [0, 1]\n")
    assert main(["study", "run", "one", "--no-progress"]) == 0
    port = _free_port()
    env = {**os.environ, "GANFT_HOME": str(studies), "MLFLOW_DISABLE_TELEMETRY": "true"}
    ui = subprocess.Popen([sys.executable, "-m", "ganft.cli", "ui", "--port", str(port)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          start_new_session=True)
    browser, driver_path = chrome_paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*FLAGS, f"--user-data-dir={studies / 'profile'}", "--window-size=1400,900"]:
        options.add_argument(flag)
    drv = None
    try:
        line = ui.stdout.readline()  # blocks until ganft ui prints its address
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()  # answering already
        url = re.search(r"http://\S+", line).group(0)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "study one's runs" in line, line
        drv = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        drv.set_page_load_timeout(90)
        drv.get(url)
        try:
            WebDriverWait(drv, 90).until(lambda d: "r1.0-s1" in d.find_element(By.TAG_NAME, "body").text)
            time.sleep(2)
        finally:  # the screenshot is the evidence either way
            text = drv.find_element(By.TAG_NAME, "body").text
            ARTIFACTS.mkdir(exist_ok=True)
            drv.save_screenshot(str(ARTIFACTS / "mlflow_ui_runs.png"))
            headers = [h.text for h in drv.find_elements(By.XPATH, "//*[@role='columnheader']")]
    finally:
        if drv is not None:
            drv.quit()
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)
    for run in ("r0.0-s0", "r0.0-s1", "r1.0-s0", "r1.0-s1"):  # every trial, none folded away
        assert run in text, text[:2000]
    assert "test/acc" in headers and "synth.ratio" in headers and "seed" in headers, headers
    # the model-training view's navigation (runs, models, registry), not the GenAI one (overview,
    # sessions, evaluation runs) that MLflow 3 opened the experiment on before
    assert "Model registry" in text and "Evaluation runs" not in text and "Sessions" not in text, text[:2000]
