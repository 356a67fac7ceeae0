"""MLflow runs -> tidy DataFrame -> paired statistics -> seaborn figures -> reports/<study>/.

The question each report answers: for each training-set size N and synthetic ratio, did adding GAN
images change test accuracy compared with the real-only run of the same N, seed and other factors,
by how much, and how sure are we? Differences are paired per seed (same labelled subset, same
classifier initialisation) and summarised with a t-based 95% confidence interval and a paired
t-test (scipy.stats), which is exact for normally distributed differences and honest about how
wide the interval is with three seeds.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy import stats

from ganft.config import TrialConfig, config_keys

N_COL, RATIO_COL, SEED_COL, ACC_COL = "data.train_size", "synth.ratio", "seed", "test/acc"
CI_METHOD = "t"  # the interval in cells.csv: mean ± t(0.975, n-1) * sd / sqrt(n)


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
    types = _field_types()
    out = pd.DataFrame({"run_id": runs["run_id"].to_numpy(),
                        "grid_point": runs["tags.ganft.grid_point"].to_numpy()})
    for key, ann in types.items():
        col = f"params.{key}"
        if col in runs:
            out[key] = [cast_param(v, ann) for v in runs[col]]
    for col in runs.columns:
        if col.startswith("metrics."):
            out[col.removeprefix("metrics.")] = runs[col].astype(float).to_numpy()
    out["start_time"] = pd.to_datetime(runs["start_time"].to_numpy(), unit="ms")
    out["end_time"] = pd.to_datetime(runs["end_time"].to_numpy(), unit="ms")
    if "tags.gan.cache" in runs:
        out["gan_cache"] = runs["tags.gan.cache"].to_numpy()
    return out.sort_values([c for c in (N_COL, RATIO_COL, SEED_COL) if c in out]).reset_index(drop=True)


def varying_factors(df: pd.DataFrame) -> list[str]:
    """Config columns (other than N, ratio and seed) whose value differs between runs."""
    skip = {N_COL, RATIO_COL, SEED_COL}
    return [k for k in config_keys() if k in df and k not in skip
            and df[k].astype(str).nunique(dropna=False) > 1]


# --------------------------------------------------------------------------- paired statistics


def paired_cells(df: pd.DataFrame, metric: str = ACC_COL) -> pd.DataFrame:
    """Per (N, ratio > 0, other factors): the paired difference of ``metric`` to the ratio-0 run
    with the same N, seed and other factors. Columns: the cell keys, ``n_pairs``, ``mean_acc``,
    ``baseline_acc``, ``mean_diff``, ``ci_low``, ``ci_high``, ``p_value``, ``note``."""
    factors = varying_factors(df)
    pair_keys = [N_COL, SEED_COL, *factors]
    df = df.reset_index(drop=True).astype({k: str for k in factors})  # lists/None compare as text
    base = df[df[RATIO_COL] == 0][[*pair_keys, metric]].rename(columns={metric: "_base"})
    merged = df[df[RATIO_COL] > 0].merge(base, on=pair_keys, how="inner")
    rows = []
    for cell, g in merged.groupby([N_COL, RATIO_COL, *factors], sort=True, dropna=False):
        diffs = (g[metric] - g["_base"]).to_numpy()
        rows.append({**dict(zip([N_COL, RATIO_COL, *factors], cell, strict=True)),
                     **summarise(diffs), "mean_acc": g[metric].mean(), "baseline_acc": g["_base"].mean()})
    cols = [N_COL, RATIO_COL, *factors, "n_pairs", "mean_acc", "baseline_acc", "mean_diff",
            "ci_low", "ci_high", "p_value", "note"]
    return pd.DataFrame(rows, columns=cols)


def summarise(diffs: np.ndarray) -> dict[str, Any]:
    """Mean, t-based 95% CI and paired t-test p-value of per-seed differences."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else float("nan")
    if n < 2:
        return {"n_pairs": n, "mean_diff": mean, "ci_low": float("nan"), "ci_high": float("nan"),
                "p_value": float("nan"), "note": f"{n} pair: no CI"}
    sd = float(np.std(diffs, ddof=1))
    if sd == 0.0:  # identical differences: the interval collapses to the point
        return {"n_pairs": n, "mean_diff": mean, "ci_low": mean, "ci_high": mean,
                "p_value": 1.0 if mean == 0 else 0.0, "note": "zero variance"}
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {"n_pairs": n, "mean_diff": mean, "ci_low": mean - half, "ci_high": mean + half,
            "p_value": p, "note": ""}


# --------------------------------------------------------------------------- figures


def t_interval(values: pd.Series) -> tuple[float, float]:
    """The 95% t-interval of a mean (the same method as the cells table), for seaborn's errorbar."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2 or x.std(ddof=1) == 0:
        return m, m
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return m - half, m + half


def fig_accuracy_vs_ratio(df: pd.DataFrame) -> Figure:
    """Test accuracy against synthetic:real ratio, one line per N (mean and 95% CI over seeds);
    dashed lines mark each N's real-only (ratio 0) level."""
    fig = Figure(figsize=(7.5, 4.8), dpi=120, layout="constrained")
    ax = fig.subplots()
    data = df.assign(**{"N (real images)": df[N_COL].astype(int), "acc_pct": 100 * df[ACC_COL]})
    sizes = sorted(data["N (real images)"].unique())
    palette = dict(zip(sizes, sns.color_palette("viridis", len(sizes)), strict=True))
    sns.lineplot(data=data, x=RATIO_COL, y="acc_pct", hue="N (real images)", palette=palette,
                 marker="o", errorbar=t_interval, ax=ax)
    for n, g in data[data[RATIO_COL] == 0].groupby("N (real images)"):
        ax.axhline(g["acc_pct"].mean(), color=palette[n], ls="--", lw=1, alpha=0.7)
    ax.set_xticks(sorted(data[RATIO_COL].unique()))
    ax.set_xlabel("synthetic : real ratio (GAN images per real image)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy with GAN data (mean, 95% CI over seeds; dashed: real only)")
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- outputs


@dataclass
class ReportMeta:
    study: str
    command: str = ""
    machine: str = ""


def answer_lines(df: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """The three-line answer the index opens with."""
    lines = []
    if cells.empty:
        lines.append("No (N, ratio) cell has both a GAN run and its real-only pair yet.")
    else:
        best = cells.sort_values("mean_diff", ascending=False).iloc[0]
        lead = "Best cell" if best["mean_diff"] > 0 else "GAN data helped in no cell; the best was"
        lines.append(f"{lead}: N={int(best[N_COL])}, ratio {best[RATIO_COL]:g}: "
                     f"{100 * best['mean_diff']:+.1f} pp test accuracy vs real only "
                     f"({_ci_text(best)}, {int(best['n_pairs'])} pairs).")
        hurt = cells[cells["ci_high"] < 0]
        worse = cells[cells["mean_diff"] < 0]
        if len(hurt):
            where = ", ".join(f"N={int(r[N_COL])} r={r[RATIO_COL]:g} ({100 * r['mean_diff']:+.1f} pp)"
                              for _, r in hurt.iterrows())
            lines.append(f"GAN data hurt (95% CI below 0) in {len(hurt)} of {len(cells)} cells: {where}.")
        else:
            lines.append(f"GAN data hurt significantly in no cell; the mean was below real only in "
                         f"{len(worse)} of {len(cells)} cells.")
    span = (df["end_time"].max() - df["start_time"].min()).total_seconds() if len(df) else 0.0
    compute = df["time/trial_seconds"].sum() if "time/trial_seconds" in df else float("nan")
    lines.append(f"Study size: {len(df)} finished trials; wall time {span / 60:.1f} min "
                 f"(first trial start to last trial end; {compute / 60:.1f} min of trial compute).")
    return lines


def _ci_text(row: pd.Series) -> str:
    if math.isnan(row["ci_low"]):
        return "no CI: fewer than 2 pairs"
    return f"95% CI {100 * row['ci_low']:+.1f} to {100 * row['ci_high']:+.1f} pp"


def cells_display(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells table as people read it: percentages and a CI column."""
    out = cells.drop(columns=["ci_low", "ci_high", "note", "mean_acc", "baseline_acc"]).copy()
    out.insert(len(out.columns) - 2, "acc with GAN (%)", (100 * cells["mean_acc"]).round(2))
    out.insert(len(out.columns) - 2, "real only (%)", (100 * cells["baseline_acc"]).round(2))
    out["mean diff (pp)"] = (100 * cells["mean_diff"]).round(2)
    out["95% CI (pp)"] = [_ci_text(r).removeprefix("95% CI ") for _, r in cells.iterrows()]
    out["p (paired t)"] = cells["p_value"].map(lambda p: "n/a" if math.isnan(p) else f"{p:.3f}")
    return out.drop(columns=["mean_diff", "p_value"]).rename(
        columns={N_COL: "N", RATIO_COL: "ratio", "n_pairs": "pairs"})


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_report(df: pd.DataFrame, out_dir: Path, meta: ReportMeta) -> Path:
    """Write results.csv, cells.csv, the figures, index.md and a self-contained index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if df.empty:
        raise ValueError(f"study {meta.study!r} has no finished trials to report")
    cells = paired_cells(df)
    df.to_csv(out_dir / "results.csv", index=False)
    cells.to_csv(out_dir / "cells.csv", index=False)
    figures = {"accuracy_vs_ratio.png": ("Test accuracy against ratio", fig_accuracy_vs_ratio(df))}
    for name, (_, fig) in figures.items():
        fig.savefig(out_dir / name)
    answer = answer_lines(df, cells)
    table = cells_display(cells)
    about = [f"Command: `{meta.command}`" if meta.command else "",
             f"Machine: {meta.machine}" if meta.machine else "",
             "Paired differences: each GAN run minus the real-only (ratio 0) run with the same N, seed "
             "and other factors; 95% CI = mean ± t(0.975, n−1)·sd/√n; p from a paired t-test."]
    about = [a for a in about if a]

    md = [f"# ganft report: {meta.study}", "", *[f"- {line}" for line in answer], "",
          *about, "", "## Accuracy against ratio", "", "![accuracy vs ratio](accuracy_vs_ratio.png)", "",
          "## Paired difference to real only, per cell", "", table.to_markdown(index=False), "",
          "Data: [results.csv](results.csv) (one row per trial), [cells.csv](cells.csv) "
          "(one row per cell).", ""]
    (out_dir / "index.md").write_text("\n".join(md))

    imgs = "".join(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
                   f'{_png_b64(out_dir / name)}"><figcaption>{html.escape(title)}</figcaption></figure>'
                   for name, (title, _) in figures.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ganft report: {html.escape(meta.study)}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 1000px; margin: 2rem auto;
       padding: 0 1rem; color: #222; }}
.answer {{ background: #f3f6fa; border-left: 4px solid #3b6ea5; padding: .6rem 1rem; }}
.answer p {{ margin: .3rem 0; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: .25rem .5rem; text-align: right; }}
th {{ background: #eef1f5; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 14px; }}
</style></head><body>
<h1>ganft report: {html.escape(meta.study)}</h1>
<div class="answer">{"".join(f'<p class="answer-line">{html.escape(line)}</p>' for line in answer)}</div>
{"".join(f"<p>{html.escape(a)}</p>" for a in about)}
<h2>Accuracy against ratio</h2>{imgs}
<h2>Paired difference to real only, per cell</h2>
{table.to_html(index=False, border=0, na_rep="n/a")}
<p>Data: <a href="results.csv">results.csv</a> (one row per trial),
<a href="cells.csv">cells.csv</a> (one row per cell).</p>
</body></html>
"""
    (out_dir / "index.html").write_text(page)
    return out_dir / "index.html"
