"""The diffusion family (issue 26, gan.arch ddpm): a diffusers UNet as a ganft generator. What a
reviewer checks first: every size and channel count samples finite images of the data's shape; the
class embedding is really used; the same seed gives the same samples; training lowers the denoising
loss; guidance 0 with label dropout 1 is unconditional; the ratios of a grid share one model; what
it cannot take is refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recorder import Recorder  # tests/recorder.py

from ganft import pipeline
from ganft.cli import main
from ganft.config import ConfigError, TrialConfig
from ganft.data import load_splits
from ganft.diffusion import build_diffusion, padded_size, train_diffusion
from ganft.keys import with_overrides
from ganft.runtime import derive_seed, make_generator, seeded
from ganft.store import CheckpointCache
from ganft.synth import sample_synthetic

CPU = torch.device("cpu")
TINY = {"gan.recipe": "ddpm", "gan.steps": 8, "gan.batch_size": 16, "diffusion.width": 8,
        "diffusion.sample_steps": 3}


def tiny(**more: object) -> TrialConfig:
    return with_overrides(TrialConfig(), {**TINY, **more})


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("sampler", ["dpm-solver", "ddim"])
def test_every_size_and_channel_count_samples_finite_images_of_the_data_shape(
        shape: tuple[int, int, int], sampler: str) -> None:
    cfg = tiny(**{"diffusion.sampler": sampler, "diffusion.guidance": 2.0})
    model = build_diffusion(cfg.gan, cfg.diffusion, shape, 10)
    assert model.z_dim == shape[0] * padded_size(shape[1]) ** 2  # 28x28 works padded to 32x32
    images = sample_synthetic(model, 7, 10, seed=0, device=CPU)
    assert images.x.shape == (7, *shape) and torch.isfinite(images.x).all()
    assert images.x.min() >= -1 and images.x.max() <= 1 and sorted(images.y.tolist()) != [0] * 7


def test_the_class_label_changes_the_sample_and_the_same_seed_gives_the_same_samples() -> None:
    cfg = tiny()
    model = build_diffusion(cfg.gan, cfg.diffusion, (1, 8, 8), 10).eval()
    with torch.no_grad():  # an untrained model: embeddings are random, so labels must differ already
        model.unet.class_embedding.weight.normal_(0, 1, generator=make_generator(0))
    x = torch.randn(4, 1, 8, 8, generator=make_generator(1))
    t = torch.full((4,), 500)
    with torch.inference_mode():  # the noise predicted for one noisy image under four labels, and one
        eps = model.denoise(x, t, torch.tensor([0, 1, 2, 3]))
        same = model.denoise(x, t, torch.tensor([3, 3, 3, 3]))
    assert (eps[:3] - same[:3]).abs().amax(dim=(1, 2, 3)).min() > 1e-4 and torch.equal(eps[3], same[3])
    first, again = (sample_synthetic(model, 20, 10, seed=5, device=CPU) for _ in range(2))
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert not torch.equal(first.x, sample_synthetic(model, 20, 10, seed=6, device=CPU).x)


def _digits(n: int = 200):
    return load_splits("digits").train.take(torch.arange(n))


def test_a_few_training_steps_lower_the_denoising_loss() -> None:
    cfg = tiny(**{"gan.steps": 60, "gan.batch_size": 32, "diffusion.lr": 2e-3})
    rec = Recorder()
    res = train_diffusion(cfg.gan, cfg.diffusion, _digits(), 10, seed=0, device=CPU, tracker=rec,
                          log_every=10)
    curve = rec.curve("gan/loss_denoise")
    assert sorted(curve) == [10, 20, 30, 40, 50, 60]
    assert curve[60] < 0.7 * curve[10], curve
    assert res.discriminator is None and res.samples.shape == (80, 1, 8, 8)
    assert res.metrics["gan/g_steps"] == 60 and res.metrics["gan/sample_images_per_second"] > 0


def test_guidance_zero_with_label_dropout_one_is_unconditional() -> None:
    cfg = tiny(**{"diffusion.label_dropout": 1.0, "diffusion.guidance": 0.0, "diffusion.ema_decay": 0.0})
    res = train_diffusion(cfg.gan, cfg.diffusion, _digits(), 10, seed=0, device=CPU)
    with seeded(derive_seed(0, "gan-init")):  # the weights training started from
        init = build_diffusion(cfg.gan, cfg.diffusion, (1, 8, 8), 10)
    trained = res.generator.unet.class_embedding.weight
    start = init.unet.class_embedding.weight
    assert torch.equal(trained[:10], start[:10])  # no real label was ever seen in training
    assert not torch.equal(trained[10], start[10])  # only the null class learnt
    z = torch.randn(3, res.generator.z_dim, generator=make_generator(2))
    with torch.inference_mode():
        a, b = res.generator(z, torch.tensor([0, 1, 2])), res.generator(z, torch.tensor([7, 8, 9]))
    assert torch.equal(a, b)


def test_the_ratios_of_a_grid_share_one_model_from_the_store(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ganft.trial_gan")
    cache = CheckpointCache(tmp_path)
    base = {"data.dataset": "digits", "data.train_size": 50, "data.validation": "none",
            "classifier.arch": "seed-cnn", "classifier.width": 8, "classifier.steps": 6,
            "classifier.batch_size": 16}
    rec = Recorder()
    first = pipeline.run_trial(tiny(**base, **{"synth.ratio": 1}), device=CPU, cache=cache, tracker=rec)
    assert rec.tags["gan.cache"] == "miss" and first["synth/count"] == 50 and first["gan/trained_here"] == 1
    logged = rec.merged()  # the sampling time is logged beside the training time
    assert logged["time/synth_seconds"] > 0 and logged["gan/train_seconds"] > 0
    second = pipeline.run_trial(tiny(**base, **{"synth.ratio": 2}), device=CPU, cache=cache,
                                tracker=(rec := Recorder()))
    assert rec.tags["gan.cache"] == "hit" and second["synth/count"] == 100 and second["gan/trained_here"] == 0
    said = [r.getMessage() for r in caplog.records]  # the log calls it what it is
    assert any(m.startswith("diffusion model ") and ": training (" in m for m in said)
    assert any(m.startswith("diffusion model ") and m.endswith("reused from the cache") for m in said)
    assert not any(m.startswith("GAN ") for m in said)
    pipeline.run_trial(tiny(**base, **{"synth.ratio": 1, "diffusion.width": 16}), device=CPU, cache=cache,
                       tracker=(rec := Recorder()))
    assert rec.tags["gan.cache"] == "miss"  # the diffusion settings are part of the key


def test_a_gan_key_does_not_change_now_that_diffusion_exists() -> None:
    # every GAN stored before the diffusion section existed keeps its key (no retraining)
    from ganft.trial_gan import gan_key

    class Labeller:
        ident = "l"

    splits = load_splits("digits")
    from ganft.data import labelled_budget

    cfg = with_overrides(TrialConfig(), {"data.dataset": "digits", "data.train_size": 50})
    budget = labelled_budget(splits, cfg.data, 0)
    a = gan_key(cfg.gan, seed=0, budget=budget, splits=splits, unlabelled=torch.zeros(0), labeller=Labeller())
    b = gan_key(cfg.gan, seed=0, budget=budget, splits=splits, unlabelled=torch.zeros(0), labeller=Labeller(),
                diffusion=tiny().diffusion)
    assert a == b


@pytest.mark.parametrize("overrides, message", [
    ({"diffusion.guidance": -0.5}, "diffusion.guidance: Input should be greater than or equal to 0"),
    ({"diffusion.sample_steps": 0}, "diffusion.sample_steps: Input should be greater than or equal to 1"),
    ({"data.dataset": "imagefolder", "data.root": "/srv/photos", "data.image_size": 96},
     "data.image_size 96: gan.arch ddpm takes images up to 64x64"),
    ({"gan.recipe": "custom", "gan.arch": "ddpm", "gan.conditioning": "acgan"}, "gan.arch ddpm has no "
                                                                                "discriminator"),
    ({"gan.train_on": "transfer", "gan.transfer_source": "mnist"}, "gan.arch ddpm trains from scratch"),
])
def test_what_it_cannot_take_is_one_line_naming_the_key_before_any_work(
        overrides: dict, message: str, home: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(**overrides)
    keys = {**TINY, **overrides}
    sections: dict[str, dict] = {}
    for k, v in keys.items():
        section, key = k.split(".")
        sections.setdefault(section, {})[key] = v
    lines = [f"  {s}: {{{', '.join(f'{k}: {v}' for k, v in kv.items())}}}" for s, kv in sections.items()]
    study = home / "dd.yaml"
    study.write_text("name: dd\nbase:\n" + "\n".join(lines) + "\ngrid:\n  seed: [0]\n")
    assert main(["study", "run", str(study), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.split(":")[0] in err[0], err
    assert not (home / "mlflow.db").exists() and not (home / "optuna-journal.log").exists()


@pytest.mark.parametrize("recipe", ["default", "ddpm"])
def test_a_convergence_curve_on_budget_images_is_logged_and_leaves_the_cache_key_alone(
        recipe: str, tmp_path: Path) -> None:
    # issue 26: a quality curve during training on budget data only, even without validation images
    cache = CheckpointCache(tmp_path)
    base = {"data.dataset": "digits", "data.train_size": 50, "data.validation": "none", "gan.recipe": recipe,
            "gan.steps": 4, "gan.curve_every": 2, "gan.eval_samples": 50, "gan.width": 8, "gan.z_dim": 8,
            "synth.ratio": 1, "classifier.arch": "seed-cnn", "classifier.width": 8, "classifier.steps": 4,
            "classifier.batch_size": 16}
    rec = Recorder()
    pipeline.run_trial(tiny(**base), device=CPU, cache=cache, tracker=rec)
    curve, logged = rec.curve("gan/budget_kid"), rec.merged()
    assert sorted(curve) == [2, 4] and all(v == v for v in curve.values())  # logged, not NaN
    assert logged["gan/budget_kid_last"] == curve[4] and logged["gan/budget_kid_min"] == min(curve.values())
    pipeline.run_trial(tiny(**{**base, "gan.curve_every": 0}), device=CPU, cache=cache,
                       tracker=(rec := Recorder()))
    assert rec.tags["gan.cache"] == "hit"  # the curve changes no weight, so not the key either


def test_the_curve_changes_no_weight_of_the_gan() -> None:
    from ganft.gan_train import Scores, train_gan

    cfg = with_overrides(TrialConfig(), {"gan.steps": 4, "gan.width": 8, "gan.z_dim": 8, "gan.batch_size": 16,
                                         "gan.eval_samples": 50}).gan
    plain = train_gan(cfg, _digits(100), 10, seed=0, device=CPU)
    rec = Recorder()
    watched = train_gan(cfg.model_copy(update={"curve_every": 2}), _digits(100), 10, seed=0, device=CPU,
                        tracker=rec, scores=Scores(curve=lambda images: float(images.mean())))
    assert rec.steps("gan/budget_kid") == [2, 4]
    a, b = plain.generator.state_dict(), watched.generator.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_conditional_gan_learns_only_the_pseudo_labels_its_labeller_is_sure_of() -> None:
    # issue 26: pseudo-labels for the unlabelled images a GAN uses pass a confidence threshold
    from ganft.config import GanConfig
    from ganft.trial_gan import key_fields, label_threshold, pseudo_labelled

    class Sure(torch.nn.Module):  # class 0 with probability ~1 where the first pixel is 1, else 0.5
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = x[:, 0, 0, 0]
            return torch.stack([10 * p, torch.zeros_like(p)], dim=1)

    x = torch.zeros(5, 1, 8, 8)
    x[:3, 0, 0, 0] = 1.0
    assert len(pseudo_labelled(x, Sure, CPU)) == 5
    kept = pseudo_labelled(x, Sure, CPU, 0.9)
    assert torch.equal(kept.x, x[:3]) and kept.y.tolist() == [0, 0, 0]
    cfg = GanConfig(train_on="budget+unlabelled", pseudo_label_min_confidence=0.9)
    assert label_threshold(cfg) == 0.9
    assert label_threshold(cfg.model_copy(update={"conditioning": "none"})) == 0.0  # it uses no labels
    # the threshold is part of a GAN's key, except at 0, where every GAN stored before it keeps its key
    assert "pseudo_label_min_confidence" in key_fields(cfg)
    assert "pseudo_label_min_confidence" not in key_fields(GanConfig())


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("sampler", ["dpm-solver", "ddim"])
def test_a_nearly_exact_denoiser_samples_its_data_with_either_sampler_and_schedule(
        schedule: str, sampler: str) -> None:
    # A learned denoiser is never exact, and knows only noise of the size it was trained on. Here the
    # exact noise prediction for a one-image data set, so limited and 5% off, must give back that image.
    # It caught DPM-Solver++ on the cosine schedule, whose last training level (alpha_bar 2.4e-9) turned a
    # small error into saturated speckle (the sampler now clips its clean-image prediction to [-1, 1], as
    # DDIM does).
    from ganft.diffusion import training_schedule

    cfg = tiny(**{"diffusion.sampler": sampler, "diffusion.schedule": schedule,
                  "diffusion.sample_steps": 25})
    model = build_diffusion(cfg.gan, cfg.diffusion, (1, 28, 28), 10).eval()
    target = torch.linspace(-0.8, 0.8, 28 * 28).view(1, 1, 28, 28)
    clean = model.pad(target)
    alpha_bar = training_schedule(cfg.diffusion).alphas_cumprod
    off = 0.05 * torch.randn(clean.shape, generator=make_generator(7))

    def denoise(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # like a network, it has only learnt noise of the size it was trained on (|eps| <= 4)
        a = alpha_bar[t.long()].view(-1, 1, 1, 1)
        return ((x_t - a.sqrt() * clean) / (1 - a).sqrt()).clamp(-4, 4) + off

    model.denoise = denoise  # type: ignore[method-assign]
    images = sample_synthetic(model, 4, 10, seed=0, device=CPU)
    error = float((images.x - target).abs().mean())
    assert error < 0.05, error
