"""Validated configuration: YAML study files -> frozen pydantic models -> functions.

Every field name is also the Optuna parameter name and the MLflow param (dotted, e.g. ``gan.lr_d``),
so one name follows a setting everywhere. Unknown keys, wrong types, out-of-range values and
unknown variant names are errors that name the key and what is allowed; nothing downstream
re-validates.
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The dataset names are checked here (a Literal), their sizes in data.py (which knows the pools).
DatasetName = Literal["digits", "fashion-mnist", "mnist", "cifar10", "imagefolder"]
BuiltinDataset = Literal["digits", "fashion-mnist", "mnist", "cifar10"]


# Bounds that catch a typo before it becomes a week of compute or an allocation no machine has: a
# GAN or classifier of 10^6 steps of 8192 images is already far past what a study here runs.
MAX_STEPS = 1_000_000
MAX_BATCH = 8192
MAX_SAMPLES = 100_000


class ConfigError(ValueError):
    """A study file or override that cannot be used; the message names the key and what is allowed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Model):
    dataset: DatasetName = "digits"
    root: str | None = None  # a folder holding the dataset files; None: the dataset's default places
    # N, the labelled budget (stratified, chosen by (N, seed))
    train_size: int = Field(100, ge=10, le=10_000_000)
    # what every selection (checkpoint, early stopping, GAN best step, filtering, Optuna objective)
    # looks at: from-budget = a stratified val_fraction of the N images (the rest is trained on);
    # none = nothing, fixed steps and the last checkpoint; pool = a fixed set of val_size images
    # from outside the budget (the earlier protocol: labelled data beyond N, for comparison only)
    validation: Literal["from-budget", "none", "pool"] = "from-budget"
    val_fraction: float = Field(0.2, gt=0, lt=1)  # from-budget: share of each class held out
    val_size: int | None = Field(None, ge=10, le=10_000_000)  # pool only, and required there
    # imagefolder only: images are centre-cropped to a square, resized to image_size (antialiased)
    # and converted to `channels`; without root/train and root/test, a fixed test_fraction of each
    # class (by file content) is the test split; skip_unreadable skips files that do not decode
    image_size: int = Field(28, ge=8, le=256)
    channels: Literal[1, 3] = 1
    test_fraction: float = Field(0.2, gt=0, lt=1)
    skip_unreadable: bool = False
    hflip: bool = False  # imagefolder: whether a mirror image keeps its class (classic augmentation)
    # U unlabelled images from the training split outside the budget (and outside the pool protocol's
    # validation set), chosen by (N, U, seed); their labels are dropped on loading (data.py). all:
    # every such image. 0: none (a study without unlabelled data)
    unlabelled_size: int | Literal["all"] = 0

    @field_validator("unlabelled_size", mode="before")
    @classmethod
    def _count_or_all(cls, v: Any) -> Any:
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10_000_000):
            return v
        raise ValueError(f"allowed: a count of images from 0 to 10000000, or all (got {v!r})")

    @model_validator(mode="after")
    def _image_size(self) -> DataConfig:
        if self.image_size % 4:
            raise ValueError(f"data.image_size {self.image_size} cannot be built: the GAN and the default "
                             f"classifier halve it twice; allowed: multiples of 4 from 8 to 256 "
                             f"(e.g. 8, 28, 32, 64)")
        return self

    @model_validator(mode="after")
    def _protocol(self) -> DataConfig:
        if self.validation == "pool" and self.val_size is None:
            raise ValueError("data.validation pool needs data.val_size (the fixed validation set's size, "
                             "e.g. 5000 for fashion-mnist, 300 for digits)")
        if self.validation != "pool" and self.val_size is not None:
            raise ValueError(f"data.val_size applies to data.validation pool only; with "
                             f"{self.validation} the validation images come from the budget "
                             f"(data.val_fraction) or there are none")
        return self


# Named GAN recipes (README table): the settings that make one recipe differ from another. A named
# ``gan.recipe`` sets these fields; ``custom`` leaves them as written. Steps, widths and optimiser
# settings are not part of a recipe, so one study compares recipes at the same budget.
GAN_DEFAULT_RECIPE: dict[str, Any] = {"arch": "dcgan", "loss": "ns", "conditioning": "projection",
                                      "d_norm": "batch", "diffaugment": ("translation",)}
GAN_RECIPES: dict[str, dict[str, Any]] = {name: {**GAN_DEFAULT_RECIPE, **diff} for name, diff in {
    "default": {},
    "hinge-sn": {"loss": "hinge", "d_norm": "spectral"},  # SNGAN (Miyato et al., 2018)
    "wgan-gp": {"loss": "wgan-gp", "d_norm": "none"},  # Gulrajani et al., 2017: no batch norm in D
    "no-diffaugment": {"diffaugment": ()},
    "diffaugment-all": {"diffaugment": ("color", "translation", "cutout")},  # Zhao et al., 2020
    "acgan": {"conditioning": "acgan"},  # Odena et al., 2017
    "unconditional": {"conditioning": "none"},  # samples labelled by a real-subset classifier
    # the seed article's set-up, fixed: its 64x64 DCGAN stack, unconditional, no augmentation
    "seed-dcgan": {"arch": "seed-dcgan", "conditioning": "none", "diffaugment": ()},
}.items()}


class GanConfig(_Model):
    # dcgan: size-aware DCGAN (models/gan.py); seed-dcgan: the seed article's 64x64 DCGAN layer stack
    # (pytorch/examples dcgan, ngf = ndf = width), data resized to 64 for training, samples back
    arch: Literal["dcgan", "seed-dcgan"] = "dcgan"
    loss: Literal["ns", "hinge", "wgan-gp"] = "ns"  # non-saturating (BCE) | hinge | WGAN + gradient penalty
    steps: int = Field(600, ge=1, le=MAX_STEPS)  # generator optimiser steps (d_steps D steps each)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    z_dim: int = Field(64, ge=1, le=4096)
    # channels of the full-resolution D layer (G mirrors it); deeper layers double it, up to 512. 32 is
    # enough for 8x8-32x32 images from small labelled sets and is what the studies use (bench/README.md)
    width: int = Field(32, ge=4, le=512)
    lr_g: float = Field(2e-4, gt=0, le=1)
    lr_d: float = Field(2e-4, gt=0, le=1)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    # DiffAugment policies, applied in the order given to D's real and fake inputs
    diffaugment: tuple[Literal["translation", "cutout", "color"], ...] = ("translation",)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # 0 disables EMA (sampling uses the raw generator)
    recipe: Literal["custom", "default", "hinge-sn", "wgan-gp", "no-diffaugment", "diffaugment-all",
                    "acgan", "unconditional", "seed-dcgan"] = "custom"  # see GAN_RECIPES
    # projection discriminator | ACGAN auxiliary classifier | none: unconditional G and D, samples
    # pseudo-labelled by a classifier trained on the real subset (synth.min_confidence)
    conditioning: Literal["projection", "acgan", "none"] = "projection"
    # D's normalisation: batch norm (DCGAN) | spectral norm on every D layer, no batch norm | none
    d_norm: Literal["batch", "spectral", "none"] = "batch"
    d_steps: int = Field(1, ge=1, le=100)  # D steps per G step (n_critic)
    gp_weight: float = Field(10.0, ge=0)  # loss wgan-gp: lambda of the gradient penalty
    r1_gamma: float = Field(0.0, ge=0)  # R1 penalty gamma/2 * E|grad D(real)|^2 (Mescheder et al.); 0: off
    bcr_weight: float = Field(0.0, ge=0)  # balanced consistency regularisation lambda (Zhao et al.); 0: off
    acgan_weight: float = Field(1.0, ge=0)  # conditioning acgan: weight of the class cross-entropy
    # budget-validation KID every K steps, best kept; 0: the last
    eval_every: int = Field(0, ge=0, le=MAX_STEPS)
    eval_samples: int = Field(1000, ge=50, le=MAX_SAMPLES)  # generated images per validation KID
    # what the GAN learns from (gan_sources.py): budget = the budget's training images; budget+unlabelled
    # = those and the data.unlabelled_size images, pseudo-labelled by the real-subset classifier
    # (S2GAN, Lucic et al., 2019); transfer = first source_steps on transfer_source, cached, then
    # gan.steps on the budget from those weights (Wang et al., 2018), D's first freeze_d stages frozen
    # (FreezeD, Mo et al., 2020)
    train_on: Literal["budget", "budget+unlabelled", "transfer"] = "budget"
    # transfer: unlabelled = the data.unlabelled_size images (pseudo-labelled, as above); a built-in
    # dataset's training split (its own labels, resized and converted to the target's shape)
    transfer_source: Literal["unlabelled", "digits", "fashion-mnist", "mnist", "cifar10"] = "unlabelled"
    source_steps: int = Field(2000, ge=1, le=MAX_STEPS)  # transfer: G steps on the source
    freeze_d: int = Field(0, ge=0, le=8)  # transfer: D's first stages (conv + norm) kept frozen

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        name = data.get("recipe") if isinstance(data, dict) else None
        if not isinstance(name, str) or name not in GAN_RECIPES:
            return data  # custom, or a bad value that the Literal reports with the known names
        recipe = GAN_RECIPES[name]
        given = {k: _canon(data[k]) for k in recipe if k in data}
        # A config dumped from another recipe carries that recipe's full set (a grid switching
        # recipes); anything else next to a named recipe was written by hand and must agree with it.
        if given and not any(given == {k: _canon(v) for k, v in r.items()} for r in GAN_RECIPES.values()):
            clash = [f"{k} {given[k]!r}" for k in given if given[k] != _canon(recipe[k])]
            if clash:
                raise ValueError(f"recipe {name} sets {', '.join(recipe)}; it conflicts with "
                                 f"{', '.join(clash)} (use recipe custom to choose them yourself)")
        return {**data, **recipe}

    @property
    def learns_unlabelled(self) -> bool:
        """Whether the GAN learns from the unlabelled images (with the real-subset classifier's labels)."""
        return self.train_on == "budget+unlabelled" or (self.train_on == "transfer"
                                                         and self.transfer_source == "unlabelled")

    @model_validator(mode="after")
    def _consistent(self) -> GanConfig:
        if len(set(self.diffaugment)) != len(self.diffaugment):
            raise ValueError(f"diffaugment: a policy is repeated in {list(self.diffaugment)}")
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            raise ValueError("loss wgan-gp needs d_norm none or spectral: batch norm mixes the images of "
                             "a batch, which breaks the per-image gradient penalty (Gulrajani et al.)")
        return self


def _canon(value: Any) -> Any:
    # YAML gives lists where the config holds tuples
    return tuple(value) if isinstance(value, list) else value


class SynthConfig(_Model):
    ratio: float = Field(0.0, ge=0, le=100)  # synthetic images = round(ratio * N), class balanced
    # how the classifier uses them (finetune.py): union = batches drawn uniformly from real ∪ synthetic;
    # weighted = a synthetic image counts `weight` times a real one; pretrain-then-finetune = the first
    # classifier.synth_fraction of the steps on synthetic images only, the rest on real images only
    mix: Literal["union", "weighted", "pretrain-then-finetune"] = "union"
    weight: float = Field(1.0, ge=0, le=100)  # mix weighted only: 0 is real-only, 1 is union
    # keep a generated image only if a classifier trained on the real subset gives its label at least
    # this probability (its conditioning label; for gan.conditioning none, its own argmax, i.e. the
    # pseudo-label); 0 keeps every image (conditional) or every pseudo-label (unconditional)
    min_confidence: float = Field(0.0, ge=0, lt=1)
    # gan: generated images; self-training: real data.unlabelled_size images labelled by the
    # real-subset classifier, the most confident ones of each class at or above min_confidence,
    # round(ratio * N) of them class balanced, used exactly as synthetic images (no GAN trained)
    source: Literal["gan", "self-training"] = "gan"
    # mix union only: this share of every batch (round(real_fraction * batch_size) images) is drawn
    # from the real images and the rest from the synthetic ones, whatever the ratio, so every ratio
    # presents the real images equally often; None: batches drawn uniformly from real ∪ synthetic
    real_fraction: float | None = Field(None, gt=0, lt=1)


class QualityConfig(_Model):
    # GAN quality in a domain feature space (quality.py), logged under quality/: FCD, KID,
    # precision/recall/density/coverage, per-class FCD and CAS; costs a CAS classifier training
    enabled: bool = False
    # generated images scored against the real test split
    num_samples: int = Field(2000, ge=100, le=MAX_SAMPLES)
    k: int = Field(5, ge=1, le=100)  # nearest neighbours for precision/recall/density/coverage (Naeem et al.)


class ClassifierConfig(_Model):
    # bn-cnn: two 3x3 conv + batch norm + max-pool stages (the strong default, bench/baseline.py);
    # seed-cnn: the seed article's discriminator-shaped CNN, fixed; resnet18: torchvision's, small stem
    arch: Literal["bn-cnn", "seed-cnn", "resnet18"] = "bn-cnn"
    # scratch | discriminator (the trained GAN's D trunk, new head) | pretrained (a `ganft pretrain`
    # checkpoint from pretrained_source) | torchvision (ImageNet resnet18 from the local torch hub cache)
    init: Literal["scratch", "discriminator", "pretrained", "torchvision"] = "scratch"
    # init pretrained: source dataset, resized to the target size
    pretrained_source: BuiltinDataset = "digits"
    # init pretrained: optimiser steps of the source training
    pretrain_steps: int = Field(2000, ge=1, le=MAX_STEPS)
    # full | linear-probe (only the head trains; trunk frozen, BatchNorm statistics included) |
    # head-then-full (head alone for head_fraction of the fine-tuning steps, then all at lr * full_lr_scale)
    freeze: Literal["full", "linear-probe", "head-then-full"] = "full"
    head_fraction: float = Field(0.2, gt=0, lt=1)
    full_lr_scale: float = Field(0.1, gt=0, le=1)
    synth_fraction: float = Field(0.5, gt=0, lt=1)  # synth.mix pretrain-then-finetune: share on synthetic
    # optimiser steps, identical whatever the ratio (equal budget)
    steps: int = Field(400, ge=1, le=MAX_STEPS)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    lr: float = Field(1e-3, gt=0, le=1)
    schedule: Literal["constant", "cosine", "step"] = "cosine"  # per phase; step: x step_gamma at 1/2, 3/4
    step_gamma: float = Field(0.1, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)  # AdamW's decoupled weight decay
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: Literal["none", "classic"] = "none"  # classic: crop+pad, small affine, h-flip if label-safe
    width: int = Field(32, ge=4, le=512)  # first-stage channels of bn-cnn and seed-cnn (resnet18: fixed)
    # validation accuracy every K steps; the best checkpoint is kept
    eval_every: int = Field(50, ge=1, le=MAX_STEPS)
    # early stop after this many evaluations without a better val acc; 0: off
    patience: int = Field(0, ge=0, le=MAX_STEPS)


class TrialConfig(_Model):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    data: DataConfig = DataConfig()
    gan: GanConfig = GanConfig()
    synth: SynthConfig = SynthConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    quality: QualityConfig = QualityConfig()

    @model_validator(mode="after")
    def _classifier_recipe_fits(self) -> TrialConfig:
        check_classifier_recipe(self)
        check_unlabelled(self)
        return self


def split_steps(total: int, fraction: float) -> tuple[int, int]:
    """(first, rest) with first = round(total * fraction): the exact phase lengths of
    pretrain-then-finetune and head-then-full, which together spend exactly ``total`` steps."""
    first = round(total * fraction)
    return first, total - first


def check_unlabelled(cfg: TrialConfig) -> None:
    """Rules that join data.unlabelled_size to the GAN and synthetic-set sections."""
    needs = [(f"gan.train_on {cfg.gan.train_on}", cfg.gan.train_on == "budget+unlabelled"),
             ("gan.transfer_source unlabelled", cfg.gan.train_on == "transfer"
              and cfg.gan.transfer_source == "unlabelled"),
             ("synth.source self-training", cfg.synth.source == "self-training")]
    for what, applies in needs:
        if applies and cfg.data.unlabelled_size == 0:
            raise ValueError(f"{what} needs unlabelled images: set data.unlabelled_size (a count, or all)")
    if cfg.gan.train_on == "transfer" and cfg.gan.transfer_source == cfg.data.dataset:
        raise ValueError(f"gan.transfer_source must differ from data.dataset ({cfg.data.dataset}): "
                         f"its whole labelled training split is labels the N-image setting does not "
                         f"have; use transfer_source unlabelled for its images without labels")
    if cfg.gan.freeze_d and cfg.gan.train_on != "transfer":
        raise ValueError(f"gan.freeze_d {cfg.gan.freeze_d} applies to gan.train_on transfer only")


def check_classifier_recipe(cfg: TrialConfig) -> None:
    """Rules that join the classifier to the GAN, data and mix sections; the error names both keys."""
    c = cfg.classifier
    if cfg.data.validation == "none":
        for key, value in (("classifier.patience", c.patience), ("gan.eval_every", cfg.gan.eval_every)):
            if value:
                raise ValueError(f"{key} {value} selects on validation data, and data.validation none "
                                 f"has none: set it to 0 or use data.validation from-budget")
    if cfg.synth.real_fraction is not None:
        if cfg.synth.mix != "union":
            raise ValueError(f"synth.real_fraction needs synth.mix union (it fixes the share of real "
                             f"images in each mixed batch), not {cfg.synth.mix}")
        real = round(cfg.synth.real_fraction * c.batch_size)
        if not 1 <= real < c.batch_size:
            raise ValueError(f"synth.real_fraction {cfg.synth.real_fraction} of classifier.batch_size "
                             f"{c.batch_size} leaves {real} real images per batch; it needs at least one "
                             f"real and one synthetic image")
    if c.init == "discriminator" and c.arch != "seed-cnn":
        raise ValueError(f"classifier.init discriminator needs classifier.arch seed-cnn (the "
                         f"discriminator's shape), not {c.arch}")
    if c.init == "discriminator" and cfg.gan.arch != "dcgan":
        raise ValueError(f"classifier.init discriminator needs gan.arch dcgan: {cfg.gan.arch}'s "
                         f"discriminator works at 64x64, the classifier at the data's size")
    if c.init == "discriminator" and c.width != cfg.gan.width:
        raise ValueError(f"classifier.width ({c.width}) must equal gan.width ({cfg.gan.width}) when "
                         f"classifier.init is discriminator: the classifier's trunk is the discriminator's")
    if c.init == "torchvision" and c.arch != "resnet18":
        raise ValueError(f"classifier.init torchvision needs classifier.arch resnet18 (ImageNet "
                         f"weights), not {c.arch}")
    if c.init == "pretrained" and c.pretrained_source == cfg.data.dataset:
        raise ValueError(f"classifier.pretrained_source must differ from data.dataset "
                         f"({cfg.data.dataset}): pretraining on the target's whole labelled pool would "
                         f"use labels the N-image setting does not have")
    last = c.steps  # steps of the phase on real images that freezing applies to
    if cfg.synth.mix == "pretrain-then-finetune":
        first, last = split_steps(c.steps, c.synth_fraction)
        if min(first, last) < 1:
            raise ValueError(f"classifier.synth_fraction {c.synth_fraction} of classifier.steps "
                             f"{c.steps} leaves a phase of 0 steps for synth.mix pretrain-then-finetune")
    if c.freeze == "head-then-full":
        for total in {c.steps, last}:  # ratio 0 has no synthetic phase: all steps fine-tune
            if min(split_steps(total, c.head_fraction)) < 1:
                raise ValueError(f"classifier.head_fraction {c.head_fraction} of {total} steps leaves "
                                 f"a phase of 0 steps for classifier.freeze head-then-full")


GridValue = int | float | str | bool | None | list[Any]
STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # also a folder name under reports/: no path separators
RESERVED_NAMES = {"default": "MLflow's own experiment 0, whose artifacts go to ./mlruns of wherever it was "
                             "created", "ganft-cache": "the experiment of the shared GAN cache"}


def check_study_name(name: str) -> str:
    """A study name as the command line gets it (``ganft report NAME``): the study files' rule."""
    if not re.fullmatch(STUDY_NAME, name) or len(name) > 64 or name.lower() in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is not a study name: letters, digits, '_', '.', '-' (not first), at "
                          f"most 64 characters, not {' or '.join(RESERVED_NAMES)}")
    return name


class SearchParam(_Model):
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


class SearchConfig(_Model):
    n_trials: int = Field(ge=1, le=100_000)  # complete (or pruned) trials to reach, over every run
    # budget data only, never the test split: val/acc = the kept checkpoint's budget-validation
    # accuracy; paired-gain = that minus the real-only run's at the same (N, seed, classifier config)
    objective: Literal["val/acc", "paired-gain"] = "paired-gain"
    repeats: int = Field(3, ge=1, le=20)  # seeds seed..seed+repeats-1 per trial; the objective is their mean
    space: dict[str, SearchParam]


class ConfirmConfig(_Model):
    seeds: list[int] = Field(default_factory=lambda: [1000, 1001, 1002, 1003, 1004], min_length=2)


SAMPLERS = ("grid", "tpe", "random", "cmaes")


class StudyConfig(_Model):
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
                if repr(_canon(value)) not in {repr(_canon(v)) for v in seen}:
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
                ident = repr([(k, _canon(point[k])) for k in keys])
                if ident not in seen:
                    seen.add(ident)
                    points.append(point)
        return points

    def trial_config(self, point: dict[str, Any]) -> TrialConfig:
        return with_overrides(self.base, point)


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


def field_annotation(key: str, model: type[BaseModel] = TrialConfig) -> Any:
    """The type annotation of a dotted config key, e.g. ``float`` for ``gan.lr_d``."""
    *parents, leaf = key.split(".")
    for p in parents:
        model = model.model_fields[p].annotation
    return model.model_fields[leaf].annotation


def check_device(name: str) -> str:
    """A --device value's form (no torch needed): auto, cpu, mps, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"--device {name}: unknown device; allowed: auto, cpu, cuda, cuda:N, mps")
    return name


def describe_keys() -> list[str]:
    """``ganft study keys``: one line per dotted key: its type and default."""
    base = flatten(TrialConfig())
    lines = []
    for key in config_keys():
        ann = field_annotation(key)
        kind = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        lines.append(f"{key:28s} {kind:40.40s} default {base[key]!r}")
    return lines


def unknown_key(key: str) -> str:
    """The message for a dotted key that is not a config key: the closest ones, and where the list is."""
    close = difflib.get_close_matches(key, config_keys(), n=3, cutoff=0.6)
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


def _no_aliases(loader: _StrictLoader, parent: Any, index: Any) -> Any:
    """A YAML alias can expand exponentially (a few hundred bytes become gigabytes): refused."""
    if loader.check_event(yaml.events.AliasEvent):
        event = loader.peek_event()
        raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed "
                          f"in a study file; write the value out")
    return yaml.composer.Composer.compose_node(loader, parent, index)


_StrictLoader.compose_node = _no_aliases  # type: ignore[method-assign]
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
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read study file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a study file: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start}); a study file is YAML text") from None
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
