"""Optuna searches (``sampler: tpe | random | cmaes``): sample a point of the ``search.space``,
score it on budget data only, and stop hopeless trials.

One trial is ``search.repeats`` runs of the sampled config, with seeds ``seed .. seed+repeats-1``
(each its own labelled budget), each an MLflow child run named ``t<trial>-r<repeat>``. The
objective is the mean over the repeats of the budget-validation accuracy (``val/acc``), or of its
paired gain over the real-only run of the same (N, seed, classifier config) (``paired-gain``),
whose result is cached (``.ganft-cache/baseline/``) so a search pays for it once per (N, seed).
The test split is never an objective. The pruner sees every validation accuracy as it comes;
a pruned trial is PRUNED in Optuna and its runs end KILLED with the tag ``ganft.pruned``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from typing import Any

import optuna

from ganft.config import TrialConfig
from ganft.keys import field_annotation, flatten, with_overrides
from ganft.study import workers
from ganft.study.grid import encode
from ganft.study.mlflow_store import PARENT_TAG, MlflowStore
from ganft.study.schema import SearchParam, StudyConfig
from ganft.study.stores import Stores

log = logging.getLogger(__name__)
BASELINE_CODE_NOTE = "the real-only baseline of a paired-gain search"


def make_sampler(cfg: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler; ``constant_liar`` keeps parallel TPE workers from sampling one point."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed)}[cfg.sampler]()


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    return {"none": optuna.pruners.NopPruner, "median": lambda: optuna.pruners.MedianPruner(n_warmup_steps=1),
            "successive-halving": optuna.pruners.SuccessiveHalvingPruner}[cfg.pruner]()


def suggest_param(trial: optuna.Trial, key: str, p: SearchParam) -> Any:
    if p.choices is not None:  # stored as grids store them: plain values, lists as JSON text
        chosen = trial.suggest_categorical(key, [encode(c) for c in p.choices])
        return p.choices[[encode(c) for c in p.choices].index(chosen)]
    if field_annotation(key) is int:
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)


def sample_point(trial: optuna.Trial, cfg: StudyConfig) -> dict[str, Any]:
    """The trial's point: each key of the space, in the file's order, sampled only where its
    ``when`` conditions hold (on keys sampled before it, else on the base config)."""
    assert cfg.search is not None
    base = flatten(cfg.base)
    point: dict[str, Any] = {}
    for key, p in cfg.search.space.items():
        if all(point.get(k, base.get(k)) == v for k, v in p.when.items()):
            point[key] = suggest_param(trial, key, p)
    return point


# Bump when a real-only run of the same config gives another objective value (data.py's budget,
# pipeline.run_trial, objective_value); the classifier's training has finetune.CLASSIFIER_VERSION
# and a discriminator start its GAN's gan_train.GAN_VERSION, both part of the key too.
BASELINE_VERSION = 1


def baseline_key(real_only: TrialConfig) -> str:
    """The stored baseline's key: what determines a real-only run's objective, and the versions."""
    from ganft.finetune import CLASSIFIER_VERSION
    from ganft.gan_train import GAN_VERSION
    from ganft.store import content_key

    uses_gan = real_only.classifier.init == "discriminator"
    return content_key({"data": real_only.data.model_dump(mode="json"), "seed": real_only.seed,
                        "classifier": real_only.classifier.model_dump(mode="json"),
                        "gan": real_only.gan.model_dump(mode="json") if uses_gan else None,
                        "version": [BASELINE_VERSION, CLASSIFIER_VERSION, GAN_VERSION if uses_gan else None]})


def baseline_val_acc(cfg: TrialConfig, run_trial: Callable[..., dict[str, float]], device: Any,
                     cache: Any, gan_cache: Any = None) -> tuple[float, bool]:
    """Budget-validation accuracy of the real-only run of ``cfg``'s (N, seed, classifier config):
    (value, whether it came from the cache). A real-only run that starts from the GAN's
    discriminator gets the GAN through ``gan_cache``, so the trial after it does not train it again."""
    from ganft.store import load_or_make
    from ganft.study.objective import objective_value

    real_only = with_overrides(cfg, {"synth.ratio": 0.0})

    def run() -> dict[str, float]:
        return {"val_acc": float(objective_value(run_trial(real_only, device=device, cache=gan_cache)))}

    entry, hit = load_or_make(cache, baseline_key(real_only), run)
    return float(entry["val_acc"]), hit


def make_search_objective(cfg: StudyConfig, store: MlflowStore, stores: Stores, parent_id: str,
                          device_name: str) -> Callable[[optuna.Trial], float]:
    """The objective of a search trial: repeats of the sampled config, scored on budget data."""
    import torch

    from ganft.pipeline import run_trial
    from ganft.redact import redact
    from ganft.runtime import pick_device
    from ganft.store import CheckpointCache
    from ganft.study.objective import objective_value, trial_run

    assert cfg.search is not None
    search = cfg.search
    device = pick_device(device_name)
    gan_cache = stores.gan_cache()
    baselines = CheckpointCache(stores.root / ".ganft-cache" / "baseline")

    def objective(trial: optuna.Trial) -> float:
        me = workers.identity()  # run.claim_trial has named this worker on the trial
        trial.set_user_attr("ganft.parent_run_id", parent_id)
        point = sample_point(trial, cfg)
        values, tests = [], []
        for r in range(search.repeats):
            seeded = with_overrides(cfg.trial_config(point), {"seed": cfg.base.seed + r})
            base = 0.0
            if search.objective == "paired-gain":
                base, hit = baseline_val_acc(seeded, run_trial, device, baselines, gan_cache)
                trial.set_user_attr(f"ganft.baseline_hit_{r}", hit)
            offset = r * (seeded.classifier.steps + 1)

            def on_eval(step: int, acc: float, base: float = base, offset: int = offset, r: int = r) -> None:
                trial.report(acc - base, offset + step)  # the pruner compares trials step by step
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at repeat {r}, step {step}")

            tags = {PARENT_TAG: "trial", "ganft.study": cfg.name, "ganft.grid_point": f"t{trial.number}-r{r}",
                    "ganft.trial_number": trial.number, "ganft.repeat": r,
                    "ganft.storage": redact(stores.storage), "ganft.device": str(device),
                    "ganft.threads": torch.get_num_threads(), **{f"ganft.{k}": v for k, v in me.items()},
                    **{f"search.{k}": encode(v) for k, v in point.items()}}
            with trial_run(trial, store, f"t{trial.number}-r{r}", tags, parent_id) as run_id:
                metrics = run_trial(seeded, device=device, tracker=store.tracker(run_id), cache=gan_cache,
                                    on_eval=on_eval)
                if search.objective == "paired-gain":
                    store.tracker(run_id).log_metrics({"search/baseline_val_acc": base})
            values.append(objective_value(metrics) - base)
            tests.append(metrics["test/acc"])
        trial.set_user_attr("ganft.repeat_values", values)
        trial.set_user_attr("test_acc", statistics.fmean(tests))  # reported, never optimised
        return statistics.fmean(values)

    return objective


# --------------------------------------------------------------------------- after a search


def best_point(study: optuna.Study, cfg: StudyConfig) -> tuple[optuna.trial.FrozenTrial, dict[str, Any]]:
    """The best COMPLETE trial and its point with the values as the study file wrote them."""
    assert cfg.search is not None
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise LookupError(f"study {cfg.name} has no complete trial yet; run `ganft study run {cfg.name}`")
    best = max(done, key=lambda t: t.value)
    point = {}
    for key, value in best.params.items():
        p = cfg.search.space[key]
        if p.choices is not None:
            value = p.choices[[encode(c) for c in p.choices].index(value)]
        point[key] = value
    return best, point


def best_yaml(study: optuna.Study, cfg: StudyConfig) -> str:
    """``ganft study best``: the best trial's whole config as a ``base:`` block for a study file."""
    import yaml

    best, point = best_point(study, cfg)
    base = cfg.trial_config(point).model_dump(mode="json", exclude={"seed"})
    repeats = best.user_attrs.get("ganft.repeat_values", [])
    head = (f"# study {cfg.name}: best of {len(study.trials)} trials, trial {best.number}, objective "
            f"{cfg.search.objective} {best.value:+.4f} (budget validation, mean of {len(repeats)} repeat(s); "
            f"the test split did not choose)\n")
    return head + yaml.safe_dump({"base": base}, sort_keys=False, default_flow_style=None, width=100)


def confirm_study(study: optuna.Study, cfg: StudyConfig, seeds: list[int]) -> StudyConfig:
    """The confirmation of a search: a grid over the best recipe at its ratio and real only (ratio
    0), on fresh seeds, evaluated on the test split once per run like every grid."""
    best, point = best_point(study, cfg)
    base = cfg.trial_config(point)
    ratio = base.synth.ratio
    if ratio == 0:
        raise LookupError(f"the best trial of {cfg.name} is real only (synth.ratio 0): nothing to confirm")
    return StudyConfig(name=f"{cfg.name}-confirm", base=base, description=f"the best trial ({best.number}) "
                       f"of {cfg.name} against real only, on fresh seeds",
                       grid={"synth.ratio": [0.0, ratio], "seed": list(seeds)})
