"""Whole-study wall time, peak memory, GAN trainings vs trials, and trials per hour by worker count.

    python bench/study_time.py                       # quick and the reduced Fashion grid, 1 and 2 workers
    python bench/study_time.py --json out.json       # also saves the figures (bench/run_all.py reads them)
    python bench/study_time.py --studies bench/smoke.yaml --workers 1   # any study file

Each measurement runs `ganft study run STUDY --workers N` in a fresh project root (empty stores and
GAN cache, so every GAN is trained), in its own process so that its peak RSS (the largest resident
set of the study's processes, from getrusage) is its own. The reduced Fashion grid
(bench/fashion_reduced.yaml: 2 sizes x 3 ratios x 2 seeds) must train exactly #(N x seed) = 4 GANs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cmdline import command_line  # bench/cmdline.py

HERE = Path(__file__).resolve().parent
STUDIES = {"quick": HERE.parent / "studies" / "quick.yaml", "fashion_reduced": HERE / "fashion_reduced.yaml"}


def _measure(study: str, n: int) -> dict[str, object]:
    sys.path.insert(0, str(HERE))
    from workers import run_once  # bench/workers.py: wall time, exactly-once and lock-error checks

    from ganft.study.schema import load_study

    path = STUDIES.get(study) or Path(study)
    row = run_once(path, n)
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    row["trials_per_hour"] = row["points"] / row["wall_s"] * 3600
    row["study"] = load_study(path).name
    return row


def measure(study: str, n: int) -> dict[str, object]:
    """One measurement in a fresh spawned process (getrusage's children maximum is per process)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_measure, study, n).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", nargs="+", default=list(STUDIES),
                        help=f"names ({', '.join(STUDIES)}) or study files (default: both names)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores")
    print("| study | workers | wall s | peak RSS MiB | trials | GANs trained | trials/hour | complete once "
          "| lock errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for study in args.studies:
        for n in args.workers:
            r = measure(study, n)
            rows.append(r)
            print(f"| {r['study']} | {n} | {r['wall_s']:.0f} | {r['peak_rss_mib']:.0f} | {r['points']} "
                  f"| {r['gans_trained']} | {r['trials_per_hour']:.0f} | {r['complete_once']} of {r['points']} "
                  f"| {r['lock_errors']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "cores": os.cpu_count(),
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
