"""The report of a study whose arms use unlabelled images (issue 16): every arm against real only
(``stats.paired_cells``), every GAN arm against the best cheap baseline, and the answer lines.

The cheap baseline is self-training on the same unlabelled images. Which of its settings (U,
ratio, ...) is "best" is chosen per N on budget data (``stats.choice_col``: the cross-validated
true-class probability under data.validation kfold, else budget-validation accuracy), the
only accuracy a user with N labels has; the test split never chooses, so the comparison cannot be
tilted by picking the luckiest test result on either side. The best GAN arm of the answer lines
is chosen the same way. Each GAN run is paired with the chosen self-training run of the same N and
seed (same labelled subset, same unlabelled images), and the Benjamini-Hochberg adjustment runs
over every comparison of that table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ganft.report.page import Section
from ganft.report.stats import (
    ACC_COL,
    ARM_COL,
    CHEAP_ARM,
    CI_TEXT,
    CONTROL_ARMS,
    N_COL,
    RATIO_COL,
    REAL_ONLY,
    SEED_COL,
    STAT_COLS,
    add_q_values,
    cell_keys,
    choice_col,
    in_level_order,
    pair_factors,
    select_cell,
    summarise,
    varying_factors,
)
from ganft.report.text import ReportMeta, _n, cell_name, ci_text, p_text, pp, size_line

__all__ = ["CHEAP_ARM", "answer_lines", "arms_section", "best_cheap", "versus_cheap"]


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Factor columns as text (lists, None and "all" compare safely), as the paired cells have them."""
    return df.astype({k: str for k in {*varying_factors(df), *pair_factors(df)}})


def cell_means(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Per cell (N, ratio, arm, ...): the mean of ``col`` over its runs and the number of runs."""
    keys = cell_keys(df)
    if col not in df:
        return pd.DataFrame(columns=[*keys, "mean", "runs"])
    g = _as_text(df).groupby(keys, sort=True, dropna=False)[col]
    return g.mean().rename("mean").to_frame().join(g.count().rename("runs")).reset_index()


def best_cheap(df: pd.DataFrame) -> pd.DataFrame:
    """Per N, the self-training cell with the highest mean budget-validation accuracy: its cell
    keys, ``val_acc`` and ``runs``. Empty when the study has no self-training runs."""
    means = cell_means(df, choice_col(df)[0])
    cheap = means[means[ARM_COL] == CHEAP_ARM].dropna(subset=["mean"])
    if cheap.empty:
        return cheap.rename(columns={"mean": "val_acc"})
    best = cheap.loc[cheap.groupby(N_COL)["mean"].idxmax()]
    return best.rename(columns={"mean": "val_acc"}).reset_index(drop=True)


def versus_cheap(df: pd.DataFrame, metric: str = ACC_COL) -> pd.DataFrame:
    """Every GAN cell (any arm but real only and self-training) against the best cheap baseline of
    its N: the cell keys, ``cheap_cell`` (which self-training setting), ``mean_acc``, ``cheap_acc``,
    the paired statistics of (GAN run - self-training run of the same seed) and BH q."""
    keys, factors = cell_keys(df), varying_factors(df)
    cols = [*keys, "cheap_cell", "mean_acc", "cheap_acc", *STAT_COLS, "q_value", "significant", "verdict"]
    chosen = best_cheap(df)
    if chosen.empty or metric not in df:
        return pd.DataFrame(columns=cols)
    runs = _as_text(df)
    pair_keys = [N_COL, SEED_COL, *pair_factors(df)]
    parts = []
    for _, best in chosen.iterrows():
        part = select_cell(runs, best, keys)[[*pair_keys, metric]].rename(columns={metric: f"{metric}:cheap"})
        parts.append(part.assign(cheap_cell=setting(best, factors)))
    cheap = pd.concat(parts, ignore_index=True).drop_duplicates(pair_keys, keep="last")
    gans = runs[~runs[ARM_COL].isin([REAL_ONLY, CHEAP_ARM, *CONTROL_ARMS])]
    merged = gans[[*dict.fromkeys([*pair_keys, *keys]), metric]].merge(cheap, on=pair_keys, how="inner")
    merged = merged.dropna(subset=[metric, f"{metric}:cheap"])
    rows: list[dict[str, Any]] = []
    for cell, g in merged.groupby(keys, sort=True, dropna=False):
        rows.append({**dict(zip(keys, cell, strict=True)), "cheap_cell": g["cheap_cell"].iloc[0],
                     "mean_acc": g[metric].mean(), "cheap_acc": g[f"{metric}:cheap"].mean(),
                     **summarise((g[metric] - g[f"{metric}:cheap"]).to_numpy())})
    if not rows:
        return pd.DataFrame(columns=cols)
    return in_level_order(add_q_values(pd.DataFrame(rows))[cols], keys)


def setting(row: pd.Series, factors: list[str]) -> str:
    """A cell's name without its N (and without the arm when that is self-training, already said)."""
    name = cell_name(row, factors).split(", ", 1)[1]
    return name.removeprefix(f"{CHEAP_ARM}, ") if row.get(ARM_COL) == CHEAP_ARM else name


def _stat(row: pd.Series | None) -> str:
    if row is None:
        return "no pair"
    if math.isnan(row["ci_low"]):
        return f"{pp(row['mean_diff'])} ({row['note']})"
    return (f"{pp(row['mean_diff'])} (95% CI {ci_text(row)}, q = {row['q_value']:.2g}, {row['verdict']}, "
            f"{_n(int(row['n_pairs']), 'pair')})")


def _row(table: pd.DataFrame, keys: list[str], ref: pd.Series) -> pd.Series | None:
    rows = select_cell(table, ref, keys)
    return rows.iloc[0] if len(rows) else None


def _cells_list(rows: pd.DataFrame, factors: list[str], most: int = 4) -> str:
    """The ``most`` largest differences first; the rest counted."""
    rows = rows.reindex(rows["mean_diff"].abs().sort_values(ascending=False).index)
    text = "; ".join(f"{cell_name(r, factors)} ({pp(r['mean_diff'])}, q = {r['q_value']:.2g})"
                     for _, r in rows.head(most).iterrows())
    return text + (f"; and {len(rows) - most} more in versus_cheap.csv" if len(rows) > most else "")


def answer_lines(df: pd.DataFrame, cells: pd.DataFrame, meta: ReportMeta | None = None) -> list[str]:
    """Per N, the best GAN arm (on budget validation) against real only and against the best cheap
    baseline; the cheap baseline against real only; where GAN images beat it and where they did not;
    the study's size and time."""
    keys, factors = cell_keys(df), varying_factors(df)
    cheap, chosen = versus_cheap(df), best_cheap(df)
    col, label = choice_col(df)
    val = cell_means(df, col)
    gan_val = val[~val[ARM_COL].isin([REAL_ONLY, CHEAP_ARM, *CONTROL_ARMS])].dropna(subset=["mean"])
    lines = []
    for n in sorted(df[N_COL].unique()):
        at_n = gan_val[gan_val[N_COL].astype(float) == float(n)]
        if at_n.empty:
            continue
        best = at_n.loc[at_n["mean"].idxmax()]
        name = setting(best, factors)
        line = (f"N={int(n):,}: the best GAN arm on budget validation is {name} ({100 * best['mean']:.1f}% "
                f"{label}): {_stat(_row(cells, keys, best))} test accuracy over real only")
        pick = chosen[chosen[N_COL].astype(float) == float(n)]
        if len(pick):
            line += (f", and {_stat(_row(cheap, keys, best))} over self-training "
                     f"({setting(pick.iloc[0], factors)}, the cheap baseline that validated best)")
        lines.append(line + ".")
    if len(chosen):
        parts = [f"N={int(r[N_COL]):,} ({setting(r, factors)}): {_stat(_row(cells, keys, r))}"
                 for _, r in chosen.iterrows()]
        lines.append("Self-training, the setting that validated best, against real only: "
                     + "; ".join(parts) + ".")
    if len(cheap):
        won = cheap[cheap["significant"] & (cheap["mean_diff"] > 0)]
        lost = cheap[cheap["significant"] & (cheap["mean_diff"] < 0)]
        text = (f"Generated images beat the best cheap baseline (q < 0.05) in {len(won)} of {len(cheap)} "
                f"GAN cells") + (f" ({_cells_list(won, factors)})" if len(won) else "")
        text += f"; they lost to it in {len(lost)}" + (f" ({_cells_list(lost, factors)})"
                                                       if len(lost) else "")
        lines.append(text + "; the rest show no difference that survives Benjamini-Hochberg.")
    gan_cells = cells[~cells[ARM_COL].isin([CHEAP_ARM, *CONTROL_ARMS])] if len(cells) else cells
    if len(gan_cells):
        up = int((gan_cells["significant"] & (gan_cells["mean_diff"] > 0)).sum())
        down = int((gan_cells["significant"] & (gan_cells["mean_diff"] < 0)).sum())
        lines.append(f"Against real only, GAN arms gain (q < 0.05) in {up} and lose in {down} of "
                     f"{len(gan_cells)} cells.")
    lines.append(size_line(df, cells, meta))
    return lines


def versus_cheap_table(cheap: pd.DataFrame, factors: list[str]) -> tuple[pd.DataFrame, list[str]]:
    verdict = cheap["verdict"].tolist()
    table = pd.DataFrame({"N": cheap[N_COL].astype(int), "ratio": cheap[RATIO_COL],
                          **{f: cheap[f] for f in factors}, "against": cheap["cheap_cell"],
                          "pairs": cheap["n_pairs"], "GAN arm (%)": (100 * cheap["mean_acc"]).round(2),
                          "self-training (%)": (100 * cheap["cheap_acc"]).round(2),
                          "difference (pp)": (100 * cheap["mean_diff"]).round(2),
                          "95% t-CI (pp)": [ci_text(r) for _, r in cheap.iterrows()],
                          "p (paired t)": cheap["p_value"].map(p_text),
                          "q (BH)": cheap["q_value"].map(p_text), "verdict": verdict})
    return table, [v if v in ("gain", "loss") else "" for v in verdict]


def arms_section(df: pd.DataFrame, out_dir: Path) -> Section:
    """GAN arms against the best cheap baseline, as a table (and versus_cheap.csv)."""
    cheap = versus_cheap(df)
    cheap.to_csv(out_dir / "versus_cheap.csv", index=False)
    chosen = best_cheap(df)
    factors = varying_factors(df)
    picks = "; ".join(f"N={int(r[N_COL]):,}: {setting(r, factors)} "
                      f"({100 * r['val_acc']:.1f}% {choice_col(df)[1]}, {int(r['runs'])} runs)"
                      for _, r in chosen.iterrows())
    section = Section("GAN arms against the best cheap baseline", [
        "The cheap alternative to a GAN is self-training on the same unlabelled images (real images "
        "labelled by the real-subset classifier, the most confident of each class, added like "
        "synthetic ones, for the same classifier steps). Its best setting per N is chosen on "
        f"{choice_col(df)[1]}, never on test accuracy: {picks or 'none (no self-training runs)'}. "
        "Each GAN run minus that self-training run of the same N and seed; "
        f"{CI_TEXT}; q: Benjamini-Hochberg across this table. Also in [versus_cheap.csv](versus_cheap.csv)."])
    if len(cheap):
        section.table, section.row_classes = versus_cheap_table(cheap, factors)
    return section
