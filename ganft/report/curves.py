"""The generators' convergence on budget data: the ``gan/budget_kid`` curve each GAN (or diffusion
model) logs under ``gan.curve_every`` (KID of its samples against the budget's own training images, in
the real-subset classifier's features; no test image). The section draws the curves, says where each
generator setting stopped improving, and which setting ends lowest: a choice on budget data that a
study (gan_budget) can make for the next one. Test-split scores are never read here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ganft.report import figures as figs
from ganft.report.page import Section
from ganft.report.sections import save_figure
from ganft.report.stats import ARM_COL, N_COL, SEED_COL, varying_factors

CURVE_METRIC = "gan/budget_kid"
CURVES_CSV = "gan_curves.csv"
RECIPE = "gan.recipe"
SETTLED = 0.10  # a curve has settled at its first step within this share of its lowest value


def curve_frame(df: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """``history`` (run_id, step, budget_kid: the logged points) joined to its runs in ``df``: one
    row per point with grid_point, N, seed and ``generator``, the setting that tells the curves of
    one N apart (the factors that vary among those runs, 'GAN' when none does)."""
    if history.empty or "run_id" not in df:
        return pd.DataFrame()
    runs = df[df["run_id"].isin(history["run_id"])]
    factors = [f for f in varying_factors(runs) if f != ARM_COL or runs[ARM_COL].nunique() > 1]
    if RECIPE in runs and runs[RECIPE].nunique() > 1:  # named by the recipe, not the fields it sets
        text = runs.astype(str)
        factors = [RECIPE, *[f for f in factors
                             if f != RECIPE and text.groupby(RECIPE)[f].nunique().max() > 1]]
    label = pd.Series("GAN", index=runs.index) if not factors else \
        runs[factors].astype(str).apply(lambda r: ", ".join(f"{k.split('.')[-1]} {v}" for k, v in r.items()),
                                        axis=1)
    keys = runs.assign(generator=label)[["run_id", "grid_point", N_COL, SEED_COL, "generator"]]
    out = history[["run_id", "step", "budget_kid"]].merge(keys, on="run_id", how="inner")
    return out.sort_values([N_COL, "generator", SEED_COL, "step"]).reset_index(drop=True)


def settle_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (N, generator): the mean curve over seeds (steps every seed logged), its first, last and
    lowest value, the step of the lowest, and the step where it settled (the first within SETTLED
    of the lowest: at most lowest + SETTLED x |lowest|; the first step for a curve that only rose)."""
    rows = []
    for (n, gen), g in curves.groupby([N_COL, "generator"], sort=True):
        seeds = g[SEED_COL].nunique()
        per_step = g.groupby("step")["budget_kid"].agg(["mean", "count"])
        mean = per_step[per_step["count"] == seeds]["mean"]
        if mean.empty:
            continue
        first, low = mean.iloc[0], mean.min()
        fallen = mean[mean <= low + SETTLED * abs(low)]
        rows.append({N_COL: int(n), "generator": gen, "gans": seeds, "steps": int(mean.index.max()),
                     "kid_first": first, "kid_last": mean.iloc[-1], "kid_lowest": low,
                     "lowest_at_step": int(mean.idxmin()), "settled_at_step": int(fallen.index[0])})
    table = pd.DataFrame(rows)
    if len(table):
        table["lowest_at_end"] = table.groupby(N_COL)["kid_last"].transform("min") == table["kid_last"]
    return table


def choice_lines(table: pd.DataFrame) -> list[str]:
    """Per N, the setting with the lowest mean budget KID at the last step and where it settled."""
    out = []
    for n, g in table.groupby(N_COL, sort=True):
        best = g[g["lowest_at_end"]].iloc[0]
        others = "; ".join(f"{r['generator']} {r['kid_last']:.4g}"
                           for _, r in g[~g["lowest_at_end"]].iterrows())
        still = " (its lowest point is its last: still falling)" if best["lowest_at_step"] == best["steps"] \
            else ""
        out.append(f"On budget data at N={int(n):,}: {best['generator']} ends with the lowest budget KID "
                   f"({best['kid_last']:.4g} at step {best['steps']:,}; {others or 'no other setting'}); "
                   f"its curve settled at step {best['settled_at_step']:,}{still}.")
    return out


def curve_section(curves: pd.DataFrame, out_dir: Path) -> tuple[Section, list[str]]:
    """The section and the choice lines (for the page's answer when the study has no pairs)."""
    curves.to_csv(out_dir / CURVES_CSV, index=False)
    table = settle_table(curves)
    name = save_figure(figs.fig_gan_curves(curves), out_dir, "gan_curves.png")
    if table.empty:  # no step that every seed of a setting logged
        return Section("Generator convergence on budget data", [
            f"The seeds' curves share no step, so no mean curve is drawn up; points in "
            f"[{CURVES_CSV}]({CURVES_CSV})."], [(name, "Budget KID against training step, per N.")]), []
    shown = table.drop(columns="lowest_at_end").assign(
        **{c: table[c].map("{:.4g}".format) for c in ("kid_first", "kid_last", "kid_lowest")},
        ends_lowest=table["lowest_at_end"].map({True: "lowest", False: ""}))
    lines = choice_lines(table)
    section = Section("Generator convergence on budget data", [
        "Every `gan.curve_every` steps each generator scored `gan.eval_samples` class-balanced samples "
        "(the same noise each time) by KID against the budget's own training images, in the features of a "
        "classifier trained on those images (`gan/budget_kid`, lower is better; no test image and no "
        "label beyond the budget). Curves: mean over the seeds' generators, each read from the run that "
        "trained it (a later run that found it in the cache logs none). `settled_at_step`: the first "
        f"step whose mean is within {SETTLED:.0%} of the mean curve's lowest; `lowest_at_step` at the last "
        "step means the curve was still falling when training ended, at the first step that it only "
        "rose. `ends_lowest`: the setting of its N whose mean curve ends lowest (the line below). "
        f"Points in [{CURVES_CSV}]({CURVES_CSV}).", *lines],
        [(name, "Budget KID against training step, per N (mean over seeds; band: the seeds' range).")],
        shown)
    return section, lines
