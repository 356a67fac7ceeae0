"""Report figures are pure functions of DataFrames: they return Figures whose axes say what they
show (labels, units, legend), facet by other factors, mark what they promise to mark. Plus the
Optuna frames the report plots, computed in study.py from a real (temporary) Optuna storage."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from test_report import frame

from ganft.report import figures as figs
from ganft.report.stats import class_cells, compare_cells, paired_cells, paired_runs
from ganft.study.status import optuna_frames
from ganft.study.storage import open_storage

CEILING = pd.DataFrame({"data.train_size": [55000], "synth.ratio": [0.0], "test/acc": [0.912]})


def labelled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_accuracy_figure_marks_real_only_levels_the_ceiling_and_facets_other_factors() -> None:
    df = frame({(100, 1.0): 0.05, (100, 4.0): 0.0, (500, 1.0): 0.0, (500, 4.0): 0.0})
    fig = figs.fig_accuracy_vs_ratio(df, CEILING)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert labelled(ax) and "%" in ax.get_ylabel() and "ratio" in ax.get_xlabel()
    hlines = {round(line.get_ydata()[0], 3) for line in ax.lines
              if len(set(line.get_ydata())) == 1 and line.get_linestyle() in ("--", ":")}
    real_only = df[df["synth.ratio"] == 0].groupby("data.train_size")["test/acc"].mean()
    assert {round(100 * v, 3) for v in real_only} | {91.2} <= hlines
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("N = 100 real (band") for t in legend)
    assert any("ceiling" in t and "55,000" in t for t in legend)
    assert ax.get_ylim()[1] > 91.2  # the ceiling is inside the plot

    two = pd.concat([frame({(100, 1.0): 0.05}, extra={"gan.loss": "ns"}),
                     frame({(100, 1.0): 0.0}, extra={"gan.loss": "hinge"})])
    titles = sorted(a.get_title() for a in figs.fig_accuracy_vs_ratio(two).axes)
    assert titles == ["gan.loss=hinge", "gan.loss=ns"]


def test_heatmap_hatches_exactly_the_cells_not_significant_after_bh() -> None:
    df = frame({(100, 1.0): 0.05, (100, 4.0): -0.06, (500, 1.0): 0.0, (500, 4.0): 0.001})
    cells = paired_cells(df)
    fig = figs.fig_gain_heatmap(cells)
    ax = fig.axes[0]
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == int((~cells["significant"]).sum()) == 2
    texts = [t.get_text() for t in ax.texts]
    assert {f"{100 * m:+.1f}" for m in cells["mean_diff"]} <= set(texts)
    assert labelled(ax) and any("pp" in a.get_ylabel() for a in fig.axes[1:])  # colour bar with units


def test_class_figure_frames_significant_classes() -> None:
    df = frame({(100, 1.0): 0.0})
    rng = np.random.default_rng(2)
    for k in range(3):
        df[f"test/acc_class_{k}"] = df["test/acc"] + rng.normal(0, 0.01, len(df))
    df.loc[df["synth.ratio"] > 0, "test/acc_class_1"] += 0.1
    classes = class_cells(df, {0: "cat", 1: "dog", 2: "bird"})
    ax = figs.fig_class_gains(classes).axes[0]
    framed = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor()[:3] == (0, 0, 0)]
    assert len(framed) == int(classes["significant"].sum()) >= 1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"] and labelled(ax)


def test_quality_figure_has_one_point_per_paired_gan_run() -> None:
    df = frame({(100, 1.0): 0.02, (100, 2.0): 0.0})
    df["quality/fcd"] = np.where(df["synth.ratio"] > 0, np.arange(len(df), dtype=float), np.nan)
    pairs = paired_runs(df)
    ax = figs.fig_quality_vs_gain(pairs, "quality/fcd").axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(pairs) == 10
    assert "FCD" in ax.get_xlabel() and "pp" in ax.get_ylabel() and "Spearman" in ax.get_title()


def test_optuna_frames_and_their_figures(tmp_path: Path) -> None:
    storage = str(tmp_path / "journal.log")
    study = optuna.create_study(study_name="search", storage=open_storage(storage), direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: t.suggest_float("gan.lr_d", 1e-5, 1e-2, log=True) * 0
                   + 0.8 - (t.suggest_int("classifier.steps", 100, 1000) - 600) ** 2 / 1e6, n_trials=12)
    history, importances = optuna_frames("search", storage)
    assert list(history["number"]) == list(range(12)) and not history["from_grid"].any()
    assert (history["best_so_far"] == history["value"].cummax()).all()
    assert set(importances["param"]) == {"gan.lr_d", "classifier.steps"}
    assert importances["importance"].sum() == pytest.approx(1.0)
    assert importances.set_index("param")["importance"].idxmax() == "classifier.steps"
    assert labelled(figs.fig_param_importances(importances).axes[0])
    ax = figs.fig_optimization_history(history).axes[0]
    assert labelled(ax) and "validation" in ax.get_ylabel()
    assert [len(f) for f in optuna_frames("missing", storage)] == [0, 0]


def test_compare_figure_shows_both_studies() -> None:
    comp = compare_cells(frame({(100, 1.0): 0.0}), frame({(100, 1.0): 0.03}, rng_seed=1))
    ax = figs.fig_compare_gains(comp, "dcgan", "hinge").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A: dcgan", "B: hinge"] and labelled(ax)


def test_report_modules_import_neither_optuna_nor_pyplot() -> None:
    paths = sorted(Path(figs.__file__).parent.glob("*.py"))  # ganft/report/*.py
    assert {"figures.py", "sections.py", "build.py", "stats.py"} <= {p.name for p in paths}
    for path in paths:
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m.startswith("optuna") or m == "matplotlib.pyplot"}, path.name


def test_accuracy_bands_fit_the_axis_have_distinct_colours_and_matching_legend() -> None:
    df = frame({(100, 1.0): 0.05, (500, 1.0): 0.0, (1000, 1.0): 0.0, (5000, 1.0): 0.0}, noise=0.03)
    fig = figs.fig_accuracy_vs_ratio(df)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    for band in ax.collections:  # seaborn's error bands
        ys = band.get_paths()[0].vertices[:, 1]
        assert lo <= ys.min() and ys.max() <= hi
    colours = [tuple(np.round(band.get_facecolor()[0][:3], 3)) for band in ax.collections]
    assert len(set(colours)) == len(colours) == 4
    swatches = [h for h in fig.legends[0].legend_handles]
    assert len(swatches) >= 4
    saturated = frame({(100, 1.0): 0.0}, seeds=(0, 1))
    saturated["test/acc"] = [0.999 if s == 0 else 0.95 for s in saturated["seed"]]  # band past 100%
    fig = figs.fig_accuracy_vs_ratio(saturated)
    assert fig.axes[0].get_ylim()[1] == 100 and "clipped at the axis" in fig._suptitle.get_text()
    assert "clipped" not in figs.fig_accuracy_vs_ratio(df)._suptitle.get_text()
