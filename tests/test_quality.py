"""quality.py: the domain feature extractor and its cache, FCD/KID/PRDC/CAS, and a trial that logs
them. A small extractor recipe keeps these fast; the metrics do not depend on its size."""

from pathlib import Path

import pytest
import torch
from helpers import digits_pool_val
from recorder import Recorder

from ganft import quality
from ganft.config import TrialConfig
from ganft.data import load_splits
from ganft.images import Images
from ganft.keys import with_overrides
from ganft.quality import (
    ExtractorRecipe,
    cas,
    copies,
    fcd,
    generator_quality,
    kid,
    load_extractor,
    nearest_pairs,
    nearest_same_class,
    prdc,
)
from ganft.runtime import make_generator
from ganft.store import CheckpointCache

CPU = torch.device("cpu")
SMALL = ExtractorRecipe(width=8, features=32, steps=150, batch_size=64, lr=3e-3)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory) -> quality.Extractor:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANFT_HOME", str(tmp_path_factory.mktemp("home")))
        return load_extractor(load_splits("digits"), CPU, SMALL)


def uniform_noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=make_generator(seed)) * 2 - 1


def test_extractor_is_trained_on_the_training_split_and_classifies_well(extractor: quality.Extractor) -> None:
    assert extractor.test_acc > 0.8  # digits: the features separate the classes
    assert len(extractor.hash) == 16


def test_fcd_and_kid_of_real_validation_images_are_far_below_noise(extractor: quality.Extractor) -> None:
    pool, val = digits_pool_val()
    real_fcd, noise_fcd = fcd(extractor, pool.x, val.x), fcd(extractor, pool.x, uniform_noise(300))
    assert 0 <= real_fcd < noise_fcd / 10
    real_kid, noise_kid = kid(extractor, pool.x, val.x), kid(extractor, pool.x, uniform_noise(300))
    assert real_kid[0] < noise_kid[0] / 10
    assert kid(extractor, pool.x, val.x) == real_kid  # the subsets are seeded


def test_prdc_on_point_clouds() -> None:
    a = torch.randn(300, 16, generator=make_generator(0))
    b = torch.randn(300, 16, generator=make_generator(1))
    same = prdc(a, b, k=5)
    assert same["precision"] > 0.7 and same["recall"] > 0.7 and same["coverage"] > 0.7
    assert 0.6 < same["density"] < 1.5  # ~1 for two samples of one distribution
    far = prdc(a, b + 100, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    collapsed = prdc(a, a[:1].repeat(300, 1) + 1e-3 * b, k=5)  # mode collapse: precise, no recall
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.05 and collapsed["coverage"] < 0.05


def test_generator_quality_has_every_score_and_per_class_fcd(extractor: quality.Extractor) -> None:
    s, (_, val) = load_splits("digits"), digits_pool_val()
    out = generator_quality(extractor, s.test, val, k=3)
    assert {"quality/fcd", "quality/kid", "quality/precision", "quality/recall", "quality/density",
            "quality/coverage"} <= set(out)
    assert [k for k in out if "fcd_class" in k] == [f"quality/fcd_class_{c}" for c in range(10)]
    noise = Images(uniform_noise(300), val.y)
    worse = generator_quality(extractor, s.test, noise, k=3, per_class=False)
    assert worse["quality/fcd"] > 10 * out["quality/fcd"]
    assert worse["quality/precision"] < out["quality/precision"]
    assert not [k for k in worse if "fcd_class" in k]


def test_nearest_training_image_is_taken_within_the_class_a_hand_computed_case() -> None:
    train_f, train_y = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), torch.tensor([0, 0, 1])
    dist, index = nearest_same_class(torch.tensor([[1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]),
                                     torch.tensor([1, 0, 2]), train_f, train_y)
    # class 1's only image is (0, 10); class 0's nearest to (1, 0) is (0, 0); class 2 has none
    assert torch.allclose(dist[:2], torch.tensor([101.0, 1.0], dtype=torch.float64).sqrt())
    assert dist[2] == float("inf") and index.tolist() == [2, 0, -1]
    held_out, index = nearest_same_class(train_f, train_y, train_f, train_y, leave_one_out=True)
    assert held_out[:2].tolist() == [10.0, 10.0] and held_out[2] == float("inf")  # never itself
    assert index.tolist() == [1, 0, -1]


def test_copy_rate_is_one_for_training_images_about_the_percentile_for_unseen_ones_and_zero_for_noise(
        extractor: quality.Extractor) -> None:
    s = load_splits("digits")
    train, unseen = s.train.take(torch.arange(300)), s.train.take(torch.arange(300, 900))

    def rate(fake: Images, **kw) -> quality.Copies:
        f = lambda x: quality.features(extractor, x)  # noqa: E731
        return copies(f(train.x), train.y, f(fake.x), fake.y, f(s.test.x), s.test.y, **kw)

    returned = rate(train)  # a "generator" that hands back its training images
    assert returned.rate == 1.0 and returned.threshold > 0 and (returned.distance == 0).all()
    fresh = rate(unseen)  # real images it never saw: copies only by the threshold's definition
    assert 0.0 < fresh.rate < 0.15 and rate(unseen, percentile=20).rate > fresh.rate
    noise = rate(Images(uniform_noise(300), unseen.y[:300]))
    assert noise.rate == 0.0
    # budget data only (for choices): each training image held out against the others
    f_train = quality.features(extractor, train.x)
    own = copies(f_train, train.y, f_train, train.y)
    assert own.rate == 1.0 and 0 < own.threshold < 3 * returned.threshold


def test_the_copy_figure_pairs_each_class_closest_samples_with_their_training_images(
        extractor: quality.Extractor) -> None:
    s = load_splits("digits")
    train = s.train.take(torch.arange(200))
    fake = Images(torch.cat([train.x[:30], uniform_noise(30)]), torch.cat([train.y[:30], train.y[:30]]))
    f = lambda x: quality.features(extractor, x)  # noqa: E731
    found = copies(f(train.x), train.y, f(fake.x), fake.y, f(s.test.x), s.test.y)
    rows, labels = nearest_pairs(fake, train, found, s.classes, per_class=2)
    assert rows.shape == (2 * 10 * 2, 1, 8, 8) and labels[:2] == ["0 (sample)", "0 (nearest train)"]
    for k in range(10):  # a copied training image comes first, beside itself
        sample, near = rows[4 * k], rows[4 * k + 2]
        if (fake.y[:30] == k).any():
            assert torch.equal(sample, near)


def test_cas_is_high_for_real_looking_images_and_chance_for_wrong_labels() -> None:
    s = load_splits("digits")
    cfg = with_overrides(TrialConfig(), {"classifier.arch": "seed-cnn", "classifier.schedule": "constant",
                                         "classifier.steps": 80, "classifier.width": 8,
                                         "classifier.eval_every": 40})
    good = cas(cfg.classifier, s.train, s.test, 10, seed=0, device=CPU)  # "generated": real digits
    shuffled = Images(s.train.x, s.train.y[torch.randperm(len(s.train), generator=make_generator(0))])
    assert good > 0.8 and cas(cfg.classifier, shuffled, s.test, 10, seed=0, device=CPU) < 0.3


def test_extractor_is_cached_on_disk_under_its_hash(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, tiny = load_splits("digits"), ExtractorRecipe(width=4, features=8, steps=3)
    first = load_extractor(s, CPU, tiny)
    assert (home / ".ganft-cache" / "quality" / f"{first.hash}.pt").is_file()
    monkeypatch.setattr(quality, "_LOADED", {})  # a new process: only the disk cache is left

    def no_training(*args, **kwargs):
        raise AssertionError("the cached extractor must be loaded, not trained again")

    monkeypatch.setattr(quality, "train_extractor", no_training)
    again = load_extractor(s, CPU, tiny)
    assert again.hash == first.hash and again.test_acc == first.test_acc
    x = s.test.x[:20]
    assert torch.equal(again.model.features(x), first.model.features(x))
    assert quality.extractor_hash(s, ExtractorRecipe(width=4, features=8, steps=4)) != first.hash


def test_a_trial_logs_quality_scores_the_extractor_hash_and_the_val_kid_curve(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed article's set-up end to end: unconditional 64x64 DCGAN, pseudo-labels with a
    threshold, best checkpoint on budget-validation KID, quality scores and CAS."""
    from ganft.pipeline import run_trial

    monkeypatch.setattr(quality, "EXTRACTOR", ExtractorRecipe(width=4, features=8, steps=20))

    cfg = with_overrides(TrialConfig(), {
        "gan.recipe": "seed-dcgan", "gan.steps": 4, "gan.width": 4, "gan.z_dim": 8, "gan.batch_size": 16,
        "gan.eval_every": 2, "gan.eval_samples": 50, "data.train_size": 30, "data.validation": "from-budget",
        "synth.ratio": 1,
        "synth.min_confidence": 0.2, "classifier.steps": 6, "classifier.width": 4, "classifier.eval_every": 3,
        "quality.enabled": True, "quality.num_samples": 100, "quality.k": 3})
    rec = Recorder()
    run_trial(cfg, device=CPU, tracker=rec)
    m = rec.merged()
    for key in ("quality/fcd", "quality/kid", "quality/precision", "quality/recall", "quality/density",
                "quality/coverage", "quality/cas", "quality/copy_rate", "quality/copy_threshold",
                "synth/pseudo_label_kept_fraction", "gan/best_step"):
        assert key in m and m[key] == m[key], key  # logged and not NaN
    assert 0 <= m["quality/copy_rate"] <= 1 and "nearest_train.png" in rec.artifacts
    assert not [k for k in m if "fcd_class" in k]  # unconditional: no per-class FCD
    expected_hash = quality.extractor_hash(load_splits("digits"), quality.EXTRACTOR)
    assert rec.tags["quality.extractor_hash"] == expected_hash
    assert rec.steps("gan/val_kid") == [2, 4]


def test_quality_off_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "load_extractor", lambda *a, **k: pytest.fail("no extractor when off"))
    cfg = TrialConfig()
    assert quality.trial_quality(cfg.quality, None, None, load_splits("digits"), cas_recipe=cfg.classifier,
                                 seed=0, device=CPU) == {}


# conditional, and unconditional (its labeller labels the samples)
@pytest.mark.parametrize("recipe", ["default", pytest.param("seed-dcgan", marks=pytest.mark.slow)])
def test_the_next_ratio_of_a_generator_reads_its_scores_which_equal_a_fresh_scoring(
        recipe: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ganft.pipeline import run_trial

    monkeypatch.setattr(quality, "EXTRACTOR", ExtractorRecipe(width=4, features=8, steps=20))
    base = {"gan.recipe": recipe, "gan.steps": 4, "gan.width": 4, "gan.z_dim": 8, "gan.batch_size": 16,
            "data.train_size": 30, "data.validation": "none", "classifier.steps": 6, "classifier.width": 4,
            "quality.enabled": True, "quality.num_samples": 100, "quality.k": 3}
    store = CheckpointCache(tmp_path / "gan")

    def scores(tracker: Recorder, cache: CheckpointCache | None, **more: object) -> dict[str, float]:
        cfg = with_overrides(TrialConfig(), {**base, **more})
        m = run_trial(cfg, device=CPU, cache=cache, tracker=tracker)
        assert "nearest_train.png" in tracker.artifacts  # every trial has its copy figure
        return {k: v for k, v in m.items() if k.startswith("quality/")}

    first = scores(Recorder(), store, **{"synth.ratio": 1})
    again = scores(Recorder(), store, **{"synth.ratio": 2})  # same generator, another ratio: read
    fresh = scores(Recorder(), None, **{"synth.ratio": 2})  # no store: sampled, scored, CAS trained again
    other = scores(Recorder(), store, **{"synth.ratio": 2, "seed": 1})  # another generator
    assert first.pop("quality/cached") == 0 and again.pop("quality/cached") == 1
    assert first == again == fresh and "quality/cached" not in fresh
    assert other["quality/cached"] == 0 and other["quality/fcd"] != first["quality/fcd"]
    assert len(list((tmp_path / "gan" / "scores").glob("*.pt"))) == 2
