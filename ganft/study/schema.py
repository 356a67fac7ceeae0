"""The study schema: a study file (name, base trial config, grid or search, confirmation) as a
frozen pydantic model, its grid points, and the loader that turns a file into it.

Every point's whole trial config is checked when the file loads, so a combination the trial
schema refuses is one line naming the point, before any work.
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ganft.config import ConfigError, DataConfig, StrictModel, TrialConfig, canon
from ganft.keys import (
    config_keys,
    dotted_value,
    field_annotation,
    format_validation_error,
    read_yaml,
    unknown_key,
    with_overrides,
)

log = logging.getLogger(__name__)

GridValue = int | float | str | bool | None | list[Any]
STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # also a folder name under reports/: no path separators
RESERVED_NAMES = {"default": "MLflow's own experiment 0, whose artifacts go to ./mlruns of wherever it was "
                             "created", "ganft-cache": "the experiment of the shared GAN cache"}


def check_study_name(name: str) -> str:
    """A study name as the command line gets it (``ganft report NAME``): the study files' rule."""
    if not re.fullmatch(STUDY_NAME, name) or len(name) > 64 or name.lower() in RESERVED_NAMES:
        shown = repr(name) if len(name) <= 80 else f"{name[:60]!r}... ({len(name):,} characters)"
        raise ConfigError(f"{shown} is not a study name: letters, digits, '_', '.', '-' (not first), at "
                          f"most 64 characters, not {' or '.join(RESERVED_NAMES)}")
    return name


class SearchParam(StrictModel):
    """One searched config key: ``choices`` (categorical), or a range ``low``..``high`` (an int key
    draws ints, in multiples of ``step`` if given; a float key floats, log-uniform with ``log``).
    ``when``: sampled only when these keys (searched earlier, or the base config) have these
    values, e.g. ``gan.gp_weight`` only ``when: {gan.loss: wgan-gp}``."""

    choices: list[GridValue] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    when: dict[str, GridValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give choices (a non-empty list) or low and high, not both")
        elif self.low is None or self.high is None:
            raise ValueError("needs choices, or low and high")
        elif not self.low < self.high:
            raise ValueError(f"empty range: low {self.low} is not below high {self.high}")
        elif self.log and self.low <= 0:
            raise ValueError(f"log: true needs low above 0, not {self.low}")
        return self


class SearchConfig(StrictModel):
    n_trials: int = Field(ge=1, le=100_000)  # complete (or pruned) trials to reach, over every run
    # budget data only, never the test split: val/acc = the kept checkpoint's budget-validation
    # accuracy; paired-gain = that minus the real-only run's at the same (N, seed, classifier config)
    objective: Literal["val/acc", "paired-gain"] = "paired-gain"
    repeats: int = Field(3, ge=1, le=20)  # seeds seed..seed+repeats-1 per trial; the objective is their mean
    space: dict[str, SearchParam]


CONFIRM_FIRST_SEED = 1000  # a confirmation's fresh seeds count up from here (a search's are 0, 1, ...)


class ConfirmConfig(StrictModel):
    seeds: list[int] = Field(default_factory=lambda: list(range(CONFIRM_FIRST_SEED, CONFIRM_FIRST_SEED + 5)),
                             min_length=2)


class ReportConfig(StrictModel):
    # equivalence margin of `ganft report`, in percentage points of accuracy: an arm whose paired gain
    # lies within +-margin by two one-sided t-tests (TOST) is called equivalent to real only
    margin: float = Field(1.0, gt=0, le=100)


SAMPLERS = ("grid", "tpe", "random", "cmaes")


class StudyConfig(StrictModel):
    name: str = Field(pattern=STUDY_NAME, max_length=64)
    description: str = ""
    base: TrialConfig = TrialConfig()
    # full factorial over these keys; or a list of such grids (as scikit-learn's ParameterGrid takes),
    # whose points are the union: a key a sub-grid does not vary keeps the base value there
    grid: dict[str, list[GridValue]] | list[dict[str, list[GridValue]]] = Field(default_factory=dict)
    max_retries: int = Field(1, ge=0, le=100)  # a point that failed is run again on rerun at most this often
    sampler: Literal["grid", "tpe", "random", "cmaes"] = "grid"  # grid: every point once; else a search
    search: SearchConfig | None = None
    pruner: Literal["none", "median", "successive-halving"] = "none"  # searches: stop hopeless trials
    confirm: ConfirmConfig | None = None  # searches: re-run the best recipe and real only on fresh seeds
    report: ReportConfig = ReportConfig()  # how `ganft report` reads the study (not part of any trial)

    @model_validator(mode="after")
    def _search_valid(self) -> StudyConfig:
        if self.sampler == "grid":
            if self.search is not None:
                raise ValueError("search: needs a sampler (tpe, random or cmaes); sampler grid runs the grid")
            return self
        if self.search is None:
            raise ValueError(f"sampler {self.sampler} needs a search: block (n_trials, objective, space)")
        if self.grid:
            raise ValueError(f"sampler {self.sampler} searches; a study has a grid or a search, not both")
        for key, p in self.search.space.items():
            check_search_param(self.base, key, p, self.search.space)
            if self.sampler == "cmaes" and (p.choices is not None or p.when):
                raise ValueError(f"search.space.{key}: sampler cmaes takes int and float ranges without "
                                 f"conditions; use tpe for categorical or conditional parameters")
        controls = {"oracle", "placebo"}  # labels beyond the budget, or nothing to find: never a treatment
        source = self.search.space.get("synth.source")
        drawn = set(source.choices or []) & controls if source is not None else set()
        if drawn or self.base.synth.source in controls:
            which = ", ".join(sorted(drawn)) if drawn else self.base.synth.source
            raise ValueError(f"search: synth.source {which} is a control (the oracle reads labels beyond the "
                             f"budget, the placebo adds nothing); a search may not choose it: drop it from "
                             f"search.space and base (run controls in a grid)")
        searched = self.search.space.get("data.validation")
        protocols = {self.base.data.validation, *(searched.choices or [] if searched else [])}
        if "none" in protocols:
            raise ValueError("search: data.validation none leaves nothing to choose on (the objective "
                             "would be training accuracy); set data.validation kfold (cross-validation "
                             "inside the budget) or from-budget")
        return self

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.lower() in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved ({RESERVED_NAMES[name.lower()]}); choose another name")
        return name

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, grid: Any) -> Any:
        if isinstance(grid, list) and not grid:
            raise ValueError("an empty list of grids; give at least one grid, or leave grid out")
        for i, sub in enumerate(grid if isinstance(grid, list) else [grid]):
            where = f"item {i}: " if isinstance(grid, list) else ""
            if isinstance(grid, list) and not sub:
                raise ValueError(f"{where}an empty grid; give it at least one key")
            for key, values in sub.items():
                if key not in config_keys():
                    raise ValueError(f"{where}{unknown_key(key)}")
                if not values:
                    raise ValueError(f"{where}{key}: needs at least one value")
                if len({repr(v) for v in values}) != len(values):
                    raise ValueError(f"{where}{key}: repeated value in {values}")
        return grid

    @model_validator(mode="after")
    def _grid_points_valid(self) -> StudyConfig:
        if isinstance(self.grid, dict):  # one grid: name the value itself (a sub-grid's value may
            for key, values in self.grid.items():  # need another of its keys: the points below)
                for i, value in enumerate(values):
                    try:
                        with_overrides(self.base, {key: value})
                    except ConfigError as exc:
                        msg = str(exc).removeprefix(f"{key}: ")
                        raise ValueError(f"grid.{key}[{i}]: {msg}") from None
        for point in self.points():  # combinations: a value that only works with another one
            try:
                with_overrides(self.base, point)
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v}" for k, v in point.items())
                raise ValueError(f"grid point {shown}: {exc}") from None
        return self

    @property
    def is_search(self) -> bool:
        return self.sampler != "grid"

    @property
    def grids(self) -> list[dict[str, list[GridValue]]]:
        """The study's grids: one, or the file's list of them."""
        return list(self.grid) if isinstance(self.grid, list) else [self.grid] if self.grid else []

    @property
    def grid_values(self) -> dict[str, list[GridValue]]:
        """Every grid key with every value it takes in some point (the base value too where a
        sub-grid leaves it alone): what Optuna records as the key's distribution."""
        out: dict[str, list[GridValue]] = {}
        for point in self.points():  # in the file's order: points come sub-grid by sub-grid
            for key, value in point.items():
                seen = out.setdefault(key, [])
                if repr(canon(value)) not in {repr(canon(v)) for v in seen}:
                    seen.append(value)
        return out

    def points(self) -> list[dict[str, Any]]:
        """The grid's points in a fixed order, one dict of dotted overrides per trial: the full
        factorial; for a list of grids, the union of theirs (each point holds every key of every
        sub-grid, the base value where its own does not vary it; a point two sub-grids share once)."""
        grids = self.grids
        if not grids:
            return [{}]
        keys = list(dict.fromkeys(k for sub in grids for k in sub))
        base = {k: dotted_value(self.base, k) for k in keys}
        points, seen = [], set()
        for sub in grids:
            for combo in itertools.product(*sub.values()):
                point = {k: base[k] for k in keys} | dict(zip(sub, combo, strict=True))
                ident = repr([(k, canon(point[k])) for k in keys])
                if ident not in seen:
                    seen.add(ident)
                    points.append(point)
        return points

    def trial_config(self, point: dict[str, Any]) -> TrialConfig:
        return with_overrides(self.base, point)

    def datasets(self) -> list[DataConfig]:
        """The distinct datasets the study's points load (as a loader tells them apart), in order."""
        seen: dict[str, DataConfig] = {}
        for point in self.points():
            data = self.trial_config(point).data
            key = data.model_dump_json(include={"dataset", "root", "image_size", "channels", "test_fraction"})
            seen.setdefault(key, data)
        return list(seen.values())


def check_search_param(base: TrialConfig, key: str, p: SearchParam, space: dict[str, SearchParam]) -> None:
    """A searched key and its values, checked like a grid's: unknown keys, values the config
    rejects (each choice, both ends of a range), conditions on keys that cannot hold the value."""
    where = f"search.space.{key}"
    if key not in config_keys():
        raise ValueError(f"{where}: {unknown_key(key)}")
    if key == "seed":
        raise ValueError(f"{where}: the seed is not searched; search.repeats draws several per trial")
    kind = field_annotation(key)
    if p.choices is None and kind not in (int, float):
        raise ValueError(f"{where}: {key} is not a number; give choices")
    if kind is int and p.choices is None and not (float(p.low).is_integer() and float(p.high).is_integer()):
        raise ValueError(f"{where}: {key} is an integer; low and high must be whole numbers")
    for cond, value in p.when.items():
        if cond in space and space[cond].choices is not None and value not in space[cond].choices:
            raise ValueError(f"{where}: when {cond} = {value!r}, but {cond}'s choices are "
                             f"{space[cond].choices}")
        if cond not in space and cond not in config_keys():
            raise ValueError(f"{where}: when {unknown_key(cond)}")
    conditions = dict(p.when)
    for value in p.choices if p.choices is not None else [p.low, p.high]:
        value = int(value) if kind is int and p.choices is None else value
        try:
            with_overrides(base, {**conditions, key: value})
        except ConfigError as exc:
            raise ValueError(f"{where}: {value!r}: {str(exc).removeprefix(f'{key}: ')}") from None




def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file; raises ConfigError with one readable line."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping with keys name, base, grid")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, StudyConfig)}") from None


def find_study_file(arg: str) -> Path | None:
    """The study file ``arg`` names: a YAML path, or studies/<name>.yaml here or at the project
    root; None when there is none (a name is checked against the study-name rule first)."""
    from ganft.paths import project_root

    path = Path(arg)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    check_study_name(arg)
    found = [folder / "studies" / f"{arg}.yaml" for folder in (Path.cwd(), project_root())]
    return next((c for c in found if c.is_file()), None)


def resolve_study(arg: str) -> StudyConfig:
    """A YAML path, or a name looked up as studies/<name>.yaml here or at the project root (the
    file used is logged)."""
    from ganft.paths import project_root

    path = find_study_file(arg)
    if path is None:
        known = sorted(p.stem for p in (project_root() / "studies").glob("*.yaml"))
        raise ConfigError(f"no study file for {arg!r}; give a path or one of: {', '.join(known) or 'none'}")
    if path != Path(arg):  # found by its name
        log.info("study %s: %s", arg, path)
    return load_study(path)
