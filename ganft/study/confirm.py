"""A search's confirmation: the best recipe and real only (ratio 0) on fresh seeds, each run tested
once (the study ``<name>-confirm``). It runs after the search when the study file asks for it
(``confirm:``), or by ``ganft study confirm``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from ganft.config import ConfigError
from ganft.study.run import run_study
from ganft.study.schema import CONFIRM_FIRST_SEED, ConfirmConfig, StudyConfig
from ganft.study.search import confirm_study
from ganft.study.storage import open_storage
from ganft.study.stores import Stores


def load_search(cfg: StudyConfig, stores: Stores) -> optuna.Study:
    """The Optuna study of a search that has run; a ConfigError says what to run when it is a grid
    or has not run yet."""
    if cfg.search is None:
        raise ConfigError(f"study {cfg.name} is a grid, not a search (sampler grid)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=cfg.name, storage=open_storage(stores.storage))
    except KeyError:
        raise ConfigError(f"study {cfg.name} has not run yet; run `ganft study run {cfg.name}`") from None


def confirm_seeds(cfg: StudyConfig, n: int | None = None) -> list[int]:
    """The confirmation's seeds: the file's ``confirm.seeds`` (ConfirmConfig's default without a
    ``confirm:`` block); with ``n``, the first n of them, or CONFIRM_FIRST_SEED onwards when n is
    more than they are."""
    seeds = (cfg.confirm or ConfirmConfig()).seeds
    if n is None:
        return seeds
    return list(range(CONFIRM_FIRST_SEED, CONFIRM_FIRST_SEED + n)) if n > len(seeds) else seeds[:n]


def run_confirm(cfg: StudyConfig, stores: Stores, study: optuna.Study, seeds: list[int],
                out: Callable[[str], None] = print, **run_kw: Any) -> bool:
    """Run ``<name>-confirm`` (``run_kw``: run_study's settings); its summary lines go to ``out``;
    True when every point completed."""
    try:
        confirm = confirm_study(study, cfg, seeds)
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    summary = run_study(confirm, stores, **run_kw)
    for line in summary.lines(confirm):
        out(line)
    return summary.ok


def run_then_confirm(cfg: StudyConfig, stores: Stores, out: Callable[[str], None] = print,
                     **run_kw: Any) -> bool:
    """``ganft study run``: the study, then, for a complete search whose file asks for it, its
    confirmation; summary lines go to ``out`` as each part ends. True when both completed."""
    summary = run_study(cfg, stores, **run_kw)
    for line in summary.lines(cfg):
        out(line)
    if summary.ok and cfg.search is not None and cfg.confirm is not None:
        run_kw.pop("threads", None)  # the confirmation picks its threads itself, as `study confirm` does
        return run_confirm(cfg, stores, load_search(cfg, stores), cfg.confirm.seeds, out, **run_kw)
    return summary.ok
