"""The report of an Optuna search: what it found on budget data (optimisation history, parameter
importances, the best trials with the spread over their repeats) and the confirmation of the best
recipe on fresh seeds, the only place the test split speaks (a paired gain with its 95% CI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ganft.report import figures as figs
from ganft.report import sections as sec
from ganft.report.page import Page, Section
from ganft.report.stats import paired_cells
from ganft.report.text import ReportMeta, ci_text, p_text, pp, study_time
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
    return [f"Confirmation on {int(c['n_pairs'])} fresh seeds, tested once: the best recipe "
            f"{pp(c['mean_diff'])} test accuracy vs real only ({ci}; {c['verdict']})."]


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
    if len(complete):
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
    if importances is not None and len(importances):
        importances.to_csv(out_dir / "importances.csv", index=False)
        optuna.figures.append((sec.save_figure(figs.fig_param_importances(importances), out_dir,
                                               "param_importances.png"),
                               "fANOVA parameter importances (Optuna)."))
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
