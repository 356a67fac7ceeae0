"""The report of a study with controls (issue 22): the answer lines, in this order, say whether the
instrument was sensitive (the oracle's gain detected), whether the placebo stayed null, how noisy
it was, what each treatment arm gained and what gain its interval still allows, what it is worth in
real labelled images, and whether every arm fitted its data. Then the calibration table
(calibration.csv), the controls' own cells, and the per-arm fit table.

Controls read labels a user would not have (oracle) or change nothing but the batch order
(placebo): they are never chosen, never a "best" anything, and their cells are tested as their own
multiple-testing family (stats.family_q).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ganft.report import calibrate as cal
from ganft.report.page import Section
from ganft.report.stats import (
    ARM_COL,
    CI_TEXT,
    CONTROL_ARMS,
    N_COL,
    RATIO_COL,
)
from ganft.report.text import ReportMeta, _n, ci_text, p_text, pp, signed, size_line


def _images(x: float) -> str:
    """An exchange rate as people read it: '+120', '-40'; '< 0' below the curve's first point
    (fewer images than the smallest N, how many fewer the curve cannot say), '> +X' beyond it."""
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "more than the curve spans" if x > 0 else "< 0"
    return f"{signed(x, 0)}"


def _worth(cell: pd.Series) -> str:
    x, ci = cell["exchange"], _interval(cell["exchange_low"], cell["exchange_high"])
    if math.isinf(x) and x < 0:
        return (f"it is worth fewer real labelled images than it already has (its accuracy lies below the "
                f"real-only curve's smallest N; 95% CI {ci})")
    return f"it is worth about {_images(x)} real labelled images (95% CI {ci})"


def _interval(low: float, high: float, fmt=_images) -> str:
    return "no CI" if math.isnan(low) else f"{fmt(low)} to {fmt(high)}"


def _share(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{round(x, 2) + 0.0:.2f}"  # + 0.0: never "-0.00"


def _controls(cells: pd.DataFrame, arm: str) -> pd.DataFrame:
    return cells[cells[ARM_COL] == arm].sort_values([N_COL, RATIO_COL])


def sensitivity_line(cells: pd.DataFrame) -> str:
    oracle = _controls(cells, "oracle")
    if oracle.empty:
        return "No oracle control ran, so nothing shows that this study could detect a gain."
    seen = oracle[oracle["significant"] & (oracle["mean_diff"] > 0)]
    head = (f"Sensitivity: the oracle control (ratio x N real labelled images from outside the budget, "
            f"labels a user would not have) gained {pp(oracle['mean_diff'].min())} to "
            f"{pp(oracle['mean_diff'].max())}; detected (q < 0.05 among the controls) in {len(seen)} of "
            f"{len(oracle)} cells")
    missed = oracle[~oracle.index.isin(seen.index)]
    if len(missed):
        where = ", ".join(f"N={int(r[N_COL]):,} ratio {r[RATIO_COL]:g}" for _, r in missed.iterrows())
        return head + f". Not detected at {where}: there a null result says little."
    return head + ", so the instrument would have seen a gain of that size."


def placebo_line(cells: pd.DataFrame) -> str:
    placebo = _controls(cells, "placebo")
    if placebo.empty:
        return "No placebo control ran: the study's false-positive rate is not shown."
    flagged = placebo[~placebo["verdict"].isin(["n.s.", "no CI"])]  # an interval that excludes 0
    parts = "; ".join(f"N={int(r[N_COL]):,}: {pp(r['mean_diff'])} ({ci_text(r)})"
                      for _, r in placebo.iterrows())
    untested = int((placebo["verdict"] == "no CI").sum())
    if flagged.empty and not untested:
        return f"The placebo (real only with another batch order) stayed null in every cell: {parts}."
    if flagged.empty:
        return (f"The placebo (real only with another batch order) stayed null in the "
                f"{len(placebo) - untested} of {len(placebo)} cells with an interval: {parts}.")
    # nominal or significant: an interval that excludes 0 where nothing changed but the batch order
    return (f"Warning: the placebo (real only with another batch order, which should change nothing) was "
            f"{', '.join(sorted(set(flagged['verdict'])))} in {len(flagged)} of {len(placebo)} cells: "
            f"{parts}. Read every verdict below against that false-positive rate.")


def noise_line(df: pd.DataFrame) -> str:
    noise = cal.noise_table(df)
    parts = "; ".join(f"N={int(r[N_COL]):,}: {100 * r['pooled_sd']:.2f} pp, so {int(r['seeds'])} seeds "
                      f"detect {pp(r['detectable']).lstrip('+')} with 80% power"
                      for _, r in noise.iterrows() if r["pooled_sd"] == r["pooled_sd"])
    return (f"Noise: the pooled standard deviation of paired differences (treatment and placebo cells) "
            f"was {parts}." if parts else "")


def arm_lines(table: pd.DataFrame) -> list[str]:
    """Per N and treatment arm: the gains over the ratios, the largest gain still allowed, the
    ratios shown equivalent, the oracle share and the exchange rate at the ratio with the largest
    mean gain."""
    lines = []
    extra = cal.extra_factors(table)

    def at(r: pd.Series) -> str:
        """Where a cell lies: its ratio (none for an arm that adds no images) and its other settings."""
        parts = [] if r[RATIO_COL] == 0 and extra else [f"ratio {r[RATIO_COL]:g}"]
        return ", ".join(parts + [f"{k.split('.')[-1]} {r[k]}" for k in extra])

    for (n, arm), g in table.groupby([N_COL, ARM_COL], sort=True):
        gains = ", ".join(f"{pp(r['mean_diff'])} at {at(r)} ({ci_text(r)}; "
                          f"{r['verdict']})" for _, r in g.iterrows())
        bound = g.loc[g["bound"].idxmax()] if g["bound"].notna().any() else None
        margin = g["margin"].iloc[0]
        eq = [at(r) for _, r in g.iterrows() if r["equivalent"]]
        best = g.loc[g["mean_diff"].idxmax()]
        line = f"N={int(n):,}, {arm}: {gains}."
        if bound is not None:
            line += (f" The intervals rule out gains above {pp(bound['bound'])} (the largest upper 95% "
                     f"limit, at {at(bound)})")
            within = f"within ±{100 * margin:g} pp"
            line += (f"; equivalent to real only {within} (TOST, p < 0.05) at {'; '.join(eq)}." if eq
                     else f"; equivalence {within} is not shown.")
        share = _interval(best["share_low"], best["share_high"], _share)
        if best["share"] == best["share"]:  # an oracle ran at that ratio
            line += (f" At {at(best)} its gain is {_share(best['share'])} of the oracle's "
                     f"(Fieller 95% CI {share}) and {_worth(best)}.")
        elif best["exchange"] == best["exchange"]:
            line += f" At {at(best)} it {_worth(best).removeprefix('it ')}."
        lines.append(line)
    return lines


def fit_line(fit: pd.DataFrame) -> str:
    if fit.empty:
        return ""
    bad = fit[~fit["fitted"]]
    if bad.empty:
        return (f"Every arm fitted its real images: training accuracy at least {100 * cal.FIT_ACC:.0f}% "
                f"in every run and the loss no longer falling over the last 10% of steps.")
    extra = cal.extra_factors(fit)
    where = "; ".join(f"N={int(r[N_COL]):,} {r[ARM_COL]} ratio {r[RATIO_COL]:g}"
                      + "".join(f", {k.split('.')[-1]} {r[k]}" for k in extra) + " (lowest training "
                      f"accuracy {100 * r['train_acc_min']:.1f}%, loss {100 * r['loss_fall']:.0f}% lower "
                      f"than the window before)" for _, r in bad.iterrows())
    return (f"Warning: {_n(len(bad), 'arm cell')} had not fitted {'its' if len(bad) == 1 else 'their'} real "
            f"images by the end of the budget: "
            f"{where}. Their comparisons measure under-training as much as the added images.")


def shared_line(df: pd.DataFrame, table: pd.DataFrame) -> str:
    ratios = table[RATIO_COL].nunique() if len(table) else 0
    if ratios < 2:
        return ""
    return (f"The {ratios} ratios of one N share each seed's real-only run and, for a GAN arm, one GAN: the "
            f"{len(table)} treatment cells are {table[N_COL].nunique()} groups of correlated tests, not "
            f"{len(table)} independent ones (Benjamini-Hochberg runs across them).")


def answer_lines(df: pd.DataFrame, cells: pd.DataFrame, table: pd.DataFrame, meta: ReportMeta) -> list[str]:
    """The calibrated answer; ``table`` is ``calibrate.calibration`` of the study."""
    lines = [sensitivity_line(cells), placebo_line(cells), noise_line(df), *arm_lines(table),
             fit_line(cal.fit_table(df)), shared_line(df, table)]
    lines.append(size_line(df, cells, meta))
    return [line for line in lines if line]


# --------------------------------------------------------------------------- sections


def write_tables(df: pd.DataFrame, table: pd.DataFrame, out_dir: Path) -> None:
    """The numbers behind the calibrated answer, as CSVs a README can cite: calibration.csv (``table``,
    ``calibrate.calibration``), noise.csv (pooled spread per N) and fit.csv (per arm fit)."""
    table.to_csv(out_dir / "calibration.csv", index=False)
    cal.noise_table(df).to_csv(out_dir / "noise.csv", index=False)
    cal.fit_table(df).to_csv(out_dir / "fit.csv", index=False)


def calibration_section(table: pd.DataFrame, margin: float) -> Section:
    """``table``: ``calibrate.calibration`` of the study (written by write_tables)."""
    m = f"{100 * margin:g}"
    rows = list(table.iterrows())
    shown = pd.DataFrame({
        "N": table[N_COL].astype(int), "arm": table[ARM_COL], "ratio": table[RATIO_COL],
        "pairs": table["n_pairs"], "gain (pp)": (100 * table["mean_diff"]).round(2),
        "95% t-CI (pp)": [ci_text(r) for _, r in rows], "q (BH)": table["q_value"].map(p_text),
        "verdict": table["verdict"], "rules out above (pp)": (100 * table["bound"]).round(2),
        f"TOST ±{m} pp (p)": table["tost_p"].map(p_text),
        "oracle gain (pp)": (100 * table["oracle_gain"]).round(2),
        "oracle share (Fieller 95% CI)": [f"{_share(r['share'])} "
                                          f"({_interval(r['share_low'], r['share_high'], _share)})"
                                          for _, r in rows],
        "worth, real images (95% CI)": [f"{_images(r['exchange'])} "
                                        f"({_interval(r['exchange_low'], r['exchange_high'])})"
                                        for _, r in rows],
        "detectable (pp)": (100 * table["detectable"]).round(2), "seeds for 1 pp": table["seeds_for_1pp"]})
    return Section("Calibration against the controls", [
        "Every treatment cell (an arm other than real only and the controls), its paired gain over real "
        f"only ({CI_TEXT}; q: Benjamini-Hochberg among the treatment cells) and what the controls say:",
        "`rules out above`: the upper 95% limit, the largest gain the data still allow. `TOST`: two "
        f"one-sided t-tests of equivalence within ±{m} pp (the study file's `report.margin`); p < 0.05 "
        "shows the arm equivalent to real only. `oracle share`: the arm's gain over the oracle's at the "
        "same N and ratio (1: as good as real labelled images; Fieller's interval, none when the oracle's "
        "gain is not clear of 0). `worth`: the arm's accuracy read off the study's real-only learning "
        "curve, extended by the oracle cells, minus its own real images (bootstrap over seeds; `< 0`: "
        "below the curve's smallest N, by an amount the curve cannot tell). "
        "`detectable`: the smallest gain 5%-level paired t-tests find with 80% power at the cell's spread "
        "and seed count. Also in "
        "[calibration.csv](calibration.csv)."], table=shown)


def controls_section(cells: pd.DataFrame) -> Section:
    ctrl = cells[cells[ARM_COL].isin(CONTROL_ARMS)].sort_values([ARM_COL, N_COL, RATIO_COL])
    shown = pd.DataFrame({"control": ctrl[ARM_COL], "N": ctrl[N_COL].astype(int),
                          "ratio": ctrl[RATIO_COL], "pairs": ctrl["n_pairs"],
                          "gain (pp)": (100 * ctrl["mean_diff"]).round(2),
                          "95% t-CI (pp)": [ci_text(r) for _, r in ctrl.iterrows()],
                          "q (BH, controls)": ctrl["q_value"].map(p_text), "verdict": ctrl["verdict"]})
    return Section("The controls", [
        "The oracle adds ratio x N real labelled images from outside the budget, its validation images and "
        "the unlabelled pool, mixed in exactly as generated images are: a perfect generator. Its gain "
        "shows what the study can detect. The placebo is real only again with another batch order and "
        "nothing else: its gain should be 0, and a verdict other than `n.s.` is a false positive. Both use "
        "what a user would not have (labels beyond the budget; a second run), so they are never chosen; "
        "q is Benjamini-Hochberg among the control cells only."], table=shown,
        row_classes=[v if v in ("gain", "loss") else "" for v in ctrl["verdict"]])


def fit_section(df: pd.DataFrame) -> Section | None:
    fit = cal.fit_table(df)
    if fit.empty:
        return None
    shown = pd.DataFrame({"N": fit[N_COL].astype(int), "arm": fit[ARM_COL], "ratio": fit[RATIO_COL],
                          **{k: fit[k] for k in cal.fit_factors(df) if k in fit}, "runs": fit["runs"],
                          "training accuracy, lowest (%)": (100 * fit["train_acc_min"]).round(2),
                          "training accuracy, mean (%)": (100 * fit["train_acc_mean"]).round(2),
                          "last-window loss": fit["loss_last"].round(4),
                          "fall from the window before (%)": (100 * fit["loss_fall"]).round(1),
                          "fitted": fit["fitted"].map({True: "yes", False: "no"})})
    return Section("Budget and fit, per arm", [
        "Whether every arm had fitted its data when its budget ended: training accuracy of the last "
        "weights on the arm's own real images (`clf/train_acc_last`), and the mean training loss over the "
        "last 10% of steps against the 10% before (`clf/loss_last_window`, `clf/loss_prev_window`). "
        f"`fitted`: every run at {100 * cal.FIT_ACC:.0f}% or more and the loss no longer "
        f"{100 * cal.STILL_FALLING:.0f}% lower than the window before. An arm that has not fitted compares "
        "under-training, not the images it adds."],
        table=shown, row_classes=["" if f else "loss" for f in fit["fitted"]])
