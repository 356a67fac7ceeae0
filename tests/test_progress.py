"""A generator's training survives a kill (ganft/progress.py): a rerun continues from the saved
progress and ends with the weights, metrics and curves of a run that was never stopped; progress
that is torn or does not fit is never used; none is left once the generator is stored."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from recorder import Recorder  # tests/recorder.py
from torch import nn

from ganft import pipeline, progress
from ganft.config import TrialConfig
from ganft.keys import with_overrides
from ganft.progress import Progress
from ganft.store import CheckpointCache
from ganft.study.status import training_progress

CPU = torch.device("cpu")
TIMES = ("gan/train_seconds", "gan/images_per_second", "gan/sample_images_per_second")


class Killed(Exception):
    """Stands for SIGKILL: the loop stops where it is, and nothing after it runs."""


class KillAt(Recorder):
    """A tracker whose first log at ``step`` stops the training, as a kill would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.kill = step

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step == self.kill:
            raise Killed
        super().log_metrics(metrics, step)


def trial(recipe: str) -> TrialConfig:
    return with_overrides(TrialConfig(), {
        "data.dataset": "digits", "data.train_size": 50, "data.validation": "none", "gan.recipe": recipe,
        "gan.steps": 8, "gan.batch_size": 16, "gan.width": 8, "gan.z_dim": 8, "gan.curve_every": 2,
        "gan.eval_samples": 50, "diffusion.width": 8, "diffusion.sample_steps": 3, "synth.ratio": 1,
        "classifier.arch": "seed-cnn", "classifier.width": 8, "classifier.steps": 4,
        "classifier.batch_size": 16})


def stored_gan(root: Path) -> dict[str, Any]:
    (path,) = root.glob("*.pt")  # exactly one generator stored (labellers live in a folder of their own)
    return torch.load(path, weights_only=True)


def gan_logs(rec: Recorder) -> list[tuple[int | None, dict[str, float]]]:
    """What the GAN's training logged, step by step (the trial's own metrics come after it)."""
    return [(s, m) for s, m in rec.metrics if s is not None and all(k.startswith("gan/") for k in m)]


@pytest.mark.parametrize("recipe", ["default", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_a_killed_generator_training_resumes_to_the_weights_and_curves_of_an_unbroken_one(
        recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ganft.progress")
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # save after every step
    cfg = trial(recipe)
    unbroken = Recorder()
    pipeline.run_trial(cfg, device=CPU, cache=CheckpointCache(tmp_path / "a"), tracker=unbroken)

    root = tmp_path / "b"  # a project root, as `ganft study status` reads it
    store = CheckpointCache(root / ".ganft-cache" / "gan")
    with pytest.raises(Killed):  # killed in the curve's log at step 6: progress holds step 5
        pipeline.run_trial(cfg, device=CPU, cache=store, tracker=(killed := KillAt(6)))
    assert not list(store.dir.glob("*.pt"))  # nothing stored as finished
    assert len(list((store.dir / "progress").glob("*.pt"))) == 1
    said = training_progress(root, killed.tags)  # what `ganft study status` says of the killed trial
    assert re.fullmatch(rf"; generator {killed.tags['gan.key']} trained to step 5 of 8, saved "
                        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d", said), said
    pipeline.run_trial(cfg, device=CPU, cache=store, tracker=(resumed := Recorder()))
    assert "step 5 of 8 trained, progress saved" in caplog.text  # said in the study's log
    assert "resumed after step 5" in caplog.text  # trained steps 6-8 only, not again from step 1

    assert resumed.tags["gan.cache"] == "miss" and resumed.tags["gan.key"] == killed.tags["gan.key"]
    a, b = stored_gan(tmp_path / "a"), stored_gan(store.dir)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, weights in a["state_dict"].items():
        assert torch.equal(weights, b["state_dict"][name]), name
    assert torch.equal(a["samples"], b["samples"])
    assert {k: v for k, v in a["metrics"].items() if k not in TIMES} == \
        {k: v for k, v in b["metrics"].items() if k not in TIMES}
    # the resumed run logs the curve and losses from step 1, as the unbroken one did
    assert gan_logs(resumed) == gan_logs(unbroken) and [2, 4, 6, 8] == sorted(resumed.curve("gan/budget_kid"))
    assert not list((store.dir / "progress").iterdir())  # entry, checksum and note deleted once stored
    assert training_progress(root, killed.tags) == ""


def test_progress_is_saved_only_every_few_minutes_and_never_after_the_last_step(tmp_path: Path) -> None:
    parts = {"m": nn.Linear(2, 2), "gen": torch.Generator().manual_seed(0)}
    slow = Progress(CheckpointCache(tmp_path), "k", every_s=3600.0)
    slow.maybe_save(1, 10, parts, {})
    assert not (tmp_path / "progress" / "k.pt").exists()
    eager = Progress(CheckpointCache(tmp_path), "k", every_s=0.0)
    eager.maybe_save(10, 10, parts, {})  # the last step: the finished model is stored instead
    assert not (tmp_path / "progress" / "k.pt").exists()
    eager.maybe_save(9, 10, parts, {})
    assert (tmp_path / "progress" / "k.pt").exists()
    assert Progress(None, "k", every_s=0.0).restore(parts) == (0, {})  # no store: nothing saved


def test_torn_progress_is_not_used_and_progress_that_does_not_fit_is_deleted_with_what_to_run(
        tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    saver = Progress(CheckpointCache(tmp_path), "k", every_s=0.0)
    saver.maybe_save(3, 10, {"m": nn.Linear(2, 2), "gen": gen}, {"last": 2})
    path = tmp_path / "progress" / "k.pt"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # torn by a kill mid-write (without the atomic rename)
    assert Progress(CheckpointCache(tmp_path), "k").restore({"m": nn.Linear(2, 2), "gen": gen}) == (0, {})
    assert not path.exists()  # discarded by the store's checksum

    saver.maybe_save(3, 10, {"m": nn.Linear(2, 2), "gen": gen}, {"last": 2})
    resumed = Progress(CheckpointCache(tmp_path), "k").restore({"m": nn.Linear(2, 2), "gen": gen})
    assert resumed == (3, {"last": 2})
    with pytest.raises(RuntimeError, match="rerun the same command to train it from the start"):
        Progress(CheckpointCache(tmp_path), "k").restore({"m": nn.Linear(3, 2), "gen": gen})  # another shape
    assert not path.exists()


def test_a_killed_semi_supervised_gan_resumes_to_the_classifier_of_an_unbroken_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ganft.progress")
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    cfg = TrialConfig.model_validate({  # input noise, hidden noise and dropout: the global RNG matters
        "data": {"dataset": "digits", "train_size": 50, "unlabelled_size": "all", "validation": "none"},
        "synth": {"source": "ssgan"}, "gan": {"width": 8, "z_dim": 16}, "ssgan": {"hidden_noise": 0.5},
        "classifier": {"arch": "seed-cnn", "steps": 12, "eval_every": 4, "batch_size": 16, "width": 8}})
    a_store, b_store, unbroken, resumed = CheckpointCache(tmp_path / "a"), CheckpointCache(tmp_path / "b"), \
        Recorder(), Recorder()
    first = pipeline.run_trial(cfg, device=CPU, cache=a_store, tracker=unbroken)
    with pytest.raises(Killed):  # killed in the log at step 8: progress holds step 7
        pipeline.run_trial(cfg, device=CPU, cache=b_store, tracker=KillAt(8))
    assert len(list((tmp_path / "b" / "ssgan" / "progress").glob("*.pt"))) == 1
    again = pipeline.run_trial(cfg, device=CPU, cache=b_store, tracker=resumed)
    assert "resumed after step 7" in caplog.text and resumed.tags["ssgan.cache"] == "miss"
    a, b = stored_gan(tmp_path / "a" / "ssgan"), stored_gan(tmp_path / "b" / "ssgan")
    for name, weights in a["state"].items():
        assert torch.equal(weights, b["state"][name]), name
    timeless = lambda m: {k: v for k, v in m.items() if "second" not in k}  # noqa: E731
    assert timeless(first) == timeless(again) and first["test/acc"] == again["test/acc"]
    assert [(s, m) for s, m in resumed.metrics if s is not None and "ssgan/fm_loss" in m] == \
        [(s, m) for s, m in unbroken.metrics if s is not None and "ssgan/fm_loss" in m]
    assert not list((tmp_path / "b" / "ssgan" / "progress").glob("*.pt*"))
