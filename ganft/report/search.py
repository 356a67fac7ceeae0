"""The report of an Optuna search: what it found on budget data (optimisation history, parameter
importances, the best trials with the spread over their repeats) and the confirmation of the best
recipe on fresh seeds, the only place the test split speaks (a paired gain with its 95% CI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from ganft.report import figures as figs
from ganft.report import sections as sec
from ganft.report.page import Page, Section
from ganft.report.stats import paired_cells
from ganft.report.text import ReportMeta, _n, ci_text, p_text, pp, study_time
from ganft.report.write import write_page
from ganft.study.queue import PAIRED_OBJECTIVE_NAME


def confirmation_lines(confirm: pd.DataFrame | None, name: str) -> list[str]:
    if confirm is None or confirm.empty:
        return [f"Not confirmed yet: `ganft study confirm {name}` re-runs the best recipe and real only on "
                f"fresh seeds and tests them once."]
    cells = paired_cells(confirm)
    if cells.empty:
        return ["The confirmation has no pair of best recipe and real only yet."]
    c = cells.iloc[0]
    ci = c["note"] if math.isnan(c["ci_low"]) else f"95% CI {ci_text(c)}, p = {p_text(c['p_value'])}"
    return [f"Confirmation on {_n(int(c['n_pairs']), 'fresh seed')}, tested once: the best recipe "
            f"{pp(c['mean_diff'])} test accuracy vs real only ({ci}; {c['verdict']})."]


RETEST_MIN = 0.5  # Spearman's rho between two repeats' objectives below which it ranks noise


def retest(complete: pd.DataFrame) -> tuple[float, float, int]:
    """(Spearman rho, p, trials) between the first two repeats' objective values over the complete
    trials with at least two repeats: whether the objective ranks recipes the same way twice. NaN
    with fewer than 4 such trials."""
    values = [v for v in complete.get("repeat_values", []) if isinstance(v, list | tuple) and len(v) > 1]
    if len(values) < 4:
        return math.nan, math.nan, len(values)
    res = stats.spearmanr([v[0] for v in values], [v[1] for v in values])
    return float(res.statistic), float(res.pvalue), len(values)


def retest_line(rho: float, p: float, n: int) -> tuple[str, bool]:
    """The line about the objective's repeatability and whether a winner may be named."""
    if math.isnan(rho):
        return (f"The objective's repeatability cannot be judged ({n} trials with two repeats; 4 needed): "
                f"read the best trial as a candidate, not a finding.", True)
    if rho >= RETEST_MIN and p < 0.05:
        return (f"The objective repeats: the two repeats of a trial rank the {n} trials alike (test-retest "
                f"Spearman rho {rho:.2f}, p = {p_text(p)}).", True)
    return (f"The objective does not repeat: the two repeats of a trial rank the {n} trials differently "
            f"(test-retest Spearman rho {rho:.2f}, p = {p_text(p)}; {RETEST_MIN} and p < 0.05 needed), so "
            f"its best value is mostly noise and this report names no winner. Use a continuous, "
            f"cross-validated objective (data.validation kfold) or more repeats.", False)


def write_search_report(results: pd.DataFrame, trials: pd.DataFrame, out_dir: Path, meta: ReportMeta, *,
                        objective: str, history: pd.DataFrame | None, importances: pd.DataFrame | None,
                        confirm: pd.DataFrame | None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    results.to_csv(out_dir / "results.csv", index=False)
    trials.to_csv(out_dir / "trials.csv", index=False)
    done = trials[trials["state"].isin(["COMPLETE", "PRUNED"])]
    # best first; among equal values the earliest trial, as `ganft study best` picks it
    complete = trials[trials["state"] == "COMPLETE"].sort_values(["value", "number"], ascending=[False, True])
    lines = [f"Search: {len(done)} trials ({len(complete)} complete, {len(done) - len(complete)} pruned), "
             f"objective: {objective} (never the test split); {study_time(results, meta)}."]
    repeatable, winner = retest_line(*retest(complete))
    lines.append(repeatable)
    if len(complete) and winner:
        best = complete.iloc[0]
        spread = "" if math.isnan(best["repeat_sd"]) else \
            f", sd {100 * best['repeat_sd']:.1f} pp over its repeats"
        lines.append(f"Best: trial {int(best['number'])}, {pp(best['value'])} ({int(best['repeats'])} repeats"
                     f"{spread}): {best['params']}.")
    repeated = done[done.duplicated("params", keep="first")]
    if len(repeated):
        first = done.drop_duplicates("params").set_index("params")["number"]
        pairs = ", ".join(f"{int(t['number'])} (= {int(first[t['params']])})" for _, t in repeated.iterrows())
        lines.append(f"{len(repeated)} trial(s) repeat an earlier trial's point: {pairs}.")
    lines += confirmation_lines(confirm, meta.study)
    sections = []
    paired = objective == PAIRED_OBJECTIVE_NAME
    optuna = Section("What the search did", [
        f"Every trial trains its sampled recipe `search.repeats` times (seeds seed, seed+1, ...) and scores "
        f"the mean of its objective ({objective}); the pruner stopped the trials whose "
        f"intermediate validation accuracy fell behind. The test split chose nothing."])
    if history is not None and len(history):
        fig = figs.fig_optimization_history(history, paired_gain=paired)
        optuna.figures.append((sec.save_figure(fig, out_dir, "optimization_history.png"),
                               "Optimisation history (Optuna)."))
    sec.add_importances(optuna, importances, len(complete), out_dir)
    top = complete.head(10)
    optuna.table = pd.DataFrame({"trial": top["number"].astype(int),
                                 "objective (pp)": (100 * top["value"]).round(2),
                                 "sd over repeats (pp)": (100 * top["repeat_sd"]).round(2),
                                 "repeats": top["repeats"].astype(int), "parameters": top["params"]})
    sections.append(optuna)
    if confirm is not None and len(confirm):
        cells = paired_cells(confirm)
        confirm.to_csv(out_dir / "confirm.csv", index=False)
        sections.append(Section("Confirmation on fresh seeds", [
            "The best recipe and real only (ratio 0), on seeds the search never used, each tested once on "
            "the test split; paired per seed as in every grid. Also in [confirm.csv](confirm.csv)."],
            table=sec.cells_table(cells, [])[0]))
    sections.append(Section("Method", bullets=sec.protocol_bullets(results)))
    facts = [("Command", f"`{meta.command}`")] if meta.command else []
    facts += [("Machine", meta.machine)] if meta.machine else []
    facts.append(("Data", "[results.csv](results.csv) (one row per run: trial x repeat), "
                  "[trials.csv](trials.csv) (one row per trial)"))
    (out_dir / "meta.json").write_text(json.dumps({"study": meta.study, "command": meta.command,
                                                   "machine": meta.machine}, indent=2) + "\n")
    return write_page(Page(f"ganft report: {meta.study} (search)", lines, facts, sections), out_dir)
