"""How numbers and cells read in a report, and the facts about a study it states (wall time)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ganft.report.stats import ARM_COL, N_COL, RATIO_COL, SEED_COL


@dataclass
class ReportMeta:
    study: str
    command: str = ""
    machine: str = ""
    wall_seconds: float | None = None  # `ganft study run` invocations (busy_seconds); None: trial span
    ceiling_study: str = ""
    protocol_study: str = ""  # the same grid under another data.validation protocol (--protocol)
    class_names: dict[int, str] = field(default_factory=dict)  # class index -> name; default: the index
    margin: float = 0.01  # equivalence margin (accuracy, 0.01 = 1 pp): the study file's report.margin


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 \
        else f"{seconds / 3600:.2f} h"


def signed(value: float, digits: int = 1) -> str:
    """``+1.2`` / ``-0.4`` / ``0.0``: a signed number that never reads ``-0.0``."""
    shown = round(value, digits)
    return f"{0.0:.{digits}f}" if shown == 0 else f"{shown:+.{digits}f}"


def pp(x: float) -> str:
    return f"{signed(100 * x)} pp"


def p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def ci_text(row: pd.Series, lo: str = "ci_low", hi: str = "ci_high") -> str:
    if math.isnan(row[lo]):
        note = row.get("note") if hasattr(row, "get") else None
        return note if isinstance(note, str) and "no CI" in note else "no CI"  # and why
    return f"{signed(100 * row[lo])} to {signed(100 * row[hi])} pp"


def cell_name(row: pd.Series, factors: list[str]) -> str:
    arm = [str(row[ARM_COL])] if ARM_COL in factors else []  # an arms study: the arm, unnamed
    return ", ".join([f"N={int(row[N_COL]):,}", *arm, f"ratio {float(row[RATIO_COL]):g}",
                      *[f"{f}={row[f]}" for f in factors if f != ARM_COL]])


def busy_seconds(parents: pd.DataFrame) -> float | None:
    """Wall time of a study: the union of its `ganft study run` invocations (parent runs, with
    ``start_time`` / ``end_time`` in ms), so resumed runs add up and concurrent ones (several
    machines) count once. None when no invocation has ended."""
    if parents.empty or "end_time" not in parents:
        return None
    spans = parents.dropna(subset=["start_time", "end_time"]).sort_values("start_time")
    total, cur_start, cur_end = 0.0, None, None
    for start, end in zip(spans["start_time"], spans["end_time"], strict=True):
        if cur_end is None or start > cur_end:
            total += 0.0 if cur_end is None else cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return None if cur_end is None else (total + cur_end - cur_start) / 1000


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def size_line(df: pd.DataFrame, cells: pd.DataFrame, meta: ReportMeta | None) -> str:
    """The study's size: finished trials, cells, seeds, generators and time. Generators are counted by
    key (tag ``gan.key``: each one once, however many trials used it, whichever run trained it);
    results from before the key was kept count the runs that trained one (``gan/trained_here``)."""
    seeds = df[SEED_COL].nunique() if SEED_COL in df else 0
    if "gan_key" in df and df["gan_key"].notna().any():
        gens = f", {_n(int(df['gan_key'].nunique()), 'generator')}"
    else:
        gens = f", {_n(int(df['gan/trained_here'].sum()), 'GAN')} trained" if "gan/trained_here" in df else ""
    return (f"Study size: {len(df)} finished trials ({_n(len(cells), 'cell')}, {_n(seeds, 'seed')}{gens}); "
            f"{study_time(df, meta)}.")


def study_time(df: pd.DataFrame, meta: ReportMeta | None) -> str:
    """Wall time (the `ganft study run` invocations when known, else first trial start to last
    trial end) and the summed trial compute."""
    timed = len(df) and {"start_time", "end_time"} <= set(df.columns)
    span = (df["end_time"].max() - df["start_time"].min()).total_seconds() if timed else math.nan
    wall = meta.wall_seconds if meta is not None and meta.wall_seconds else span
    compute = df["time/trial_seconds"].sum() if "time/trial_seconds" in df else math.nan
    return f"wall time {duration(wall)}, {duration(compute)} of trial compute"
