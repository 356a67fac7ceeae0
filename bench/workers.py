"""Local workers on one study: wall time, lock errors and exactly-once completion for N = 1, 2, 4.

    python bench/workers.py                      # studies/quick.yaml with 1, 2 and 4 workers
    python bench/workers.py --workers 4 --study studies/quick.yaml

Each N runs `ganft study run STUDY --workers N` in a fresh project root (fresh default stores:
Optuna journal file, MLflow SQLite in WAL mode, empty GAN cache), so every run trains its GANs.
Prints one Markdown row per N: wall seconds, points COMPLETE exactly once, extra COMPLETE trials
(duplicates), FINISHED child runs, lock errors found in the combined log, GANs trained.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
from mlflow import MlflowClient

from ganft.study.schema import load_study
from ganft.study.storage import open_storage

LOCK_ERRORS = ("database is locked", "database table is locked", "UNIQUE constraint failed",
               "Invalid log format", "Traceback")


def run_once(study: Path, n: int) -> dict[str, object]:
    cfg = load_study(study)
    with tempfile.TemporaryDirectory(prefix=f"ganft-bench-w{n}-") as home:
        env = {**os.environ, "GANFT_HOME": home, "MLFLOW_DISABLE_TELEMETRY": "true"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ganft.cli", "study", "run", str(study),
                               "--no-progress", "--workers", str(n)], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        log = proc.stdout + proc.stderr
        st = optuna.load_study(study_name=cfg.name, storage=open_storage(f"{home}/optuna-journal.log"))
        done = Counter(t.user_attrs.get("ganft.grid_point") for t in st.get_trials(deepcopy=False)
                       if t.state == optuna.trial.TrialState.COMPLETE)
        client = MlflowClient(f"sqlite:///{home}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id], max_results=5000)
        children = [r for r in runs if r.data.tags.get("ganft.role") == "trial"]
        return {"workers": n, "exit": proc.returncode, "wall_s": wall, "points": len(cfg.points()),
                "complete_once": sum(c == 1 for c in done.values()),
                "duplicates": sum(c - 1 for c in done.values()),
                "finished_runs": sum(r.info.status == "FINISHED" for r in children),
                "lock_errors": sum(log.count(e) for e in LOCK_ERRORS),
                "gans_trained": sum(r.data.tags.get("gan.cache") == "miss" for r in children)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path(__file__).parents[1] / "studies" / "quick.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"{args.study.name} on {os.cpu_count()} CPU cores")
    print("| workers | exit | wall s | points complete once | duplicates | FINISHED runs | lock errors "
          "| GANs trained |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.workers:
        r = run_once(args.study, n)
        print(f"| {r['workers']} | {r['exit']} | {r['wall_s']:.0f} | {r['complete_once']} of {r['points']} "
              f"| {r['duplicates']} | {r['finished_runs']} | {r['lock_errors']} | {r['gans_trained']} |",
              flush=True)


if __name__ == "__main__":
    main()
