"""The sections of a study's report page, each built from the tidy runs or the paired cells, and
the tables some of them carry (quality, protocol, convergence, the objective per setting)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ganft.report import figures as figs
from ganft.report.page import Section
from ganft.report.stats import (
    ACC_COL,
    ARM_COL,
    CI_TEXT,
    N_COL,
    RATIO_COL,
    choice_col,
    class_extremes,
    paired_cells,
    paired_runs,
    quality_cells,
    real_only_runs,
    varying_factors,
)
from ganft.report.text import ReportMeta, _n, cell_name, ci_text, p_text, pp

QUALITY_FIGURES = ("quality/fcd", "quality/cas")  # plotted against the gain when the runs have them


def save_figure(fig: Figure, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name)
    return name


def cells_table(cells: pd.DataFrame, factors: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The cells table as people read it, and one row class each (gain / loss / none)."""
    verdict = cells["verdict"].tolist()
    table = pd.DataFrame({"N": cells[N_COL].astype(int), "ratio": cells[RATIO_COL],
                          **{f: cells[f] for f in factors}, "pairs": cells["n_pairs"],
                          "with GAN (%)": (100 * cells["mean_acc"]).round(2),
                          "real only (%)": (100 * cells["baseline_acc"]).round(2),
                          **({"minutes per run": cells["run_minutes"].round(1)}
                             if "run_minutes" in cells and cells["run_minutes"].notna().any() else {}),
                          "gain (pp)": (100 * cells["mean_diff"]).round(2),
                          "95% t-CI (pp)": [ci_text(r) for _, r in cells.iterrows()],
                          "p (paired t)": cells["p_value"].map(p_text),
                          "q (BH)": cells["q_value"].map(p_text), "verdict": verdict})
    return table, [v if v in ("gain", "loss") else "" for v in verdict]


def accuracy_section(df: pd.DataFrame, out_dir: Path, ceiling: pd.DataFrame | None,
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


def budget_section(df: pd.DataFrame, out_dir: Path) -> Section | None:
    """The budget curve, when the study trains at more than one ``classifier.steps``."""
    if figs.STEPS_COL not in df or df[figs.STEPS_COL].nunique() < 2:
        return None
    name = save_figure(figs.fig_budget_curve(df), out_dir, "budget_curve.png")
    return Section("Budget curve", [
        "Mean test accuracy over seeds at each classifier step budget, per arm. Test accuracy is read once "
        "per finished run, as everywhere in the report; no budget is chosen on it. A line still rising "
        "at the largest budget means that arm had not converged there."],
        [(name, "Test accuracy against classifier steps, per N (band: 95% t-interval over seeds).")])


def gain_section(cells: pd.DataFrame, factors: list[str], out_dir: Path) -> Section:
    table, classes = cells_table(cells, factors)
    arms = ARM_COL in factors
    who = ("Each run of an arm (any but real only) minus the real-only run with the same N and seed"
           if arms else "Each GAN run minus the real-only run with the same N, seed and other factors")
    figures = []
    if len(cells):
        figures.append((save_figure(figs.fig_gain_heatmap(cells), out_dir, "gain_heatmap.png"),
                        "Mean paired difference per (N, ratio); faded and hatched: not significant "
                        "after Benjamini-Hochberg (q ≥ 0.05)."))
    return Section("Gain over real only, per cell", [
        f"{who}; {CI_TEXT}; "
        "p from the paired t-test, q: Benjamini-Hochberg across the cells. Verdicts: `gain` / `loss` "
        "(green / red rows) when q < 0.05; `nominal gain` / `nominal loss` when the 95% CI excludes 0 "
        "but q does not pass; `n.s.` otherwise; `no CI`: fewer than 2 pairs or all differences equal."],
        figures, table, classes)


def class_section(classes: pd.DataFrame, factors: list[str], out_dir: Path) -> Section:
    gains, losses = class_extremes(classes)
    rows = [{"": kind, "class": r["class_name"], "cell": cell_name(r, factors),
             "gain (pp)": round(100 * r["mean_diff"], 2), "95% t-CI (pp)": ci_text(r),
             "p (paired t)": p_text(r["p_value"]), "q (BH)": p_text(r["q_value"]),
             "verdict": r["verdict"], "pairs": r["n_pairs"]}
            for kind, part in (("gains most", gains), ("loses most", losses)) for _, r in part.iterrows()]
    name = save_figure(figs.fig_class_gains(classes), out_dir, "class_gains.png")
    return Section("Classes that gain or lose most from generated data", [
        "Per-class test accuracy (`test/acc_class_k`), paired the same way as the cells above; q is "
        "Benjamini-Hochberg across every (class, cell) test of the study, and the verdicts read as "
        "above."],
        [(name, "Per-class paired difference (pp) in every cell; black frame: significant after "
                "Benjamini-Hochberg (q < 0.05).")],
        pd.DataFrame(rows), ["" if not r["significant"] else "gain" if r["mean_diff"] > 0 else "loss"
                             for part in (gains, losses) for _, r in part.iterrows()])


def samples_section(samples: dict[int, str]) -> Section:
    return Section("What the generator made", [
        "One grid per N: the generator of its lowest seed, the same fixed noise in every grid. Per class, "
        "a row of real budget images of that class (real), then the row generated for it, so "
        "a reader can see here why the images helped or hurt: blur, wrong classes, one image repeated, "
        "a copy of a training image. (A grid logged by an earlier ganft has the generated rows only.)"],
        [(name, f"Real budget images and generated samples at N={n:,}, two rows per class.")
         for n, name in sorted(samples.items())])


def copies_section(copies: dict[int, str], df: pd.DataFrame) -> Section:
    col = "quality.copy_percentile"
    pct = float(df[col].dropna().iloc[0]) if col in df and df[col].notna().any() else 5.0
    return Section("Copies of training images", [
        f"Per class, the generated images nearest a budget training image (most copy-like first), above "
        f"the training images they are nearest to, in the extractor's features. `quality/copy_rate` "
        f"counts a sample as a copy when it is nearer its nearest training image of its class than "
        f"{pct:g} % of unseen real images (the test split) are: a generator that samples the data without "
        f"copying scores about {pct:g} %, one that hands back its training images 100 %. The rates are in "
        f"the quality table above."],
        [(name, f"Samples nearest a training image and that image, at N={n:,}, two rows per class.")
         for n, name in sorted(copies.items())])


def quality_section(df: pd.DataFrame, out_dir: Path) -> Section:
    present = [m for m in QUALITY_FIGURES if m in df and df[m].notna().any()]
    section = Section("Generator quality against gain")
    if not present:
        section.paragraphs.append("These runs log no generator quality metrics (`quality/fcd`, "
                                  "`quality/cas`); this figure appears for studies that do.")
        return section
    table = quality_table(quality_cells(df))
    if len(table):
        table.to_csv(out_dir / "quality.csv", index=False)
        section.paragraphs.append(
            "Per generator setting (ratios pooled: one GAN serves every ratio of its N and seed), mean "
            "± standard deviation over the GANs of each seed. FCD and KID: lower is better; precision, "
            "recall, density, coverage and CAS: higher is better; copy rate: the share of samples that "
            "copy a budget training image (about the percentile, 5 % by default, for a generator that "
            "does not copy). Scores are in the feature space of "
            "the dataset's extractor (`quality.extractor_hash`); gain: mean paired test-accuracy "
            "difference of those runs to real only. Also in [quality.csv](quality.csv).")
        section.table = table
    pairs = paired_runs(df)
    gains = f"{ACC_COL}:diff"
    if pairs.empty or gains not in pairs or pairs[gains].isna().all():
        section.paragraphs.append("No GAN run has a real-only partner (same N and seed) here, so quality "
                                  "is not drawn against gain.")
        return section
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


IMPORTANCE_MIN_TRIALS = 20  # below this, fANOVA's forest splits a handful of points: noise, not a ranking


def add_importances(section: Section, importances: pd.DataFrame | None, trials: int, out_dir: Path) -> None:
    """Optuna's fANOVA importances as a figure captioned with the number of trials they come from, or,
    below IMPORTANCE_MIN_TRIALS complete trials, a sentence saying why there is none."""
    if importances is None or not len(importances):
        return
    if trials < IMPORTANCE_MIN_TRIALS:
        section.paragraphs.append(
            f"No parameter importances: {_n(trials, 'complete trial')}, fewer than the "
            f"{IMPORTANCE_MIN_TRIALS} below which fANOVA's ranking is noise (optuna-dashboard's chart, "
            f"another method on the same few trials, can rank the settings differently).")
        return
    importances.to_csv(out_dir / "importances.csv", index=False)
    figure = save_figure(figs.fig_param_importances(importances), out_dir, "param_importances.png")
    section.figures.append((figure, f"fANOVA parameter importances (Optuna) over {trials:,} complete trials; "
                                    f"another method (optuna-dashboard's, say) can rank close settings "
                                    f"differently."))


def optuna_section(history: pd.DataFrame | None, importances: pd.DataFrame | None,
                    out_dir: Path, trials: int) -> Section:
    section = Section("What Optuna sees", ["The Optuna objective is validation accuracy (test accuracy "
                                           "is never optimised)."])
    add_importances(section, importances, trials, out_dir)
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
    real = real_only_runs(df) if RATIO_COL in df else df.iloc[0:0]
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


def objective_by_setting(df: pd.DataFrame) -> pd.DataFrame:
    """Per level of each varying factor (ratio included), what a choice on budget data reads
    (``stats.choice_col``: the cross-validated true-class probability, else budget-validation
    accuracy): what such a choice would pick (``best``). Column ``score (%)``."""
    objective, _ = choice_col(df)
    if objective not in df or df[objective].isna().all():
        return pd.DataFrame()
    rows = []
    for factor in [RATIO_COL, *varying_factors(df)]:
        if factor not in df or df[factor].astype(str).nunique() < 2:
            continue
        stats_ = df.groupby(df[factor].astype(str), sort=False)[objective].agg(["mean", "std", "count"])
        for level, r in stats_.iterrows():
            rows.append({"setting": factor, "value": level, "runs": int(r["count"]),
                         "score (%)": round(100 * r["mean"], 2),
                         "sd (pp)": round(100 * r["std"], 2) if r["count"] > 1 else math.nan,
                         "best": "best" if r["mean"] == stats_["mean"].max() else ""})
    return pd.DataFrame(rows)


def objective_section(df: pd.DataFrame) -> Section | None:
    table = objective_by_setting(df)
    if table.empty:
        return None
    objective, label = choice_col(df)
    what = ("the mean probability the classifier gave the right class on held-out folds of the budget, "
            "each fold fitted without it (data.validation kfold)") if objective.startswith("cv/") else \
        "the kept checkpoint's accuracy on validation images from inside the budget"
    return Section(f"{label[0].upper()}{label[1:]} by setting", [
        f"What a choice on budget data reads, per setting, averaged over the other factors and the seeds "
        f"(`score`): {what}. This is what a choice made without the test split would pick (`best`); the "
        f"test split never chooses."], table=table)


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


def protocol_section(df: pd.DataFrame, other: pd.DataFrame, other_study: str, out_dir: Path) -> Section:
    table = protocol_table(df, other)
    table.to_csv(out_dir / "protocol.csv", index=False)
    return Section("The effect of the validation protocol", [
        f"The same grid under another validation protocol (study `{other_study}`): real-only test "
        "accuracy and the gain at ratio 1 per N, each from its own study's pairs and Benjamini-Hochberg "
        "q. Also in [protocol.csv](protocol.csv)."], table=table)


def convergence_section(df: pd.DataFrame) -> Section | None:
    table = convergence_table(df)
    if table.empty:
        return None
    return Section("Budget and selection", [
        "Real-only runs per N. A run still improving in the last 10% of its classifier steps (its best "
        "validation accuracy there beats every earlier one) had a budget that had not converged; the "
        "last two columns show how much choosing the checkpoint on validation changed test accuracy."],
        table=table)


def method_section(df: pd.DataFrame, has_ceiling: bool) -> Section:
    bullets = [
        *protocol_bullets(df),
        ("Pairs: every arm's run and the real-only run (ratio 0, no unlabelled images, a scratch "
         "start) with the same N and seed share the labelled budget and the classifier's seed; an "
         "arm's own settings (unlabelled images, GAN regime, self-training, the discriminator start) "
         "need no real-only twin. Self-training and the GAN arms of one N and seed use the same "
         "unlabelled images.") if ARM_COL in df else
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
