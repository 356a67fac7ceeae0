"""A grid study's points as Optuna sees them: names, parameters and distributions, and the state of
every point read back from the trials in the storage (``survey``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from ganft.config import TrialConfig
from ganft.keys import field_annotation
from ganft.study.schema import StudyConfig

GRID_KEY_ATTR = "ganft.grid_key"  # user attr: canonical JSON of the trial's grid point
OWNER_ATTR = "ganft.owner"  # user attr: {host, pid, pid_start, trial} of the worker running it
LOST_ATTR = "ganft.lost_run_trials"  # study user attr: COMPLETE trials whose MLflow run is gone
SHORT_NAMES = {"data.train_size": "n", "synth.ratio": "r", "seed": "s"}


def grid_key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def point_name(point: dict[str, Any]) -> str:
    """``n100-r1.0-s0`` for the common keys, then ``key=value`` for any other grid key."""
    parts = []
    for key, short in SHORT_NAMES.items():
        if key in point:
            value = float(point[key]) if key == "synth.ratio" else point[key]
            parts.append(f"{short}{value}")
    for key, value in point.items():
        if key not in SHORT_NAMES:
            shown = "+".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{key}={shown}")
    return "-".join(parts) or "base"


def distribution(key: str, values: list[Any]) -> BaseDistribution:
    """Int/float grid keys get numeric distributions (their range may grow when a grid is extended,
    and the dashboard plots them as numbers); anything else is categorical."""
    kind = _field_type(key)
    if kind is int and all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values))
    if kind is float:
        return FloatDistribution(float(min(values)), float(max(values)))
    return CategoricalDistribution([encode(v) for v in values])


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(key, dist.low, dist.high)
    return trial.suggest_categorical(key, dist.choices)


def _field_type(key: str) -> type | None:
    ann = field_annotation(key)
    return ann if ann in (int, float) else None


def encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | tuple | dict) else value


def config_hash(cfg: StudyConfig, base: dict[str, Any] | None = None) -> str:
    """What results of one study must share: its base config (and a search's space, objective,
    repeats, sampler and pruner; not its n_trials: a search can be lengthened or shortened).
    ``base``: another base config, as ``model_dump(mode="json")`` wrote it, in its place."""
    text = cfg.base.model_dump_json() if base is None else json.dumps(base, separators=(",", ":"),
                                                                       ensure_ascii=False)
    if cfg.search is not None:
        text += cfg.model_dump_json(include={"search", "sampler", "pruner"}, exclude={"search": {"n_trials"}})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_as_older_base(cfg: StudyConfig, stored_hash: str, stored_base: Any) -> bool:
    """Whether a study stored by an earlier ganft, whose config had fewer fields, is this study: its
    stored base (and hash) agree with the rest of ``cfg``, every field it has holds the value it has
    now, and every field added since sits at its default, so it changes nothing those runs did."""
    if not isinstance(stored_base, dict) or config_hash(cfg, stored_base) != stored_hash:
        return False

    def same(old: dict[str, Any], new: dict[str, Any], default: dict[str, Any]) -> bool:
        if not set(old) <= set(new):  # a field this ganft no longer has
            return False
        for key, value in new.items():
            if isinstance(value, dict):
                if not same(old.get(key, {}), value, default.get(key, {})):
                    return False
            elif value != old.get(key, default.get(key)):  # a field added since: at its default
                return False
        return True

    return same(stored_base, cfg.base.model_dump(mode="json"), TrialConfig().model_dump(mode="json"))


@dataclass
class PointState:
    point: dict[str, Any]
    name: str
    state: str = "missing"  # complete | running | queued | failed | missing
    attempts: int = 0  # finished FAIL trials that count against max_retries
    reason: str = ""
    trials: list[int] = field(default_factory=list)
    owner: dict[str, Any] | None = None  # running: the worker running it
    lost_runs: int = 0  # COMPLETE trials of this point whose MLflow run is gone


def lost_trials(study: optuna.Study) -> set[int]:
    """COMPLETE trials whose MLflow run is gone from the tracking store (``queue.find_lost_runs``):
    their points count as missing and run again."""
    return set(study.user_attrs.get(LOST_ATTR, []))


def survey(study: optuna.Study, cfg: StudyConfig) -> list[PointState]:
    """The state of every grid point, from the trials in the storage."""
    points = {grid_key(p): PointState(p, point_name(p)) for p in cfg.points()}
    rank = {"complete": 4, "running": 3, "queued": 2, "failed": 1, "missing": 0}
    lost = lost_trials(study)
    for t in study.get_trials(deepcopy=False):
        ps = points.get(t.user_attrs.get(GRID_KEY_ATTR, ""))
        if ps is None or t.number in lost:
            if ps is not None:
                ps.lost_runs += 1
            continue  # spare trials, points no longer in the grid, results whose run is gone
        ps.trials.append(t.number)
        state = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running",
                 TrialState.WAITING: "queued", TrialState.FAIL: "failed"}.get(t.state, "missing")
        if t.state == TrialState.FAIL:
            # only the point's own errors count as attempts; a killed or interrupted worker does not
            reason = t.user_attrs.get("ganft.fail_reason")
            ps.attempts += reason is not None
            ps.reason = reason or t.user_attrs.get("ganft.interrupted") or \
                "interrupted (its worker stopped before the trial ended)"
        if t.state == TrialState.RUNNING:
            ps.owner = trial_owner(t)
        if rank[state] > rank[ps.state]:
            ps.state = state
    return list(points.values())


def trial_owner(t: FrozenTrial) -> dict[str, Any] | None:
    """The worker running ``t``, as it recorded itself. Attrs copied from another trial (Optuna's
    retry callback copies them) name that trial's number and do not count."""
    owner = t.user_attrs.get(OWNER_ATTR)
    return owner if isinstance(owner, dict) and owner.get("trial") == t.number else None
