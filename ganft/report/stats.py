"""Paired statistics for reports: tidy runs (one row per trial) in, one row per cell out.

A *pair* is a GAN run (ratio > 0) and the real-only run (ratio 0) with the same N, seed and every
other varying config value: same labelled subset, same classifier initialisation and batch order
seed, so the difference isolates the synthetic images. Runs without a partner are left out. In a
study of arms that use unlabelled images (``with_arms``), every arm is paired with real only of the
same N and seed, and the arm's own settings need no real-only twin.
Every interval here is a 95% **t-interval** (Student's t with n-1 degrees of freedom, from
``scipy.stats.ttest_1samp(...).confidence_interval``): with a handful of seeds a bootstrap has few
distinct resamples and would be far too narrow. p-values come from the same paired t-test;
``q_value`` is the Benjamini-Hochberg adjustment over all the tests of one table (``add_q_values``).

Verdicts survive multiple testing: a cell is a ``gain`` or a ``loss`` only when its q is below
``ALPHA``; an interval that excludes 0 without that is ``nominal`` (``nominal gain``, ``nominal
loss``), and everything else is ``n.s.`` or ``no CI``. Since q >= p, every gain or loss also has a
95% interval that excludes 0.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ganft.keys import config_keys

N_COL, RATIO_COL, SEED_COL, ACC_COL = "data.train_size", "synth.ratio", "seed", "test/acc"
CI_METHOD = "t"  # written into cells.csv and every caption
CI_TEXT = "95% t-interval (paired t, n-1 df)"
CLASS_PREFIX = "test/acc_class_"
STAT_COLS = ["n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "nominal", "ci_method", "note"]
Q_COLS = ["q_value", "significant", "verdict"]  # added by add_q_values, over a whole table
ALPHA = 0.05  # BH false discovery rate of the gain/loss verdicts
MIN_PAIRS = 3  # fewer pairs per cell than this: the report warns (a t-interval from 2 points)


# --------------------------------------------------------------------------- arms
# A study whose runs use unlabelled images (issue 16) compares *arms* that differ in more than the
# ratio: self-training, GANs on the budget, on budget+unlabelled images, transferred, a classifier
# started from a discriminator at ratio 0. Each is paired with the real-only run (ratio 0, scratch
# start) of the same N and seed; settings that only an arm has (data.unlabelled_size,
# gan.train_on, synth.source, ...) need no real-only twin, since real only reads none of them.
ARM_COL = "arm"
TIME_COL = "time/trial_seconds"  # a run's wall time (its GAN included when this run trained it)
REAL_ONLY = "real only"
CHEAP_ARM = "self-training"  # the cheap alternative a user would try before a GAN
FIXMATCH_ARM = "FixMatch"  # the consistency-based semi-supervised baseline (synth.source fixmatch)
SSGAN_ARM = "semi-supervised GAN"  # the classifier is the discriminator (synth.source ssgan)
# Controls (issue 22): labels a user would not have (oracle) or nothing at all (placebo, real only
# with another batch order). Reports mark them as controls and never choose them as a best arm.
CONTROL_ARMS = ("oracle", "placebo")
# What a choice on budget data reads, best first: the cross-validated true-class probability
# (data.validation kfold), else the kept checkpoint's accuracy on the budget's validation images.
CHOICE_COLS = {"cv/true_class_prob": "cross-validated true-class probability",
               "clf/best_val_acc": "budget-validation accuracy"}


def choice_col(df: pd.DataFrame) -> tuple[str, str]:
    """(column, how it reads) of what chooses among the runs of ``df`` (CHOICE_COLS)."""
    for col, label in CHOICE_COLS.items():
        if col in df and df[col].notna().any():
            return col, label
    return "clf/best_val_acc", CHOICE_COLS["clf/best_val_acc"]
# any of these away from its default (as text): the runs form an arms study
ARM_DEFAULTS = {"data.unlabelled_size": "0", "gan.train_on": "budget", "synth.source": "gan"}


def arm_label(row: pd.Series) -> str:
    """The arm a run belongs to, from its config."""
    source = str(row.get("synth.source", "gan"))
    if source in CONTROL_ARMS and (row[RATIO_COL] > 0 or source == "placebo"):
        return source
    if source in ("fixmatch", "ssgan"):  # ratio 0, but trained on the unlabelled images: not real only
        return FIXMATCH_ARM if source == "fixmatch" else SSGAN_ARM
    init = str(row.get("classifier.init", "scratch"))
    train_on = str(row.get("gan.train_on", "budget"))
    gan = f"transferred from {row.get('gan.transfer_source', 'unlabelled')}" if train_on == "transfer" \
        else f"on {train_on}"
    if row[RATIO_COL] == 0:
        if init == "scratch":
            return REAL_ONLY
        return f"D init ({gan.removeprefix('on ')} GAN)" if init == "discriminator" else f"{init} init"
    start = "" if init == "scratch" else f", {init} init"
    if str(row.get("synth.source", "gan")) == "self-training":
        return CHEAP_ARM + start
    family = "diffusion" if str(row.get("gan.arch", "dcgan")) == "ddpm" else "GAN"  # gan.arch ddpm is no GAN
    return f"{family} {gan}{start}"


def with_arms(df: pd.DataFrame) -> pd.DataFrame:
    """The runs with an ``arm`` column when any of them uses unlabelled images or self-training
    (an ``ARM_DEFAULTS`` key away from its default); other studies are returned as they are."""
    if df.empty or RATIO_COL not in df:
        return df
    df = df.drop(columns=ARM_COL, errors="ignore")
    if not any(k in df and (df[k].astype(str) != d).any() for k, d in ARM_DEFAULTS.items()):
        return df
    return df.assign(**{ARM_COL: [arm_label(r) for _, r in df.iterrows()]})


def real_only_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The baseline runs every pair is made with: ratio 0 (in an arms study, the ``real only`` arm)."""
    return df[df[ARM_COL] == REAL_ONLY] if ARM_COL in df else df[df[RATIO_COL] == 0]


def _config_varying(df: pd.DataFrame) -> list[str]:
    """Config columns (other than N, ratio, seed and the quality scoring, which does not change a
    trial's classifier) whose value differs between the runs of ``df``."""
    skip = {N_COL, RATIO_COL, SEED_COL}
    text = df.astype(str)  # lists and None compare safely as text
    return [k for k in config_keys() if k in df and k not in skip and not k.startswith("quality.")
            and text[k].nunique(dropna=False) > 1]


def pair_factors(df: pd.DataFrame) -> list[str]:
    """The factors a run and its real-only partner share besides N and seed: every varying factor,
    or in an arms study only those that vary among the real-only runs themselves."""
    if ARM_COL not in df:
        return varying_factors(df)
    return _config_varying(real_only_runs(df))


def varying_factors(df: pd.DataFrame) -> list[str]:
    """Config columns (other than N, ratio and seed) whose value differs between runs, leaving out
    any that another kept factor determines: a grid over ``gan.recipe`` also varies the ``gan.loss``,
    ``gan.d_norm``, ... that each recipe sets, and those would only repeat the recipe's levels. In
    an arms study: ``arm`` first, then the settings that vary within an arm at one N and ratio."""
    text = df.astype(str)  # lists and None compare safely as text
    varying = _config_varying(df)
    if ARM_COL in df:
        treated = text[text[ARM_COL] != REAL_ONLY]
        varying = [ARM_COL, *[k for k in varying if len(treated) and treated.groupby(
            [N_COL, RATIO_COL, ARM_COL])[k].nunique(dropna=False).max() > 1]]
    levels = {k: text[k].nunique(dropna=False) for k in varying}
    # most levels first (ties: config order), so a factor is dropped only for a finer or equal one
    kept: list[str] = []
    for k in sorted(varying, key=lambda k: -levels[k]):
        if not any(text.groupby(g)[k].nunique(dropna=False).max() == 1 for g in kept):
            kept.append(k)
    return [k for k in varying if k in kept]


def in_level_order(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``df`` sorted by ``keys`` as a reader expects: a column whose levels are all numbers (held as
    text, "2000" and "18000", since factors are compared as text) by value, any other as text."""
    def order(col: pd.Series) -> pd.Series:
        num = pd.to_numeric(col, errors="coerce")
        return num if num.notna().all() else col.astype(str)
    return df.sort_values(keys, key=order, kind="stable").reset_index(drop=True)


def cell_keys(df: pd.DataFrame) -> list[str]:
    return [N_COL, RATIO_COL, *varying_factors(df)]


def summarise(diffs: np.ndarray, min_pairs: int = 2) -> dict[str, Any]:
    """Mean, 95% t-interval and paired t-test p-value of per-seed differences; ``nominal``: the
    interval excludes 0 (before any multiple-testing adjustment).

    Fewer than 2 pairs, or differences that are all equal (common with 2-3 seeds and a small test
    set), give no interval and no p-value: the t-test is undefined there, and a zero-width interval
    would claim a certainty the data do not have. ``note`` says why. ``min_pairs`` (3 for the
    per-class table) raises the minimum: with 2 pairs a t-interval has 1 degree of freedom and
    spans hundreds of points. An interval is never wider than an accuracy difference can be
    (-100 to +100 pp): it is clipped there, and the note says so."""
    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    out: dict[str, Any] = {"n_pairs": n, "mean_diff": float(np.mean(diffs)) if n else math.nan,
                           "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                           "nominal": False, "ci_method": CI_METHOD, "note": ""}
    if n < min_pairs:
        out["note"] = f"{n} pair{'s' if n != 1 else ''}: no CI (needs {min_pairs})"
    elif np.ptp(diffs) == 0:
        out["note"] = f"all {n} differences equal: no CI"
    else:
        with warnings.catch_warnings():  # near-identical values: scipy warns, the result stands
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_1samp(diffs, 0.0)
        ci = res.confidence_interval(0.95)
        low, high = max(float(ci.low), -1.0), min(float(ci.high), 1.0)
        out.update(ci_low=low, ci_high=high, p_value=float(res.pvalue), nominal=bool(low > 0 or high < 0))
        if (low, high) != (float(ci.low), float(ci.high)):
            out["note"] = "interval clipped to the -100..+100 pp an accuracy difference can span"
    return out


def paired_runs(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per GAN run (in an arms study: per run of any arm but real only) that has a real-only
    partner: the cell keys (other factors as text), ``seed``, ``run_id``, each metric and its
    partner's value (``<metric>:base``) and difference (``<metric>:diff``), plus any ``quality/*``
    columns of the GAN run."""
    metrics = metrics or [ACC_COL]
    factors = varying_factors(df)
    pair_keys = [N_COL, SEED_COL, *pair_factors(df)]
    df = df.reset_index(drop=True).astype({k: str for k in {*factors, *pair_keys[2:]}})  # lists/None as text
    is_base = df.index.isin(real_only_runs(df).index)
    base = df[is_base].drop_duplicates(pair_keys, keep="last")
    base = base[[*pair_keys, *metrics]].rename(columns={m: f"{m}:base" for m in metrics})
    quality = [c for c in df.columns if c.startswith("quality/")]
    keep = [c for c in dict.fromkeys([*pair_keys, *factors, RATIO_COL, "run_id", *metrics, *quality,
                                      TIME_COL]) if c in df]
    treated = ~is_base if ARM_COL in df else df[RATIO_COL] > 0  # ratio 0 with another start: no pair
    merged = df[treated][keep].merge(base, on=pair_keys, how="inner")
    for m in metrics:
        merged[f"{m}:diff"] = merged[m] - merged[f"{m}:base"]
    return in_level_order(merged, [N_COL, RATIO_COL, *factors, SEED_COL])


def paired_cells(df: pd.DataFrame, metric: str = ACC_COL, min_pairs: int = 2) -> pd.DataFrame:
    """Per (N, ratio > 0, other factors): the paired difference of ``metric`` to real only.
    Columns: the cell keys, ``mean_acc``, ``baseline_acc``, then STAT_COLS and Q_COLS."""
    keys = cell_keys(df)
    cols = [*keys, "mean_acc", "baseline_acc", "run_minutes", *STAT_COLS, *Q_COLS]
    if df.empty or metric not in df:
        return pd.DataFrame(columns=cols)
    pairs = paired_runs(df, [metric]).dropna(subset=[f"{metric}:diff"])
    rows = []
    for cell, g in pairs.groupby(keys, sort=True, dropna=False):
        rows.append({**dict(zip(keys, cell, strict=True)), "mean_acc": g[metric].mean(),
                     "baseline_acc": g[f"{metric}:base"].mean(),
                     "run_minutes": g[TIME_COL].mean() / 60 if TIME_COL in g else math.nan,
                     **summarise(g[f"{metric}:diff"], min_pairs)})
    return in_level_order(family_q(pd.DataFrame(rows, columns=cols)), keys)


QUALITY_COLS = ["quality/fcd", "quality/kid", "quality/precision", "quality/recall", "quality/density",
                "quality/coverage", "quality/cas", "quality/copy_rate"]


def quality_cells(df: pd.DataFrame) -> pd.DataFrame:
    """GAN quality per generator setting: one row per (N, other factors) over the GAN runs
    (ratio > 0) that logged quality metrics, with the mean and standard deviation over seeds of
    each ``quality/*`` score in QUALITY_COLS, the number of GANs (distinct seeds) and the mean
    paired gain in test accuracy of those runs. Quality depends on the generator, not the ratio, so
    ratios are pooled (one GAN serves every ratio of its (N, seed); its scores repeat)."""
    present = [c for c in QUALITY_COLS if c in df and df[c].notna().any()]
    if df.empty or not present:
        return pd.DataFrame()
    if "run_id" not in df:  # frames not read from MLflow: rows need a key to join gains on
        df = df.assign(run_id=[f"row-{i}" for i in range(len(df))])
    keys = [N_COL, *varying_factors(df)]
    gains = paired_runs(df)[["run_id", f"{ACC_COL}:diff"]]
    runs = df[(df[RATIO_COL] > 0) & df[present].notna().any(axis=1)].astype({k: str for k in keys[1:]})
    runs = runs.merge(gains, on="run_id", how="left")
    rows = []
    for cell, g in runs.groupby(keys, sort=True, dropna=False):
        row: dict[str, Any] = {**dict(zip(keys, cell, strict=True)), "gans": g[SEED_COL].nunique()}
        per_gan = g.groupby(SEED_COL)[present].mean()  # a GAN scored in several trials counts once
        for c in present:
            row[f"{c}:mean"], row[f"{c}:sd"] = per_gan[c].mean(), per_gan[c].std(ddof=1)
        row["gain_mean"] = g[f"{ACC_COL}:diff"].mean()
        rows.append(row)
    return in_level_order(pd.DataFrame(rows), keys)


def add_q_values(cells: pd.DataFrame, mean_col: str = "mean_diff") -> pd.DataFrame:
    """Benjamini-Hochberg adjusted p-values over every row that has one (scipy.stats), and the
    verdicts they allow: ``significant`` (q < ALPHA) and ``verdict`` (the sign of ``mean_col``)."""
    cells = cells.copy()
    cells["q_value"] = math.nan
    ok = cells["p_value"].notna()
    if ok.any():
        cells.loc[ok, "q_value"] = stats.false_discovery_control(cells.loc[ok, "p_value"].to_numpy(float))
    cells["significant"] = (cells["q_value"] < ALPHA).astype(bool)
    cells["verdict"] = [verdict(m, nominal, sig, low) for m, nominal, sig, low in
                        zip(cells[mean_col], cells["nominal"], cells["significant"], cells["ci_low"],
                            strict=True)]
    return cells


def family_q(cells: pd.DataFrame) -> pd.DataFrame:
    """``add_q_values`` within each family of tests: the controls' cells (CONTROL_ARMS) apart from the
    treatments', so a positive control's small p-values never ease a treatment's verdict."""
    if ARM_COL not in cells or not cells[ARM_COL].isin(CONTROL_ARMS).any():
        return add_q_values(cells)
    control = cells[ARM_COL].isin(CONTROL_ARMS)
    return pd.concat([add_q_values(cells[control]), add_q_values(cells[~control])]).loc[cells.index]


def verdict(mean_diff: float, nominal: bool, significant: bool, ci_low: float) -> str:
    """``gain`` / ``loss`` (BH q < ALPHA), ``nominal gain`` / ``nominal loss`` (the 95% interval
    excludes 0, q does not pass), ``n.s.``, or ``no CI``."""
    sign = "gain" if mean_diff > 0 else "loss"
    if significant:
        return sign
    if nominal:
        return f"nominal {sign}"
    return "no CI" if math.isnan(ci_low) else "n.s."


def class_cells(df: pd.DataFrame, class_names: dict[int, str] | None = None) -> pd.DataFrame:
    """Per-class paired differences (from ``test/acc_class_k``) for every cell: the cell keys,
    ``class``, ``class_name`` and the statistics of :func:`paired_cells`."""
    ks = sorted(int(c.removeprefix(CLASS_PREFIX)) for c in df.columns if c.startswith(CLASS_PREFIX))
    parts = []
    for k in ks:
        cells = paired_cells(df, f"{CLASS_PREFIX}{k}", min_pairs=MIN_PAIRS)
        if len(cells):
            name = (class_names or {}).get(k, str(k))
            parts.append(cells.assign(**{"class": k, "class_name": name}))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)  # adjusted across every (class, cell) test at once
    return out.drop(columns=Q_COLS).pipe(family_q)


def class_extremes(classes: pd.DataFrame, k: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The k classes that gain most and the k that lose most, each in its most extreme cell (by
    mean paired difference; a significant row ranks before one that is not at equal mean): a class
    is listed once per side."""
    if classes.empty:
        return classes, classes
    ranked = classes.sort_values(["mean_diff", "significant"], ascending=[False, False])
    gains = ranked[ranked["mean_diff"] > 0].drop_duplicates("class").head(k)
    losses = classes.sort_values(["mean_diff", "significant"], ascending=[True, False])
    return gains, losses[losses["mean_diff"] < 0].drop_duplicates("class").head(k)


# --------------------------------------------------------------------------- two studies


def compare_cells(df_a: pd.DataFrame, df_b: pd.DataFrame) -> pd.DataFrame:
    """The same (N, ratio, shared factors) cells of two studies side by side, with the difference
    of gains (B minus A), its 95% t-interval and BH q across the shared cells.

    Both studies draw the labelled subset and the classifier seed from (N, seed) alone, so where
    at least 2 seeds are in both, the difference is paired per seed (``paired t``); otherwise the
    two samples of per-seed gains are compared with Welch's t (``Welch t``). Cells present in only
    one study are kept, with the other side empty and a note."""
    ca, cb = paired_cells(df_a), paired_cells(df_b)
    fa, fb = varying_factors(df_a), varying_factors(df_b)
    common = [N_COL, RATIO_COL, *[f for f in fa if f in fb]]
    pa, pb = paired_runs(df_a), paired_runs(df_b)
    ca = ca.astype({f: str for f in fa})
    cb = cb.astype({f: str for f in fb})
    merged = ca.merge(cb, on=common, how="outer", suffixes=(":a", ":b"))
    diff = f"{ACC_COL}:diff"
    rows = []
    for _, row in merged.iterrows():
        da = select_cell(pa, row, [N_COL, RATIO_COL, *fa]).set_index(SEED_COL)[diff]
        db = select_cell(pb, row, [N_COL, RATIO_COL, *fb]).set_index(SEED_COL)[diff]
        out = {k: row[k] for k in dict.fromkeys([*common, *fa, *fb])}
        for side, d in (("a", da), ("b", db)):
            out.update({f"gain_{side}": d.mean() if len(d) else math.nan, f"n_{side}": len(d),
                        f"ci_low_{side}": row[f"ci_low:{side}"], f"ci_high_{side}": row[f"ci_high:{side}"]})
        out.update(_diff_of_gains(da, db))
        rows.append(out)
    cols = [*dict.fromkeys([*common, *fa, *fb]), "gain_a", "n_a", "ci_low_a", "ci_high_a", "gain_b", "n_b",
            "ci_low_b", "ci_high_b", "diff", "ci_low",
            "ci_high", "p_value", "nominal", "method", "note"]
    return add_q_values(pd.DataFrame(rows, columns=cols), mean_col="diff")


def select_cell(pairs: pd.DataFrame, row: pd.Series, keys: list[str]) -> pd.DataFrame:
    """The rows of ``pairs`` in ``row``'s cell: equal N and ratio, the other keys equal as text."""
    mask = np.ones(len(pairs), dtype=bool)
    for k in keys:
        mask &= (pairs[k].astype(str) == str(row[k])).to_numpy() if k not in (N_COL, RATIO_COL) \
            else (pairs[k] == row[k]).to_numpy()
    return pairs[mask]


def _diff_of_gains(da: pd.Series, db: pd.Series) -> dict[str, Any]:
    base = {"diff": db.mean() - da.mean() if len(da) and len(db) else math.nan, "ci_low": math.nan,
            "ci_high": math.nan, "p_value": math.nan, "nominal": False, "method": "", "note": ""}
    if not len(da) or not len(db):
        return {**base, "note": f"only in {'B' if len(db) else 'A'}"}
    common = da.index.intersection(db.index)
    if len(common) >= 2:
        s = summarise((db.loc[common] - da.loc[common]).to_numpy())
        return {**base, "diff": s["mean_diff"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                "p_value": s["p_value"], "nominal": s["nominal"],
                "method": f"paired t ({len(common)} common seeds)", "note": s["note"]}
    if len(da) < 2 or len(db) < 2:
        return {**base, "method": "Welch t", "note": "fewer than 2 pairs on a side: no CI"}
    if np.ptp(da) == 0 and np.ptp(db) == 0:
        return {**base, "method": "Welch t", "note": "no spread on either side: no CI"}
    res = stats.ttest_ind(db.to_numpy(), da.to_numpy(), equal_var=False)
    ci = res.confidence_interval(0.95)
    return {**base, "ci_low": float(ci.low), "ci_high": float(ci.high), "p_value": float(res.pvalue),
            "nominal": bool(ci.low > 0 or ci.high < 0), "method": "Welch t"}
