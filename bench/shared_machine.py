"""A study on a machine that is not idle: the same one-trial digits study alone and beside one busy
loop per core, with ganft's thread choice (and, for comparison, with a fixed thread count).

    python bench/shared_machine.py                 # default thread choice vs --threads = cores
    python bench/shared_machine.py --gan-steps 300 --clf-steps 300

Each run is `ganft study run` in a fresh project root (stores, GAN cache), start-up included. The
fair share beside k busy loops on c cores is alone x (c + k) / c: what the study would take if it
got exactly its share of the CPUs. The figure of merit is the busy time over that fair share
(1.0 = no penalty for sharing; the target is at most 1.2).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmdline import command_line  # bench/cmdline.py

STUDY = """\
name: shared
base:
  data: {{dataset: digits, train_size: 200}}
  gan: {{steps: {gan}, width: 32}}
  synth: {{ratio: 1}}
  classifier: {{steps: {clf}, eval_every: 50}}
"""


def busy_loop() -> None:  # one core's worth of someone else's work
    while True:
        pass


def run_study(gan: int, clf: int, threads: int | None) -> float:
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "shared.yaml"
        path.write_text(STUDY.format(gan=gan, clf=clf))
        cmd = [sys.executable, "-m", "ganft.cli", "study", "run", str(path), "--no-progress",
               *(["--threads", str(threads)] if threads else [])]
        env = {**os.environ, "GANFT_HOME": home, "MLFLOW_DISABLE_TELEMETRY": "true"}
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gan-steps", type=int, default=300)
    parser.add_argument("--clf-steps", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"{cores} cores; one-trial digits study, {args.gan_steps} GAN + {args.clf_steps} classifier steps")
    print("| threads | alone s | beside " + f"{cores} busy loops s | fair share s | busy / fair share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = []
    for label, threads in (("ganft's choice", None), (f"--threads {cores}", cores)):
        alone = run_study(args.gan_steps, args.clf_steps, threads)
        loops = [mp.Process(target=busy_loop, daemon=True) for _ in range(cores)]
        for p in loops:
            p.start()
        time.sleep(1.0)  # let the loops show in the CPU load ganft samples
        try:
            busy = run_study(args.gan_steps, args.clf_steps, threads)
        finally:
            for p in loops:
                p.terminate()
                p.join()
        fair = alone * (cores + cores) / cores
        rows.append({"threads": label, "alone_s": alone, "busy_s": busy, "fair_s": fair, "ratio": busy / fair})
        print(f"| {label} | {alone:.0f} | {busy:.0f} | {fair:.0f} | {busy / fair:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "cores": cores, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
