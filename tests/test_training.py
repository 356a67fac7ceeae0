"""GAN training, the GAN cache and classifier fine-tuning on tiny tensors."""

from pathlib import Path

import pytest
import torch
from helpers import digits_pool_val, trial_gan_key
from recorder import Recorder

from ganft.config import ClassifierConfig, GanConfig, SynthConfig, TrialConfig
from ganft.data import labelled_subset, load_splits
from ganft.finetune import Mix, train_classifier
from ganft.gan_train import Ema, NonFiniteLossError, train_gan
from ganft.images import Images
from ganft.keys import with_overrides
from ganft.store import CheckpointCache
from ganft.trial_gan import CachedGan

CPU = torch.device("cpu")
TINY_GAN = GanConfig(steps=6, width=8, z_dim=8, batch_size=16)


def real_subset(n: int = 40) -> Images:
    return labelled_subset(load_splits("digits").train, n, 0)


def test_gan_trains_a_few_steps_with_finite_losses() -> None:
    rec = Recorder()
    res = train_gan(TINY_GAN, real_subset(), 10, seed=0, device=CPU, tracker=rec, log_every=3)
    steps = [s for s, _ in rec.metrics]
    assert steps == [3, 6]
    for _, m in rec.metrics:
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    assert res.samples.shape == (80, 1, 8, 8) and torch.isfinite(res.samples).all()
    assert not res.generator.training


def test_same_seed_same_generator() -> None:
    a = train_gan(TINY_GAN, real_subset(), 10, seed=1, device=CPU)
    b = train_gan(TINY_GAN, real_subset(), 10, seed=1, device=CPU)
    for (k, va), vb in zip(a.generator.state_dict().items(), b.generator.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_non_finite_loss_stops_training_with_the_reason() -> None:
    real = real_subset()
    poisoned = Images(real.x.clone(), real.y)
    poisoned.x[0, 0, 0, 0] = float("nan")  # one NaN pixel turns D's loss NaN
    cfg = TINY_GAN.model_copy(update={"batch_size": 40})
    with pytest.raises(NonFiniteLossError, match=r"non-finite gan/loss_d.*at step 3"):
        train_gan(cfg, poisoned, 10, seed=0, device=CPU, log_every=3)


def test_ema_warms_up_then_averages() -> None:
    lin = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    ema = Ema(lin, decay=0.9)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)  # t=0: decay_t = 1/10, so the average moves 90% of the way
    assert ema.module.weight.item() == pytest.approx(0.9)
    for _ in range(200):
        ema.update(lin)
    assert ema.module.weight.item() == pytest.approx(1.0, abs=1e-6)


def test_cache_key_covers_what_determines_the_gan_and_not_the_ratio() -> None:
    key = trial_gan_key
    base = with_overrides(TrialConfig(), {"data.validation": "from-budget"})  # a hold-out to vary
    same = [with_overrides(base, {"synth.ratio": r}) for r in (0, 1, 4)]
    assert len({key(c) for c in same}) == 1
    assert len({key(c) for c in same + [with_overrides(base, {"classifier.steps": 9})]}) == 1
    different = [with_overrides(base, {k: v}) for k, v in
                 [("seed", 1), ("data.train_size", 50), ("gan.steps", 7), ("gan.lr_g", 1e-3),
                  ("data.val_fraction", 0.3), ("data.validation", "none")]]
    assert len({key(c) for c in [base, *different]}) == 1 + len(different)
    pool = with_overrides(base, {"data.validation": "pool", "data.val_size": 300})
    assert key(pool) not in {key(c) for c in [base, *different]}
    # the selection images and features count only when the GAN's best step is chosen
    selecting = with_overrides(base, {"gan.eval_every": 50})
    assert key(with_overrides(selecting, {"classifier.steps": 9})) != key(selecting) != key(base)


def test_cache_roundtrip_and_torn_entries_are_discarded(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path)
    entry = CachedGan({"w": torch.arange(4.0)}, torch.zeros(2, 1, 8, 8), {"gan/loss_d": 1.5})
    path = cache.save("k1", entry.payload())
    back = CachedGan.from_payload(cache.load("k1"))
    assert torch.equal(back.state_dict["w"], entry.state_dict["w"]) and back.metrics == {"gan/loss_d": 1.5}
    assert not list(tmp_path.glob("*.tmp-*"))  # the temporary file was renamed, not left behind
    path.write_bytes(path.read_bytes()[:-20])  # a torn write
    assert cache.load("k1") is None and not path.exists()
    cache.save("k2", entry.payload())
    cache.path("k2").rename(cache.path("k3"))  # content of one key under another name
    assert cache.load("k3") is None


def test_classifier_gets_the_same_step_budget_whatever_the_ratio() -> None:
    pool, val = digits_pool_val()
    real = labelled_subset(pool, 30, 0)
    cfg = ClassifierConfig(steps=10, eval_every=5, width=8, batch_size=16)
    fake = Images(torch.zeros(120, 1, 8, 8), torch.arange(120) % 10)
    logged = {}
    for name, synth in (("real-only", None), ("ratio 4", fake)):
        rec = Recorder()
        added = None if synth is None else Mix(synth, SynthConfig())
        res = train_classifier(cfg, real, val, 10, seed=0, device=CPU, added=added, tracker=rec)
        logged[name] = [step for step, m in rec.metrics if "clf/loss" in m]
        assert res.metrics["clf/train_images"] == 30 + (0 if synth is None else 120)
    assert logged["real-only"] == logged["ratio 4"] == [5, 10]


def test_classifier_keeps_the_best_validation_checkpoint() -> None:
    pool, val = digits_pool_val()
    rec = Recorder()
    cfg = ClassifierConfig(steps=60, eval_every=10, width=8, lr=5e-3)
    res = train_classifier(cfg, labelled_subset(pool, 50, 0), val, 10, seed=0, device=CPU, tracker=rec)
    curve = {step: m["clf/val_acc"] for step, m in rec.metrics}
    best_step = max(curve, key=lambda k: (curve[k], -k))
    assert res.metrics["clf/best_step"] == best_step
    from ganft.evaluate import accuracy

    assert accuracy(res.model, val) == pytest.approx(curve[best_step])


def test_a_trial_is_reproducible_bit_for_bit() -> None:
    """Same config, same metrics: every random draw (subset, GAN, noise, batches, dropout) is seeded."""
    from ganft.pipeline import run_trial

    cfg = with_overrides(TrialConfig(), {"data.train_size": 30, "synth.ratio": 1.0, "gan.steps": 6,
                                         "gan.width": 8, "classifier.steps": 8, "classifier.width": 8,
                                         "classifier.eval_every": 4})
    a, b = run_trial(cfg, device=CPU), run_trial(cfg, device=CPU)
    keys = [k for k in a if k.startswith(("test/", "clf/best"))]
    assert [a[k] for k in keys] == [b[k] for k in keys]


@pytest.fixture
def bf16_speed():
    from ganft.runtime import Speed, configure_speed, current_speed

    before = current_speed()
    configure_speed(Speed(precision="bf16", channels_last=True))
    yield
    configure_speed(before)


def test_bf16_autocast_on_the_cpu_trains_and_keeps_fp32_data(bf16_speed) -> None:
    """--precision bf16 runs the convs in bf16 (autocast), but weights, losses and the synthetic
    images handed to the classifier stay fp32."""
    from ganft.synth import sample_synthetic

    rec = Recorder()
    res = train_gan(TINY_GAN, real_subset(), 10, seed=0, device=CPU, tracker=rec, log_every=3)
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for _, m in rec.metrics)
    assert all(p.dtype == torch.float32 for p in res.generator.parameters())
    synth = sample_synthetic(res.generator, 20, 10, seed=0, device=CPU)
    assert synth.x.dtype == torch.float32
    pool, val = digits_pool_val()
    cfg = ClassifierConfig(steps=6, eval_every=3, width=8, batch_size=16)
    clf = train_classifier(cfg, labelled_subset(pool, 30, 0), val, 10, seed=0, device=CPU,
                           added=Mix(synth, SynthConfig()))
    assert 0.0 <= clf.metrics["clf/best_val_acc"] <= 1.0


def test_channels_last_gives_the_same_model_outputs() -> None:
    from ganft.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("seed-cnn", (1, 28, 28), 10, width=8).eval()
    x = torch.randn(5, 1, 28, 28)
    ref = model(x)
    cl = model.to(memory_format=torch.channels_last)
    assert torch.allclose(cl(x), ref, atol=1e-5)


def test_unknown_precision_is_a_clear_error() -> None:
    from ganft.config import ConfigError
    from ganft.runtime import Speed

    with pytest.raises(ConfigError, match="--precision fp8: unknown; allowed: auto, fp32, bf16"):
        Speed(precision="fp8")


