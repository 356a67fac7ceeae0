"""The labelled budget is N: what every selection sees, and nothing from outside the N images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from recorder import Recorder

from ganft import data, finetune, pipeline, quality, trial_gan
from ganft.config import ClassifierConfig, ConfigError, SynthConfig, TrialConfig
from ganft.data import budget_holdout, labelled_budget, load_splits
from ganft.finetune import Mix, train_classifier
from ganft.images import Images, Splits
from ganft.keys import with_overrides
from ganft.study.schema import load_study

CPU = torch.device("cpu")
TINY = {"data.train_size": 60, "data.validation": "from-budget",
        "gan.steps": 6, "gan.width": 8, "gan.z_dim": 8, "gan.batch_size": 16,
        "classifier.steps": 12, "classifier.width": 8, "classifier.eval_every": 4,
        "classifier.batch_size": 16}


def rows(images: Images) -> list[tuple[float, ...]]:
    return [tuple(r) for r in images.x.flatten(1).tolist()]


def test_from_budget_splits_the_n_images_into_disjoint_stratified_parts() -> None:
    s = load_splits("digits")
    cfg = with_overrides(TrialConfig(), {"data.train_size": 200, "seed": 3,
                                         "data.validation": "from-budget"}).data
    budget = labelled_budget(s, cfg, 3)
    labelled = data.labelled_subset(s.train, 200, 3)
    assert budget.protocol == "from-budget" and len(budget.train) + len(budget.val) == 200
    train, val = rows(budget.train), rows(budget.val)
    assert not set(train) & set(val)  # digits has no duplicate images
    assert sorted(train + val) == sorted(rows(labelled))  # together exactly the N labelled images
    assert torch.bincount(budget.val.y, minlength=10).tolist() == [4] * 10  # 20% of 20 per class
    assert torch.bincount(budget.train.y, minlength=10).min() == 16
    again = labelled_budget(s, cfg, 3)
    assert torch.equal(again.val.x, budget.val.x)  # chosen by (N, seed) alone


def test_budget_holdout_keeps_one_per_class_on_each_side_even_for_rare_classes() -> None:
    y = torch.tensor([0] * 40 + [1] * 2 + [2] * 3)
    train, val = budget_holdout(y, 0.2, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(y)
    for c in (0, 1, 2):
        assert (y[val] == c).sum() >= 1 and (y[train] == c).sum() >= 1
    assert (y[val] == 0).sum() == 8
    with pytest.raises(ConfigError, match="class 3 has 1 labelled image"):
        budget_holdout(torch.tensor([0, 0, 3]), 0.2, seed=0)


def test_protocol_settings_are_checked_when_the_study_loads(tmp_path) -> None:
    cases = [  # (data settings, another section, the error)
        ("validation: pool", "", "validation pool needs data.val_size"),
        ("val_size: 300", "", "data.val_size applies to data.validation pool only"),
        ("validation: none", "classifier: {patience: 2}", "classifier.patience 2 selects on validation"),
        ("validation: none", "gan: {eval_every: 50}", "gan.eval_every 50 selects on validation"),
        ("train_size: 100", "synth: {real_fraction: 0.5, mix: weighted}",
         "synth.real_fraction needs synth.mix union"),
    ]
    for i, (data_text, other, message) in enumerate(cases):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(f"name: s{i}\nbase:\n  data: {{dataset: digits, {data_text}}}\n  {other}\n")
        with pytest.raises(ConfigError, match=message):
            load_study(path)


def poisoned(splits: Splits, keep: np.ndarray) -> Splits:
    """The same splits with every training image outside ``keep`` replaced by noise."""
    x = torch.rand_like(splits.train.x) * 2 - 1
    x[keep] = splits.train.x[keep]
    return Splits(splits.name, Images(x, splits.train.y), splits.test, splits.classes)


@pytest.mark.parametrize("protocol", ["from-budget", "none"])
def test_no_image_outside_the_budget_changes_anything(protocol: str, monkeypatch) -> None:
    """Poison every training image outside the N-image budget: GAN, synthetic set, every selection
    (classifier checkpoint, early stopping, the GAN's best step, the filtering labeller) and the test
    metrics come out bit for bit the same."""
    select = {"gan.eval_every": 3, "classifier.patience": 2} if protocol == "from-budget" else {}
    cfg = with_overrides(TrialConfig(), {**TINY, "data.validation": protocol, "synth.ratio": 1.0,
                                         "synth.min_confidence": 0.05, **select})
    clean = load_splits("digits")
    keep = data.subset_indices(clean.train.y, cfg.data.train_size, cfg.seed)
    runs = []
    for splits in (clean, poisoned(clean, keep)):
        monkeypatch.setattr(pipeline, "splits_for", lambda _cfg, s=splits: s)
        m = pipeline.run_trial(cfg, device=CPU)
        runs.append({k: v for k, v in m.items() if not k.startswith(("time/", "clf/train_seconds",
                                                                         "gan/train_seconds",
                                                                         "gan/images_per_second"))})
    assert runs[0] == runs[1]
    assert runs[0]["data/real_count"] + runs[0]["data/val_count"] == cfg.data.train_size
    # ...while poisoning the budget's own images does change it (the check can fail)
    bad = poisoned(clean, keep[::2])
    monkeypatch.setattr(pipeline, "splits_for", lambda _cfg: bad)
    m = pipeline.run_trial(cfg, device=CPU)
    assert {k: m[k] for k in runs[0]} != runs[0]


def test_the_gan_sees_only_the_budget_training_part(monkeypatch) -> None:
    seen: list[Images] = []
    real_train_gan = trial_gan.train_gan

    def spy(cfg, real, *args, **kwargs):
        seen.append(real)
        return real_train_gan(cfg, real, *args, **kwargs)

    monkeypatch.setattr(trial_gan, "train_gan", spy)
    cfg = with_overrides(TrialConfig(), {**TINY, "synth.ratio": 1.0})
    pipeline.run_trial(cfg, device=CPU)
    budget = labelled_budget(load_splits("digits"), cfg.data, cfg.seed)
    assert len(seen) == 1 and torch.equal(seen[0].x, budget.train.x)
    assert not set(rows(seen[0])) & set(rows(budget.val))


def test_the_pool_trained_extractor_never_chooses(monkeypatch) -> None:
    """The GAN's best step and the filtering labeller are chosen on budget data: the dataset's
    pool-trained extractor is never loaded or trained during selection (only for reporting)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the pool-trained extractor was used during selection")

    monkeypatch.setattr(quality, "load_extractor", forbidden)
    monkeypatch.setattr(quality, "train_extractor", forbidden)
    cfg = with_overrides(TrialConfig(), {**TINY, "synth.ratio": 1.0, "gan.eval_every": 3,
                                         "synth.min_confidence": 0.05})
    rec = Recorder()
    pipeline.run_trial(cfg, device=CPU, tracker=rec)
    assert sorted(rec.curve("gan/val_kid")) == [3, 6]
    best = {k: v for _, m in rec.metrics for k, v in m.items() if k.startswith("gan/best")}
    assert best["gan/best_step"] in (3.0, 6.0) and np.isfinite(best["gan/best_val_kid"])


def test_validation_none_keeps_the_last_step() -> None:
    s = load_splits("digits")
    budget = labelled_budget(s, with_overrides(TrialConfig(), {"data.validation": "none"}).data, 0)
    assert budget.val is None
    cfg = ClassifierConfig(steps=20, eval_every=5, width=8, batch_size=16, lr=5e-3)
    none = train_classifier(cfg, budget.train, None, 10, seed=0, device=CPU)
    assert none.metrics["clf/best_step"] == 20 and "clf/best_val_acc" not in none.metrics
    assert none.last_state is None
    # the same run with a validation set to choose on: its last weights are the ones `none` kept
    val = data.labelled_subset(s.test, 50, 0)
    chosen = train_classifier(cfg, budget.train, val, 10, seed=0, device=CPU)
    last = chosen.last_state or chosen.model.state_dict()
    for k, v in none.model.state_dict().items():
        assert torch.equal(v, last[k]), k
    assert chosen.last_accuracy(s.test) == pytest.approx(none.last_accuracy(s.test))


def test_a_trial_logs_the_last_checkpoint_beside_the_kept_one() -> None:
    cfg = with_overrides(TrialConfig(), {**TINY, "classifier.lr": 5e-3})
    m = pipeline.run_trial(cfg, device=CPU)
    assert {"test/acc", "test/acc_last", "clf/best_step", "clf/improved_last_10pct"} <= set(m)
    if m["clf/best_step"] == cfg.classifier.steps:
        assert m["test/acc_last"] == m["test/acc"]


def test_real_fraction_fixes_the_real_share_of_every_batch_whatever_the_ratio(monkeypatch) -> None:
    s = load_splits("digits")
    real = data.labelled_subset(s.train, 30, 0)
    cfg = ClassifierConfig(steps=5, eval_every=5, width=8, batch_size=16)
    draw = finetune._phase_batches
    for ratio in (1, 4):
        fake = Images(torch.zeros(30 * ratio, 1, 8, 8), torch.arange(30 * ratio) % 10)
        seen = []

        def spy(phase, run, weights, n_synth, seen=seen):
            out = draw(phase, run, weights, n_synth)
            seen.append((out < run.n_real).sum(dim=1))  # real images come first in run.train
            return out

        monkeypatch.setattr(finetune, "_phase_batches", spy)
        train_classifier(cfg, real, None, 10, seed=0, device=CPU,
                         added=Mix(fake, SynthConfig(real_fraction=0.25)))
        assert torch.cat(seen).tolist() == [4] * 5  # round(0.25 * 16) real images in every batch
    assert finetune.plan_phases(cfg, "union", 1.0, True, 0.25)[0].real_fraction == 0.25
    assert finetune.plan_phases(cfg, "union", 1.0, False, 0.25)[0].real_fraction is None  # real only


def test_a_nominal_effect_that_does_not_survive_bh_is_called_nominal() -> None:
    from ganft.report.stats import paired_cells
    from ganft.report.write import answer_lines

    rng = np.random.default_rng(0)
    rows_ = []
    # cell N=100: a small real effect (nominal alone); N=200..1000: nothing; N=5000: a large effect
    effects = {100: 0.01, 200: 0.0, 300: 0.0, 400: 0.0, 500: 0.0, 600: 0.0, 5000: 0.05}
    for n, effect in effects.items():
        for seed in range(5):
            base = 0.8 + 0.01 * seed
            noise = {100: [0.008, -0.006, 0.004, -0.008, 0.002]}.get(n, rng.normal(0, 0.01, 5))
            rows_ += [{"data.train_size": n, "synth.ratio": 0.0, "seed": seed, "test/acc": base},
                      {"data.train_size": n, "synth.ratio": 1.0, "seed": seed,
                       "test/acc": base + effect + (noise[seed] if n != 5000 else 0.001 * seed)}]
    df = pd.DataFrame(rows_)
    cells = paired_cells(df).set_index("data.train_size")
    assert cells.loc[100, "p_value"] < 0.05 and cells.loc[100, "q_value"] >= 0.05
    assert cells.loc[100, "verdict"] == "nominal gain" and not cells.loc[100, "significant"]
    assert cells.loc[5000, "verdict"] == "gain"
    text = " ".join(answer_lines(df, paired_cells(df)))
    assert "N=5,000, ratio 1" in text and "1 of 7 cells show a gain that survives Benjamini-Hochberg" in text


def test_few_pairs_per_cell_warn_in_the_report() -> None:
    from ganft.report.stats import paired_cells
    from ganft.report.write import answer_lines

    df = pd.DataFrame([{"data.train_size": 100, "synth.ratio": r, "seed": s,
                        "test/acc": 0.5 + 0.01 * s + r / 100}
                       for r in (0.0, 1.0) for s in (0, 1)])
    assert any(line.startswith("Warning: 1 of 1 cells have fewer than 3 pairs")
               for line in answer_lines(df, paired_cells(df)))


def test_report_states_the_protocol_convergence_and_the_choice_on_budget_data(tmp_path) -> None:
    from ganft.report.sections import convergence_table, objective_by_setting, protocol_table
    from ganft.report.text import ReportMeta
    from ganft.report.write import write_report

    rows = []
    for protocol, shift in (("from-budget", 0.0), ("pool", 0.02)):
        for n in (100, 1000):
            for seed in range(3):
                for ratio in (0.0, 1.0):
                    gain = 0.01 if ratio and protocol == "pool" else 0
                    acc = 0.7 + n / 10_000 + shift + 0.01 * seed + gain
                    rows.append({"data.train_size": n, "synth.ratio": ratio, "seed": seed, "test/acc": acc,
                                 "test/acc_last": acc - 0.005, "data.validation": protocol,
                                 "data.val_fraction": 0.2,
                                 "data.val_size": 5000 if protocol == "pool" else None,
                                 "clf/best_val_acc": 0.6 + ratio / 10 + 0.001 * seed,
                                 "clf/improved_last_10pct": float(seed == 0 and n == 1000)})
    df = pd.DataFrame(rows)
    budget, pool = df[df["data.validation"] == "from-budget"], df[df["data.validation"] == "pool"]
    conv = convergence_table(budget).set_index("N")
    assert conv.loc["1,000", "still improving in the last 10% of steps"] == "1 of 3"
    assert conv.loc["100", "test acc, last step (%)"] == pytest.approx(100 * (budget[
        (budget["data.train_size"] == 100) & (budget["synth.ratio"] == 0)]["test/acc"].mean() - 0.005))
    choice = objective_by_setting(budget).set_index("value")
    assert choice.loc["1.0", "best"] == "best" and choice.loc["0.0", "best"] == ""
    table = protocol_table(budget, pool).set_index("N")
    assert table.loc["100", "real only, pool (%)"] - table.loc["100", "real only, from-budget (%)"] \
        == pytest.approx(2.0)
    assert table.loc["100", "gain at ratio 1, pool"].startswith("+1.0 pp")
    meta = ReportMeta("budget", protocol_study="budget_pool")
    write_report(budget, tmp_path, meta, protocol=pool)
    md = (tmp_path / "index.md").read_text()
    assert "**Protocol: the labelled budget is N.** A stratified 20% of the N labelled images" in md
    assert "## The effect of the validation protocol" in md and (tmp_path / "protocol.csv").is_file()
    pool_md = (write_report(pool, tmp_path / "pool", ReportMeta("pool")).parent / "index.md").read_text()
    assert "Pool protocol (a comparison, not the recommended set-up)" in pool_md and "5,000" in pool_md


def test_a_study_that_only_chooses_says_what_budget_validation_picks() -> None:
    from ganft.report.stats import paired_cells
    from ganft.report.write import answer_lines

    df = pd.DataFrame([{"data.train_size": 1000, "synth.ratio": 1.0, "seed": s, "gan.recipe": r,
                        "test/acc": 0.8, "clf/best_val_acc": v + 0.001 * s}
                       for r, v in (("default", 0.84), ("hinge-sn", 0.83)) for s in range(3)])

    lines = answer_lines(df, paired_cells(df))
    assert "Chosen on budget-validation accuracy: gan.recipe = default (84.1%, 3 runs; " \
           "hinge-sn 83.1%)." in lines
