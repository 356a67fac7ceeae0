"""Report figures: one pure function per figure (DataFrame in, ``matplotlib.figure.Figure`` out).

No pyplot state: each function builds its own Figure inside a seaborn style context, so figures
can be made in any thread and saved anywhere. Accuracies are plotted in percent and differences
in percentage points (pp); every interval is the 95% t-interval of ``report_stats``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from scipy import stats

from ganft.catalog import plot_label
from ganft.keys import config_keys
from ganft.report.stats import (
    ACC_COL,
    ARM_COL,
    CONTROL_ARMS,
    N_COL,
    RATIO_COL,
    REAL_ONLY,
    SEED_COL,
    in_level_order,
    varying_factors,
)
from ganft.report.text import signed

DPI = 110
HATCH = "///"
QUALITY_LABELS = {  # metric -> (axis label, scale to display units)
    "quality/fcd": ("FCD: Fréchet distance in classifier features (lower is better)", 1.0),
    "quality/cas": ("CAS: test accuracy of a classifier trained on GAN images only (%)", 100.0),
    "quality/kid": ("KID in classifier features (lower is better)", 1.0),
}


@contextmanager
def _style() -> Iterator[None]:
    """Whitegrid axes and notebook-size fonts for the figures built inside; restored after."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=1.0), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)  # seaborn's cmap.set_bad
        yield


def _factor_cols(frame: pd.DataFrame) -> list[str]:
    """The other-factor columns of a cells table (config keys besides N, ratio and seed)."""
    keys = (set(config_keys()) | {ARM_COL}) - {N_COL, RATIO_COL, SEED_COL}
    return [c for c in frame.columns if c in keys]


def _facet_label(keys: tuple, factors: list[str]) -> str:
    """``factor=value`` pairs on one line, or one per line when that would overrun a panel."""
    parts = [f"{f}={v}" + (" (control)" if f == ARM_COL and v in CONTROL_ARMS else "")
             for f, v in zip(factors, keys, strict=True)]
    one_line = ", ".join(parts)
    return one_line if len(one_line) <= 55 else "\n".join(parts)


def _facets(df: pd.DataFrame, factors: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """One panel per combination of the other factors (a single unnamed panel when there are none)."""
    if not factors:
        return [("", df)]
    text = in_level_order(df.astype({f: str for f in factors}), factors)  # panels in level order
    return [(_facet_label(k if isinstance(k, tuple) else (k,), factors), g)
            for k, g in text.groupby(factors, sort=False)]


def _grid(fig: Figure, n: int, max_cols: int = 2) -> list:
    cols = min(n, max_cols)
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def t_interval(values: pd.Series) -> tuple[float, float]:
    """95% t-interval of a mean (scipy.stats), for seaborn's ``errorbar``; a point if undefined."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2 or np.ptp(x) == 0:
        return m, m
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=m, scale=stats.sem(x))
    return float(lo), float(hi)


def _ratio_ticks(ratios: list[float]) -> list[str]:
    return [f"{r:g}" + ("\n(real only)" if r == 0 else "") for r in ratios]


# --------------------------------------------------------------------------- accuracy vs ratio


def fig_accuracy_vs_ratio(df: pd.DataFrame, ceiling: pd.DataFrame | None = None) -> Figure:
    """Test accuracy against the synthetic:real ratio, one line per N (mean over seeds, band: 95%
    t-interval), a dashed line at each N's real-only level, and, when ``ceiling`` (tidy runs of a
    real-only study on the full pool) is given, a dotted black line at its mean accuracy. Ratios
    are evenly spaced (the grid's values, not a linear axis). One panel per level of other factors
    (in an arms study, per arm, each starting from real only)."""
    factors = varying_factors(df)
    ratios = sorted(df[RATIO_COL].unique())
    pos = {r: i for i, r in enumerate(ratios)}
    data = df.assign(N=df[N_COL].astype(int), acc_pct=100 * df[ACC_COL], x=df[RATIO_COL].map(pos))
    sizes = sorted(data["N"].unique())
    # a qualitative palette: neighbouring N get clearly different colours (a sequential one made
    # N=500 and N=1,000 two similar teals)
    palette = dict(zip(sizes, sns.color_palette("colorblind", len(sizes)), strict=True))
    panels = _facets(data, factors)
    real = data[data[RATIO_COL] == 0]
    if ARM_COL in data:  # one panel per arm, each drawn from the real-only level at ratio 0
        real = data[data[ARM_COL] == REAL_ONLY]
        panels = [(label, g if (g[RATIO_COL] == 0).any() else pd.concat([real, g]))
                  for label, g in _facets(data[data[ARM_COL] != REAL_ONLY], factors)]
    ceil_acc = 100 * float(ceiling[ACC_COL].mean()) if ceiling is not None and len(ceiling) else None
    bands = [t_interval(g["acc_pct"]) for _, g in data.groupby(["N", "x", *factors], sort=False)]
    values = [v for band in bands for v in band] + ([ceil_acc] if ceil_acc is not None else [])
    lo, hi = max(0.0, min(values) - 1.5), min(100.0, max(values) + 1.5)  # every band fits...
    clipped = min(values) < 0 or max(values) > 100  # ...unless it runs past 0 or 100%
    with _style():
        cols = min(len(panels), 2)
        fig = Figure(figsize=(8.5 if cols == 1 else 13, 5.2 * math.ceil(len(panels) / cols)), dpi=DPI,
                     layout="constrained")
        for ax, (label, g) in zip(_grid(fig, len(panels)), panels, strict=True):
            sns.lineplot(data=g, x="x", y="acc_pct", hue="N", palette=palette, marker="o", markersize=7,
                         errorbar=t_interval, err_kws={"alpha": 0.15}, ax=ax, legend=False)
            for n, gb in (real if ARM_COL in data else g[g[RATIO_COL] == 0]).groupby("N"):
                ax.axhline(gb["acc_pct"].mean(), color=palette[n], ls="--", lw=1.2, alpha=0.8)
            if ceil_acc is not None:
                ax.axhline(ceil_acc, color="black", ls=":", lw=2)
            ax.set_xticks(range(len(ratios)), _ratio_ticks(ratios))
            ax.set_xlim(-0.2, len(ratios) - 0.8)
            ax.set_ylim(lo, hi)
            ax.set_xlabel("added : real ratio (images the arm adds per real image)" if ARM_COL in df
                          else "synthetic : real ratio (GAN images per real image)")
            ax.set_ylabel("test accuracy (%)")
            if label:
                ax.set_title(label)
        handles = [(Line2D([], [], color=palette[n], marker="o"), Patch(color=palette[n], alpha=0.2))
                   for n in sizes]
        labels = [f"N = {n:,} real (band: 95% t-interval over seeds)" for n in sizes]
        handles.append(Line2D([], [], color="grey", ls="--"))
        labels.append("real-only level of that N")
        if ceil_acc is not None:
            n_ceil = int(ceiling[N_COL].iloc[0]) if N_COL in ceiling else 0
            handles.append(Line2D([], [], color="black", ls=":", lw=2))
            labels.append(f"ceiling: all {n_ceil:,} real, {ceil_acc:.1f}%")
        fig.legend(handles=handles, labels=labels, handler_map={tuple: HandlerTuple(ndivide=None)},
                   loc="outside lower center", ncols=min(len(handles), 2), fontsize=9.5, frameon=False)
        fig.suptitle("Test accuracy with GAN images, per training-set size N"
                     + ("\n(bands clipped at the axis: an interval ran past 0 or 100%)" if clipped else ""))
    return fig


# --------------------------------------------------------------------------- budget curve

STEPS_COL = "classifier.steps"


def curve_label(df: pd.DataFrame) -> pd.Series:
    """What a budget curve's line is: the arm (or ratio), with any setting besides N and the step
    budget that varies among the runs (an augmentation, ...)."""
    factors = [f for f in varying_factors(df) if f not in (STEPS_COL, ARM_COL)]
    factors += [f for f in ("classifier.augment",) if f in df and df[f].nunique() > 1 and f not in factors]
    base = df[ARM_COL].astype(str) if ARM_COL in df else "ratio " + df[RATIO_COL].map("{:g}".format)
    for f in factors:
        base = base + ", " + f.split(".")[-1] + " " + df[f].astype(str)
    return base


def fig_budget_curve(df: pd.DataFrame) -> Figure:
    """Test accuracy against the classifier's step budget, one panel per N and one line per arm
    (mean over seeds, band: 95% t-interval): whether an arm's gain holds, grows or was still
    climbing when its budget ended."""
    data = df.assign(acc_pct=100 * df[ACC_COL], steps=df[STEPS_COL].astype(int), line=curve_label(df))

    def axes(ax: Any, g: pd.DataFrame) -> None:
        ax.set_xscale("log")
        ticks = sorted(g["steps"].unique())
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("classifier steps (log scale)")
        ax.set_ylabel("test accuracy (%)")

    return _lines_per_n(data, x="steps", y="acc_pct", line="line", errorbar=t_interval, height=5.0, axes=axes,
                        title="Test accuracy against the step budget (band: 95% t-interval over seeds)")


def _lines_per_n(data: pd.DataFrame, *, x: str, y: str, line: str, errorbar: Any, height: float, title: str,
                 axes: Callable[[Any, pd.DataFrame], None]) -> Figure:
    """One panel per N and one line per value of ``line`` (mean over seeds, band: ``errorbar``), one
    legend below them all; ``axes(ax, rows)`` labels each panel from its rows."""
    sizes = sorted(data[N_COL].astype(int).unique())
    lines = sorted(data[line].unique())
    palette = dict(zip(lines, sns.color_palette("colorblind", len(lines)), strict=True))
    with _style():
        cols = min(len(sizes), 2)
        fig = Figure(figsize=(8.5 if cols == 1 else 13, height * math.ceil(len(sizes) / cols)), dpi=DPI,
                     layout="constrained")
        for ax, n in zip(_grid(fig, len(sizes)), sizes, strict=True):
            g = data[data[N_COL].astype(int) == n]
            sns.lineplot(data=g, x=x, y=y, hue=line, palette=palette, marker="o", errorbar=errorbar,
                         err_kws={"alpha": 0.15}, ax=ax, legend=False)
            axes(ax, g)
            ax.set_title(f"N = {n:,}")
        fig.legend(handles=[Line2D([], [], color=palette[k], marker="o") for k in lines], labels=lines,
                   loc="outside lower center", ncols=min(len(lines), 3), fontsize=9.5, frameon=False)
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- generator curves


def fig_gan_curves(curves: pd.DataFrame) -> Figure:
    """Budget KID (report.curves) against the generator's training step, one panel per N and one
    line per generator setting: mean over seeds, band: the seeds' range."""
    def axes(ax: Any, _rows: pd.DataFrame) -> None:
        ax.set_xlabel("generator training step")
        ax.set_ylabel("KID against the budget's images (lower is better)")

    return _lines_per_n(curves, x="step", y="budget_kid", line="generator", errorbar=("pi", 100), height=4.8,
                        axes=axes, title="Generator convergence on budget data (band: range over seeds)")


# --------------------------------------------------------------------------- heatmaps


def _cell_text_color(value: float, lim: float) -> str:
    return "white" if abs(value) > 0.6 * lim else "black"


def fig_gain_heatmap(cells: pd.DataFrame) -> Figure:
    """Mean paired difference to real only (pp) over (N, ratio), one panel per level of other
    factors. Each cell shows the mean and its 95% t-interval; cells that are not significant after
    Benjamini-Hochberg (q >= 0.05, or no interval) are hatched and their text is grey, and a nominal
    one (its interval excludes 0, its q does not pass) says so."""
    factors = _factor_cols(cells)
    panels = _facets(cells, factors)
    lim = max(1.0, float(np.nanmax(np.abs(100 * cells["mean_diff"].to_numpy(float)))))
    with _style():
        cols = min(len(panels), 2)
        n_ratio = cells[RATIO_COL].nunique()
        n_size = cells[N_COL].nunique()
        fig = Figure(figsize=(max(7.5, cols * (2.6 + 1.5 * n_ratio)),
                              (1.9 + 0.85 * n_size) * math.ceil(len(panels) / cols)),
                     dpi=DPI, layout="constrained")
        axes = _grid(fig, len(panels))
        for ax, (label, g) in zip(axes, panels, strict=True):
            pivot = g.pivot_table(index=N_COL, columns=RATIO_COL, values="mean_diff", aggfunc="first") * 100
            sns.heatmap(pivot, ax=ax, cmap="RdBu", center=0, vmin=-lim, vmax=lim, cbar=ax is axes[-1],
                        cbar_kws={"label": "GAN minus real only (pp)"}, linewidths=1, linecolor="white")
            for i, n in enumerate(pivot.index):
                for j, r in enumerate(pivot.columns):
                    row = g[(g[N_COL] == n) & (g[RATIO_COL] == r)]
                    if row.empty:
                        continue
                    row = row.iloc[0]
                    m = 100 * row["mean_diff"]
                    if row["significant"]:
                        ci = f"[{signed(100 * row['ci_low'])}, {signed(100 * row['ci_high'])}]"
                        color, weight = _cell_text_color(m, lim), "bold"
                    else:
                        ci = ("no CI" if math.isnan(row["ci_low"])
                              else f"[{signed(100 * row['ci_low'])}, {signed(100 * row['ci_high'])}]")
                        ci += " nominal" if row["nominal"] else ""
                        color, weight = "#333333", "normal"  # on the faded cell below: always dark
                        ax.add_patch(Rectangle((j, i), 1, 1, facecolor=(1, 1, 1, 0.6), hatch=HATCH,
                                               edgecolor="#9a9a9a", lw=0))
                    ax.text(j + 0.5, i + 0.42, signed(m), ha="center", va="center", color=color,
                            fontsize=12, fontweight=weight)
                    ax.text(j + 0.5, i + 0.72, ci, ha="center", va="center", color=color, fontsize=8.5)
            ax.set_xlabel("synthetic : real ratio")
            ax.set_ylabel("N (real labelled images)")
            ax.set_yticklabels([f"{int(n):,}" for n in pivot.index], rotation=0)
            ax.set_xticklabels([f"{r:g}" for r in pivot.columns])
            if label:
                ax.set_title(label)
        fig.legend(handles=[Patch(facecolor="white", edgecolor="#9a9a9a", hatch=HATCH,
                                  label="faded and hatched: not significant after Benjamini-Hochberg "
                                        "(q ≥ 0.05, or no CI);\n'nominal': the 95% CI excludes 0, "
                                        "q does not")],  # two lines: one is wider than a 3-column figure
                   loc="outside lower center", fontsize=9, frameon=False)
        what = "each arm" if ARM_COL in factors else "GAN images"
        fig.suptitle(f"Gain in test accuracy from {what}, pp\n(mean paired difference to real only; "
                     "[95% t-interval])", fontsize=12)
    return fig


def fig_class_gains(classes: pd.DataFrame) -> Figure:
    """Per-class mean paired difference (pp): one row per (N, ratio, other factors) cell, one column
    per class; a black frame marks a difference significant after Benjamini-Hochberg across all the
    (class, cell) tests (q < 0.05)."""
    factors = _factor_cols(classes)
    keys = [N_COL, RATIO_COL, *factors]
    # row labels name factors by their last part (classifier.init -> init) so the cells keep room
    data = classes.assign(cell=[", ".join([f"N={int(r[N_COL]):,}", f"r={r[RATIO_COL]:g}",
                                           *[f"{f.rsplit('.', 1)[-1]}={r[f]}" for f in factors]])
                                for _, r in classes.iterrows()],
                          pp=100 * classes["mean_diff"])
    order = data.sort_values(keys)["cell"].drop_duplicates().tolist()
    data["class_name"] = data["class_name"].astype(str).map(plot_label)  # "$" in a folder name: text
    names = data.sort_values("class")["class_name"].drop_duplicates().tolist()
    pivot = data.pivot_table(index="cell", columns="class_name", values="pp", aggfunc="first")
    pivot = pivot.reindex(index=order, columns=names)
    sig = data.pivot_table(index="cell", columns="class_name", values="significant",
                           aggfunc="first").reindex(index=order, columns=names)
    lim = max(1.0, float(np.nanmax(np.abs(pivot.to_numpy(float)))))
    with _style():
        label_in = 0.08 * max(len(c) for c in order)  # inches the longest row label takes
        fig = Figure(figsize=(1.8 + label_in + 0.85 * len(names), 2.6 + 0.42 * len(order)), dpi=DPI,
                     layout="constrained")
        ax = fig.subplots()
        labels = pivot.map(lambda v: "" if math.isnan(v) else signed(v)).to_numpy()  # never "-0.0"
        sns.heatmap(pivot, ax=ax, cmap="RdBu", center=0, vmin=-lim, vmax=lim, annot=labels, fmt="",
                    annot_kws={"fontsize": 8.5}, cbar_kws={"label": "GAN minus real only (pp)"},
                    linewidths=0.5, linecolor="white")
        for i, cell in enumerate(order):
            for j, name in enumerate(names):
                if sig.loc[cell, name] is True or sig.loc[cell, name] == 1:
                    ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="black", lw=2))
        ax.set_xlabel("class")
        ax.set_ylabel("cell (N, ratio r)")
        ax.tick_params(axis="x", labelrotation=35)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
        ax.set_title("Per-class test accuracy gain from GAN images (pp)\nblack frame: significant "
                     "after Benjamini-Hochberg across all class tests (q < 0.05)", fontsize=11)
    return fig


# --------------------------------------------------------------------------- GAN quality


def fig_quality_vs_gain(pairs: pd.DataFrame, metric: str) -> Figure:
    """One point per GAN run: its GAN quality ``metric`` against its paired gain in test accuracy
    (pp), coloured by the study's other factor where it has one (e.g. ``gan.recipe``), else by N,
    marker by ratio; the title gives Spearman's rank correlation."""
    label, scale = QUALITY_LABELS.get(metric, (metric, 1.0))
    data = pairs.dropna(subset=[metric]).assign(
        **{"N": lambda d: d[N_COL].astype(int), "ratio": lambda d: d[RATIO_COL].map("{:g}".format),
           "q": lambda d: scale * d[metric], "gain": lambda d: 100 * d[f"{ACC_COL}:diff"]})
    factors = [c for c in pairs.columns if c not in (N_COL, RATIO_COL, SEED_COL, "run_id")
               and not c.startswith(("quality/", ACC_COL)) and data[c].nunique() > 1]
    hue = factors[0] if factors else "N"
    with _style():
        fig = Figure(figsize=(8, 5), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        sns.scatterplot(data=data, x="q", y="gain", hue=hue, style="ratio", s=70, ax=ax, legend="full",
                        palette="viridis" if hue == "N" else "tab10")
        ax.axhline(0, color="black", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("gain in test accuracy vs real only (pp)")
        title = f"Generator quality against gain ({len(data)} runs)"
        if len(data) >= 3 and data["q"].nunique() > 1 and data["gain"].nunique() > 1:
            rho = stats.spearmanr(data["q"], data["gain"])
            title += f"; Spearman ρ = {rho.statistic:+.2f} (p = {rho.pvalue:.2g})"
        ax.set_title(title)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=f"{hue} / ratio", fontsize=9)
    return fig


# --------------------------------------------------------------------------- Optuna


def fig_param_importances(importances: pd.DataFrame) -> Figure:
    """Optuna's fANOVA importance of each parameter for the objective (columns param, importance)."""
    data = importances.sort_values("importance", ascending=False)
    with _style():
        fig = Figure(figsize=(8, 1.6 + 0.45 * len(data)), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        sns.barplot(data=data, x="importance", y="param", color="#3b6ea5", ax=ax)
        for i, v in enumerate(data["importance"]):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=10)
        ax.set_xlim(0, min(1.0, data["importance"].max() * 1.2 + 0.02))
        ax.set_xlabel("fANOVA importance for the objective (share of variance, sums to 1)")
        ax.set_ylabel("parameter")
        ax.set_title("Which settings matter (Optuna parameter importances)")
    return fig


def fig_optimization_history(history: pd.DataFrame, paired_gain: bool = False) -> Figure:
    """Objective of each complete trial in order, and the best so far: budget-validation accuracy,
    or its paired gain over real only (``paired_gain``)."""
    data = history.assign(value_pct=100 * history["value"], best_pct=100 * history["best_so_far"])
    what = "gain in validation accuracy over real only (pp)" if paired_gain else "validation accuracy (%)"
    with _style():
        fig = Figure(figsize=(8, 4.6), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        sns.scatterplot(data=data, x="number", y="value_pct", color="#3b6ea5", s=40, ax=ax,
                        label="trial")
        ax.step(data["number"], data["best_pct"], where="post", color="#c0392b", lw=2, label="best so far")
        ax.set_xlabel("trial number (complete trials; pruned ones have no value)")
        ax.set_ylabel(what)
        ax.set_title("Optimisation history (the objective is on budget validation data, never test)")
        ax.legend(loc="lower right")
    return fig


# --------------------------------------------------------------------------- two studies


def fig_compare_gains(comp: pd.DataFrame, name_a: str, name_b: str) -> Figure:
    """Gain over real only (pp, 95% t-interval) of the same cells in two studies, side by side."""
    factors = _factor_cols(comp)
    labels = [", ".join([f"N={int(r[N_COL]):,}", f"r={r[RATIO_COL]:g}",
                         *[f"{f}={r[f]}" for f in factors if isinstance(r[f], str)]])
              for _, r in comp.iterrows()]
    colors = sns.color_palette("colorblind", 2)
    with _style():
        fig = Figure(figsize=(9, 1.8 + 0.45 * len(comp)), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(comp))
        for off, side, name, color in ((-0.15, "a", name_a, colors[0]), (0.15, "b", name_b, colors[1])):
            m = 100 * comp[f"gain_{side}"].to_numpy(float)
            lo = 100 * comp[f"ci_low_{side}"].to_numpy(float)
            hi = 100 * comp[f"ci_high_{side}"].to_numpy(float)
            err = np.vstack([np.where(np.isnan(lo), 0, m - lo), np.where(np.isnan(hi), 0, hi - m)])
            ax.errorbar(m, y + off, xerr=err, fmt="o", color=color, capsize=3,
                        label=f"{side.upper()}: {name}")
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("gain in test accuracy vs real only (pp; bar: 95% t-interval)")
        ax.set_ylabel("cell")
        ax.set_title(f"Same cells, two studies: {name_a} vs {name_b}")
        ax.legend(loc="best", fontsize=9)
    return fig
