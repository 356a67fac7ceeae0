"""Reports of studies whose arms use unlabelled images (issue 16), from synthetic frames with known
effects: every arm is paired with real only of the same N and seed (arm-only settings such as
data.unlabelled_size need no real-only twin), the cheap baseline is chosen on budget validation,
never on test accuracy, and GAN arms are compared with it, paired and BH-adjusted."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganft.report.arms import CHEAP_ARM, answer_lines, best_cheap, versus_cheap
from ganft.report.calibrate import fit_table
from ganft.report.figures import _facets
from ganft.report.stats import (
    ARM_COL,
    REAL_ONLY,
    paired_cells,
    paired_runs,
    quality_cells,
    varying_factors,
    with_arms,
)
from ganft.report.text import ReportMeta
from ganft.report.write import write_report

U = "data.unlabelled_size"
ARMS = {  # name: (config, test-accuracy effect, budget-validation effect)
    "real": ({}, 0.0, 0.0),
    "st-10k": ({"synth.source": "self-training", U: 10000, "synth.ratio": 1.0}, 0.03, 0.00),
    "st-all": ({"synth.source": "self-training", U: "all", "synth.ratio": 1.0}, 0.01, 0.05),
    "gan": ({"synth.ratio": 1.0}, -0.02, 0.0),
    "gan-bu": ({"gan.train_on": "budget+unlabelled", U: "all", "synth.ratio": 1.0}, 0.04, 0.02),
    "d-init": ({"gan.train_on": "budget+unlabelled", U: "all", "classifier.init": "discriminator",
                "classifier.arch": "seed-cnn"}, -0.03, 0.0),
}
BASE = {"synth.source": "gan", U: 0, "synth.ratio": 0.0, "gan.train_on": "budget",
        "classifier.init": "scratch", "classifier.arch": "bn-cnn", "gan.transfer_source": "unlabelled",
        "quality.enabled": False}


def arms_frame(seeds=range(5), sizes=(100, 1000), noise=0.004) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        for s in seeds:
            base = 0.7 + rng.normal(0, 0.03)  # the seed's subset: shared by every arm (paired)
            for name, (cfg, test_fx, val_fx) in ARMS.items():
                rows.append({**BASE, **cfg, "data.train_size": n, "seed": s,
                             "test/acc": base + test_fx + rng.normal(0, noise),
                             "clf/best_val_acc": 0.6 + val_fx + rng.normal(0, noise),
                             "grid_point": f"{name}-{n}-{s}", "run_id": f"{name}-{n}-{s}",
                             "start_time": pd.Timestamp("2026-01-01"),
                             "end_time": pd.Timestamp("2026-01-01 01:00")})
    return with_arms(pd.DataFrame(rows))


def test_every_arm_pairs_with_real_only_of_its_n_and_seed() -> None:
    df = arms_frame()
    assert set(df[ARM_COL]) == {REAL_ONLY, CHEAP_ARM, "GAN on budget", "GAN on budget+unlabelled",
                                "D init (budget+unlabelled GAN)"}
    assert varying_factors(df) == [ARM_COL, U]  # classifier.init, arch and train_on follow the arm
    cells = paired_cells(df)
    assert len(cells) == 2 * 5 and (cells["n_pairs"] == 5).all()  # D init (ratio 0) is an arm too
    got = cells.set_index(["data.train_size", ARM_COL, U])["mean_diff"]
    for n in (100, 1000):
        assert got[(n, CHEAP_ARM, "10000")] == pytest.approx(0.03, abs=0.01)
        assert got[(n, "GAN on budget+unlabelled", "all")] == pytest.approx(0.04, abs=0.01)
        assert got[(n, "D init (budget+unlabelled GAN)", "all")] == pytest.approx(-0.03, abs=0.01)
    pairs = paired_runs(df)
    assert (pairs[ARM_COL] != REAL_ONLY).all()
    assert (pairs["test/acc:diff"] == pairs["test/acc"] - pairs["test/acc:base"]).all()


def test_a_study_without_unlabelled_arms_has_no_arm_column() -> None:
    df = arms_frame()
    closed = df[df[U].astype(str) == "0"].drop(columns=ARM_COL)
    assert ARM_COL not in with_arms(closed)


def test_the_cheap_baseline_is_chosen_on_budget_validation_not_on_test() -> None:
    df = arms_frame()
    chosen = best_cheap(df)
    # self-training on all unlabelled images validates best; on 10,000 it tests best
    assert set(chosen[U].astype(str)) == {"all"} and len(chosen) == 2


def test_gan_arms_are_compared_with_the_chosen_cheap_baseline_paired_and_adjusted() -> None:
    df = arms_frame()
    table = versus_cheap(df)
    assert set(table[ARM_COL]) == {"GAN on budget", "GAN on budget+unlabelled",
                                   "D init (budget+unlabelled GAN)"}
    row = table.set_index(["data.train_size", ARM_COL]).loc[(100, "GAN on budget+unlabelled")]
    assert row["mean_diff"] == pytest.approx(0.04 - 0.01, abs=0.01) and row["n_pairs"] == 5
    assert row["significant"] and row["verdict"] == "gain"
    worse = table.set_index(["data.train_size", ARM_COL]).loc[(1000, "GAN on budget")]
    assert worse["mean_diff"] == pytest.approx(-0.03, abs=0.01) and worse["verdict"] == "loss"
    assert table["q_value"].notna().all() and (table["q_value"] >= table["p_value"] - 1e-12).all()


def test_answer_lines_name_the_best_gan_arm_against_both_baselines() -> None:
    df = arms_frame()
    lines = answer_lines(df, paired_cells(df))
    text = "\n".join(lines)
    # chosen on budget validation: budget+unlabelled validates best among the GAN arms
    assert "N=100: the best GAN arm on budget validation is GAN on budget+unlabelled" in text
    assert "over real only" in text and "over self-training" in text and "q = " in text
    assert "95% CI" in text


def test_the_report_of_an_arms_study_has_its_tables(tmp_path: Path) -> None:
    df = arms_frame()
    index = write_report(df, tmp_path, ReportMeta(study="arms", command="ganft study run x",
                                                   machine="test", wall_seconds=60.0))
    md = (tmp_path / "index.md").read_text()
    assert index.is_file() and "against the best cheap baseline" in md
    cheap = pd.read_csv(tmp_path / "versus_cheap.csv")
    assert len(cheap) == 6 and {"q_value", "verdict", "cheap_cell"} <= set(cheap.columns)
    assert "arm" in pd.read_csv(tmp_path / "cells.csv").columns


def test_a_control_is_never_the_best_arm_nor_a_gan_cell_against_the_cheap_baseline() -> None:
    rows = arms_frame().drop(columns="arm").to_dict("records")
    oracle = [{**r, "synth.source": "oracle", "synth.ratio": 1.0, U: 0, "gan.train_on": "budget",
               "classifier.init": "scratch", "classifier.arch": "bn-cnn", "test/acc": r["test/acc"] + 0.1,
               "clf/best_val_acc": 0.95, "grid_point": f"oracle-{r['grid_point']}"}
              for r in rows if r["grid_point"].startswith("real-")]
    df = with_arms(pd.DataFrame(rows + oracle))
    assert "oracle" in set(df[ARM_COL])  # it validates best of all...
    lines = answer_lines(df, paired_cells(df))
    assert not any("best GAN arm on budget validation is oracle" in line for line in lines)
    assert all("oracle" not in line for line in lines if "best GAN arm" in line)  # ...and is never picked
    assert "oracle" not in set(versus_cheap(df)[ARM_COL])


def test_step_budgets_read_in_order_of_size_not_as_text() -> None:
    """Grid factors are compared as text ("18000" < "2000"); tables list them by value."""
    rng = np.random.default_rng(1)
    rows = []
    for s in range(3):
        base = 0.7 + rng.normal(0, 0.03)
        rows.append({**BASE, "classifier.steps": 1500, "data.train_size": 100, "seed": s,
                     "test/acc": base, "run_id": f"real-{s}"})
        for steps, fx in ((6000, 0.02), (18000, 0.03), (2000, -0.01)):
            rows.append({**BASE, "synth.source": "ssgan", U: "all", "classifier.steps": steps,
                         "data.train_size": 100, "seed": s, "run_id": f"ss-{steps}-{s}",
                         "test/acc": base + fx + rng.normal(0, 0.002)})
    df = with_arms(pd.DataFrame(rows))
    cells = paired_cells(df)
    assert list(cells["classifier.steps"]) == ["2000", "6000", "18000"]
    assert list(cells["mean_diff"].round(2)) == [-0.01, 0.02, 0.03]
    assert list(paired_runs(df)["classifier.steps"].drop_duplicates()) == ["2000", "6000", "18000"]
    fit = df.assign(**{"clf/train_acc_last": 1.0, "clf/loss_last_window": 0.01, "clf/loss_prev_window": 0.01})
    table = fit_table(fit)
    assert list(table[table[ARM_COL] != REAL_ONLY]["classifier.steps"]) == ["2000", "6000", "18000"]


def test_generator_settings_read_in_order_of_size_in_the_quality_table_and_the_figure_panels() -> None:
    rows = []
    for s in range(2):
        rows.append({**BASE, "gan.steps": 3000, "data.train_size": 100, "seed": s, "test/acc": 0.7,
                     "run_id": f"real-{s}"})
        for steps in (6000, 18000, 2000):
            rows.append({**BASE, "synth.ratio": 1.0, "gan.steps": steps, "data.train_size": 100, "seed": s,
                         "test/acc": 0.7 + steps / 1e6, "quality/fcd": steps / 100 + s,
                         "run_id": f"gan-{steps}-{s}"})
    df = with_arms(pd.DataFrame(rows))
    quality = quality_cells(df)
    assert list(quality["gan.steps"]) == ["2000", "6000", "18000"]
    assert list(quality["quality/fcd:mean"]) == [20.5, 60.5, 180.5]
    panels = [label for label, _ in _facets(df[df["synth.ratio"] > 0], ["gan.steps"])]
    assert panels == ["gan.steps=2000", "gan.steps=6000", "gan.steps=18000"]
