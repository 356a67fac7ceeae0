"""The report's statistics and files, from synthetic DataFrames with known effects."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganft.report import ReportMeta, cast_param, paired_cells, tidy_runs, write_report


def frame(effects: dict[tuple[int, float], float], seeds=(0, 1, 2, 3, 4), noise=0.01,
          extra: dict | None = None) -> pd.DataFrame:
    """Tidy runs: baseline accuracy 0.8 per (N, seed) plus seed noise; ratio r adds effects[(N, r)]."""
    rng = np.random.default_rng(0)
    rows = []
    sizes = sorted({n for n, _ in effects})
    for n in sizes:
        for s in seeds:
            base = 0.8 + rng.normal(0, 0.02)  # the seed's subset: shared by every ratio (paired)
            for r in [0.0] + sorted({r for m, r in effects if m == n}):
                acc = base + effects.get((n, r), 0.0) + rng.normal(0, noise)
                rows.append({"data.train_size": n, "synth.ratio": r, "seed": s, "test/acc": acc,
                             "grid_point": f"n{n}-r{r}-s{s}", "time/trial_seconds": 1.0,
                             "start_time": pd.Timestamp("2026-01-01"),
                             "end_time": pd.Timestamp("2026-01-01 00:10"),
                             **(extra or {})})
    return pd.DataFrame(rows)


def test_planted_gain_is_found_and_zero_effect_is_not() -> None:
    df = frame({(100, 1.0): 0.05, (100, 4.0): 0.0})
    cells = paired_cells(df).set_index("synth.ratio")
    gain, null = cells.loc[1.0], cells.loc[4.0]
    assert gain.n_pairs == 5 and gain.mean_diff == pytest.approx(0.05, abs=0.015)
    assert gain.ci_low > 0 and gain.p_value < 0.01
    assert null.ci_low < 0 < null.ci_high and null.p_value > 0.05


def test_unpaired_runs_are_not_paired() -> None:
    df = frame({(100, 1.0): 0.05})
    df = df[~((df["synth.ratio"] == 0) & (df["seed"] == 4))]  # seed 4 lost its real-only run
    df = pd.concat([df, frame({(100, 1.0): 0.05}, seeds=(9,)).query("`synth.ratio` == 0")
                    .assign(**{"data.train_size": 200})])  # a baseline with no GAN partner
    cells = paired_cells(df)
    assert len(cells) == 1 and cells.n_pairs.iloc[0] == 4


def test_other_factors_pair_within_their_own_level() -> None:
    a = frame({(100, 1.0): 0.05}, extra={"gan.loss": "ns"})
    b = frame({(100, 1.0): -0.05}, extra={"gan.loss": "hinge"})
    b["test/acc"] += 0.1  # a different baseline level: pairing across levels would mix them
    cells = paired_cells(pd.concat([a, b])).set_index("gan.loss")
    assert cells.loc["ns"].mean_diff == pytest.approx(0.05, abs=0.015)
    assert cells.loc["hinge"].mean_diff == pytest.approx(-0.05, abs=0.015)


def test_a_single_pair_has_no_ci_and_says_so() -> None:
    cells = paired_cells(frame({(50, 2.0): 0.02}, seeds=(0,)))
    row = cells.iloc[0]
    assert row.n_pairs == 1 and np.isnan(row.ci_low) and "no CI" in row.note


@pytest.mark.parametrize("value,ann,expected", [("50", int, 50), ("1.0", float, 1.0), ("4", float, 4.0),
                                                ("True", bool, True), ("False", bool, False),
                                                ("None", int | None, None), ("300", int | None, 300),
                                                ("translation", str, "translation")])
def test_params_from_mlflow_strings_are_cast_by_config_type(value, ann, expected) -> None:
    got = cast_param(value, ann)
    assert got == expected and type(got) is type(expected)


def test_tidy_runs_casts_params_and_keeps_the_latest_finished_run_per_point() -> None:
    raw = pd.DataFrame([
        {"run_id": "a", "status": "FINISHED", "start_time": 1, "end_time": 2, "tags.ganft.grid_point": "p",
         "params.data.train_size": "50", "params.synth.ratio": "1.0", "params.seed": "0",
         "params.data.val_size": "None", "metrics.test/acc": 0.5},
        {"run_id": "b", "status": "FINISHED", "start_time": 5, "end_time": 6, "tags.ganft.grid_point": "p",
         "params.data.train_size": "50", "params.synth.ratio": "1.0", "params.seed": "0",
         "params.data.val_size": "None", "metrics.test/acc": 0.7},
        {"run_id": "c", "status": "FAILED", "start_time": 9, "end_time": 10, "tags.ganft.grid_point": "p",
         "params.data.train_size": "50", "params.synth.ratio": "1.0", "params.seed": "0",
         "params.data.val_size": "None", "metrics.test/acc": 0.1},
    ])
    df = tidy_runs(raw)
    assert list(df.run_id) == ["b"] and df["test/acc"].iloc[0] == 0.7
    assert df["data.train_size"].iloc[0] == 50 and df["synth.ratio"].iloc[0] == 1.0
    assert df["data.val_size"].iloc[0] is None


def test_report_files_from_a_synthetic_frame(tmp_path: Path) -> None:
    df = frame({(100, 1.0): 0.05, (100, 4.0): -0.06, (500, 1.0): 0.0, (500, 4.0): 0.01})
    index = write_report(df, tmp_path, ReportMeta("synthetic", command="ganft report synthetic"))
    files = {p.name for p in tmp_path.iterdir()}
    assert {"index.html", "index.md", "results.csv", "cells.csv", "accuracy_vs_ratio.png"} <= files
    page = index.read_text()
    assert page.count('src="data:image/png;base64,') == 1  # self-contained: no external images
    md = (tmp_path / "index.md").read_text()
    assert "Best cell: N=100, ratio 1: +5" in md
    assert "GAN data hurt (95% CI below 0) in 1 of 4 cells: N=100 r=4" in md
    assert "Study size: 30 finished trials" in md
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 4 and len(pd.read_csv(tmp_path / "results.csv")) == 30
