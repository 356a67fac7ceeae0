"""Validated configuration: YAML study files -> frozen pydantic models -> functions.

Every field name is also the Optuna parameter name and the MLflow param (dotted, e.g. ``gan.lr_d``),
so one name follows a setting everywhere. Unknown keys, wrong types, out-of-range values and
unknown variant names are errors that name the key and what is allowed; nothing downstream
re-validates.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The dataset names are checked here (a Literal), their sizes in data.py (which knows the pools).
DatasetName = Literal["digits", "fashion-mnist"]


class ConfigError(ValueError):
    """A study file or override that cannot be used; the message names the key and what is allowed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Model):
    dataset: DatasetName = "digits"
    root: str | None = None  # a folder holding the dataset files; None: the dataset's default places
    train_size: int = Field(100, ge=10)  # N, the labelled subset (stratified, chosen by (N, seed))
    val_size: int | None = Field(None, ge=10)  # None: the dataset's default validation size


class GanConfig(_Model):
    arch: Literal["dcgan"] = "dcgan"  # size-aware class-conditional DCGAN
    loss: Literal["ns"] = "ns"  # non-saturating (BCE with logits)
    steps: int = Field(600, ge=1)  # generator optimiser steps (one D step each)
    batch_size: int = Field(64, ge=2)
    z_dim: int = Field(64, ge=1)
    width: int = Field(64, ge=4)  # channels of the widest-resolution G / D layer; others scale from it
    lr_g: float = Field(2e-4, gt=0, le=1)
    lr_d: float = Field(2e-4, gt=0, le=1)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    diffaugment: tuple[Literal["translation"], ...] = ("translation",)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # 0 disables EMA (sampling uses the raw generator)


class SynthConfig(_Model):
    ratio: float = Field(0.0, ge=0, le=100)  # synthetic images = round(ratio * N), class balanced


class ClassifierConfig(_Model):
    arch: Literal["seed-cnn"] = "seed-cnn"  # the seed article's discriminator-shaped CNN, fixed
    init: Literal["scratch"] = "scratch"
    steps: int = Field(400, ge=1)  # optimiser steps, identical whatever the ratio (equal budget)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    width: int = Field(32, ge=4)
    eval_every: int = Field(50, ge=1)  # validation accuracy every K steps; the best checkpoint is kept


class TrialConfig(_Model):
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    gan: GanConfig = GanConfig()
    synth: SynthConfig = SynthConfig()
    classifier: ClassifierConfig = ClassifierConfig()


GridValue = int | float | str | bool | None | list[Any]


class StudyConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    description: str = ""
    base: TrialConfig = TrialConfig()
    grid: dict[str, list[GridValue]] = Field(default_factory=dict)
    max_retries: int = Field(1, ge=0)  # a point that failed is run again on rerun at most this often

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, grid: dict[str, list[GridValue]]) -> dict[str, list[GridValue]]:
        for key, values in grid.items():
            if key not in config_keys():
                raise ValueError(f"unknown config key {key!r}; allowed: {', '.join(config_keys())}")
            if not values:
                raise ValueError(f"{key}: needs at least one value")
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"{key}: repeated value in {values}")
        return grid

    @model_validator(mode="after")
    def _grid_points_valid(self) -> StudyConfig:
        for key, values in self.grid.items():
            for i, value in enumerate(values):
                try:
                    with_overrides(self.base, {key: value})
                except ConfigError as exc:
                    msg = str(exc).removeprefix(f"{key}: ")
                    raise ValueError(f"grid.{key}[{i}]: {msg}") from None
        return self

    def points(self) -> list[dict[str, Any]]:
        """The full factorial grid, in a fixed order: one dict of dotted overrides per trial."""
        keys = list(self.grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.grid.values())]

    def trial_config(self, point: dict[str, Any]) -> TrialConfig:
        return with_overrides(self.base, point)


# --------------------------------------------------------------------------- dotted keys


def config_keys(model: type[BaseModel] = TrialConfig, prefix: str = "") -> list[str]:
    """All leaf keys of a config model as dotted names, e.g. ``gan.lr_d``."""
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += config_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def flatten(cfg: BaseModel) -> dict[str, Any]:
    """Dotted-key view of a config (lists joined by '+' so they read well as MLflow params)."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, list | tuple):
                out[prefix + k] = "+".join(map(str, v)) if v else "none"
            else:
                out[prefix + k] = v

    walk(cfg.model_dump(), "")
    return out


def with_overrides(cfg: TrialConfig, overrides: dict[str, Any]) -> TrialConfig:
    """Return a new validated TrialConfig with dotted-key values replaced."""
    data = cfg.model_dump()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config key {key!r}; allowed: {', '.join(config_keys())}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown config key {key!r}; allowed: {', '.join(config_keys())}")
        node[leaf] = value
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TrialConfig)) from None


# --------------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """safe_load that rejects duplicate keys and reads ``1e-3`` as a float (YAML 1.2 style)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"line {line}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file; raises ConfigError with one readable line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read study file ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: YAML syntax error at {where}{problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping with keys name, base, grid")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, StudyConfig)}") from None


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    """One line per pydantic error, each naming the dotted key and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = _dotted(loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(root, loc[:-1])
            lines.append(f"{key}: unknown key; allowed: {', '.join(allowed)}")
        elif err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(msg if msg.startswith("grid.") else f"{key}: {msg}")
        else:
            got = err.get("input")
            got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{key}: {err['msg']}{got_txt}")
    return "; ".join(lines)


def _dotted(loc: list[str]) -> str:
    # grid keys are already dotted; list indices print as [i]
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "<file>"


def _allowed_fields(root: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)
