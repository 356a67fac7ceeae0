"""A study's report: tidy runs in, reports/<study>/ out (results.csv, cells.csv, classes.csv, the
figures, index.md and a self-contained index.html).

The question each report answers: for each training-set size N and synthetic ratio, did adding GAN
images change test accuracy compared with the real-only run of the same N, seed and other factors,
by how much, and how sure are we (after multiple testing)? The statistics live in ``stats``
(paired differences, 95% t-intervals, paired t-tests, Benjamini-Hochberg from scipy.stats), the
figures in ``figures`` (pure functions), the sections in ``sections``, the page in ``page``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ganft.report import arms, controls
from ganft.report import sections as sec
from ganft.report.calibrate import calibration, has_controls
from ganft.report.curves import curve_frame, curve_section
from ganft.report.page import Page, render_html, render_md
from ganft.report.stats import (
    ARM_COL,
    CHEAP_ARM,
    MIN_PAIRS,
    choice_col,
    class_cells,
    paired_cells,
    varying_factors,
)
from ganft.report.text import ReportMeta, _n, cell_name, ci_text, pp, size_line, study_time


def answer_lines(df: pd.DataFrame, cells: pd.DataFrame, meta: ReportMeta | None = None) -> list[str]:
    """The three-line answer the index opens with: the best cell with its gain and CI, where GAN
    data hurt, and the study's size and wall time."""
    factors = varying_factors(df)
    lines = []
    if cells.empty:
        lines += ["No (N, ratio) cell has both a GAN run and its real-only pair yet.",
                  "Where GAN data hurt: nothing to compare until GAN runs have real-only partners."]
        lines += choice_lines(df)
    else:
        # a gain that survives BH outranks a larger mean that does not
        helped = cells[cells["significant"] & (cells["mean_diff"] > 0)]
        best = (helped if len(helped) else cells).sort_values("mean_diff", ascending=False).iloc[0]
        ci = best["note"] if math.isnan(best["ci_low"]) else \
            f"95% CI {ci_text(best)}, paired t, p = {best['p_value']:.2g}, q = {best['q_value']:.2g}"
        pairs = _n(int(best["n_pairs"]), "pair")
        stat = f"{pp(best['mean_diff'])} test accuracy vs real only ({ci}, {pairs})"
        if len(helped):
            lines.append(f"Best cell: {cell_name(best, factors)}: {stat}; {len(helped)} of {len(cells)} "
                         f"cells show a gain that survives Benjamini-Hochberg (q < 0.05).")
        elif best["mean_diff"] > 0:
            why = "nominal only (its 95% CI excludes 0, its q does not pass)" if best["nominal"] else \
                "its CI includes 0"
            lines.append(f"Best cell: {cell_name(best, factors)}: {stat}; {why}, so no cell shows a "
                         f"gain after Benjamini-Hochberg.")
        else:
            lines.append(f"GAN data helped in no cell; the best was {cell_name(best, factors)}: {stat}.")
        hurt = cells[cells["significant"] & (cells["mean_diff"] < 0)].sort_values("mean_diff")
        nominal = int((cells["verdict"] == "nominal loss").sum())
        nominal_txt = f"; {nominal} more {'is a nominal loss' if nominal == 1 else 'are nominal losses'} " \
            f"(95% CI below 0, q ≥ 0.05)" if nominal else ""
        if len(hurt):
            where = "; ".join(f"{cell_name(r, factors)} ({pp(r['mean_diff'])}, q = {r['q_value']:.2g})"
                              for _, r in hurt.head(4).iterrows())
            more = f"; and {len(hurt) - 4} more" if len(hurt) > 4 else ""
            lines.append(f"GAN data hurt (Benjamini-Hochberg q < 0.05) in {len(hurt)} of {len(cells)} "
                         f"cells: {where}{more}{nominal_txt}.")
        else:
            worse = int((cells["mean_diff"] < 0).sum())
            lines.append(f"GAN data hurt significantly (q < 0.05) in no cell; the mean was below real "
                         f"only in {worse} of {len(cells)} cells{nominal_txt}.")
        thin = int((cells["n_pairs"] < MIN_PAIRS).sum())
        if thin:
            lines.append(f"Warning: {thin} of {len(cells)} cells have fewer than {MIN_PAIRS} pairs; their "
                         f"intervals rest on too few seeds to read (canonical studies use at least 5).")
    lines.append(size_line(df, cells, meta))
    return lines


def choice_lines(df: pd.DataFrame) -> list[str]:
    """For a study that chooses a setting (no real-only pairs): what a choice on budget data picks."""
    table = sec.objective_by_setting(df)
    label = choice_col(df)[1]
    out = []
    for setting, g in table.groupby("setting", sort=False) if len(table) else []:
        best = g[g["best"] == "best"].iloc[0]
        others = g[g["best"] != "best"]
        rest = ", ".join(f"{r['value']} {r['score (%)']:.1f}%" for _, r in others.iterrows())
        out.append(f"Chosen on {label}: {setting} = {best['value']} "
                   f"({best['score (%)']:.1f}%, {int(best['runs'])} runs; {rest}).")
    return out


REPORT_MARKERS = ("index.html", "index.md", "meta.json")  # a folder holding one is a ganft report
REPORT_KINDS = (".png", ".csv", ".html", ".json")  # what a report writes: the new report's own, never kept


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder to write a report into, which replaces ``out`` only once the report is whole: a
    report killed while it writes leaves the old one as it was, and a re-run never deletes the old
    figures before the new ones exist. ``out`` must be new, empty or a report (it is replaced
    whole, so a folder of other files is refused; files of other kinds in it, a README.md, are
    carried over). The swap is two renames; a kill between them leaves the old report as
    ``.NAME.old-*`` beside it, put back by the next report run."""
    from ganft.config import ConfigError

    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    _put_back(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())
                         and not any((out / m).is_file() for m in REPORT_MARKERS)):
        what = "a folder that holds other files" if out.is_dir() else "a file"
        raise ConfigError(f"--out {out}: {what}, not a report; give a new or empty folder (a report "
                          f"replaces its folder whole)")
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    new, old = out.parent / f".{out.name}.new-{tag}", out.parent / f".{out.name}.old-{tag}"
    new.mkdir()  # the umask's mode, as the folder it becomes
    try:
        yield new
        for f in out.iterdir() if out.is_dir() else ():  # a note the user keeps there (README.md) stays
            if f.suffix not in REPORT_KINDS and f.name not in REPORT_MARKERS and not (new / f.name).exists():
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, new / f.name)
        if out.exists():
            out.rename(old)
        new.rename(out)
    finally:
        shutil.rmtree(new, ignore_errors=True)  # gone already when the swap happened
    shutil.rmtree(old, ignore_errors=True)


def _put_back(out: Path) -> None:
    """After a kill: a report moved aside but never replaced goes back; staging folders of
    report runs that are gone are removed."""
    import psutil

    def gone(p: Path) -> bool:
        pid = p.name.rsplit("-", 2)[-2]
        return not (pid.isdigit() and psutil.pid_exists(int(pid)))

    for p in sorted(out.parent.glob(f".{out.name}.old-*")):
        if gone(p) and not out.exists():
            p.rename(out)
    for p in out.parent.glob(f".{out.name}.*-*"):
        if p.is_dir() and gone(p) and p.name.startswith((f".{out.name}.new-", f".{out.name}.old-")):
            shutil.rmtree(p, ignore_errors=True)


def write_report(df: pd.DataFrame, out_dir: Path, meta: ReportMeta, *, ceiling: pd.DataFrame | None = None,
                 history: pd.DataFrame | None = None, importances: pd.DataFrame | None = None,
                 protocol: pd.DataFrame | None = None, samples: dict[int, str] | None = None,
                 copies: dict[int, str] | None = None, curves: pd.DataFrame | None = None) -> Path:
    """Write results.csv, cells.csv, classes.csv, the PNG figures, index.md and a self-contained
    index.html. ``ceiling``: tidy runs of a real-only study on the full training split (drawn as a
    line); ``history`` / ``importances``: Optuna frames from ``ganft.study.optuna_frames``;
    ``protocol``: tidy runs of the same grid under another ``data.validation`` (protocol.csv);
    ``samples``: N -> a GAN sample grid already in ``out_dir`` (report.build.sample_grids);
    ``copies``: N -> a copy figure already there (report.build.copy_figures); ``curves``: the
    generators' budget-KID points (run_id, step, budget_kid; report.build.gan_curves)."""
    if df.empty:
        raise ValueError(f"study {meta.study!r} has no finished trials to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):  # figures of an earlier report that this one may not draw
        if stale.name not in {*(samples or {}).values(), *(copies or {}).values()}:
            stale.unlink()
    factors = varying_factors(df)
    cells = paired_cells(df)
    classes = class_cells(df, meta.class_names)
    df.to_csv(out_dir / "results.csv", index=False)
    facts = {"study": meta.study, "command": meta.command, "machine": meta.machine,
             "wall_seconds": meta.wall_seconds, "margin": meta.margin}  # for rebuilding from results.csv
    if history is not None and len(history) and history["from_grid"].all():
        facts["grid_trials"] = len(history)  # an Optuna grid: the page says it has no history
    if ceiling is not None and len(ceiling):  # its runs, so the ceiling is a number a CSV holds
        ceiling.to_csv(out_dir / "ceiling.csv", index=False)
        facts["ceiling_study"] = meta.ceiling_study
    (out_dir / "meta.json").write_text(json.dumps(facts, indent=2) + "\n")
    cells.to_csv(out_dir / "cells.csv", index=False)
    calibrated = has_controls(df)  # oracle / placebo arms: the answer is read against them
    cheap = ARM_COL in df and bool((df[ARM_COL] == CHEAP_ARM).any())
    sections = [sec.accuracy_section(df, out_dir, ceiling, meta), sec.gain_section(cells, factors, out_dir)]
    budget = sec.budget_section(df, out_dir)
    sections += [budget] if budget is not None else []
    table = calibration(df, cells, meta.margin) if calibrated else None
    if table is not None:
        controls.write_tables(df, table, out_dir)
        sections += [controls.calibration_section(table, meta.margin),
                     controls.controls_section(cells)]
    if cheap:  # arms that use unlabelled images: against the cheap baseline too
        sections.append(arms.arms_section(df, out_dir))
    if len(classes):
        classes.to_csv(out_dir / "classes.csv", index=False)
        sections.append(sec.class_section(classes, factors, out_dir))
    if samples:
        sections.append(sec.samples_section(samples))
    sections.append(sec.quality_section(df, out_dir))
    if copies:
        sections.append(sec.copies_section(copies, df))
    curve_points = curve_frame(df, curves) if curves is not None else pd.DataFrame()
    chosen: list[str] = []
    if len(curve_points):
        section, chosen = curve_section(curve_points, out_dir)
        sections.append(section)
    if importances is not None and len(importances) or history is not None and len(history):
        trials = len(history) if history is not None and len(history) else len(df)
        sections.append(sec.optuna_section(history, importances, out_dir, trials))
    if protocol is not None and len(protocol):
        sections.append(sec.protocol_section(df, protocol, meta.protocol_study, out_dir))
    fit = controls.fit_section(df) if calibrated else sec.convergence_section(df)
    sections += [s for s in (sec.objective_section(df), fit) if s is not None]
    sections.append(sec.method_section(df, ceiling is not None))
    facts = [("Command", f"`{meta.command}`")] if meta.command else []
    facts.append(("Time", study_time(df, meta).capitalize()))
    facts += [("Machine", meta.machine)] if meta.machine else []
    if meta.class_names:
        facts.append(("Classes", ", ".join(meta.class_names[k] for k in sorted(meta.class_names))))
    if "device" in df:
        facts.append(("Trials ran on", ", ".join(sorted(df["device"].dropna().astype(str).unique()))))
    facts.append(("Data", "[results.csv](results.csv) (one row per trial), [cells.csv](cells.csv) (one "
                  "row per cell)" + (", [classes.csv](classes.csv) (per class)" if len(classes) else "")
                  + (", [calibration.csv](calibration.csv) (each arm against the controls), "
                     "[noise.csv](noise.csv) (spread per N), [fit.csv](fit.csv) (fit per arm)"
                     if calibrated else "")
                  + (", [versus_cheap.csv](versus_cheap.csv) (GAN arms against self-training)"
                     if cheap else "")))
    answer = controls.answer_lines(df, cells, table, meta) if table is not None else \
        arms.answer_lines(df, cells, meta) if ARM_COL in df else answer_lines(df, cells, meta)
    if cells.empty and ARM_COL not in df:  # a study that chooses a generator: its choice first
        answer = chosen + answer
    page = Page(f"ganft report: {meta.study}", answer, facts, sections)
    return write_page(page, out_dir)


def write_page(page: Page, out_dir: Path) -> Path:
    (out_dir / "index.md").write_text(render_md(page))
    (out_dir / "index.html").write_text(render_html(page, out_dir))
    return out_dir / "index.html"


