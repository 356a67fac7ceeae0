"""The calibration of a study's answer (issue 22), on planted tables with known answers: Fieller's
oracle share, TOST equivalence, the detectable gain, the exchange rate read off a learning curve,
the pooled noise, the per-arm fit check and the separate multiple-testing families."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ganft.report import calibrate as cal
from ganft.report.stats import paired_cells, paired_runs, with_arms

SEEDS = (0, 1, 2, 3, 4)


def curve(images: float) -> float:
    """The planted real-only learning curve: accuracy linear in log(labelled images)."""
    return 0.5 + 0.05 * math.log(images)


def planted(gan_images: dict[tuple[int, int], float], oracle_noise: float = 0.002,
            seed: int = 0) -> pd.DataFrame:
    """Real only at N 100/500/1000 on the curve, the oracle at ratio 1, 2 and 4 on the curve at its
    N + ratio x N images, the placebo at the baseline, and a GAN arm whose accuracy is the curve's
    at gan_images[(N, ratio)] labelled images; small per-seed noise shared by a seed's runs."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in (100, 500, 1000):
        for s in SEEDS:
            base = rng.normal(0, 0.003)
            run = {"data.train_size": n, "seed": s, "data/real_count": float(n), "classifier.init": "scratch"}
            rows.append({**run, "synth.ratio": 0.0, "synth.source": "gan", "synth/count": 0.0,
                         "test/acc": curve(n) + base})
            rows.append({**run, "synth.ratio": 0.0, "synth.source": "placebo", "synth/count": 0.0,
                         "test/acc": curve(n) + base + rng.normal(0, 0.001)})
            for r in (1, 2, 4):
                added = {"synth.ratio": float(r), "synth/count": float(r * n)}
                rows.append({**run, **added, "synth.source": "oracle",
                             "test/acc": curve(n + r * n) + base + rng.normal(0, oracle_noise)})
                if (n, r) in gan_images:
                    rows.append({**run, **added, "synth.source": "gan",
                                 "test/acc": curve(gan_images[(n, r)]) + base + rng.normal(0, 0.001)})
    return with_arms(pd.DataFrame(rows))


def test_fieller_matches_the_textbook_form_and_refuses_an_unbounded_ratio() -> None:
    a = np.array([0.010, 0.014, 0.008, 0.012, 0.011])
    b = np.array([0.040, 0.050, 0.036, 0.046, 0.043])
    ratio, low, high = cal.fieller(a, b)
    # the same interval in its g-form (Fieller 1954), computed by hand
    n, ma, mb = 5, a.mean(), b.mean()
    v11, v22, v12 = a.var(ddof=1) / n, b.var(ddof=1) / n, np.cov(a, b)[0, 1] / n
    t = stats.t.ppf(0.975, n - 1)
    theta, g = ma / mb, t**2 * v22 / mb**2
    half = t / mb * math.sqrt(v11 - 2 * theta * v12 + theta**2 * v22 - g * (v11 - v12**2 / v22))
    assert ratio == pytest.approx(theta)
    assert low == pytest.approx((theta - g * v12 / v22 - half) / (1 - g))
    assert high == pytest.approx((theta - g * v12 / v22 + half) / (1 - g))
    assert low < theta < high
    _, low, high = cal.fieller(a, np.array([0.01, -0.012, 0.011, -0.009, 0.002]))  # oracle gain ~ 0
    assert math.isnan(low) and math.isnan(high)


def test_tost_matches_two_hand_computed_one_sided_tests() -> None:
    d = np.array([0.001, -0.002, 0.0, 0.002, -0.001])
    se = d.std(ddof=1) / math.sqrt(5)
    by_hand = max(stats.t.sf((d.mean() + 0.01) / se, 4), stats.t.cdf((d.mean() - 0.01) / se, 4))
    assert cal.tost(d, 0.01) == pytest.approx(by_hand) and cal.tost(d, 0.01) < 0.05  # equivalent
    assert cal.tost(d + 0.012, 0.01) > 0.5  # a gain beyond the margin is not equivalence
    assert math.isnan(cal.tost(np.array([0.01, 0.01]), 0.01))


def test_the_detectable_gain_follows_the_spread_and_the_seeds() -> None:
    # the figures: sd 0.88 pp -> 1.48 pp at 5 seeds; sd 0.45 pp -> 0.76 pp
    assert cal.detectable(0.0088, 5) == pytest.approx(0.0146, abs=2e-4)
    assert cal.detectable(0.0045, 5) == pytest.approx(0.0075, abs=2e-4)
    need = cal.seeds_needed(0.0088)
    assert cal.detectable(0.0088, int(need)) <= 0.01 < cal.detectable(0.0088, int(need) - 1)


def test_the_exchange_rate_recovers_a_planted_learning_curve() -> None:
    df = planted({(100, 1): 150.0, (500, 2): 500.0})  # worth +50 images; worth nothing
    def cell(n: int, ratio: float, arm: str = "GAN on budget") -> pd.Series:
        return pd.Series({"data.train_size": n, "synth.ratio": ratio, "arm": arm})

    assert cal.exchange_rate(df, cell(100, 1.0)) == pytest.approx(50, rel=0.1)
    none = cal.exchange_rate(df, cell(500, 2.0))
    assert abs(none) < 40
    # the oracle is worth its own added real images: the curve it extends reads back its size
    assert cal.exchange_rate(df, cell(100, 4.0, "oracle")) == pytest.approx(400, rel=0.1)
    low, high = cal.exchange_interval(df, cell(100, 1.0), np.random.default_rng(0))
    assert low < 50 < high


def test_the_calibration_table_on_a_planted_study() -> None:
    df = planted({(100, 1): 100.0, (100, 4): 300.0, (1000, 1): 1000.0})  # null, +200 images, null
    cells = paired_cells(df)
    table = cal.calibration(df, cells, margin=0.01).set_index(["data.train_size", "synth.ratio"])
    assert set(table["arm"]) == {"GAN on budget"}  # controls are not treatments
    null, gain = table.loc[(100, 1.0)], table.loc[(100, 4.0)]
    assert null["equivalent"] and null["tost_p"] < 0.05 and null["bound"] < 0.01
    assert abs(null["share"]) < 0.1 and null["share_low"] < 0 < null["share_high"]
    # curve(300) - curve(100) over curve(500) - curve(100): log 3 / log 5 of the oracle's gain
    assert gain["share"] == pytest.approx(math.log(3) / math.log(5), abs=0.05)
    assert gain["share_low"] < gain["share"] < gain["share_high"]
    assert gain["exchange"] == pytest.approx(200, rel=0.15) and not gain["equivalent"]
    assert gain["oracle_gain"] == pytest.approx(curve(500) - curve(100), abs=0.003)
    assert 0 < gain["detectable"] < 0.01 and gain["seeds_for_1pp"] <= 5


def test_a_cells_worth_interval_does_not_depend_on_the_other_cells_of_the_study(monkeypatch) -> None:
    """A study that grows by a cell (as ssgan_paper grew by its 18,000-step points) keeps the
    bootstrap intervals of the cells it had: each cell draws from its own stream."""
    monkeypatch.setattr(cal, "BOOTSTRAP", 200)
    df = planted({(100, 1): 150.0, (100, 4): 300.0})
    key = ["data.train_size", "synth.ratio"]
    full = cal.calibration(df, paired_cells(df)).set_index(key)
    alone = df[~((df["arm"] == "GAN on budget") & (df["synth.ratio"] == 1))]  # the cell drawn first
    fewer = cal.calibration(alone, paired_cells(alone)).set_index(key)
    assert len(full) == 2 and len(fewer) == 1
    cols = ["exchange_low", "exchange_high"]
    assert list(fewer.loc[(100, 4.0), cols]) == list(full.loc[(100, 4.0), cols])
    assert fewer.loc[(100, 4.0), "exchange_low"] < 200 < fewer.loc[(100, 4.0), "exchange_high"]


def test_controls_are_their_own_multiple_testing_family() -> None:
    df = planted({(100, 1): 100.0, (500, 1): 500.0, (1000, 1): 1000.0}, seed=3)
    cells = paired_cells(df)
    treat = cells[cells["arm"] == "GAN on budget"]
    alone = paired_cells(df[~df["arm"].isin(["oracle", "placebo"])])
    assert np.allclose(treat.sort_values("data.train_size")["q_value"],
                       alone.sort_values("data.train_size")["q_value"], equal_nan=True)
    oracle = cells[cells["arm"] == "oracle"]
    assert oracle["significant"].all() and (oracle["mean_diff"] > 0).all()  # the positive control shows
    assert not cells[cells["arm"] == "placebo"]["significant"].any()


def test_pooled_noise_and_the_fit_check() -> None:
    df = planted({(100, 1): 100.0})
    pooled = cal.pooled_sd(paired_runs(df)).set_index("data.train_size")
    assert pooled.loc[100, "dof"] == 2 * 4 and 0 < pooled.loc[100, "pooled_sd"] < 0.01  # GAN and placebo
    assert pooled.loc[500, "dof"] == 4 and pooled.loc[500, "cells"] == 1  # the placebo alone
    fit = df.assign(**{"clf/train_acc_last": 1.0, "clf/loss_last_window": 0.01,
                       "clf/loss_prev_window": 0.0101})
    one = (fit["arm"] == "oracle") & (fit["synth.ratio"] == 4) & (fit["seed"] == 2)
    fit.loc[one, "clf/train_acc_last"] = 0.97
    fit.loc[fit["arm"] == "placebo", "clf/loss_prev_window"] = 0.05  # still falling fast
    table = cal.fit_table(fit).set_index(["data.train_size", "arm", "synth.ratio"])
    assert not table.loc[(100, "oracle", 4.0), "fitted"] and table.loc[(100, "oracle", 1.0), "fitted"]
    assert not table.loc[(500, "placebo", 0.0), "fitted"] and table.loc[(500, "real only", 0.0), "fitted"]


def test_a_report_with_controls_opens_with_its_calibration(tmp_path, monkeypatch) -> None:
    from ganft.report.text import ReportMeta
    from ganft.report.write import write_report

    monkeypatch.setattr(cal, "BOOTSTRAP", 200)  # the exchange rate's interval: coarser, faster

    df = planted({(100, 1): 100.0, (100, 4): 300.0, (500, 1): 500.0, (1000, 1): 1000.0})
    df = df.assign(**{"clf/train_acc_last": 1.0, "clf/loss_last_window": 0.01,
                      "clf/loss_prev_window": 0.0101, "grid_point": [f"p{i}" for i in range(len(df))]})
    write_report(df, tmp_path, ReportMeta(study="planted", margin=0.01))
    md = (tmp_path / "index.md").read_text()
    answer = md.split("- **")[0]
    assert "Sensitivity: the oracle control" in answer
    assert "detected (q < 0.05 among the controls) in 9 of 9" in answer
    assert "The placebo (real only with another batch order) stayed null in every cell" in answer
    assert "N=100, GAN on budget:" in answer and "worth about" in answer and "rule out gains above" in answer
    assert "Every arm fitted its real images" in answer and "groups of correlated tests" in answer
    assert "## Calibration against the controls" in md and "## The controls" in md
    assert "## Budget and fit, per arm" in md and "GAN arms against the best cheap baseline" not in md
    table = pd.read_csv(tmp_path / "calibration.csv")
    assert set(table["arm"]) == {"GAN on budget"} and len(table) == 4  # never a control as a treatment
    noise = pd.read_csv(tmp_path / "noise.csv")  # the answer's noise line, as a CSV to cite
    for _, r in noise.iterrows():
        assert f"N={int(r['data.train_size']):,}: {100 * r['pooled_sd']:.2f} pp" in answer
    cells = df.groupby(["data.train_size", "arm", "synth.ratio"])
    assert len(pd.read_csv(tmp_path / "fit.csv")) == len(cells)
    assert json.loads((tmp_path / "meta.json").read_text())["margin"] == 0.01
