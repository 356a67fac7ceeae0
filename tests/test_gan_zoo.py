"""The GAN zoo: losses, regularisers, DiffAugment policies, conditioning modes, the seed article's
DCGAN, recipes, best-checkpoint selection, and filtering / pseudo-labelling of synthetic images."""

from pathlib import Path
from typing import get_args

import pytest
import torch
from recorder import Recorder
from torch import nn

from ganft.config import GAN_RECIPES, ConfigError, GanConfig, TrialConfig
from ganft.data import labelled_subset, load_splits
from ganft.diffaugment import POLICIES, diff_augment
from ganft.gan_train import Scores, train_gan
from ganft.images import Images
from ganft.keys import with_overrides
from ganft.losses import LOSSES, DStep, consistency_penalty, get_loss, gradient_penalty, r1_penalty
from ganft.models.classifier import SeedCNN
from ganft.models.gan import ConvTrunk, Discriminator, Resized, SeedGenerator, trunk_state_for_classifier
from ganft.runtime import make_generator
from ganft.study.schema import load_study
from ganft.synth import sample_labelled, sample_synthetic, synthesise

CPU = torch.device("cpu")
TINY = {"steps": 4, "width": 8, "z_dim": 8, "batch_size": 16}
STUDY = Path(__file__).parents[1] / "studies" / "gan_zoo.yaml"


def digits(n: int = 40) -> Images:
    return labelled_subset(load_splits("digits").train, n, 0)


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_reward_the_right_side(name: str) -> None:
    loss_d, loss_g = get_loss(name)
    good, bad = torch.full((8,), 3.0), torch.full((8,), -3.0)
    # D is better off when real scores high and fake low; G when its fakes score high
    assert loss_d(good, bad) < loss_d(bad, good)
    assert loss_g(good) < loss_g(bad)
    assert torch.isfinite(loss_d(torch.randn(8), torch.randn(8)))


def test_loss_values_match_their_definitions() -> None:
    hinge_d, hinge_g = get_loss("hinge")
    assert hinge_d(torch.tensor([2.0]), torch.tensor([-2.0])) == 0  # both margins met
    assert hinge_d(torch.tensor([0.0]), torch.tensor([0.0])) == 2
    wgan_d, _ = get_loss("wgan-gp")
    assert wgan_d(torch.tensor([1.0]), torch.tensor([-1.0])) == -2
    ns_d, ns_g = get_loss("ns")
    assert ns_d(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(2 * 0.6931, abs=1e-4)
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'; known: ns, hinge, wgan-gp"):
        get_loss("wgan")


def _d_step(norm: str = "none") -> DStep:
    torch.manual_seed(0)
    D = Discriminator(channels=1, size=8, num_classes=10, width=8, norm=norm)
    x_real = torch.randn(6, 1, 8, 8).requires_grad_(True)
    x_fake, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    return DStep(D, x_real, x_fake, y, D(x_real, y), D(x_fake, y), make_generator(0))


@pytest.mark.parametrize("penalty", [r1_penalty, gradient_penalty, consistency_penalty])
def test_regularisers_are_positive_and_push_gradients_into_d(penalty) -> None:
    s = _d_step()
    value = penalty(s)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    value.backward()
    grads = [p.grad for p in s.D.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_gradient_penalty_is_zero_for_a_unit_slope_critic() -> None:
    class Slope(nn.Module):  # D(x) = sum(x) / sqrt(numel): gradient norm exactly 1 everywhere
        def forward(self, x, y):
            return x.flatten(1).sum(1) / x[0].numel() ** 0.5

    x = torch.randn(4, 1, 8, 8)
    s = DStep(Slope(), x, torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), x.sum(), x.sum(),
              make_generator(0))
    assert gradient_penalty(s).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- DiffAugment


@pytest.mark.parametrize("policies", [["translation"], ["cutout"], ["color"],
                                      ["color", "translation", "cutout"]])
def test_diffaugment_policies_are_per_image_differentiable_and_seeded(policies: list[str]) -> None:
    x = torch.rand(1, 1, 16, 16).repeat(8, 1, 1, 1).requires_grad_(True)  # 8 copies of one image
    out = diff_augment(x, policies, make_generator(0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1  # each image gets its own draw
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0  # G's update goes through the augmentation
    assert torch.equal(out, diff_augment(x, policies, make_generator(0)))


def test_cutout_zeroes_a_square_and_color_moves_brightness() -> None:
    x = torch.ones(64, 1, 16, 16)
    cut = POLICIES["cutout"](x, make_generator(1))
    zero_frac = (cut == 0).float().mean(dim=(1, 2, 3))
    assert (zero_frac > 0).all() and (zero_frac <= 0.25).all()  # an 8x8 square, possibly clipped
    col = POLICIES["color"](torch.zeros(64, 1, 4, 4), make_generator(1))
    means = col.mean(dim=(1, 2, 3))
    assert means.min() < -0.2 and means.max() > 0.2 and means.abs().max() <= 0.5  # brightness U(-.5, .5)
    with pytest.raises(ValueError, match="policy 'rotate'; known: translation, cutout, color"):
        diff_augment(x, ["rotate"], make_generator(0))


# --------------------------------------------------------------------------- every variant trains


VARIANTS = {
    "ns": {}, "hinge+sn": {"loss": "hinge", "d_norm": "spectral"},
    "wgan-gp": {"loss": "wgan-gp", "d_norm": "none"},
    "r1": {"r1_gamma": 1.0}, "bcr": {"bcr_weight": 1.0}, "two d steps": {"d_steps": 2},
    "no diffaugment": {"diffaugment": ()}, "cutout": {"diffaugment": ("cutout",)},
    "color": {"diffaugment": ("color",)}, "acgan": {"conditioning": "acgan"},
    "unconditional": {"conditioning": "none"}, "seed-dcgan": {"arch": "seed-dcgan", "width": 4},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_with_finite_losses_and_right_shapes(variant: str) -> None:
    cfg = GanConfig(**{**TINY, **VARIANTS[variant]})
    rec = Recorder()
    res = train_gan(cfg, digits(), 10, seed=0, device=CPU, tracker=rec, log_every=2)
    logged = [m for _, m in rec.metrics]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in logged)
    regularised = cfg.loss == "wgan-gp" or cfg.r1_gamma > 0 or cfg.bcr_weight > 0
    assert (logged[-1]["gan/reg"] > 0) == regularised
    assert res.samples.shape == (80, 1, 8, 8)  # data size, also for seed-dcgan's 64x64 network
    z, y = torch.randn(5, 8), torch.arange(5)
    assert res.generator(z, y).shape == (5, 1, 8, 8)
    d_size = 64 if cfg.arch == "seed-dcgan" else 8
    logits, classes = res.discriminator.outputs(torch.randn(5, 1, d_size, d_size), y)
    assert logits.shape == (5,) and (classes is None) == (cfg.conditioning != "acgan")


def _quadrants(n: int = 400) -> Images:
    """A toy problem a conditional GAN can learn in seconds: class k lights up quadrant k of 8x8."""
    y = torch.arange(n) % 4
    x = torch.full((n, 1, 8, 8), -1.0)
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, 4 * r: 4 * r + 4, 4 * c: 4 * c + 4] = 1.0
    noise = 0.1 * torch.randn(x.shape, generator=make_generator(0))
    return Images((x + noise).clamp(-1, 1), y)


def _brightest_quadrant(x: torch.Tensor) -> torch.Tensor:
    q = [x[:, 0, 4 * r: 4 * r + 4, 4 * c: 4 * c + 4].mean(dim=(1, 2)) for r in range(2) for c in range(2)]
    return torch.stack(q, 1).argmax(1)  # (B,) the classifier of the toy problem


@pytest.mark.parametrize("conditioning", ["projection", "acgan"])
def test_conditional_generator_makes_the_class_it_is_asked_for(conditioning: str) -> None:
    real = _quadrants()
    assert (_brightest_quadrant(real.x) == real.y).all()
    cfg = GanConfig(steps=200, width=8, z_dim=8, batch_size=32, lr_g=2e-3, lr_d=2e-3, diffaugment=(),
                    ema_decay=0, conditioning=conditioning)
    G = train_gan(cfg, real, 4, seed=0, device=CPU).generator
    fake = sample_synthetic(G, 400, 4, seed=1, device=CPU)
    assert (_brightest_quadrant(fake.x) == fake.y).float().mean() >= 0.9  # chance is 0.25


# --------------------------------------------------------------------------- architectures


def test_seed_dcgan_is_the_articles_64x64_stack_resized_to_the_data() -> None:
    G = SeedGenerator(channels=1, num_classes=10, z_dim=100, width=64)
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
             for m in G.net if isinstance(m, nn.ConvTranspose2d)]
    assert convs == [(100, 512, 4, 1, 0), (512, 256, 4, 2, 1), (256, 128, 4, 2, 1), (128, 64, 4, 2, 1),
                     (64, 1, 4, 2, 1)]
    assert G(torch.randn(2, 100), None).shape == (2, 1, 64, 64)
    assert Resized(G, 28)(torch.randn(2, 100), None).shape == (2, 1, 28, 28)
    D = Discriminator(channels=1, size=64, num_classes=10, width=64, conditioning="none")
    assert [m.out_channels for m in D.trunk.body if isinstance(m, nn.Conv2d)] == [64, 128, 256, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.trunk.body) == 3
    assert D.head.linear.in_features == 512 * 4 * 4  # the article's last 4x4 conv on a 4x4 map


def test_trunk_state_for_classifier_materialises_spectral_norm() -> None:
    torch.manual_seed(0)
    D = Discriminator(channels=1, size=28, num_classes=10, width=8, norm="spectral")
    D(torch.randn(4, 1, 28, 28), torch.arange(4))  # a power iteration, as in training
    state = trunk_state_for_classifier(D)
    assert not any("parametrizations" in k for k in state)
    trunk = ConvTrunk(channels=1, size=28, width=8, norm=D.trunk.norm).eval()
    trunk.load_state_dict(state)  # strict: same names, same shapes
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(trunk(x), D.eval().trunk(x), atol=1e-5)
    sigma = torch.linalg.matrix_norm(state["body.0.weight"].flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.1)  # W / sigma has spectral norm ~1


def test_batch_norm_trunk_loads_into_the_seed_cnn_classifier() -> None:
    D = Discriminator(channels=1, size=28, num_classes=10, width=8)
    clf = SeedCNN(channels=1, size=28, num_classes=10, width=8)
    clf.trunk.load_state_dict(trunk_state_for_classifier(D))
    assert torch.equal(clf.trunk.body[0].weight, D.trunk.body[0].weight)


# --------------------------------------------------------------------------- recipes and config


def test_recipe_literal_lists_every_recipe() -> None:
    assert set(get_args(GanConfig.model_fields["recipe"].annotation)) == {"custom", *GAN_RECIPES}


def test_a_grid_can_switch_recipes_and_each_sets_its_fields() -> None:
    cfg = with_overrides(TrialConfig(), {"gan.recipe": "hinge-sn"})
    assert (cfg.gan.loss, cfg.gan.d_norm) == ("hinge", "spectral")
    seed = with_overrides(cfg, {"gan.recipe": "seed-dcgan"})  # from a dumped hinge-sn config
    assert (seed.gan.arch, seed.gan.loss, seed.gan.conditioning, seed.gan.diffaugment) == \
        ("seed-dcgan", "ns", "none", ())
    assert with_overrides(cfg, {"gan.recipe": "custom"}).gan.loss == "hinge"  # custom keeps what is there


def test_a_field_written_against_a_named_recipe_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"recipe wgan-gp sets .*conflicts with loss 'hinge'"):
        GanConfig(recipe="wgan-gp", loss="hinge")  # as in a hand-written study file
    custom = with_overrides(TrialConfig(), {"gan.loss": "hinge", "gan.diffaugment": ["cutout"]})
    with pytest.raises(ConfigError, match=r"gan: recipe wgan-gp .*with loss 'hinge', d_norm 'batch', diff"):
        with_overrides(custom, {"gan.recipe": "wgan-gp"})  # a base with its own choices, a grid of recipes
    assert GanConfig(recipe="wgan-gp", loss="wgan-gp").d_norm == "none"  # agreeing with it is fine


@pytest.mark.parametrize("bad,pattern", [
    ({"loss": "wgan-gp"}, "loss wgan-gp needs d_norm none or spectral"),
    ({"diffaugment": ["cutout", "cutout"]}, "a policy is repeated"),
    ({"recipe": "stylegan"}, "Input should be 'custom', 'default', 'hinge-sn'"),
    ({"conditioning": "cgan"}, "Input should be 'projection', 'acgan' or 'none'"),
])
def test_bad_gan_settings_are_rejected_at_load(bad: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        GanConfig(**bad)


def test_gan_zoo_study_file_loads_with_one_grid_point_per_recipe_and_seed() -> None:
    study = load_study(STUDY)
    recipes = study.grid["gan.recipe"]
    assert {"default", "hinge-sn", "wgan-gp", "no-diffaugment", "seed-dcgan"} <= set(recipes)
    cfgs = [study.trial_config(p) for p in study.points()]
    assert {c.data.dataset for c in cfgs} == {"fashion-mnist"} and {c.data.train_size for c in cfgs} == {500}
    assert all(c.quality.enabled and c.gan.eval_every > 0 for c in cfgs)
    by_recipe = {c.gan.recipe: c.gan for c in cfgs}
    assert by_recipe["wgan-gp"].loss == "wgan-gp" and by_recipe["seed-dcgan"].arch == "seed-dcgan"


# --------------------------------------------------------------------------- best checkpoint


def test_best_checkpoint_is_the_generator_at_the_best_validation_step() -> None:
    scores = iter([5.0, 2.0, 3.0, 4.0])  # evaluations at steps 2, 4, 6 and 7 (the last)
    rec = Recorder()
    cfg = GanConfig(**{**TINY, "steps": 7, "eval_every": 2, "eval_samples": 50})
    res = train_gan(cfg, digits(), 10, seed=3, device=CPU, tracker=rec,
                    scores=Scores(select=lambda images: next(scores)))
    curve = [(step, m["gan/val_kid"]) for step, m in rec.metrics if "gan/val_kid" in m]
    assert curve == [(2, 5.0), (4, 2.0), (6, 3.0), (7, 4.0)]
    assert res.metrics["gan/best_step"] == 4 and res.metrics["gan/best_val_kid"] == 2.0
    # scoring uses its own noise, so training is unchanged: the kept G is the one a 4-step run ends with
    at_4 = train_gan(cfg.model_copy(update={"steps": 4, "eval_every": 0}), digits(), 10, seed=3, device=CPU)
    kept, ref = res.generator.state_dict(), at_4.generator.state_dict()
    assert kept.keys() == ref.keys() and all(torch.equal(kept[k], ref[k]) for k in kept)


def test_selection_without_a_scorer_is_refused() -> None:
    with pytest.raises(ValueError, match="eval_every > 0 needs a scorer"):
        train_gan(GanConfig(**TINY, eval_every=2), digits(), 10, seed=0, device=CPU)


# --------------------------------------------------------------------------- filtering, pseudo-labels


class CodeGenerator(nn.Module):
    """A fake generator: pixel 0 holds the class (the asked one, or one drawn from z if
    unconditional), pixel 1 holds z[:, 1], the labeller's confidence switch."""

    def __init__(self, conditional: bool, num_classes: int = 4) -> None:
        super().__init__()
        self.conditional, self.num_classes = conditional, num_classes
        self.z_dim, self.channels, self.size = 2, 1, 2

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        label = y if self.conditional else (z[:, 0].abs() * 100).long() % self.num_classes
        x = torch.zeros(len(z), 1, 2, 2)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = label.float(), z[:, 1]
        return x


class CodeLabeller(nn.Module):
    """Reads the class from pixel 0: confident (p ~ 0.95) when pixel 1 > 0, unsure (p = 1/K) otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(x[:, 0, 0, 0].long(), 4).float()
        return 6.0 * onehot * (x[:, 0, 0, 1] > 0).float()[:, None]


@pytest.mark.parametrize("conditional", [True, False])
def test_filtering_keeps_confident_images_with_exact_balanced_counts(conditional: bool) -> None:
    images, metrics = sample_labelled(CodeGenerator(conditional), 41, 4, CodeLabeller(),
                                      conditioning="projection" if conditional else "none",
                                      min_confidence=0.9, seed=0, device=CPU)
    counts = torch.bincount(images.y, minlength=4)
    assert len(images) == 41 and counts.max() - counts.min() == 1
    assert (images.x[:, 0, 0, 1] > 0).all()  # only confident images were kept
    assert torch.equal(images.x[:, 0, 0, 0].long(), images.y)  # label = the class the image shows
    name = "synth/kept_fraction" if conditional else "synth/pseudo_label_kept_fraction"
    assert 0.35 < metrics[name] < 0.65 and metrics["synth/shortfall"] == 0  # half the draws have z1 > 0


def test_without_filtering_a_conditional_set_needs_no_labeller() -> None:
    G = CodeGenerator(conditional=True)
    cfg = TrialConfig()

    def labeller() -> nn.Module:
        raise AssertionError("the labeller must not be trained")

    images, metrics = synthesise(cfg.synth, G, 20, 4, labeller, conditioning=cfg.gan.conditioning, seed=5,
                                 device=CPU)
    plain = sample_synthetic(G, 20, 4, seed=5, device=CPU)
    assert torch.equal(images.x, plain.x) and torch.equal(images.y, plain.y) and metrics["synth/count"] == 20
