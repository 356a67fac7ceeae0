"""MLflow runs -> tidy DataFrame -> paired statistics -> seaborn figures -> reports/<study>/.

The question each report answers: for each training-set size N and synthetic ratio, did adding GAN
images change test accuracy compared with the real-only run of the same N, seed and other factors,
by how much, and how sure are we? The statistics live in ``report_stats`` (paired differences,
95% t-intervals, paired t-tests from scipy.stats), the figures in ``report_figures`` (pure
functions), the page layout in ``report_page``; this module reads runs and writes the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ganft import report_figures as figs
from ganft.config import TrialConfig, config_keys
from ganft.report_page import Page, Section, render_html, render_md
from ganft.report_stats import (
    ACC_COL,
    CI_TEXT,
    MIN_PAIRS,
    N_COL,
    RATIO_COL,
    SEED_COL,
    class_cells,
    class_extremes,
    paired_cells,
    paired_runs,
    quality_cells,
    summarise,
    varying_factors,
)

__all__ = ["ReportMeta", "cast_param", "tidy_runs", "write_report", "paired_cells", "summarise",
           "answer_lines"]
QUALITY_FIGURES = ("quality/fcd", "quality/cas")  # plotted against the gain when the runs have them


# --------------------------------------------------------------------------- tidy runs


def _field_types() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in config_keys():
        model: Any = TrialConfig
        *parents, leaf = key.split(".")
        for p in parents:
            model = model.model_fields[p].annotation
        out[key] = model.model_fields[leaf].annotation
    return out


def cast_param(value: Any, annotation: Any) -> Any:
    """MLflow keeps params as strings: cast one back with its config field's type."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    if annotation is bool:
        return text == "True"
    if annotation is int:
        return int(float(text))
    if annotation is float:
        return float(text)
    if text == "None" and "None" in str(annotation):
        return None
    try:  # e.g. ``int | None``
        return int(text) if "int" in str(annotation) else float(text) if "float" in str(annotation) else text
    except ValueError:
        return text


def tidy_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point (its latest FINISHED run): config columns with their real types
    (dotted keys, e.g. ``data.train_size``), metrics without the ``metrics.`` prefix."""
    if raw.empty or "status" not in raw:
        return pd.DataFrame()
    runs = raw[raw["status"] == "FINISHED"].copy()
    if runs.empty:
        return pd.DataFrame()
    runs = runs.sort_values("start_time").drop_duplicates("tags.ganft.grid_point", keep="last")
    cols: dict[str, Any] = {"run_id": runs["run_id"].to_numpy(),
                            "grid_point": runs["tags.ganft.grid_point"].to_numpy()}
    for key, ann in _field_types().items():
        col = f"params.{key}"
        if col in runs:
            cols[key] = [cast_param(v, ann) for v in runs[col]]
    for col in runs.columns:
        if col.startswith("metrics."):
            cols[col.removeprefix("metrics.")] = runs[col].astype(float).to_numpy()
    cols["start_time"] = pd.to_datetime(runs["start_time"].to_numpy(), unit="ms")
    cols["end_time"] = pd.to_datetime(runs["end_time"].to_numpy(), unit="ms")
    for tag, name in (("tags.gan.cache", "gan_cache"), ("tags.ganft.device", "device")):
        if tag in runs:
            cols[name] = runs[tag].to_numpy()
    out = pd.DataFrame(cols)  # built at once: column-by-column inserts fragment wide frames
    return out.sort_values([c for c in (N_COL, RATIO_COL, SEED_COL) if c in out]).reset_index(drop=True)


# --------------------------------------------------------------------------- text


@dataclass
class ReportMeta:
    study: str
    command: str = ""
    machine: str = ""
    wall_seconds: float | None = None  # `ganft study run` invocations (busy_seconds); None: trial span
    ceiling_study: str = ""
    protocol_study: str = ""  # the same grid under another data.validation protocol (--protocol)
    class_names: dict[int, str] = field(default_factory=dict)  # class index -> name; default: the index


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 \
        else f"{seconds / 3600:.2f} h"


def pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def ci_text(row: pd.Series, lo: str = "ci_low", hi: str = "ci_high") -> str:
    if math.isnan(row[lo]):
        return "no CI"
    return f"{100 * row[lo]:+.1f} to {100 * row[hi]:+.1f} pp"


def cell_name(row: pd.Series, factors: list[str]) -> str:
    return ", ".join([f"N={int(row[N_COL]):,}", f"ratio {row[RATIO_COL]:g}",
                      *[f"{f}={row[f]}" for f in factors]])


def answer_lines(df: pd.DataFrame, cells: pd.DataFrame, meta: ReportMeta | None = None) -> list[str]:
    """The three-line answer the index opens with: the best cell with its gain and CI, where GAN
    data hurt, and the study's size and wall time."""
    factors = varying_factors(df)
    lines = []
    if cells.empty:
        lines += ["No (N, ratio) cell has both a GAN run and its real-only pair yet.",
                  "Where GAN data hurt: nothing to compare until GAN runs have real-only partners."]
    else:
        # a gain that survives BH outranks a larger mean that does not
        helped = cells[cells["significant"] & (cells["mean_diff"] > 0)]
        best = (helped if len(helped) else cells).sort_values("mean_diff", ascending=False).iloc[0]
        ci = best["note"] if math.isnan(best["ci_low"]) else \
            f"95% CI {ci_text(best)}, paired t, p = {best['p_value']:.2g}, q = {best['q_value']:.2g}"
        stat = f"{pp(best['mean_diff'])} test accuracy vs real only ({ci}, {int(best['n_pairs'])} pairs)"
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
    gans = int(df["gan/trained_here"].sum()) if "gan/trained_here" in df else None
    seeds = df[SEED_COL].nunique() if SEED_COL in df else 0
    lines.append(f"Study size: {len(df)} finished trials ({_n(len(cells), 'cell')}, {_n(seeds, 'seed')}"
                 + (f", {gans} GANs trained" if gans is not None else "") + f"); {study_time(df, meta)}.")
    return lines


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


def study_time(df: pd.DataFrame, meta: ReportMeta | None) -> str:
    """Wall time (the `ganft study run` invocations when known, else first trial start to last
    trial end) and the summed trial compute."""
    timed = len(df) and {"start_time", "end_time"} <= set(df.columns)
    span = (df["end_time"].max() - df["start_time"].min()).total_seconds() if timed else math.nan
    wall = meta.wall_seconds if meta is not None and meta.wall_seconds else span
    compute = df["time/trial_seconds"].sum() if "time/trial_seconds" in df else math.nan
    return f"wall time {duration(wall)}, {duration(compute)} of trial compute"


def _cells_table(cells: pd.DataFrame, factors: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The cells table as people read it, and one row class each (gain / loss / none)."""
    verdict = cells["verdict"].tolist()
    table = pd.DataFrame({"N": cells[N_COL].astype(int), "ratio": cells[RATIO_COL],
                          **{f: cells[f] for f in factors}, "pairs": cells["n_pairs"],
                          "with GAN (%)": (100 * cells["mean_acc"]).round(2),
                          "real only (%)": (100 * cells["baseline_acc"]).round(2),
                          "gain (pp)": (100 * cells["mean_diff"]).round(2),
                          "95% t-CI (pp)": [ci_text(r) for _, r in cells.iterrows()],
                          "p (paired t)": cells["p_value"].map(p_text),
                          "q (BH)": cells["q_value"].map(p_text), "verdict": verdict})
    return table, [v if v in ("gain", "loss") else "" for v in verdict]


def save_figure(fig: Figure, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name)
    return name


# --------------------------------------------------------------------------- one study


def write_report(df: pd.DataFrame, out_dir: Path, meta: ReportMeta, *, ceiling: pd.DataFrame | None = None,
                 history: pd.DataFrame | None = None, importances: pd.DataFrame | None = None,
                 protocol: pd.DataFrame | None = None) -> Path:
    """Write results.csv, cells.csv, classes.csv, the PNG figures, index.md and a self-contained
    index.html. ``ceiling``: tidy runs of a real-only study on the full training split (drawn as a
    line); ``history`` / ``importances``: Optuna frames from ``ganft.study.optuna_frames``;
    ``protocol``: tidy runs of the same grid under another ``data.validation`` (protocol.csv)."""
    if df.empty:
        raise ValueError(f"study {meta.study!r} has no finished trials to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):  # figures of an earlier report that this one may not draw
        stale.unlink()
    factors = varying_factors(df)
    cells = paired_cells(df)
    classes = class_cells(df, meta.class_names)
    df.to_csv(out_dir / "results.csv", index=False)
    cells.to_csv(out_dir / "cells.csv", index=False)
    sections = [_accuracy_section(df, out_dir, ceiling, meta), _gain_section(cells, factors, out_dir)]
    if len(classes):
        classes.to_csv(out_dir / "classes.csv", index=False)
        sections.append(_class_section(classes, factors, out_dir))
    sections.append(_quality_section(df, out_dir))
    if importances is not None and len(importances) or history is not None and len(history):
        sections.append(_optuna_section(history, importances, out_dir))
    if protocol is not None and len(protocol):
        sections.append(_protocol_section(df, protocol, meta.protocol_study, out_dir))
    sections += [sec for sec in (_objective_section(df), _convergence_section(df)) if sec is not None]
    sections.append(_method_section(df, ceiling is not None))
    facts = [("Command", f"`{meta.command}`")] if meta.command else []
    facts.append(("Time", study_time(df, meta).capitalize()))
    facts += [("Machine", meta.machine)] if meta.machine else []
    if "device" in df:
        facts.append(("Trials ran on", ", ".join(sorted(df["device"].dropna().astype(str).unique()))))
    facts.append(("Data", "[results.csv](results.csv) (one row per trial), [cells.csv](cells.csv) (one "
                  "row per cell)" + (", [classes.csv](classes.csv) (per class)" if len(classes) else "")))
    page = Page(f"ganft report: {meta.study}", answer_lines(df, cells, meta), facts, sections)
    return write_page(page, out_dir)


def write_page(page: Page, out_dir: Path) -> Path:
    (out_dir / "index.md").write_text(render_md(page))
    (out_dir / "index.html").write_text(render_html(page, out_dir))
    return out_dir / "index.html"


def _accuracy_section(df: pd.DataFrame, out_dir: Path, ceiling: pd.DataFrame | None,
                      meta: ReportMeta) -> Section:
    name = save_figure(figs.fig_accuracy_vs_ratio(df, ceiling), out_dir, "accuracy_vs_ratio.png")
    text = ["Mean test accuracy over seeds at each synthetic:real ratio; ratio 0 is real only."]
    if ceiling is not None and len(ceiling):
        steps = f", {int(ceiling['classifier.steps'].iloc[0]):,} classifier steps" \
            if "classifier.steps" in ceiling else ""
        text.append(f"The dotted line is the ceiling: real-only training on the whole training pool "
                    f"(N={int(ceiling[N_COL].iloc[0]):,}, study `{meta.ceiling_study}`, {len(ceiling)} "
                    f"run(s){steps}): {100 * ceiling[ACC_COL].mean():.2f}% test accuracy.")
    return Section("Accuracy against ratio", text, [(name, "Test accuracy against ratio, per N (band: "
                                                     "95% t-interval over seeds; dashed: real only).")])


def _gain_section(cells: pd.DataFrame, factors: list[str], out_dir: Path) -> Section:
    table, classes = _cells_table(cells, factors)
    figures = []
    if len(cells):
        figures.append((save_figure(figs.fig_gain_heatmap(cells), out_dir, "gain_heatmap.png"),
                        "Mean paired difference per (N, ratio); faded and hatched: not significant "
                        "after Benjamini-Hochberg (q ≥ 0.05)."))
    return Section("Gain over real only, per cell", [
        f"Each GAN run minus the real-only run with the same N, seed and other factors; {CI_TEXT}; "
        "p from the paired t-test, q: Benjamini-Hochberg across the cells. Verdicts: `gain` / `loss` "
        "(green / red rows) when q < 0.05; `nominal gain` / `nominal loss` when the 95% CI excludes 0 "
        "but q does not pass; `n.s.` otherwise; `no CI`: fewer than 2 pairs or all differences equal."],
        figures, table, classes)


def _class_section(classes: pd.DataFrame, factors: list[str], out_dir: Path) -> Section:
    gains, losses = class_extremes(classes)
    rows = [{"": kind, "class": r["class_name"], "cell": cell_name(r, factors),
             "gain (pp)": round(100 * r["mean_diff"], 2), "95% t-CI (pp)": ci_text(r),
             "p (paired t)": p_text(r["p_value"]), "q (BH)": p_text(r["q_value"]),
             "verdict": r["verdict"], "pairs": r["n_pairs"]}
            for kind, part in (("gains most", gains), ("loses most", losses)) for _, r in part.iterrows()]
    name = save_figure(figs.fig_class_gains(classes), out_dir, "class_gains.png")
    return Section("Classes that gain or lose most from GAN data", [
        "Per-class test accuracy (`test/acc_class_k`), paired the same way as the cells above; q is "
        "Benjamini-Hochberg across every (class, cell) test of the study, and the verdicts read as "
        "above."],
        [(name, "Per-class paired difference (pp) in every cell; black frame: significant after "
                "Benjamini-Hochberg (q < 0.05).")],
        pd.DataFrame(rows), ["" if not r["significant"] else "gain" if r["mean_diff"] > 0 else "loss"
                             for part in (gains, losses) for _, r in part.iterrows()])


def _quality_section(df: pd.DataFrame, out_dir: Path) -> Section:
    present = [m for m in QUALITY_FIGURES if m in df and df[m].notna().any()]
    section = Section("GAN quality against gain")
    if not present:
        section.paragraphs.append("These runs log no GAN quality metrics (`quality/fcd`, `quality/cas`); "
                                  "this figure appears for studies that do.")
        return section
    table = quality_table(quality_cells(df))
    if len(table):
        table.to_csv(out_dir / "quality.csv", index=False)
        section.paragraphs.append(
            "Per generator setting (ratios pooled: one GAN serves every ratio of its N and seed), mean "
            "± standard deviation over the GANs of each seed. FCD and KID: lower is better; precision, "
            "recall, density, coverage and CAS: higher is better. Scores are in the feature space of "
            "the dataset's extractor (`quality.extractor_hash`); gain: mean paired test-accuracy "
            "difference of those runs to real only. Also in [quality.csv](quality.csv).")
        section.table = table
    pairs = paired_runs(df)
    for m in present:
        name = save_figure(figs.fig_quality_vs_gain(pairs, m), out_dir,
                           f"quality_{m.split('/')[1]}_vs_gain.png")
        section.figures.append((name, f"One point per GAN run: `{m}` against its paired gain."))
    return section


def quality_table(q: pd.DataFrame) -> pd.DataFrame:
    """The quality cells as people read them: ``mean ± sd`` per score."""
    if q.empty:
        return q
    scores = [c.removesuffix(":mean") for c in q.columns if c.endswith(":mean")]
    out = q[[c for c in q.columns if ":" not in c and c != "gain_mean"]].rename(columns={N_COL: "N"})
    out["N"] = out["N"].astype(int)
    for c in scores:
        digits = 1 if c in ("quality/fcd",) else 3
        out[c.removeprefix("quality/")] = [
            f"{m:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")
            for m, sd in zip(q[f"{c}:mean"], q[f"{c}:sd"], strict=True)]
    out["gain (pp)"] = (100 * q["gain_mean"]).round(2)
    return out


def _optuna_section(history: pd.DataFrame | None, importances: pd.DataFrame | None,
                    out_dir: Path) -> Section:
    section = Section("What Optuna sees", ["The Optuna objective is validation accuracy (test accuracy "
                                           "is never optimised)."])
    if importances is not None and len(importances):
        importances.to_csv(out_dir / "importances.csv", index=False)
        section.figures.append((save_figure(figs.fig_param_importances(importances), out_dir,
                                      "param_importances.png"), "fANOVA parameter importances (Optuna)."))
    if history is not None and len(history) and not history["from_grid"].all():
        section.figures.append((save_figure(figs.fig_optimization_history(history), out_dir,
                                      "optimization_history.png"), "Optimisation history (Optuna)."))
    elif history is not None and len(history):
        section.paragraphs.append("This study is a grid (every point runs once), so it has no "
                                  "optimisation history; a TPE search would show one here.")
    return section


PROTOCOLS = {
    "from-budget": "**Protocol: the labelled budget is N.** A stratified {frac} of the N labelled images "
                   "(at least one per class) is held out inside the budget, and every selection looks "
                   "only at it: the classifier's checkpoint and early stopping, the GAN's best step, the "
                   "filtering labeller and the Optuna objective. The classifier and the GAN train on the "
                   "rest; synthetic counts are ratio x those training images. No other labelled image "
                   "is used; the test split is touched once, for the final metrics.",
    "none": "**Protocol: no validation.** Every one of the N labelled images is trained on, for a fixed "
            "number of steps, and the last checkpoint is kept: nothing is selected.",
    "pool": "**Pool protocol (a comparison, not the recommended set-up).** Checkpoints are chosen on a "
            "fixed validation set of {val} images from outside the N-image budget: labelled data a user "
            "with N labels would not have (and with it they would train on it).",
}


def protocol_bullets(df: pd.DataFrame) -> list[str]:
    """What the runs' ``data.validation`` protocol means, one bullet per protocol present."""
    if "data.validation" not in df:
        return [PROTOCOLS["pool"].format(val="the dataset's default number of")]
    out = []
    for name, g in df.groupby("data.validation", sort=True):
        frac = g["data.val_fraction"].iloc[0] if "data.val_fraction" in g else 0.2
        val = g["data.val_size"].iloc[0] if "data.val_size" in g else None
        out.append(PROTOCOLS.get(str(name), str(name)).format(
            frac=f"{frac:.0%}", val=f"{int(val):,}" if val is not None and val == val else "?"))
    return out


def convergence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per N, the real-only runs: how many still improved on validation in their last 10% of steps
    (``clf/improved_last_10pct``: the budget had not converged), and test accuracy of the kept
    checkpoint against the last one (how much selection mattered)."""
    real = df[df[RATIO_COL] == 0] if RATIO_COL in df else df.iloc[0:0]
    if real.empty or N_COL not in real:
        return pd.DataFrame()
    rows = []
    for n, g in real.groupby(N_COL, sort=True):
        late = g["clf/improved_last_10pct"].dropna() if "clf/improved_last_10pct" in g else pd.Series()
        last = g["test/acc_last"] if "test/acc_last" in g else pd.Series(dtype=float)
        rows.append({"N": f"{int(n):,}", "real-only runs": len(g),
                     "still improving in the last 10% of steps": f"{int(late.sum())} of {len(late)}"
                     if len(late) else "no validation",
                     "test acc, kept checkpoint (%)": round(100 * g[ACC_COL].mean(), 2),
                     "test acc, last step (%)": round(100 * last.mean(), 2) if len(last) else math.nan})
    return pd.DataFrame(rows)


def objective_by_setting(df: pd.DataFrame, objective: str = "clf/best_val_acc") -> pd.DataFrame:
    """Per level of each varying factor (ratio included), the budget-validation accuracy the Optuna
    objective saw: what a choice made on budget data alone would pick (``best``)."""
    if objective not in df or df[objective].isna().all():
        return pd.DataFrame()
    rows = []
    for factor in [RATIO_COL, *varying_factors(df)]:
        if factor not in df or df[factor].astype(str).nunique() < 2:
            continue
        stats_ = df.groupby(df[factor].astype(str), sort=False)[objective].agg(["mean", "std", "count"])
        for level, r in stats_.iterrows():
            rows.append({"setting": factor, "value": level, "runs": int(r["count"]),
                         "budget val acc (%)": round(100 * r["mean"], 2),
                         "sd (pp)": round(100 * r["std"], 2) if r["count"] > 1 else math.nan,
                         "best": "best" if r["mean"] == stats_["mean"].max() else ""})
    return pd.DataFrame(rows)


def _objective_section(df: pd.DataFrame) -> Section | None:
    table = objective_by_setting(df)
    if table.empty:
        return None
    return Section("Budget-validation accuracy by setting", [
        "The Optuna objective per setting, averaged over the other factors and the seeds: the "
        "kept checkpoint's accuracy on validation images from inside the budget. This is what a "
        "choice made without the test split would pick (`best`); the test split never chooses."],
        table=table)


def protocol_table(df: pd.DataFrame, other: pd.DataFrame, ratio: float = 1.0) -> pd.DataFrame:
    """Per N, real-only test accuracy and the gain at ``ratio`` (each study's own paired cells and
    BH q) under this study's validation protocol and another's: how much the protocol changes
    the answer."""
    def protocol(frame: pd.DataFrame) -> str:
        return "/".join(sorted(frame["data.validation"].astype(str).unique())) \
            if "data.validation" in frame else "pool"

    rows = []
    sides = [(protocol(f), f, paired_cells(f)) for f in (df, other)]
    for n in sorted(set(df[N_COL]) & set(other[N_COL])):
        row: dict[str, Any] = {"N": f"{int(n):,}"}
        for name, frame, _ in sides:
            real = frame[(frame[N_COL] == n) & (frame[RATIO_COL] == 0)][ACC_COL]
            row[f"real only, {name} (%)"] = round(100 * real.mean(), 2) if len(real) else math.nan
        for name, _, cells in sides:
            c = cells[(cells[N_COL] == n) & (cells[RATIO_COL] == ratio)]
            row[f"gain at ratio {ratio:g}, {name}"] = "n/a" if c.empty else \
                f"{pp(c['mean_diff'].iloc[0])} ({ci_text(c.iloc[0])}; {c['verdict'].iloc[0]})"
        rows.append(row)
    return pd.DataFrame(rows)


def _protocol_section(df: pd.DataFrame, other: pd.DataFrame, other_study: str, out_dir: Path) -> Section:
    table = protocol_table(df, other)
    table.to_csv(out_dir / "protocol.csv", index=False)
    return Section("The effect of the validation protocol", [
        f"The same grid under another validation protocol (study `{other_study}`): real-only test "
        "accuracy and the gain at ratio 1 per N, each from its own study's pairs and Benjamini-Hochberg "
        "q. Also in [protocol.csv](protocol.csv)."], table=table)


def _convergence_section(df: pd.DataFrame) -> Section | None:
    table = convergence_table(df)
    if table.empty:
        return None
    return Section("Budget and selection", [
        "Real-only runs per N. A run still improving in the last 10% of its classifier steps (its best "
        "validation accuracy there beats every earlier one) had a budget that had not converged; the "
        "last two columns show how much choosing the checkpoint on validation changed test accuracy."],
        table=table)


def _method_section(df: pd.DataFrame, has_ceiling: bool) -> Section:
    bullets = [
        *protocol_bullets(df),
        "Pairs: a GAN run (ratio > 0) and the real-only run (ratio 0) with the same N, seed and every "
        "other varying setting share the labelled budget and the classifier's initialisation; runs "
        "without a partner are left out.",
        f"Intervals: {CI_TEXT}, from `scipy.stats.ttest_1samp`; with few seeds they are wide by "
        "construction. Cells with fewer than 2 pairs (or identical differences) show no CI. Gain and "
        "loss verdicts need a Benjamini-Hochberg q below 0.05 across the study's cells (per-class: "
        "across all class tests); an interval that excludes 0 without it is called nominal.",
        "Equal budget: every arm trains the classifier for the same number of optimiser steps under "
        "the same selection rule; test accuracy is measured once, at the end (`test/acc` for the kept "
        "checkpoint, `test/acc_last` for the last step).",
    ]
    if has_ceiling:
        bullets.append("Ceiling: the same classifier trained on every labelled image of the training "
                       "split (real only), as the upper reference.")
    return Section("Method", bullets=bullets)
