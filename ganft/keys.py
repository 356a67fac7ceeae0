"""Dotted config keys and the strict YAML reader: how a setting is named in a study file, a grid,
an Optuna parameter and an MLflow param (``gan.lr_d``), and how a YAML file becomes plain data.

Read by the study package, the report (to cast params back) and the command line; no stage needs it.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ganft.config import ConfigError, TrialConfig

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


def config_field(key: str, model: type[BaseModel] = TrialConfig) -> FieldInfo:
    """The pydantic field of a dotted config key (its annotation, default and description)."""
    *parents, leaf = key.split(".")
    for p in parents:
        model = model.model_fields[p].annotation
    return model.model_fields[leaf]


def field_annotation(key: str, model: type[BaseModel] = TrialConfig) -> Any:
    """The type annotation of a dotted config key, e.g. ``float`` for ``gan.lr_d``."""
    return config_field(key, model).annotation


def describe_keys() -> list[str]:
    """``ganft study keys``: per dotted key, a line with its whole type (every choice) and default,
    then its description (the field's docstring in config.py), indented."""
    base = flatten(TrialConfig())
    lines = []
    for key in config_keys():
        field = config_field(key)
        default = "null" if base[key] is None else base[key]
        lines.append(f"{key}: {type_text(field.annotation)}; default {default}")
        lines.append(f"    {field.description or ''}".rstrip())
    return lines


def type_text(ann: Any) -> str:
    """A config field's type as a user writes its values: ``one of: a, b``, ``int or all``,
    ``list of: x, y``, ``float or none``."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is tuple:  # tuple[X, ...]: a YAML list
        return f"list of{type_text(args[0]).removeprefix('one of')}" if get_origin(args[0]) is Literal \
            else f"list of {type_text(args[0])}"
    if origin in (Union, UnionType):  # int | Literal["all"]: "int or all"
        return " or ".join(type_text(a).removeprefix("one of: ") for a in args)
    if ann is type(None):
        return "null"
    return ann.__name__ if isinstance(ann, type) else str(ann)


def unknown_key(key: str) -> str:
    """The message for a dotted key that is not a config key: the closest ones, and where the list is."""
    close = difflib.get_close_matches(key, config_keys(), n=3, cutoff=0.6)
    section = key.split(".", 1)[0]  # a key of the section the user wrote comes first (gan.lr: gan.lr_g)
    close.sort(key=lambda k: k.split(".", 1)[0] != section)  # stable: closest first within each group
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown config key {key!r}; {hint}`ganft study keys` lists every key with its default"


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


def dotted_value(cfg: BaseModel, key: str) -> Any:
    """The value of a dotted key as a study file writes it (lists, not tuples)."""
    value: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    return value


def with_overrides(cfg: TrialConfig, overrides: dict[str, Any]) -> TrialConfig:
    """Return a new validated TrialConfig with dotted-key values replaced."""
    data = cfg.model_dump()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(unknown_key(key))
            node = node[p]
        if leaf not in node:
            raise ConfigError(unknown_key(key))
        node[leaf] = value
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TrialConfig)) from None


# --------------------------------------------------------------------------- the YAML reader


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


MAX_DEPTH = 32  # a study file nests 4 levels; deeper is an attack on the recursive parser


def _no_aliases(loader: _StrictLoader, parent: Any, index: Any) -> Any:
    """A YAML alias can expand exponentially (a few hundred bytes become gigabytes): refused. So is
    nesting deeper than MAX_DEPTH, which would exhaust Python's recursion."""
    if loader.check_event(yaml.events.AliasEvent):
        event = loader.peek_event()
        raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed "
                          f"in a study file; write the value out")
    depth = getattr(loader, "_ganft_depth", 0)
    if depth >= MAX_DEPTH:
        line = loader.peek_event().start_mark.line + 1
        raise ConfigError(f"line {line}: values nested more than {MAX_DEPTH} levels deep; a study file "
                          f"nests a few (base: data: ...)")
    loader._ganft_depth = depth + 1  # type: ignore[attr-defined]
    try:
        return yaml.composer.Composer.compose_node(loader, parent, index)
    finally:
        loader._ganft_depth = depth  # type: ignore[attr-defined]


_StrictLoader.compose_node = _no_aliases  # type: ignore[method-assign]
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    """A study file's YAML data through the strict loader; every problem is one ConfigError line
    naming the file (and the line, for syntax errors, duplicate keys and aliases)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read study file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a study file: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start}); a study file is YAML text") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: YAML syntax error at {where}{problem}") from None


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    """One line per pydantic error, each naming the dotted key and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = _dotted(loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(root, loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            lines.append(f"{key}: unknown key; {hint}allowed: {', '.join(allowed)}")
        elif err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(msg if msg.startswith("grid.") or not loc else f"{key}: {msg}")
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
