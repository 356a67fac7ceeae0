"""The semi-supervised GAN arm (issue 27): the classifier is the discriminator. What a reviewer
checks first: the real/fake logit is what the paper defines, training on tiny data moves the
supervised loss and D(real) vs D(fake) the right way, feature matching reads the layer it names,
the same seed gives the same weights, a trained D is reused from the store, and what cannot work
is refused before any work. (The unlabelled labels are never read: tests/test_unlabelled.py's
poison test, ``ssgan``.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from recorder import Recorder  # tests/recorder.py

from ganft import pipeline
from ganft.cli import main
from ganft.config import ClassifierConfig, GanConfig, SsganConfig, TrialConfig
from ganft.data import labelled_budget, load_splits, unlabelled_images
from ganft.report.stats import SSGAN_ARM, arm_label
from ganft.ssgan import (
    FEATURE_LAYER,
    build_ssgan,
    discriminator_loss,
    feature_matching,
    real_logit,
    train_ssgan,
)
from ganft.store import CheckpointCache

CPU = torch.device("cpu")
TINY = {"data": {"dataset": "digits", "train_size": 50, "unlabelled_size": "all", "validation": "none"},
        "synth": {"source": "ssgan"}, "gan": {"width": 8, "z_dim": 16},
        "classifier": {"arch": "seed-cnn", "steps": 12, "eval_every": 6, "batch_size": 16, "width": 8}}


def tiny(**sections: dict) -> TrialConfig:
    return TrialConfig.model_validate({**TINY, **{k: {**TINY.get(k, {}), **v} for k, v in sections.items()}})


def _inputs(n: int = 50, seed: int = 0):
    cfg = tiny(data={"train_size": n})
    splits = load_splits("digits")
    return splits, labelled_budget(splits, cfg.data, seed).train, unlabelled_images(splits, cfg.data, seed)


# --------------------------------------------------------------------------- the definitions


def test_the_real_logit_is_the_log_of_the_summed_class_exponentials_with_the_fake_logit_at_zero() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(0.5), math.log(0.5)]])
    # Z = 1 + 3 = 4: D = Z / (Z + 1) = 0.8; Z = 0.5 + 0.5 = 1: D = 0.5
    torch.testing.assert_close(real_logit(logits), torch.tensor([math.log(4.0), 0.0]))
    torch.testing.assert_close(torch.sigmoid(real_logit(logits)), torch.tensor([0.8, 0.5]))
    # the losses by hand: -log D(real) on the unlabelled batch, -log(1 - D(fake)) on the generated one
    sup, unsup = discriminator_loss(logits[:1], torch.tensor([1]), logits[:1], logits[1:], 2.0)
    torch.testing.assert_close(sup, torch.tensor(-math.log(3.0 / 4.0)))  # softmax over the K classes
    torch.testing.assert_close(unsup, torch.tensor(2.0 * 0.5 * (-math.log(0.8) - math.log(0.5))))


def test_feature_matching_compares_the_batch_means_of_the_named_layer() -> None:
    D, G = build_ssgan(ClassifierConfig(width=8), SsganConfig(), GanConfig(width=8, z_dim=16), (1, 8, 8),
                       10, 0)
    D.eval()  # no input noise: the value is deterministic
    real, fake = torch.rand(20, 1, 8, 8) * 2 - 1, torch.rand(12, 1, 8, 8) * 2 - 1
    layer = getattr(D, FEATURE_LAYER)
    want = (layer(fake).mean(0) - layer(real).mean(0)).pow(2).mean()
    torch.testing.assert_close(feature_matching(D, real, fake), want)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    feature_matching(D, real, fake)
    handle.remove()
    features = D.head[-1].in_features  # the layer feeds the class head
    assert seen == [(20, features), (12, features)]
    with torch.no_grad():  # the class head is not part of it
        for p in D.head.parameters():
            p.add_(1.0)
    torch.testing.assert_close(feature_matching(D, real, fake), want)
    # and its gradient reaches the generator
    z = torch.randn(12, 16)
    feature_matching(D, real, G(z, None)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.ups.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- training


@pytest.mark.slow  # 150 steps on digits: about 10 s on 2 cores
def test_training_lowers_the_supervised_loss_and_puts_d_real_above_d_fake() -> None:
    _, real, pool = _inputs(100)
    cfg = TrialConfig.model_validate({"gan": {"width": 16, "z_dim": 32}, "classifier": {
        "arch": "seed-cnn", "steps": 150, "eval_every": 25, "batch_size": 32, "width": 16,
        "schedule": "constant"}})
    rec = Recorder()
    res = train_ssgan(cfg, real, pool, 10, device=CPU, tracker=rec)
    windows = [m for step, m in rec.metrics if step is not None]
    assert windows[-1]["clf/loss"] < 0.5 * windows[0]["clf/loss"]
    assert res.metrics["ssgan/d_real"] > res.metrics["ssgan/d_fake"]
    assert res.metrics["clf/train_acc_last"] > 0.9
    assert not res.model.training and res.metrics["ssgan/pool_passes"] == 150 * 32 / len(pool)


def test_the_same_seed_gives_the_same_weights_and_another_seed_others() -> None:
    _, real, pool = _inputs()
    cfg = TrialConfig.model_validate({"gan": {"width": 8, "z_dim": 16}, "classifier": {
        "arch": "seed-cnn", "steps": 5, "eval_every": 5, "batch_size": 16, "width": 8}})

    def weights(seed: int) -> dict[str, torch.Tensor]:
        res = train_ssgan(cfg.model_copy(update={"seed": seed}), real, pool, 10, device=CPU)
        return res.model.state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_trial_evaluates_the_discriminator_and_reuses_it_from_the_store(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path)
    rec = Recorder()
    first = pipeline.run_trial(tiny(), device=CPU, cache=cache, tracker=rec)
    assert rec.tags["ssgan.cache"] == "miss"
    assert 0 <= first["ssgan/d_fake"] <= 1 and 0 <= first["ssgan/d_real"] <= 1
    assert first["synth/count"] == 0 and first["clf/stopped_step"] == 12 and first["gan/trained_here"] == 0
    assert first["ssgan/pool_size"] == first["data/unlabelled_count"] and first["ssgan/cached"] == 0
    assert 0 < first["test/acc"] <= 1 and 0 <= first["clf/train_acc_last"] <= 1
    again = pipeline.run_trial(tiny(), device=CPU, cache=cache, tracker=(rec := Recorder()))
    assert rec.tags["ssgan.cache"] == "hit" and again["ssgan/cached"] == 1
    assert again["test/acc"] == first["test/acc"] and again["test/acc_last"] == first["test/acc_last"]
    other = pipeline.run_trial(tiny(ssgan={"lr": 3e-4}), device=CPU, cache=cache, tracker=(rec := Recorder()))
    assert rec.tags["ssgan.cache"] == "miss" and other["ssgan/cached"] == 0


def test_reports_name_the_arm() -> None:
    import pandas as pd

    row = pd.Series({"synth.source": "ssgan", "synth.ratio": 0.0, "classifier.init": "scratch"})
    assert arm_label(row) == SSGAN_ARM
    # and a diffusion model's images are not a GAN's
    gen = {"synth.source": "gan", "synth.ratio": 1.0, "classifier.init": "scratch", "gan.train_on": "budget"}
    assert arm_label(pd.Series({**gen, "gan.arch": "ddpm"})) == "diffusion on budget"
    assert arm_label(pd.Series({**gen, "gan.arch": "dcgan"})) == "GAN on budget"


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("sections, keys", [
    ({"data": {"unlabelled_size": 0}},
     "synth.source ssgan needs unlabelled images: set data.unlabelled_size"),
    ({"classifier": {"arch": "resnet18"}},
     "in the shape of classifier.arch seed-cnn, bn-cnn or mlp without batch norm"),
    ({"synth": {"ratio": 1}}, "synth.source ssgan adds no images"),
    ({"data": {"validation": "from-budget"}}, "use data.validation none or kfold"),
    ({"classifier": {"init": "discriminator"}}, "set classifier.init scratch"),
])
def test_what_cannot_work_is_one_line_naming_the_keys_before_any_work(
        sections: dict, keys: str, home: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=keys):
        tiny(**sections)
    merged = {k: {**TINY.get(k, {}), **sections.get(k, {})} for k in {*TINY, *sections}}
    lines = [f"  {k}: {{{', '.join(f'{kk}: {vv}' for kk, vv in v.items())}}}" for k, v in merged.items()]
    study = home / "ss.yaml"
    study.write_text("name: ss\nbase:\n" + "\n".join(lines) + "\ngrid:\n  seed: [0]\n")
    assert main(["study", "run", str(study), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and keys in err[0]
    assert not (home / "mlflow.db").exists() and not (home / "optuna-journal.log").exists()


def test_a_pool_smaller_than_a_batch_is_one_line_before_any_work(home: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    study = home / "ss.yaml"
    study.write_text("name: ss\nbase:\n  data: {dataset: digits, train_size: 50, unlabelled_size: 10, "
                     "validation: none}\n  synth: {source: ssgan}\n"
                     "  classifier: {arch: seed-cnn, batch_size: 32}\n"
                     "grid:\n  seed: [0]\n")
    assert main(["study", "run", str(study), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "synth.source ssgan: classifier.batch_size 32 = 32 unlabelled images a step" in err[0]
    assert "lower classifier.batch_size" in err[0]


@pytest.mark.parametrize("arch, size", [("bn-cnn", 28), ("bn-cnn", 8), ("seed-cnn", 32), ("mlp", 28),
                                        ("mlp", 8)])
def test_the_discriminator_has_its_classifier_shape_without_batch_norm(arch: str, size: int) -> None:
    from ganft.models.classifier import build_classifier

    cfg = ClassifierConfig(arch=arch, width=8)
    D, _ = build_ssgan(cfg, SsganConfig(), GanConfig(width=8, z_dim=16), (3, size, size), 10, 0)
    plain = build_classifier(arch, (3, size, size), 10, 8)
    layers = lambda m: [c.weight.shape for c in m.modules()  # noqa: E731
                        if isinstance(c, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(layers(D)) >= 3
    assert layers(D) == layers(plain)  # the classifier's convolutions and linear layers, one for one
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules())
    assert D(torch.zeros(4, 3, size, size)).shape == (4, 10)


@pytest.mark.parametrize("arch, size", [("bn-cnn", 28), ("seed-cnn", 32), ("mlp", 28)])
def test_hidden_noise_follows_every_hidden_activation_in_training_only(arch: str, size: int) -> None:
    from ganft.ssgan import GaussianNoise

    cfg, gan = ClassifierConfig(arch=arch, width=8), GanConfig(width=8, z_dim=16)
    plain, _ = build_ssgan(cfg, SsganConfig(input_noise=0.0, dropout=0.0), gan, (1, size, size), 10, 0)
    noisy, _ = build_ssgan(cfg, SsganConfig(input_noise=0.0, dropout=0.0, hidden_noise=0.5), gan,
                           (1, size, size), 10, 0)
    acts = [m for m in plain.trunk.modules() if isinstance(m, torch.nn.ReLU | torch.nn.LeakyReLU)]
    noise = [m for m in noisy.trunk.modules() if isinstance(m, GaussianNoise)]
    assert len(acts) >= 2 and len(noise) == len(acts) and {m.std for m in noise} == {0.5}
    assert not any(isinstance(m, GaussianNoise) for m in plain.modules())  # 0: the earlier recipe
    assert noisy.state_dict().keys() == plain.state_dict().keys()  # same weights, same names
    x = torch.randn(4, 1, size, size)
    noisy.load_state_dict(plain.state_dict())
    plain.train(), noisy.train()
    assert torch.equal(plain(x), plain(x)) and not torch.allclose(noisy(x), noisy(x))
    noisy.eval(), plain.eval()
    assert torch.equal(noisy(x), plain(x))  # evaluated without noise


def test_the_stored_discriminators_key_keeps_hidden_noise_out_at_its_default(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "gan")
    keys = []
    for extra in ({}, {"hidden_noise": 0.5}):
        rec = Recorder()
        pipeline.run_trial(tiny(ssgan=extra, classifier={"steps": 2}), device=CPU, cache=cache, tracker=rec)
        keys.append(rec.tags["ssgan.key"])
    # the key this configuration had before ssgan.hidden_noise existed (a D stored then is found)
    assert keys[0] == "b58ba9757362a11a" != keys[1]
