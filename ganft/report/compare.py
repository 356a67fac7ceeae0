"""``ganft report --compare A B``: the same cells of two studies (e.g. two GAN variants) side by
side, with the difference of their gains over real only and its 95% t-interval."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ganft.keys import config_keys
from ganft.report import figures as figs
from ganft.report.page import Page, Section
from ganft.report.sections import save_figure
from ganft.report.stats import CI_TEXT, N_COL, RATIO_COL, compare_cells
from ganft.report.text import ReportMeta, cell_name, ci_text, p_text, pp
from ganft.report.write import write_page


def write_compare_report(df_a: pd.DataFrame, df_b: pd.DataFrame, out_dir: Path, name_a: str,
                         name_b: str, meta: ReportMeta) -> Path:
    """The same cells of two studies side by side, with the difference of gains (B minus A) and
    its 95% t-interval: compare.csv, compare_gains.png, index.md, index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    comp = compare_cells(df_a, df_b)
    comp.to_csv(out_dir / "compare.csv", index=False)
    both = comp[(comp["n_a"] > 0) & (comp["n_b"] > 0)]
    factors = [c for c in comp.columns if c in config_keys() and c not in (N_COL, RATIO_COL)]
    lines = []
    if both.empty:
        lines.append(f"{name_a} and {name_b} have no cell in common (same N and ratio, both paired).")
    else:
        top = both.loc[both["diff"].abs().idxmax()]
        lines.append(f"Largest difference of gains (B={name_b} minus A={name_a}): {cell_name(top, factors)}: "
                     f"{pp(top['diff'])} ({CI_TEXT}: {ci_text(top)}; {top['method']}).")
        better = int((both["significant"] & (both["diff"] > 0)).sum())
        worse = int((both["significant"] & (both["diff"] < 0)).sum())
        lines.append(f"{name_b} gains significantly more than {name_a} (Benjamini-Hochberg q < 0.05 "
                     f"across the shared cells) in {better} of {len(both)} shared cells and "
                     f"significantly less in {worse}.")
    lines.append(f"Study sizes: {name_a} {len(df_a)} trials, {name_b} {len(df_b)} trials; "
                 f"{len(both)} cells in both, {len(comp) - len(both)} in one only.")
    table = pd.DataFrame({"N": comp[N_COL].astype(int), "ratio": comp[RATIO_COL],
                          **{f: comp[f] for f in factors},
                          f"A gain (pp) [{name_a}]": (100 * comp["gain_a"]).round(2), "A pairs": comp["n_a"],
                          f"B gain (pp) [{name_b}]": (100 * comp["gain_b"]).round(2), "B pairs": comp["n_b"],
                          "B − A (pp)": (100 * comp["diff"]).round(2),
                          "95% t-CI (pp)": [ci_text(r) for _, r in comp.iterrows()],
                          "p": comp["p_value"].map(p_text), "q (BH)": comp["q_value"].map(p_text),
                          "verdict": comp["verdict"], "method": comp["method"], "note": comp["note"]})
    rows = ["gain" if r.significant and r.diff > 0 else "loss" if r.significant else ""
            for r in comp.itertuples()]
    sections = [Section("Gains side by side", [
        f"Gain = paired difference to real only within each study. B − A is paired per seed where both "
        f"studies have at least 2 seeds in common (same subsets), else Welch's t; {CI_TEXT}."],
        [(save_figure(figs.fig_compare_gains(comp, name_a, name_b), out_dir, "compare_gains.png"),
          "Gain over real only per cell in both studies (bars: 95% t-interval).")], table, rows)]
    facts = [(k, v) for k, v in (("Command", f"`{meta.command}`" if meta.command else ""),
                                 ("Machine", meta.machine)) if v]
    facts.append(("Data", "[compare.csv](compare.csv) (one row per cell)"))
    return write_page(Page(f"ganft comparison: {name_a} vs {name_b}", lines, facts, sections), out_dir)
