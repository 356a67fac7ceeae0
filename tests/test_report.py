"""The report's statistics and files, from synthetic DataFrames with known effects."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganft.report.stats import (
    class_cells,
    class_extremes,
    compare_cells,
    paired_cells,
    paired_runs,
    summarise,
)
from ganft.report.text import ReportMeta, busy_seconds
from ganft.report.tidy import cast_param, tidy_runs
from ganft.report.write import write_report
from ganft.study.schema import load_study


def frame(effects: dict[tuple[int, float], float], seeds=(0, 1, 2, 3, 4), noise=0.01,
          extra: dict | None = None, rng_seed: int = 0) -> pd.DataFrame:
    """Tidy runs: baseline accuracy 0.8 per (N, seed) plus seed noise; ratio r adds effects[(N, r)]."""
    rng = np.random.default_rng(rng_seed)
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
    assert gain.ci_low > 0 and gain.p_value < 0.01 and gain.significant and gain.ci_method == "t"
    assert null.ci_low < 0 < null.ci_high and null.p_value > 0.05 and not null.significant


def test_interval_is_the_scipy_t_interval() -> None:
    d = np.array([0.01, 0.04, 0.02])
    s = summarise(d)
    half = 2 * 4.302653 * d.std(ddof=1) / np.sqrt(3) / 2  # t(0.975, 2) = 4.3027
    assert s["ci_low"] == pytest.approx(d.mean() - half) and s["ci_high"] == pytest.approx(d.mean() + half)


def test_identical_differences_give_no_interval_rather_than_certainty() -> None:
    s = summarise(np.array([-0.0556, -0.0556]))  # 2 seeds, same number of test images flipped
    assert np.isnan(s["ci_low"]) and np.isnan(s["p_value"]) and not s["nominal"]
    assert "equal" in s["note"] and s["mean_diff"] == pytest.approx(-0.0556)


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
    assert row.n_pairs == 1 and np.isnan(row.ci_low) and "no CI" in row.note and not row.significant


def test_runs_pair_only_with_the_same_seed_and_factor_level() -> None:
    df = pd.concat([frame({(100, 1.0): 0.05}, seeds=(0, 1), extra={"gan.loss": "ns"}),
                    frame({(100, 1.0): 0.05}, seeds=(1, 2), extra={"gan.loss": "hinge"})])
    df = df[~((df["gan.loss"] == "ns") & (df["seed"] == 1) & (df["synth.ratio"] == 0))]
    pairs = paired_runs(df)
    got = sorted(zip(pairs["gan.loss"], pairs["seed"], strict=True))
    assert got == [("hinge", 1), ("hinge", 2), ("ns", 0)]
    assert (pairs["test/acc:diff"] == pairs["test/acc"] - pairs["test/acc:base"]).all()


def test_a_planted_class_gain_tops_the_class_table() -> None:
    df = frame({(100, 1.0): 0.0, (100, 2.0): 0.0})
    rng = np.random.default_rng(1)
    for k in range(4):
        df[f"test/acc_class_{k}"] = df["test/acc"] + rng.normal(0, 0.01, len(df))
    gain = (df["synth.ratio"] == 2.0).to_numpy()
    df.loc[gain, "test/acc_class_2"] += 0.10  # class 2 gains 10 pp at ratio 2
    df.loc[gain, "test/acc_class_0"] -= 0.08  # class 0 loses 8 pp there
    classes = class_cells(df, {0: "zero", 1: "one", 2: "two", 3: "three"})
    assert len(classes) == 4 * 2 and set(classes["class_name"]) == {"zero", "one", "two", "three"}
    gains, losses = class_extremes(classes, k=1)
    assert gains.iloc[0]["class_name"] == "two" and gains.iloc[0]["synth.ratio"] == 2.0
    assert gains.iloc[0]["mean_diff"] == pytest.approx(0.10, abs=0.02) and gains.iloc[0]["ci_low"] > 0
    assert losses.iloc[0]["class_name"] == "zero" and losses.iloc[0]["ci_high"] < 0


def test_compare_pairs_common_seeds_and_finds_a_planted_difference_of_gains() -> None:
    a = frame({(100, 1.0): 0.01, (100, 4.0): 0.0})
    b = frame({(100, 1.0): 0.04, (100, 4.0): 0.0, (500, 1.0): 0.02}, rng_seed=1)  # same seeds as a
    comp = compare_cells(a, b).set_index(["data.train_size", "synth.ratio"])
    planted = comp.loc[(100, 1.0)]
    assert planted["method"].startswith("paired t (5 common seeds)")
    assert planted["diff"] == pytest.approx(0.03, abs=0.015) and planted["ci_low"] > 0
    assert comp.loc[(100, 4.0)]["ci_low"] < 0 < comp.loc[(100, 4.0)]["ci_high"]
    only_b = comp.loc[(500, 1.0)]
    assert only_b["n_a"] == 0 and only_b["note"] == "only in B" and np.isnan(only_b["diff"])


def test_compare_without_common_seeds_uses_welch() -> None:
    a = frame({(100, 1.0): 0.0}, seeds=(0, 1, 2, 3, 4))
    b = frame({(100, 1.0): 0.06}, seeds=(5, 6, 7, 8, 9), rng_seed=1)
    row = compare_cells(a, b).iloc[0]
    assert row["method"] == "Welch t" and row["ci_low"] > 0 and row["n_a"] == row["n_b"] == 5


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
    for k in range(3):
        df[f"test/acc_class_{k}"] = df["test/acc"]
    index = write_report(df, tmp_path, ReportMeta("synthetic", command="ganft report synthetic",
                                                  machine="a test machine"))
    files = {p.name for p in tmp_path.iterdir()}
    figures = {"accuracy_vs_ratio.png", "gain_heatmap.png", "class_gains.png"}
    assert {"index.html", "index.md", "results.csv", "cells.csv", "classes.csv"} | figures <= files
    page = index.read_text()
    assert page.count('src="data:image/png;base64,') == len(figures)  # every figure embedded
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing to fetch
    md = (tmp_path / "index.md").read_text()
    assert all(f"]({name})" in md for name in figures)
    assert "Best cell: N=100, ratio 1: +5" in md and "95% CI +" in md
    assert "GAN data hurt (Benjamini-Hochberg q < 0.05) in 1 of 4 cells: N=100, ratio 4 (-" in md
    assert "Study size: 30 finished trials (4 cells, 5 seeds)" in md
    assert "`ganft report synthetic`" in md and "a test machine" in md and "Generator quality" in md
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert len(cells) == 4 and len(pd.read_csv(tmp_path / "results.csv")) == 30
    assert set(cells["ci_method"]) == {"t"}
    assert {"p_value", "q_value", "n_pairs", "note", "nominal", "significant",
            "verdict"} <= set(cells.columns)
    assert len(pd.read_csv(tmp_path / "classes.csv")) == 3 * 4


def test_no_significant_gain_is_said_plainly(tmp_path: Path) -> None:
    df = frame({(100, 1.0): 0.0, (100, 2.0): -0.002}, noise=0.02)
    md = (write_report(df, tmp_path, ReportMeta("null")).parent / "index.md").read_text()
    assert "no cell shows a gain after Benjamini-Hochberg" in md or "GAN data helped in no cell" in md
    assert "GAN data hurt significantly (q < 0.05) in no cell" in md


def test_the_canonical_study_its_protocol_twin_and_its_ceiling_share_the_classifier_recipe() -> None:
    from ganft.catalog import budget_range
    from ganft.study.queue import check_config_sizes

    studies = Path(__file__).parents[1] / "studies"
    grid, pool, ceiling = (load_study(studies / f"{name}.yaml") for name in
                           ("fashion_grid", "fashion_grid_pool", "fashion_ceiling"))
    for cfg in (grid, pool, ceiling):
        check_config_sizes(cfg)
    values = grid.grid_values
    assert values["data.train_size"] == [100, 500, 1000] and values["seed"] == [0, 1, 2, 3, 4]
    assert sorted(values["synth.ratio"]) == [0, 1, 2, 4] and len(grid.points()) == 120
    arms = {(p["synth.source"], p["synth.ratio"]) for p in grid.points()}  # both controls, every ratio
    assert arms == {("gan", 0), ("placebo", 0), *{(a, r) for a in ("oracle", "gan") for r in (1, 2, 4)}}
    assert grid.base.data.validation == ceiling.base.data.validation == "none"
    # the protocol twin: a part of the same grid at ratios 0 and 1, only the validation protocol differs
    assert pool.base.data.validation == "pool" and pool.base.data.val_size == 5000
    assert pool.grid["synth.ratio"] == [0, 1]
    assert all(set(pool.grid[k]) <= set(values[k]) for k in pool.grid)
    assert pool.base.model_dump(exclude={"data"}) == grid.base.model_dump(exclude={"data"})
    assert ceiling.points() == [{}] and ceiling.base.synth.ratio == 0
    assert ceiling.base.data.train_size == budget_range(ceiling.base.data)[1] == 60000
    assert ceiling.base.data.dataset == grid.base.data.dataset == "fashion-mnist"
    same = {"arch", "init", "batch_size", "lr", "width", "schedule", "augment"}
    assert {k: getattr(ceiling.base.classifier, k) for k in same} == \
        {k: getattr(grid.base.classifier, k) for k in same}
    assert grid.base.classifier.arch == "bn-cnn"  # the strong default, not the seed article's CNN


def test_wall_time_counts_resumed_invocations_and_overlapping_workers_once() -> None:
    parents = pd.DataFrame({"start_time": [0, 10_000, 100_000, 500_000],
                            "end_time": [60_000, 50_000, 160_000, None]})  # the last is still running
    assert busy_seconds(parents) == 120.0  # [0, 60 s] with a concurrent worker inside, then [100, 160 s]
    assert busy_seconds(pd.DataFrame()) is None


def test_factors_set_by_a_recipe_are_not_repeated_as_factors_of_their_own() -> None:
    from ganft.report.stats import varying_factors

    rows = []
    for recipe, loss, d_norm in [("default", "ns", "batch"), ("hinge-sn", "hinge", "spectral"),
                                 ("wgan-gp", "wgan-gp", "none"), ("no-diffaugment", "ns", "batch")]:
        for seed in (0, 1):
            rows.append({"data.train_size": 500, "synth.ratio": 1.0, "seed": seed, "gan.recipe": recipe,
                         "gan.loss": loss, "gan.d_norm": d_norm,
                         "classifier.augment": ["none", "classic"][seed]})
    df = pd.DataFrame(rows)
    # loss and d_norm follow from the recipe; augment varies on its own (here with the seed)
    assert varying_factors(df) == ["gan.recipe", "classifier.augment"]  # config order


def test_quality_is_summarised_per_generator_setting_with_its_gain(tmp_path: Path) -> None:
    from ganft.report.stats import quality_cells

    df = frame({(500, 1.0): 0.02, (500, 4.0): 0.04}, seeds=(0, 1, 2), extra={"run_id": ""})
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    gan = df["synth.ratio"] > 0
    # one GAN per seed, scored once per trial that used it: FCD 10 * (seed + 1), CAS 0.5 + seed / 10
    df.loc[gan, "quality/fcd"] = 10.0 * (df.loc[gan, "seed"] + 1)
    df.loc[gan, "quality/cas"] = 0.5 + df.loc[gan, "seed"] / 10
    q = quality_cells(df)
    assert len(q) == 1 and q["gans"].iloc[0] == 3
    assert q["quality/fcd:mean"].iloc[0] == pytest.approx(20.0)
    assert q["quality/fcd:sd"].iloc[0] == pytest.approx(10.0)  # over 3 GANs, not 6 trials
    assert q["quality/cas:mean"].iloc[0] == pytest.approx(0.6)
    assert q["gain_mean"].iloc[0] == pytest.approx(0.03, abs=0.015)  # mean of the +2 and +4 pp cells
    assert "quality/kid:mean" not in q  # not logged: no column
    write_report(df, tmp_path, ReportMeta("quality"))
    md = (tmp_path / "index.md").read_text()
    assert "20.0 ± 10.0" in md and "0.600 ± 0.100" in md
    assert len(pd.read_csv(tmp_path / "quality.csv")) == 1
    assert quality_cells(frame({(100, 1.0): 0.0})).empty  # no quality metrics: no table


def test_a_significant_gain_is_the_best_cell_over_a_larger_noisy_mean(tmp_path: Path) -> None:
    from ganft.report.write import answer_lines

    df = frame({(100, 1.0): 0.02, (500, 1.0): 0.0}, noise=0.002)
    noisy = (df["data.train_size"] == 500) & (df["synth.ratio"] == 1.0)
    df.loc[noisy, "test/acc"] += np.where(df.loc[noisy, "seed"] == 0, 0.5, -0.05)  # mean +6 pp, CI wide
    cells = paired_cells(df)
    noisy_cell = cells[cells["data.train_size"] == 500].iloc[0]
    assert noisy_cell["mean_diff"] > 0.05 and not noisy_cell["significant"]
    first = answer_lines(df, cells)[0]
    assert first.startswith("Best cell: N=100, ratio 1: +2")
    assert "1 of 2 cells show a gain that survives Benjamini-Hochberg" in first


def test_the_study_size_counts_each_generator_once_whichever_run_trained_it() -> None:
    from ganft.report.text import size_line

    # four trials of two generators: one trained by a run killed afterwards (its rerun hit the cache)
    df = pd.DataFrame({"seed": [0, 0, 1, 1], "gan_key": ["a", "a", "b", "b"],
                       "gan/trained_here": [1.0, 0.0, 0.0, 0.0]})
    cells = pd.DataFrame({"N": [100, 100]})
    line = size_line(df, cells, None)
    assert line.startswith("Study size: 4 finished trials (2 cells, 2 seeds, 2 generators)")
    older = df.drop(columns="gan_key")  # a results.csv from before the key was kept
    assert size_line(older, cells, None).startswith("Study size: 4 finished trials (2 cells, 2 seeds, "
                                                    "1 GAN trained)")
    assert "generator" not in size_line(df.assign(gan_key=None), cells, None)  # real-only studies
