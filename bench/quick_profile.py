"""Where the main job's time goes: the quick study (command 1 of the README without the install) in
a fresh project root, under cProfile, split into stages, then its no-op rerun.

    python bench/quick_profile.py                  # this checkout, one worker in this process
    python bench/quick_profile.py --json bench/results/cpu/quick_profile.json
    python bench/quick_profile.py --study bench/smoke.yaml   # another study file (tests: a tiny one)

Stages are the inclusive time of the functions that do each job (a function called inside another
stage's, such as the labeller's classifier inside a GAN arm, counts in both; "other" is the rest:
Optuna, the run loop, bookkeeping). Start-up is measured apart, as the wall time of a fresh
`python -c "import ganft.cli"`, and the two commands are also timed end to end as a user runs them
(`ganft study run quick && ganft report quick`, then the no-op `ganft study run quick`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmdline import command_line  # bench/cmdline.py

REPO = Path(__file__).resolve().parents[1]
# stage -> (module file suffix, function name) pairs whose inclusive times it sums
STAGES: dict[str, list[tuple[str, str]]] = {
    "store creation": [("ganft/study/mlflow_store.py", "prepare")],
    "data": [("ganft/data.py", "splits_for"), ("ganft/data.py", "labelled_budget")],
    "GAN training": [("ganft/gan_train.py", "train_gan")],
    "sampling": [("ganft/synth.py", "synthesise")],
    "classifier training": [("ganft/finetune.py", "train_classifier")],
    "evaluation": [("ganft/evaluate.py", "test_metrics")],
    "logging (MLflow)": [("ganft/study/mlflow_store.py", n) for n in
                         ("log_params", "log_metrics", "log_figure", "log_artifact", "set_tags", "start_run",
                          "end_run")],
    "report: reading runs": [("ganft/report/build.py", "study_runs"), ("ganft/report/build.py", "invocations"),
                             ("ganft/study/status.py", "optuna_frames")],
    "report: figures and page": [("ganft/report/write.py", "write_report")],
}


def stage_times(stats: pstats.Stats) -> dict[str, float]:
    """Per stage, the summed inclusive seconds of its functions (cProfile's cumulative time)."""
    out = dict.fromkeys(STAGES, 0.0)
    for (file, _, name), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        for stage, funcs in STAGES.items():
            if any(file.endswith(suffix) and name == fn for suffix, fn in funcs):
                out[stage] += cum
    return out


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--study", type=Path, default=REPO / "studies" / "quick.yaml", help="the study file")
    args = ap.parse_args()
    from ganft.study.schema import load_study

    name = load_study(args.study).name
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    ganft = [sys.executable, "-m", "ganft.cli"]
    startup = min(timed([sys.executable, "-c", "import ganft.cli"], env) for _ in range(3))

    with tempfile.TemporaryDirectory() as tmp:  # the profile, in this process
        home = Path(tmp)
        (home / "studies").mkdir()
        shutil.copy(args.study, home / "studies" / f"{name}.yaml")
        os.environ.update(GANFT_HOME=str(home), MLFLOW_DISABLE_TELEMETRY="true")
        from ganft.cli import main as ganft_main

        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        assert ganft_main(["study", "run", name, "--no-progress"]) == 0
        assert ganft_main(["report", name]) == 0
        prof.disable()
        total = time.perf_counter() - t0
        stages = stage_times(pstats.Stats(prof))

    with tempfile.TemporaryDirectory() as tmp:  # end to end, as a user runs the two commands
        home = Path(tmp)
        (home / "studies").mkdir()
        shutil.copy(args.study, home / "studies" / f"{name}.yaml")
        env["GANFT_HOME"] = str(home)
        first = timed([*ganft, "study", "run", name, "--no-progress"], env)
        report = timed([*ganft, "report", name], env)
        noop = timed([*ganft, "study", "run", name, "--no-progress"], env)

    rows = {"start-up (import ganft.cli)": startup, **stages,
            "other (Optuna, run loop, imports of the stack)": total - sum(stages.values())}
    print(f"{command_line()}: study {name} + report in this process, {total:.1f} s under cProfile")
    print("| stage | seconds | share |\n| --- | ---: | ---: |")
    for stage, sec in rows.items():
        print(f"| {stage} | {sec:.1f} | {sec / total:.0%} |")
    print(f"\nend to end: `ganft study run {name}` {first:.1f} s, `ganft report {name}` {report:.1f} s, "
          f"together {first + report:.1f} s; no-op rerun {noop:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command_line(), "profiled_total_s": total, "stages_s": rows,
                                         "study_s": first, "report_s": report, "noop_s": noop}, indent=2))


if __name__ == "__main__":
    main()
