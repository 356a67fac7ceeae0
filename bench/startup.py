"""How long `ganft` takes to start for each subcommand: imports by `python -X importtime`, and the
wall time of the whole command, in an empty project root (so every command only starts, reads
nothing and exits).

    python bench/startup.py                        # this checkout
    python bench/startup.py --repo ../old-checkout # another checkout of ganft, for before/after

For each subcommand: the total self time of every import (the sum of `-X importtime`'s "self"
column), whether torch was imported, and the median wall time of --runs runs; with --noop, the
same for `ganft study run quick` on a study that is already complete.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmdline import command_line  # bench/cmdline.py

COMMANDS = {
    "ganft --help": ["--help"],
    "ganft study status quick": ["study", "status", "{study}"],
    "ganft study repair quick": ["study", "repair", "{study}"],
    "ganft report quick": ["report", "quick"],
}
RUNNER = """
import sys
from ganft.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print('TORCH=' + str('torch' in sys.modules))
"""


def measure(repo: Path, argv: list[str], home: Path) -> tuple[float, bool, float]:
    """(import self-time total in s, torch imported?, wall s) of one run."""
    env = {**os.environ, "PYTHONPATH": str(repo), "GANFT_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", RUNNER.format(argv=argv)], env=env,
                         capture_output=True, text=True, cwd=home, timeout=300)
    wall = time.perf_counter() - t0
    self_us = 0
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            field = line.removeprefix("import time:").split("|")[0].strip()
            if field.isdigit():
                self_us += int(field)
    return self_us / 1e6, "TORCH=True" in out.stdout, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--noop", action="store_true", help="also time a no-op rerun of the quick study "
                        "(runs the quick study once first, a minute or two)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    repo = args.repo.resolve()
    study = repo / "studies" / "quick.yaml"
    print(f"checkout {repo}")
    print("| command | imports (s, -X importtime self total) | imports torch | wall s (median) |")
    print("| --- | ---: | --- | ---: |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv in COMMANDS.items():
            argv = [a.format(study=study) for a in argv]
            runs = [measure(repo, argv, Path(tmp)) for _ in range(args.runs)]
            imports = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[2] for r in runs)
            rows.append({"command": label, "imports_s": imports, "torch": runs[0][1], "wall_s": wall})
            print(f"| `{label}` | {imports:.2f} | {'yes' if runs[0][1] else 'no'} | {wall:.2f} |", flush=True)
        if args.noop:  # the no-op rerun of a complete study: the quick study, run once first
            measure(repo, ["study", "run", str(study), "--no-progress"], Path(tmp))
            runs = [measure(repo, ["study", "run", str(study), "--no-progress"], Path(tmp))
                    for _ in range(args.runs)]
            imports, wall = statistics.median(r[0] for r in runs), statistics.median(r[2] for r in runs)
            label = "ganft study run quick (complete: nothing to run)"
            rows.append({"command": label, "imports_s": imports, "torch": runs[0][1], "wall_s": wall})
            print(f"| `{label}` | {imports:.2f} | {'yes' if runs[0][1] else 'no'} | {wall:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "repo": str(repo), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
