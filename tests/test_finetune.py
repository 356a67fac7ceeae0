"""Fine-tuning recipes (issue 4): initialisations, freezing, mixing, the equal step budget, schedules,
early stopping and classic augmentation, on tiny digits runs."""

from __future__ import annotations

import contextlib
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import digits_pool_val, fake_fashion
from recorder import Recorder
from torch.optim.optimizer import register_optimizer_step_post_hook
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ganft import finetune
from ganft.classic_augment import affine_theta, classifier_augment, crop_padding, warp
from ganft.cli import main
from ganft.config import (
    HFLIP_PRESERVES_LABEL,
    ClassifierConfig,
    ConfigError,
    DatasetName,
    SynthConfig,
    TrialConfig,
)
from ganft.data import labelled_subset
from ganft.finetune import Mix, Start, draw_batches, plan_phases, train_classifier
from ganft.gan_train import build_discriminator
from ganft.images import Images
from ganft.keys import with_overrides
from ganft.models.classifier import imagenet_weights_path
from ganft.pipeline import run_trial
from ganft.pretrain import PretrainedMissingError, ensure_pretrained, initial_trunk_state, pretrain_key
from ganft.store import CheckpointCache
from ganft.study.schema import load_study
from ganft.trial_gan import CachedGan, TrialGan

CPU = torch.device("cpu")
TINY = ClassifierConfig(steps=10, eval_every=5, width=8, batch_size=16)


def digits(n: int = 30) -> tuple[Images, Images]:
    pool, val = digits_pool_val()
    return labelled_subset(pool, n, 0), val


def fake_synthetic(n: int, value: float = -0.5) -> Images:
    return Images(torch.full((n, 1, 8, 8), value), torch.arange(n) % 10)


def train(cfg: ClassifierConfig, synthetic: Images | None = None, tracker=None, *, mix: str = "union",
          synth_weight: float = 1.0, trunk_state=None, augment=None, **kw) -> finetune.FinetuneResult:
    real, val = digits()
    added = None if synthetic is None else Mix(synthetic, SynthConfig(mix=mix, weight=synth_weight))
    return train_classifier(cfg, real, val, 10, seed=0, device=CPU, added=added,
                            start=Start(trunk_state, augment), tracker=tracker or Recorder(), **kw)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@contextlib.contextmanager
def watch_training() -> Iterator[dict[str, list]]:
    """Count optimiser steps and record the mean input of every training-mode forward pass of a
    classifier (real images here are digits, synthetic ones a constant -0.5)."""
    seen: dict[str, list] = {"steps": [], "inputs": []}

    def on_forward(module, args):
        if module.training and hasattr(module, "trunk") and hasattr(module, "head"):
            seen["inputs"].append(args[0].mean().item())

    h1 = register_optimizer_step_post_hook(lambda opt, a, k: seen["steps"].append(1))
    h2 = torch.nn.modules.module.register_module_forward_pre_hook(on_forward)
    try:
        yield seen
    finally:
        h1.remove()
        h2.remove()


# --------------------------------------------------------------------------- initialisations


@pytest.mark.parametrize("d_norm", ["batch", "spectral"])
def test_discriminator_init_copies_the_trunk_weights_and_adds_a_new_head(d_norm: str) -> None:
    cfg = with_overrides(TrialConfig(), {"classifier.init": "discriminator", "classifier.arch": "seed-cnn",
                                         "gan.width": 8,
                                         "classifier.width": 8, "gan.d_norm": d_norm})
    torch.manual_seed(1)
    D = build_discriminator(cfg.gan, (1, 8, 8), 10)
    with torch.no_grad():
        for p in D.parameters():  # unlike any fresh init
            p.uniform_(-0.5, 0.5)
        x = torch.rand(4, 1, 8, 8) * 2 - 1
        for _ in range(3):
            D.trunk.train()(x)  # BatchNorm statistics and spectral-norm power iterations move
    gan = TrialGan(cfg.gan, CachedGan({}, torch.zeros(1), {}, D.state_dict()), (1, 8, 8), 10, trained=False)
    trunk = initial_trunk_state(cfg.classifier, (1, 8, 8), lambda: gan)
    model = finetune.build_model(cfg.classifier, (1, 8, 8), 10, 0, trunk)
    scratch = finetune.build_model(cfg.classifier, (1, 8, 8), 10, 0, None)
    assert same_weights(model.trunk.state_dict(), trunk)
    D.eval(), model.eval()
    with torch.no_grad():  # the same features, tensor for tensor (spectral norm: W / sigma)
        assert torch.allclose(model.trunk(x), D.trunk(x), atol=1e-6)
        assert not torch.allclose(scratch.eval().trunk(x), D.trunk(x), atol=1e-3)
    if d_norm == "batch":
        assert same_weights(trunk, {k.removeprefix("trunk."): v for k, v in D.state_dict().items()
                                    if k.startswith("trunk.")})
    assert same_weights(model.head.state_dict(), scratch.head.state_dict())  # a fresh, seeded head
    assert model.head[1].weight.shape == (10, D.trunk.out_features)


def test_discriminator_init_trains_the_gan_even_at_ratio_0_and_reuses_it(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path)
    base = with_overrides(TrialConfig(), {
        "data.train_size": 30, "gan.steps": 4, "gan.width": 8, "gan.z_dim": 8, "classifier.width": 8,
        "classifier.steps": 4, "classifier.eval_every": 4, "classifier.init": "discriminator",
        "classifier.arch": "seed-cnn"})
    runs = {r: run_trial(with_overrides(base, {"synth.ratio": r}), device=CPU, cache=cache) for r in (0, 1)}
    assert runs[0]["gan/trained_here"] == 1 and runs[0]["synth/count"] == 0
    assert runs[1]["gan/trained_here"] == 0 and runs[1]["synth/count"] == 30  # 1 x all N (validation none)


def test_torchvision_init_reads_the_local_hub_cache_and_never_downloads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = with_overrides(TrialConfig(), {"classifier.arch": "resnet18", "classifier.init": "torchvision"})
    with pytest.raises(FileNotFoundError, match=r"hub/checkpoints/resnet18-f37072fd\.pth.*never downloads"):
        initial_trunk_state(cfg.classifier, (1, 8, 8))
    torch.manual_seed(0)
    fake = torchvision.models.resnet18().state_dict()  # random weights in the real file format
    path = imagenet_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(fake, path)
    trunk = initial_trunk_state(cfg.classifier, (1, 8, 8))
    assert torch.equal(trunk["conv1.weight"], fake["conv1.weight"].sum(1, keepdim=True))  # grey = R+G+B
    model = finetune.build_model(cfg.classifier, (1, 8, 8), 10, 0, trunk)
    assert torch.equal(model.trunk.layer4[1].conv2.weight, fake["layer4.1.conv2.weight"])
    out = model.eval()(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_pretrained_init_is_built_by_pretrain_once_then_loaded(home: Path) -> None:
    cfg = with_overrides(TrialConfig(), {"data.dataset": "fashion-mnist", "classifier.init": "pretrained",
                                         "classifier.pretrained_source": "digits",
                                         "classifier.pretrain_steps": 6, "classifier.width": 8})
    shape = (1, 28, 28)
    with pytest.raises(PretrainedMissingError, match=r"run `ganft pretrain STUDY\.yaml`"):
        initial_trunk_state(cfg.classifier, shape)
    key, metrics, trained = ensure_pretrained(cfg.classifier, shape, CPU)
    assert trained and 0 <= metrics["pretrain/val_acc"] <= 1
    assert (home / ".ganft-cache" / "pretrained" / f"{key}.pt").is_file()
    assert ensure_pretrained(cfg.classifier, shape, CPU)[2] is False  # cached: not trained again
    rec = Recorder()
    trunk = initial_trunk_state(cfg.classifier, shape, tracker=rec)
    assert rec.tags["clf.pretrained_key"] == key
    model = finetune.build_model(cfg.classifier, shape, 10, 0, trunk)
    scratch = finetune.build_model(cfg.classifier, shape, 10, 0, None)
    assert same_weights(model.trunk.state_dict(), trunk)
    assert not same_weights(scratch.trunk.state_dict(), trunk)
    # the key follows what determines the checkpoint
    assert pretrain_key(with_overrides(cfg, {"classifier.pretrain_steps": 7}).classifier, shape) != key
    assert pretrain_key(cfg.classifier, (1, 32, 32)) != key
    assert pretrain_key(with_overrides(cfg, {"seed": 3, "synth.ratio": 4}).classifier, shape) == key


def test_ganft_pretrain_builds_what_a_study_needs_once_and_trials_use_it(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_fashion(home / "fm")
    study = home / "p.yaml"
    study.write_text(f"""name: p
base:
  data: {{dataset: fashion-mnist, root: '{home / "fm"}', train_size: 20}}
  classifier: {{init: pretrained, pretrained_source: digits, pretrain_steps: 3, width: 8, steps: 4,
               eval_every: 2}}
grid:
  seed: [0, 1]
""")
    assert main(["pretrain", str(study)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trained ") and out.count("\n") == 1, out  # one checkpoint for both seeds
    assert main(["pretrain", str(study)]) == 0
    assert capsys.readouterr().out.startswith("cached ")
    rec = Recorder()
    metrics = run_trial(load_study(study).trial_config({"seed": 1}), device=CPU, tracker=rec)
    assert rec.tags["clf.pretrained_key"] in out and 0 <= metrics["test/acc"] <= 1


# --------------------------------------------------------------------------- freezing


def test_linear_probe_leaves_the_trunk_unchanged_and_full_does_not() -> None:
    torch.manual_seed(0)
    start = finetune.build_model(TINY, (1, 8, 8), 10, 5, None).trunk.state_dict()  # any trunk
    probe = train(TINY.model_copy(update={"freeze": "linear-probe", "lr": 1e-2}), trunk_state=start)
    assert same_weights(probe.model.trunk.state_dict(), start)  # BatchNorm statistics included
    full = train(TINY.model_copy(update={"lr": 1e-2}), trunk_state=start)
    assert not same_weights(full.model.trunk.state_dict(), start)
    assert not same_weights(probe.model.head.state_dict(), full.model.head.state_dict())


def test_head_then_full_trains_the_head_first_then_everything_at_a_lower_rate() -> None:
    cfg = TINY.model_copy(update={"freeze": "head-then-full", "head_fraction": 0.3, "full_lr_scale": 0.1,
                                  "eval_every": 1, "schedule": "constant"})
    rec = Recorder()
    res = train(cfg, tracker=rec)
    assert res.metrics["clf/phase_steps/real-head"] == 3 and res.metrics["clf/phase_steps/real-full"] == 7
    lrs = rec.curve("clf/lr")
    assert [lrs[s] for s in (1, 3, 4, 10)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])


# --------------------------------------------------------------------------- mixing and the budget


def test_weighted_with_weight_0_equals_real_only_and_weight_1_equals_union() -> None:
    synth = fake_synthetic(60)
    real_only = train(TINY)
    w0 = train(TINY, synth, mix="weighted", synth_weight=0.0)
    assert same_weights(w0.model.state_dict(), real_only.model.state_dict())
    assert w0.metrics["clf/train_images"] == 90  # the synthetic images were there, never drawn
    union = train(TINY, synth, mix="union")
    w1 = train(TINY, synth, mix="weighted", synth_weight=1.0)
    assert same_weights(w1.model.state_dict(), union.model.state_dict())
    assert not same_weights(union.model.state_dict(), real_only.model.state_dict())


def test_pretrain_then_finetune_spends_exactly_the_configured_steps_in_each_phase() -> None:
    cfg = TINY.model_copy(update={"synth_fraction": 0.3})
    with watch_training() as seen:
        res = train(cfg, fake_synthetic(60), mix="pretrain-then-finetune")
    kinds = ["synthetic" if m == pytest.approx(-0.5) else "real" for m in seen["inputs"]]
    assert kinds == ["synthetic"] * 3 + ["real"] * 7
    assert len(seen["steps"]) == 10
    assert res.metrics["clf/phase_steps/synthetic"] == 3 and res.metrics["clf/phase_steps/real"] == 7


@pytest.mark.parametrize("mix", ["union", "weighted", "pretrain-then-finetune"])
def test_the_step_budget_is_identical_across_ratios(mix: str) -> None:
    cfg = TINY.model_copy(update={"freeze": "head-then-full", "steps": 8, "eval_every": 4})
    for n_synth in (0, 30, 120):  # ratio 0, 1, 4 of the 30 real images
        with watch_training() as seen:
            res = train(cfg, fake_synthetic(n_synth) if n_synth else None, mix=mix, synth_weight=0.5)
        assert len(seen["steps"]) == len(seen["inputs"]) == 8, (mix, n_synth)
        assert res.metrics["clf/stopped_step"] == 8
        assert sum(v for k, v in res.metrics.items() if k.startswith("clf/phase_steps/")) == 8


def test_plan_phases_split_the_budget_exactly() -> None:
    cfg = ClassifierConfig(steps=101, synth_fraction=0.25, freeze="head-then-full", head_fraction=0.1)
    phases = plan_phases(cfg, "pretrain-then-finetune", has_synthetic=True)
    assert [(p.name, p.steps, p.trunk_trains) for p in phases] == [
        ("synthetic", 25, True), ("real-head", 8, False), ("real-full", 68, True)]
    assert [p.name for p in plan_phases(cfg, "pretrain-then-finetune", has_synthetic=False)] == [
        "real-head", "real-full"]  # ratio 0: no synthetic phase, the whole budget on real images
    probe = plan_phases(cfg.model_copy(update={"freeze": "linear-probe"}), "pretrain-then-finetune",
                        has_synthetic=True)
    assert [p.trunk_trains for p in probe] == [False, False]
    with pytest.raises(ValueError, match="unknown synth.mix 'mixup'; known: union, weighted"):
        plan_phases(cfg, "mixup")
    for mix in finetune.MIXES:  # phase names become MLflow metric names (clf/phase_steps/<name>)
        for freeze in finetune.FREEZES:
            for p in plan_phases(cfg.model_copy(update={"freeze": freeze}), mix, has_synthetic=True):
                assert re.fullmatch(r"[\w\-. :/]+", p.name), p.name


def test_draw_batches_never_draws_zero_weight_images() -> None:
    w = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 0.0])
    idx = draw_batches(w, 200, 50, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx.flatten(), minlength=6).float() / idx.numel()
    assert counts[[1, 3, 5]].sum() == 0
    assert counts[[0, 2, 4]] == pytest.approx([0.25, 0.5, 0.25], abs=0.02)


# --------------------------------------------------------------------------- schedule and stopping


def test_step_and_cosine_schedules() -> None:
    rec = Recorder()
    train(TINY.model_copy(update={"schedule": "step", "steps": 8, "eval_every": 1, "step_gamma": 0.5}),
          tracker=rec)
    assert list(rec.curve("clf/lr").values()) == pytest.approx([1e-3] * 4 + [5e-4] * 2 + [2.5e-4] * 2)
    rec = Recorder()
    train(TINY.model_copy(update={"schedule": "cosine", "steps": 8, "eval_every": 1}), tracker=rec)
    lrs = list(rec.curve("clf/lr").values())
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < 1e-4
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # decreasing every step


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([0.5, 0.7, 0.6, 0.7, 0.6, 0.9])  # best at step 2, then two evaluations no better
    at_best: dict[str, torch.Tensor] = {}

    def fake_accuracy(model, images):
        acc = next(scripted)
        if acc == 0.7 and not at_best:
            at_best.update({k: v.clone() for k, v in model.state_dict().items()})
        return acc

    monkeypatch.setattr(finetune, "accuracy", fake_accuracy)
    res = train(TINY.model_copy(update={"eval_every": 1, "patience": 2}))
    assert res.metrics["clf/best_step"] == 2 and res.metrics["clf/best_val_acc"] == 0.7
    assert res.metrics["clf/stopped_step"] == 4 and res.metrics["clf/stopped_early"] == 1
    assert same_weights(res.model.state_dict(), at_best)


# --------------------------------------------------------------------------- classic augmentation


def test_classic_augmentation_matches_torchvision_for_fixed_parameters() -> None:
    torch.manual_seed(0)
    img = torch.rand(1, 28, 28) * 2 - 1  # (C, H, W)
    pad, offset, angle, scale = crop_padding(28), (2, -1), 7.0, 1.08
    # torchvision: RandomCrop(28, padding=3) at this offset, then affine, then the horizontal flip
    ref = TF.crop(TF.pad(img, [pad], fill=-1.0), pad + offset[1], pad + offset[0], 28, 28)
    ref = TF.affine(ref, angle=angle, translate=[0, 0], scale=scale, shear=[0.0, 0.0],
                    interpolation=v2.InterpolationMode.BILINEAR, fill=-1.0)
    ref = TF.horizontal_flip(ref)
    theta = affine_theta(torch.tensor([offset]), torch.tensor([angle]), torch.tensor([scale]),
                         torch.tensor([True]), 28)
    ours = warp(img[None], theta)[0]
    centre = slice(6, 22)  # torchvision blends the fill differently at the border
    assert torch.allclose(ours[:, centre, centre], ref[:, centre, centre], atol=1e-5)


def test_classic_augmentation_flips_only_where_labels_survive_and_draws_per_image() -> None:
    # every built-in dataset decided; an image folder says it itself (data.hflip)
    assert set(typing.get_args(DatasetName)) - {"imagefolder"} <= set(HFLIP_PRESERVES_LABEL)
    assert classifier_augment("classic", "imagefolder", 28, hflip=True).hflip is True
    assert classifier_augment("classic", "imagefolder", 28, hflip=False).hflip is False
    assert classifier_augment("classic", "digits", 8).hflip is False
    assert classifier_augment("classic", "fashion-mnist", 28).hflip is True
    assert classifier_augment("none", "digits", 8) is None
    aug = classifier_augment("classic", "fashion-mnist", 28)
    x = torch.rand(1, 1, 28, 28).repeat(16, 1, 1, 1) * 2 - 1
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    assert len({round(o.sum().item(), 3) for o in out}) == 16  # each copy moved its own way


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides,message", [
    ({"classifier.init": "discriminator", "classifier.arch": "seed-cnn", "classifier.width": 16,
      "gan.width": 32},
     r"classifier\.width \(16\) must equal gan\.width \(32\)"),
    ({"classifier.init": "torchvision"}, r"classifier\.init torchvision needs classifier\.arch resnet18"),
    ({"classifier.init": "discriminator", "classifier.arch": "resnet18"}, r"needs classifier\.arch seed-cnn"),
    ({"classifier.init": "pretrained", "classifier.pretrained_source": "digits"},
     r"pretrained_source must differ from data\.dataset \(digits\)"),
    ({"synth.mix": "pretrain-then-finetune", "classifier.steps": 3, "classifier.synth_fraction": 0.1},
     r"synth_fraction 0\.1 of classifier\.steps 3 leaves a phase of 0 steps"),
    ({"classifier.freeze": "head-then-full", "classifier.steps": 4, "classifier.head_fraction": 0.9},
     r"head_fraction 0\.9 of 4 steps leaves a phase of 0 steps"),
    ({"synth.mix": "mixup"}, r"synth\.mix: Input should be 'union', 'weighted' or 'pretrain-then-finetune'"),
])
def test_recipe_rules_are_checked_at_load(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_overrides(TrialConfig(), overrides)


def test_a_grid_point_that_breaks_a_recipe_rule_names_it(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase:\n  classifier: {arch: seed-cnn, width: 16}\n  gan: {width: 32}\n"
                    "grid:\n  classifier.init: [scratch, discriminator]\n")
    with pytest.raises(ConfigError, match=r"grid\.classifier\.init\[1\]: classifier\.width \(16\) must"):
        load_study(path)


def test_the_finetune_recipes_study_is_valid() -> None:
    cfg = load_study(Path(__file__).parents[1] / "studies" / "finetune_recipes.yaml")
    points = cfg.points()
    assert len(points) == 2 * 3 * 3 * 2 * 2 * 2
    trials = [cfg.trial_config(p) for p in points]
    assert {t.data.dataset for t in trials} == {"fashion-mnist"}
    assert {(t.classifier.init, t.synth.mix, t.classifier.augment) for t in trials} == {
        (i, m, a) for i in ("scratch", "discriminator") for m in ("union", "pretrain-then-finetune")
        for a in ("none", "classic")}
