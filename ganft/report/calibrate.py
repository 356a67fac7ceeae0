"""Calibrating a study's answer against its controls (issue 22): would the harness have seen a gain,
how large a gain does each null still allow, and what is an arm worth in real labelled images.

Per treatment cell (an arm that is neither real only nor a control, at one N and ratio):

- **bound**: the upper end of the cell's 95% t-interval of the paired gain, the largest gain the
  data still allow; and **equivalence** within a margin (two one-sided t-tests, TOST: both
  ``scipy.stats.ttest_1samp`` with one-sided alternatives; the larger p decides).
- **oracle share**: the arm's mean paired gain over the oracle's at the same (N, ratio), over the
  seeds both have, with Fieller's 95% interval for a ratio of means. scipy has no Fieller interval,
  so it is written out below (a few lines of the textbook formula); a bootstrap with 5 seeds would
  have too few distinct resamples to trust.
- **exchange rate**: the arm's mean accuracy read off the study's real-only learning curve, which the
  oracle cells extend (N real images plus the oracle's added real images, all labelled): the arm
  is "worth about +X real labelled images", X = the curve's size at that accuracy minus the arm's
  own real images. The curve is made monotone by isotonic regression (scikit-learn) on log size;
  its 95% interval is a percentile bootstrap that resamples seeds (whole seeds: every arm of one
  seed shares its budget).
- **power**: the smallest gain detectable with 80% power at the cell's observed spread and seed
  count (two-sided paired t at 0.05), and the seeds +1 pp would need.

Controls are tested and adjusted (Benjamini-Hochberg) as their own family (stats.paired_cells), so
the oracle's many small p-values never ease a treatment's verdict.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
from scipy import stats

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
    pair_factors,
    paired_runs,
    varying_factors,
)

MARGIN = 0.01  # default equivalence margin: 1 pp of accuracy (study file: report.margin, in pp)
POWER, ALPHA = 0.8, 0.05
BOOTSTRAP = 2000  # resamples of the seeds for the exchange rate's interval
FIT_ACC = 0.99  # an arm has fitted its real images when every run reaches this training accuracy
STILL_FALLING = 0.10  # ... and its last-window loss is not this much below the window before


# --------------------------------------------------------------------------- one cell


def fieller(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(ratio, low, high) of mean(a) / mean(b) for paired samples, Fieller's interval at ``level``
    (Fieller 1954; t with n-1 df). (ratio, nan, nan) when the denominator's interval includes 0:
    the ratio is then unbounded, and no interval is claimed."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 2 or n != len(b) or np.mean(b) == 0:
        return math.nan, math.nan, math.nan
    ma, mb = a.mean(), b.mean()
    cov = np.cov(a, b, ddof=1) / n  # covariance matrix of the two means
    v11, v22, v12 = cov[0, 0], cov[1, 1], cov[0, 1]
    t2 = stats.t.ppf(0.5 + level / 2, n - 1) ** 2
    denom = mb**2 - t2 * v22
    if denom <= 0:
        return ma / mb, math.nan, math.nan
    mid = ma * mb - t2 * v12
    disc = max(mid**2 - denom * (ma**2 - t2 * v11), 0.0)
    return ma / mb, (mid - math.sqrt(disc)) / denom, (mid + math.sqrt(disc)) / denom


def tost(diffs: np.ndarray, margin: float = MARGIN) -> float:
    """p-value of equivalence within +-margin (two one-sided t-tests; the larger p). NaN with fewer
    than 2 differences or none of spread."""
    d = np.asarray(diffs, float)
    if len(d) < 2 or np.ptp(d) == 0:
        return math.nan
    low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(low, high))


def _power_factor(n: int) -> float:
    return stats.t.ppf(1 - ALPHA / 2, n - 1) + stats.t.ppf(POWER, n - 1)


def detectable(sd: float, n: int) -> float:
    """The smallest mean paired difference detectable with 80% power (two-sided paired t at 0.05)
    from n pairs of standard deviation sd."""
    return math.nan if n < 2 or not sd == sd else _power_factor(n) * sd / math.sqrt(n)


def seeds_needed(sd: float, effect: float = 0.01, most: int = 1000) -> float:
    """The fewest seeds (pairs) whose ``detectable`` gain at sd is at most ``effect``."""
    if not sd == sd:
        return math.nan
    return next((float(n) for n in range(2, most + 1) if detectable(sd, n) <= effect), math.inf)


# --------------------------------------------------------------------------- the learning curve


def _images(df: pd.DataFrame) -> pd.Series:
    """Labelled images each run trained on: its real ones plus, for the oracle, its added real ones."""
    real = df["data/real_count"] if "data/real_count" in df else df[N_COL].astype(float)
    added = df["synth/count"].fillna(0) if "synth/count" in df else 0.0
    return real + np.where(df[ARM_COL] == "oracle", added, 0.0)


def curve_points(df: pd.DataFrame) -> pd.DataFrame:
    """The learning curve's points: mean test accuracy of real only and of the oracle per number of
    labelled training images (``images``, ``acc``), sorted by size."""
    runs = df[df[ARM_COL].isin([REAL_ONLY, "oracle"])]
    pts = runs.assign(images=_images(runs)).groupby([N_COL, RATIO_COL, ARM_COL])[["images", ACC_COL]].mean()
    return pts.rename(columns={ACC_COL: "acc"}).sort_values("images").reset_index()


def images_for(images: np.ndarray, accs: np.ndarray, acc: float) -> float:
    """The number of labelled images at which the curve through (``images``, ``accs``), made
    monotone by isotonic regression on log size, reaches ``acc``: -inf below its first point, inf
    above its last."""
    from sklearn.isotonic import IsotonicRegression  # here: reports without controls never load sklearn

    order = np.argsort(images)
    x = np.log(np.asarray(images, float)[order])
    y = IsotonicRegression(increasing=True).fit_transform(x, np.asarray(accs, float)[order])
    if acc < y[0]:
        return -math.inf
    if acc > y[-1]:
        return math.inf
    return float(np.exp(np.interp(acc, y, x)))


def settings(names) -> list[str]:
    """The config keys among ``names`` besides N, ratio and seed (a step budget, an augmentation, ...)."""
    return [k for k in names if k in set(config_keys()) - {N_COL, RATIO_COL, SEED_COL}]


def extra_factors(cells: pd.DataFrame) -> list[str]:
    """The cell keys of ``cells`` besides N, ratio and arm."""
    return settings(cells.columns)


def matching(frame: pd.DataFrame, cell: pd.Series, cols: list[str]) -> pd.DataFrame:
    """The rows of ``frame`` that agree with ``cell`` on ``cols`` (compared as text; a column
    ``frame`` lacks does not filter)."""
    keep = pd.Series(True, index=frame.index)
    for c in cols:
        if c in frame and c in cell:
            keep &= frame[c].astype(str) == str(cell[c])
    return frame[keep]


def _per_seed(df: pd.DataFrame, cell: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The curve's sizes (P,), each seed's accuracy at each curve point (S, P), each seed's accuracy
    in ``cell`` (S,) and the cell's own real images, over the seeds the cell has. The curve's runs
    share the cell's other settings (its step budget, its augmentation) where they have them."""
    others = settings(cell.index)
    runs = df[df[ARM_COL].isin([REAL_ONLY, "oracle"])]
    runs = matching(runs, cell, [k for k in others if k in pair_factors(df)])
    keys = [N_COL, RATIO_COL, ARM_COL]
    acc = runs.pivot_table(index=SEED_COL, columns=keys, values=ACC_COL, aggfunc="mean")
    images = runs.assign(images=_images(runs)).groupby(keys)["images"].mean().reindex(acc.columns)
    mine = matching(df[(df[N_COL] == cell[N_COL]) & (df[RATIO_COL] == cell[RATIO_COL])
                       & (df[ARM_COL] == cell[ARM_COL])], cell, others)
    arm = mine.groupby(SEED_COL)[ACC_COL].mean()
    seeds = arm.index.intersection(acc.index)
    own = mine["data/real_count"].mean() if "data/real_count" in mine else float(cell[N_COL])
    return images.to_numpy(float), acc.loc[seeds].to_numpy(float), arm.loc[seeds].to_numpy(float), own


def exchange_rate(df: pd.DataFrame, cell: pd.Series) -> float:
    """What the runs of ``cell`` (N, ratio, arm) are worth in real labelled images: the curve's size
    at their mean accuracy minus their own real images."""
    images, acc, arm, own = _per_seed(df, cell)
    if len(arm) == 0 or len(images) < 2:
        return math.nan
    return images_for(images, np.nanmean(acc, axis=0), float(arm.mean())) - own


def exchange_interval(df: pd.DataFrame, cell: pd.Series, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap of ``exchange_rate`` over whole seeds (infinite ends: off the curve)."""
    images, acc, arm, own = _per_seed(df, cell)
    if len(arm) < 2 or len(images) < 2:
        return math.nan, math.nan
    idx = rng.integers(0, len(arm), (BOOTSTRAP, len(arm)))  # (B, S) resampled seeds
    with np.errstate(all="ignore"):
        curves, arms = np.nanmean(acc[idx], axis=1), arm[idx].mean(axis=1)  # (B, P), (B,)
    draws = np.array([images_for(images, c, a) - own for c, a in zip(curves, arms, strict=True)])
    low, high = np.percentile(draws, [2.5, 97.5], method="inverted_cdf")  # actual draws: inf stays inf
    return float(low), float(high)


def cell_seed(cell: pd.Series, extra: list[str]) -> int:
    """The bootstrap seed of a cell, from its settings alone, so its interval stays the same when the
    study gains or loses other cells. (crc32, not hash(): Python salts str hashes per process.)"""
    return zlib.crc32("|".join(str(cell[k]) for k in [N_COL, RATIO_COL, ARM_COL, *extra]).encode())


# --------------------------------------------------------------------------- the tables


COLUMNS = [N_COL, RATIO_COL, ARM_COL, "n_pairs", "mean_diff", "ci_low", "ci_high", "q_value", "verdict",
           "bound", "tost_p", "equivalent", "margin", "oracle_gain", "share", "share_low", "share_high",
           "exchange", "exchange_low", "exchange_high", "sd", "detectable", "seeds_for_1pp"]


def calibration(df: pd.DataFrame, cells: pd.DataFrame, margin: float = MARGIN) -> pd.DataFrame:
    """One row per treatment cell: its gain and interval (from ``cells``, stats.paired_cells), the
    bound, TOST p and verdict at ``margin``, the oracle's gain at the same (N, ratio), the oracle
    share with Fieller's interval, the exchange rate with its bootstrap interval, and power."""
    if cells.empty or ARM_COL not in cells:
        return pd.DataFrame(columns=COLUMNS)
    pairs = paired_runs(df).astype({ARM_COL: str})
    diff = f"{ACC_COL}:diff"
    rows = []
    extra = extra_factors(cells)
    for _, c in cells[~cells[ARM_COL].isin([*CONTROL_ARMS, REAL_ONLY])].iterrows():
        rng = np.random.default_rng(cell_seed(c, extra))
        at = pairs[(pairs[N_COL] == c[N_COL]) & (pairs[RATIO_COL] == c[RATIO_COL])]
        arm = matching(at[at[ARM_COL] == c[ARM_COL]], c, extra).set_index(SEED_COL)[diff]
        oracles = at[at[ARM_COL] == "oracle"]
        same = matching(oracles, c, extra)  # the oracle at the cell's settings, where it ran them
        oracle = (same if len(same) else oracles).drop_duplicates(SEED_COL).set_index(SEED_COL)[diff]
        common = arm.index.intersection(oracle.index)
        share, share_low, share_high = fieller(arm.loc[common].to_numpy(), oracle.loc[common].to_numpy())
        sd = float(arm.std(ddof=1)) if len(arm) > 1 else math.nan
        p_eq = tost(arm.to_numpy(), margin)
        ex_low, ex_high = exchange_interval(df, c, rng)
        rows.append({N_COL: c[N_COL], RATIO_COL: c[RATIO_COL], ARM_COL: c[ARM_COL],
                     **{k: c[k] for k in extra}, "n_pairs": len(arm),
                     "mean_diff": c["mean_diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                     "q_value": c["q_value"], "verdict": c["verdict"], "bound": c["ci_high"],
                     "tost_p": p_eq, "equivalent": bool(p_eq < ALPHA), "margin": margin,
                     "oracle_gain": oracle.mean() if len(oracle) else math.nan, "share": share,
                     "share_low": share_low, "share_high": share_high,
                     "exchange": exchange_rate(df, c), "exchange_low": ex_low, "exchange_high": ex_high,
                     "sd": sd, "detectable": detectable(sd, len(arm)), "seeds_for_1pp": seeds_needed(sd)})
    return pd.DataFrame(rows, columns=[*COLUMNS[:3], *extra, *COLUMNS[3:]])


def pooled_sd(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per N, the pooled standard deviation of the paired differences (``stats.paired_runs``) over
    the treatment and placebo cells, and its degrees of freedom: the noise a null is measured with,
    which sets the detectable gain. The oracle's cells are left out: their spread includes that of
    a real effect (which added images each seed draws)."""
    diff = f"{ACC_COL}:diff"
    rows = []
    for n, at in pairs[pairs[ARM_COL] != "oracle"].groupby(N_COL, sort=True):
        cells = at.groupby([RATIO_COL, ARM_COL, *extra_factors(at)], sort=True)  # a cell: all its settings
        groups = [g[diff].to_numpy(float) for _, g in cells if len(g) > 1]
        dof = sum(len(g) - 1 for g in groups)
        var = sum(((g - g.mean()) ** 2).sum() for g in groups) / dof if dof else math.nan
        rows.append({N_COL: n, "pooled_sd": math.sqrt(var) if dof else math.nan, "dof": dof,
                     "cells": len(groups)})
    return pd.DataFrame(rows)


def noise_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per N: ``pooled_sd`` of the study's runs (see pooled_sd), its ``dof`` and ``cells``, the
    ``seeds`` the study ran and the gain those seeds detect with 80% power (``detectable``)."""
    noise = pooled_sd(paired_runs(df))
    if noise.empty:
        return noise
    seeds = df[SEED_COL].nunique()
    return noise.assign(seeds=seeds, detectable=[detectable(sd, seeds) for sd in noise["pooled_sd"]])


def fit_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (N, arm, ratio): whether its runs fitted their own real images: the lowest and mean
    training accuracy on them (``clf/train_acc_last``), the mean last-window loss and how far it
    still fell from the window before, and ``fitted`` (every run at FIT_ACC or above, and the loss
    no longer falling by STILL_FALLING or more)."""
    need = {"clf/train_acc_last", "clf/loss_last_window", "clf/loss_prev_window"}
    if not need <= set(df.columns) or ARM_COL not in df:
        return pd.DataFrame()
    rows = []
    keys = [N_COL, ARM_COL, RATIO_COL, *fit_factors(df)]
    text = df.astype({k: str for k in keys[3:]})
    for cell, g in text.groupby(keys, sort=True):
        fall = ((g["clf/loss_prev_window"] - g["clf/loss_last_window"]) / g["clf/loss_prev_window"]).mean()
        acc_min = g["clf/train_acc_last"].min()
        rows.append({**dict(zip(keys, cell, strict=True)), "runs": len(g),
                     "train_acc_min": acc_min, "train_acc_mean": g["clf/train_acc_last"].mean(),
                     "loss_last": g["clf/loss_last_window"].mean(), "loss_fall": fall,
                     "fitted": bool(acc_min >= FIT_ACC and not fall >= STILL_FALLING)})
    return in_level_order(pd.DataFrame(rows), keys)


def fit_factors(df: pd.DataFrame) -> list[str]:
    """The settings besides N, arm and ratio that split the fit table: those that vary within an arm
    (a step budget, ...) or among the real-only runs (an augmentation), since each fits differently."""
    return [k for k in dict.fromkeys([*varying_factors(df), *pair_factors(df)]) if k != ARM_COL]


def has_controls(df: pd.DataFrame) -> bool:
    return ARM_COL in df and df[ARM_COL].isin(CONTROL_ARMS).any()
