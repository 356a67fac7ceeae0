"""index.html in a real browser: headless Chromium (Debian packages chromium and chromium-driver)
opens the page from disk, every embedded figure decodes, the answer lines are there, and a
full-page screenshot is kept in test-artifacts/ (git-ignored) for people to look at."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import frame

from ganft.report.stats import paired_cells
from ganft.report.text import ReportMeta
from ganft.report.write import answer_lines, write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def _browser_paths() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def _try_install() -> str:
    """apt-get install the two packages where we can; returns why not, or ''."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"]
    try:
        if subprocess.run(cmd, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                return f"apt-get install failed: {proc.stderr.strip()[-200:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install failed: {exc}"
    return ""


@pytest.fixture(scope="module")
def chrome_paths() -> tuple[str, str]:
    browser, driver = _browser_paths()
    if not (browser and driver):
        why = _try_install()
        browser, driver = _browser_paths()
        if not (browser and driver):
            pytest.skip(f"headless Chromium test skipped: chromium and chromedriver are not installed and "
                        f"could not be installed ({why}); `apt-get install chromium chromium-driver`")
    return browser, driver


@pytest.mark.slow  # starts a browser (a few seconds); runs in CI like every test
def test_index_html_loads_every_image_and_shows_the_answer(tmp_path: Path, chrome_paths) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -e '.[dev]')")
    browser, driver_path = chrome_paths
    df = frame({(100, 1.0): 0.05, (100, 4.0): -0.06, (500, 1.0): 0.0, (500, 4.0): 0.01})
    rng = np.random.default_rng(3)
    for k in range(10):
        df[f"test/acc_class_{k}"] = np.clip(df["test/acc"] + rng.normal(0, 0.03, len(df)), 0, 1)
    df["quality/fcd"] = np.where(df["synth.ratio"] > 0, rng.uniform(5, 15, len(df)), np.nan)
    ceiling = pd.DataFrame({"data.train_size": [55000], "synth.ratio": [0.0], "test/acc": [0.91]})
    meta = ReportMeta("browser", command="ganft report browser", machine="test machine",
                      ceiling_study="browser_ceiling")
    index = write_report(df, tmp_path / "report", meta, ceiling=ceiling)
    expected = answer_lines(df, paired_cells(df), meta)

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]:
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver_path)
    drv = webdriver.Chrome(options=options, service=service)
    try:
        drv.set_page_load_timeout(60)
        drv.get(index.as_uri())
        images = drv.execute_script("return Array.from(document.images).map("
                                    "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        lines = drv.execute_script("return Array.from(document.querySelectorAll('.answer-line'))"
                                   ".map(p => p.textContent);")
        height = drv.execute_script("return document.documentElement.scrollHeight;")
        drv.set_window_size(1200, min(int(height) + 40, 16000))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report_index.png"
        assert drv.save_screenshot(str(shot))
    finally:
        drv.quit()

    assert len(images) >= 4  # accuracy, heatmap, per-class, quality
    broken = [alt for alt, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert [line.replace("`", "") for line in expected] == lines
    assert lines[0].startswith("Best cell: N=100, ratio 1: +") and lines[-1].startswith("Study size: 30")
    assert shot.stat().st_size > 10_000
