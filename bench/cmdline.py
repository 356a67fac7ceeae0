"""How a bench script was invoked, for the results tables (shared by throughput.py and study_time.py;
the scripts run as ``python bench/<name>.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path


def command_line() -> str:
    """``python bench/<script> <args>`` without ``--json PATH``: where the figures went is not
    part of how they were measured."""
    args = sys.argv[1:]
    if "--json" in args:
        i = args.index("--json")
        args = args[:i] + args[i + 2:]
    return " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *args])
