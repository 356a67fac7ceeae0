"""A stored model's training that survives a kill (a GAN, a diffusion model, a semi-supervised GAN):
its whole state saved every few minutes, and a rerun that continues from there to the same weights
an unbroken run would reach.

A diffusion model or a long GAN trains for most of an hour on a CPU; without this, a worker killed
(or a session ended) near its end trained it again from step 0. ``Progress`` saves, under the
model's own cache key, every part with a ``state_dict`` (networks, optimisers, schedulers, the EMA,
the best-step and curve keepers), every ``torch.Generator`` the loop draws from and the global RNG
(dropout and noise layers draw from it), the loop's running sums, and every metric the loop has
logged, which a resumed run logs again to its new MLflow run so that its curves start at step 1. A
resumed run therefore ends with the weights, metrics and curves of a run that was never stopped
(tests/test_progress.py).

Progress entries live in the store's ``progress/`` folder, written atomically and checksummed by
``store.CheckpointCache`` (a torn save is discarded, and training goes on from the one before or
from the start), on this machine only: the model's key lock is held while it trains, so no other
worker writes them. They are deleted once the finished model is stored. Written by hand: the
training loops are ganft's own, and no library checkpoints an arbitrary loop's RNG streams and
logged history (Lightning's checkpointing would need the loops rewritten as LightningModules).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from ganft.store import CheckpointCache, load_or_make
from ganft.tracker import Tracker

log = logging.getLogger(__name__)

PROGRESS_VERSION = 1  # bump when what a progress entry holds changes: older entries are then ignored
EVERY_S = 300.0  # seconds of training between two saves: at most this much is trained again


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class _Recording:
    """A tracker that also keeps every metric logged through it, in order, for a resumed run."""

    def __init__(self, inner: Tracker, history: list[dict[str, Any]]) -> None:
        self.inner, self.history = inner, history

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.history.append({"step": -1 if step is None else step, "metrics": dict(metrics)})
        self.inner.log_metrics(metrics, step=step)

    def __getattr__(self, name: str) -> Any:  # log_params, set_tags, ...: passed through
        return getattr(self.inner, name)


class Progress:
    """The saved progress of the model stored under ``key`` (``store`` None: nothing is saved,
    as in library use). In a training loop::

        tracker = progress.track(tracker)
        done, extra = progress.restore(parts)  # 0, {} when there is nothing to resume
        for step in range(done + 1, steps + 1):
            ...
            progress.maybe_save(step, steps, parts, extra)
    """

    def __init__(self, store: CheckpointCache | None, key: str, every_s: float | None = None) -> None:
        self.store = None if store is None else CheckpointCache(Path(store.dir) / "progress")  # local only
        self.key, self.every_s = key, EVERY_S if every_s is None else every_s
        self.history: list[dict[str, Any]] = []
        self._tracker: Tracker | None = None
        self._saved_at = time.monotonic()

    def track(self, tracker: Tracker) -> Tracker:
        """``tracker``, recording what is logged through it (when progress is saved at all)."""
        if self.store is None:
            return tracker
        self._tracker = tracker
        return _Recording(tracker, self.history)  # type: ignore[return-value]

    def restore(self, parts: dict[str, Stateful | torch.Generator]) -> tuple[int, dict[str, Any]]:
        """Load the saved state into ``parts`` (and the global RNG), log the saved metrics again, and
        return the last step it had trained and the loop's own values (``extra`` of ``maybe_save``);
        (0, {}) when nothing is saved."""
        state = None if self.store is None else self.store.load(self.key)
        if state is None or state.get("version") != PROGRESS_VERSION:
            return 0, {}
        try:
            for name, part in parts.items():
                saved = state["parts"][name]
                part.set_state(saved) if isinstance(part, torch.Generator) else part.load_state_dict(saved)
            torch.set_rng_state(state["rng"])
            if "cuda_rng" in state:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (KeyError, RuntimeError, ValueError) as exc:
            self.clear()
            raise RuntimeError(
                f"the saved training progress of {self.key} does not fit this ganft ({exc}); "
                f"it was deleted: rerun the same command to train it from the start") from exc
        self.history[:] = state["history"]
        if self._tracker is not None:
            for entry in self.history:
                step = entry["step"]
                self._tracker.log_metrics(entry["metrics"], step=None if step < 0 else step)
        log.info("%s: resumed after step %d (saved progress)", self.key, state["step"])
        self._saved_at = time.monotonic()
        return int(state["step"]), dict(state["extra"])

    def maybe_save(self, step: int, steps: int, parts: dict[str, Stateful | torch.Generator],
                   extra: dict[str, Any]) -> None:
        """Save the state after ``step`` when ``every_s`` seconds have passed since the last save
        (never after the last step: the finished model is stored instead)."""
        if self.store is None or step >= steps or time.monotonic() - self._saved_at < self.every_s:
            return
        state: dict[str, Any] = {
            "version": PROGRESS_VERSION, "step": step, "extra": extra, "history": self.history,
            "parts": {name: part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
                      for name, part in parts.items()},
            "rng": torch.get_rng_state()}  # dropout and noise layers draw from the global RNG
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        self.store.save(self.key, state)
        self._write_note(step, steps)
        self._saved_at = time.monotonic()
        log.info("%s: step %s of %s trained, progress saved", self.key, f"{step:,}", f"{steps:,}")

    def _write_note(self, step: int, steps: int) -> None:
        """``<key>.json`` beside the entry: how far the training is, for ``ganft study status`` (which
        reads it without loading the entry, or torch)."""
        assert self.store is not None
        note = self._note()
        tmp = note.with_name(f"{note.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"step": step, "steps": steps, "saved": time.time()}))
        os.replace(tmp, note)

    def clear(self) -> None:
        """Delete the saved progress (the generator is stored, or the progress was unusable)."""
        if self.store is not None:
            self.store.discard(self.key)
            self._note().unlink(missing_ok=True)

    def _note(self) -> Path:
        assert self.store is not None
        return self.store.dir / f"{self.key}.json"


NO_PROGRESS = Progress(None, "")


def load_or_resume(cache: CheckpointCache | None, key: str,
                   make: Callable[[Progress], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """``store.load_or_make`` for a model whose training saves its progress: the entry stored under
    ``key`` (True), else ``make(progress)``, which resumes a killed training where it was, stored
    (False). The progress is deleted once the model is stored."""
    progress = Progress(cache, key)
    entry, hit = load_or_make(cache, key, lambda: make(progress))
    progress.clear()  # the model is stored: its progress is of no more use
    return entry, hit
