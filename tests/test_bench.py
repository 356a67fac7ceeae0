"""Every script in bench/ runs to the end at a tiny scale, so moving a name the benchmarks import
breaks a test here, not the next benchmark run. The figures of these runs mean nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fake_fashion

BENCH = Path(__file__).resolve().parents[1] / "bench"
HELPERS = {"cmdline.py"}  # imported by the scripts, not run on its own
pytestmark = pytest.mark.slow


def run(script: Path, *args: str, home: Path, timeout: int = 600) -> str:
    env = {**os.environ, "GANFT_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                         cwd=home, timeout=timeout)
    assert out.returncode == 0, f"{script.name} {' '.join(args)}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    fake_fashion(root, n_train=1200, n_test=100)  # throughput and settings take a 1,000-image subset
    return root


SMOKE = {  # script -> its tiny arguments ({fashion}, {out} are filled in)
    "baseline.py": ["--sizes", "20", "--seeds", "0", "--steps", "3", "--root", "{fashion}",
                    "--json", "{out}"],
    "folder_load.py": ["--images", "30", "--json", "{out}"],
    "generators.py": ["--rounds", "1", "--steps", "2", "--samples", "20", "--root", "{fashion}",
                      "--json", "{out}"],
    "seed_reference.py": ["--steps", "1", "--root", "{fashion}"],
    "shared_machine.py": ["--gan-steps", "2", "--clf-steps", "2", "--json", "{out}"],
    "quick_profile.py": ["--study", str(BENCH / "smoke.yaml"), "--json", "{out}"],
    "startup.py": ["--runs", "1", "--json", "{out}"],
    "workers.py": ["--study", str(BENCH / "smoke.yaml"), "--workers", "1"],
}


def test_every_bench_script_has_a_smoke_run() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert {"run_all.py", "throughput.py", "peak.py", "settings.py", "study_time.py"} <= scripts
    assert scripts - HELPERS - {"run_all.py", "throughput.py", "peak.py", "settings.py", "study_time.py"} \
        == set(SMOKE)  # run_all.py --smoke runs those four


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_a_bench_script_runs(script: str, fashion: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = [a.format(fashion=fashion, out=out) for a in SMOKE[script]]
    printed = run(BENCH / script, *args, home=tmp_path)
    assert "|" in printed or "images/s" in printed  # it printed its table
    if "--json" in args:
        assert json.loads(out.read_text())


def test_run_all_smoke_runs_every_measurement_and_rewrites_the_tables(fashion: Path, tmp_path: Path) -> None:
    bench = tmp_path / "bench"  # a copy: run_all rewrites its README and results folder
    shutil.copytree(BENCH, bench, ignore=shutil.ignore_patterns("__pycache__"))
    (bench / "README.md").write_text((BENCH / "README.md").read_text())
    run(bench / "run_all.py", "--smoke", "--tag", "smoke", "--root", str(fashion), home=tmp_path)
    for name in ("throughput", "peak", "settings", "study_time"):
        assert json.loads((bench / "results" / "smoke" / f"{name}.json").read_text()), name
    readme = (bench / "README.md").read_text()
    table = readme[readme.index("<!-- results:begin -->"):readme.index("<!-- results:end -->")]
    # study_time, peak and settings rows name the tag (throughput's name the machine)
    assert table.count("| smoke") >= 3 and "| bench_smoke |" in table
