"""The trial schema: what one trial's stages read, as frozen pydantic models, and the rules that
join its sections (``TrialConfig``: data, gan, synth, classifier, quality).

Every field name is also the Optuna parameter name and the MLflow param (dotted, e.g. ``gan.lr_d``),
so one name follows a setting everywhere. Unknown keys, wrong types, out-of-range values and
unknown variant names are errors that name the key and what is allowed; nothing downstream
re-validates. Study files (grids, searches) are in study/schema.py; dotted keys and the strict YAML
reader in keys.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The dataset names are checked here (a Literal), their sizes in data.py (which knows the pools).
DatasetName = Literal["digits", "fashion-mnist", "mnist", "cifar10", "imagefolder"]
BuiltinDataset = Literal["digits", "fashion-mnist", "mnist", "cifar10"]
# Whether a left-right mirror image keeps its class. Digits do not (a mirrored 2, 3, 7 is not a
# digit); clothes do. A dataset added to ganft must say which (a test checks every dataset name).
# An image folder says so itself (data.hflip, off by default).
HFLIP_PRESERVES_LABEL = {"digits": False, "mnist": False, "fashion-mnist": True, "cifar10": True}


# Bounds that catch a typo before it becomes a week of compute or an allocation no machine has: a
# GAN or classifier of 10^6 steps of 8192 images is already far past what a study here runs.
MAX_STEPS = 1_000_000
MAX_BATCH = 8192
MAX_SAMPLES = 100_000


class ConfigError(ValueError):
    """A study file or override that cannot be used; the message names the key and what is allowed."""


class StrictModel(BaseModel):
    """A config model: unknown keys are errors, and a validated config never changes."""

    # each field's docstring (the line after it) is its description: `ganft study keys` prints it
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DataConfig(StrictModel):
    dataset: DatasetName = "digits"
    """Where the images come from (image folders: imagefolder with data.root)."""
    root: str | None = None
    """A folder holding the dataset files; null: the dataset's default places."""
    # N, the labelled budget (stratified, chosen by (N, seed))
    train_size: int = Field(100, ge=10, le=10_000_000)
    """N, the labelled budget: a stratified subset chosen by (N, seed)."""
    # what every selection (checkpoint, early stopping, GAN best step, filtering, Optuna objective)
    # looks at: none (the default) = nothing, all N trained on for fixed steps, the last checkpoint
    # (selection on a few validation images adds more noise than the effects a grid measures);
    # from-budget = a stratified val_fraction of the N images (the rest is trained on); pool = a
    # fixed set of val_size images from outside the budget (labelled data beyond N, for comparison
    # only); kfold = no selection inside the trial (all N trained on, fixed steps, last weights) plus
    # repeated stratified k-fold cross-validation inside the budget, every fold its own GAN and
    # classifier, scored on its held-out fold by a continuous score (cv/true_class_prob, cv/log_loss):
    # what a search or a report chooses on; the test metrics are the refit's on all N
    validation: Literal["from-budget", "none", "pool", "kfold"] = "none"
    """What selections look at: none (train on all N, last weights), from-budget, pool or kfold."""
    val_fraction: float = Field(0.2, gt=0, lt=1)
    """from-budget: the share of each class of the N images held out to validate."""
    val_size: int | None = Field(None, ge=10, le=10_000_000)
    """pool only (and required there): validation images from outside the budget."""
    folds: int = Field(5, ge=2, le=50)
    """kfold only: folds of the budget (every class needs this many images)."""
    fold_repeats: int = Field(1, ge=1, le=20)
    """kfold only: repeats of the k-fold split with other fold assignments."""
    # imagefolder only: images are centre-cropped to a square, resized to image_size (antialiased)
    # and converted to `channels`; without root/train and root/test, a fixed test_fraction of each
    # class (by file content) is the test split; skip_unreadable skips files that do not decode
    image_size: int = Field(28, ge=8, le=256)
    """imagefolder only: side length images are resized to (built-in datasets keep theirs)."""
    channels: Literal[1, 3] = 1
    """imagefolder only: 1 (grey) or 3 (RGB) channels."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """imagefolder without root/test: the share of each class held out as the test split."""
    skip_unreadable: bool = False
    """imagefolder only: skip files that do not decode instead of stopping."""
    hflip: bool = False
    """imagefolder only: whether a mirror image keeps its class (augmentation may flip)."""
    # U unlabelled images from the training split outside the budget (and outside the pool protocol's
    # validation set), chosen by (N, U, seed); their labels are dropped on loading (data.py). all:
    # every such image. 0: none (a study without unlabelled data)
    unlabelled_size: int | Literal["all"] = 0
    """U images from outside the budget with their labels dropped; all: every such image."""

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
        if self.validation != "kfold" and (self.folds, self.fold_repeats) != (5, 1):
            raise ValueError(f"data.folds and data.fold_repeats apply to data.validation kfold only, not "
                             f"{self.validation}")
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
    # the diffusion family in the GAN's place (diffusion section); no discriminator, no DiffAugment
    "ddpm": {"arch": "ddpm", "diffaugment": ()},
}.items()}


class GanConfig(StrictModel):
    # dcgan: size-aware DCGAN (models/gan.py); seed-dcgan: the seed article's 64x64 DCGAN layer stack
    # (pytorch/examples dcgan, ngf = ndf = width), data resized to 64 for training, samples back
    # ddpm: not a GAN but the diffusion family in its place (diffusion.py; its settings in the
    # diffusion section; gan.steps, batch_size, conditioning, train_on, eval_every apply to it too)
    arch: Literal["dcgan", "seed-dcgan", "ddpm"] = "dcgan"
    """dcgan (size-aware), seed-dcgan (the seed article's 64x64 stack) or ddpm (a diffusion model)."""
    loss: Literal["ns", "hinge", "wgan-gp"] = "ns"
    """Adversarial loss: non-saturating, hinge or WGAN with gradient penalty."""
    steps: int = Field(600, ge=1, le=MAX_STEPS)
    """Generator optimiser steps (d_steps discriminator steps each)."""
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    """Images per GAN step."""
    z_dim: int = Field(64, ge=1, le=4096)
    """Length of the generator's noise vector."""
    # channels of the full-resolution D layer (G mirrors it); deeper layers double it, up to 512. 32 is
    # enough for 8x8-32x32 images from small labelled sets and is what the studies use (bench/README.md)
    width: int = Field(32, ge=4, le=512)
    """Channels of the discriminator's full-resolution layer (G mirrors it)."""
    lr_g: float = Field(2e-4, gt=0, le=1)
    """Generator learning rate (Adam)."""
    lr_d: float = Field(2e-4, gt=0, le=1)
    """Discriminator learning rate (Adam)."""
    beta1: float = Field(0.5, ge=0, lt=1)
    """Adam beta1 of both networks."""
    beta2: float = Field(0.999, ge=0, lt=1)
    """Adam beta2 of both networks."""
    # DiffAugment policies, applied in the order given to D's real and fake inputs
    diffaugment: tuple[Literal["translation", "cutout", "color"], ...] = ("translation",)
    """DiffAugment policies applied to D's real and fake inputs, in order."""
    ema_decay: float = Field(0.999, ge=0, lt=1)
    """EMA of the generator's weights used for sampling; 0: the raw generator."""
    recipe: Literal["custom", "default", "hinge-sn", "wgan-gp", "no-diffaugment", "diffaugment-all",
                    "acgan", "unconditional", "seed-dcgan", "ddpm"] = "custom"  # see GAN_RECIPES
    """A named GAN recipe that sets arch, loss, conditioning, d_norm and diffaugment; custom: as written."""
    # projection discriminator | ACGAN auxiliary classifier | none: unconditional G and D, samples
    # pseudo-labelled by a classifier trained on the real subset (synth.min_confidence)
    conditioning: Literal["projection", "acgan", "none"] = "projection"
    """Projection discriminator, ACGAN classifier, or none (samples pseudo-labelled)."""
    # D's normalisation: batch norm (DCGAN) | spectral norm on every D layer, no batch norm | none
    d_norm: Literal["batch", "spectral", "none"] = "batch"
    """The discriminator's normalisation: batch, spectral or none."""
    d_steps: int = Field(1, ge=1, le=100)
    """Discriminator steps per generator step (n_critic)."""
    gp_weight: float = Field(10.0, ge=0)
    """loss wgan-gp: weight of the gradient penalty."""
    r1_gamma: float = Field(0.0, ge=0)
    """R1 penalty gamma/2 * E|grad D(real)|^2 (Mescheder et al.); 0: off."""
    bcr_weight: float = Field(0.0, ge=0)
    """Balanced consistency regularisation weight (Zhao et al.); 0: off."""
    acgan_weight: float = Field(1.0, ge=0)
    """conditioning acgan: weight of the class cross-entropy."""
    # budget-validation KID every K steps, best kept; 0: the last
    eval_every: int = Field(0, ge=0, le=MAX_STEPS)
    """Budget-validation KID every K steps and the best step kept; 0: the last step."""
    eval_samples: int = Field(1000, ge=50, le=MAX_SAMPLES)
    """Generated images per validation KID (and per point of the curve_every curve)."""
    # a convergence curve, never a choice: KID of eval_samples generated images against the budget's
    # training images in the real-subset classifier's features (gan/budget_kid); not part of the
    # GAN's cache key (it does not change the weights), so a GAN from the store has no curve
    curve_every: int = Field(0, ge=0, le=MAX_STEPS)
    """Every K steps, KID against the budget's training images, logged as a curve; 0: off."""
    # what the GAN learns from (trial_gan.py): budget = the budget's training images; budget+unlabelled
    # = those and the data.unlabelled_size images, pseudo-labelled by the real-subset classifier
    # (S2GAN, Lucic et al., 2019); transfer = first source_steps on transfer_source, cached, then
    # gan.steps on the budget from those weights (Wang et al., 2018), D's first freeze_d stages frozen
    # (FreezeD, Mo et al., 2020)
    train_on: Literal["budget", "budget+unlabelled", "transfer"] = "budget"
    """What the GAN learns from: budget, budget+unlabelled (pseudo-labelled) or transfer."""
    # a conditional GAN learns only the unlabelled images whose pseudo-label the real-subset
    # classifier gives at least this probability (an unconditional one uses no labels: all of them)
    pseudo_label_min_confidence: float = Field(0.0, ge=0, lt=1)
    """Pseudo-labelled images a conditional GAN learns from need this labeller probability; 0: all."""
    # transfer: unlabelled = the data.unlabelled_size images (pseudo-labelled, as above); a built-in
    # dataset's training split (its own labels, resized and converted to the target's shape)
    transfer_source: Literal["unlabelled", "digits", "fashion-mnist", "mnist", "cifar10"] = "unlabelled"
    """train_on transfer: the source images (unlabelled, or a built-in dataset)."""
    source_steps: int = Field(2000, ge=1, le=MAX_STEPS)
    """train_on transfer: generator steps on the source before the budget."""
    freeze_d: int = Field(0, ge=0, le=8)
    """train_on transfer: the discriminator's first stages (conv + norm) kept frozen (FreezeD)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        name = data.get("recipe") if isinstance(data, dict) else None
        if not isinstance(name, str) or name not in GAN_RECIPES:
            return data  # custom, or a bad value that the Literal reports with the known names
        recipe = GAN_RECIPES[name]
        given = {k: canon(data[k]) for k in recipe if k in data}
        # A config dumped from another recipe carries that recipe's full set (a grid switching
        # recipes); anything else next to a named recipe was written by hand and must agree with it.
        if given and not any(given == {k: canon(v) for k, v in r.items()} for r in GAN_RECIPES.values()):
            clash = [f"{k} {given[k]!r}" for k in given if given[k] != canon(recipe[k])]
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


def canon(value: Any) -> Any:
    """A value as the config holds it: YAML gives lists where the config holds tuples."""
    return tuple(value) if isinstance(value, list) else value


class SynthConfig(StrictModel):
    ratio: float = Field(0.0, ge=0, le=100)
    """Added images per real image: round(ratio x N) of them, class balanced."""
    # how the classifier uses them (finetune.py): union = batches drawn uniformly from real ∪ synthetic;
    # weighted = a synthetic image counts `weight` times a real one; pretrain-then-finetune = the first
    # classifier.synth_fraction of the steps on synthetic images only, the rest on real images only
    mix: Literal["union", "weighted", "pretrain-then-finetune"] = "union"
    """How added images join training: union, weighted or pretrain-then-finetune."""
    weight: float = Field(1.0, ge=0, le=100)
    """mix weighted only: an added image counts this many times a real one (0: real only, 1: union)."""
    # keep a generated image only if a classifier trained on the real subset gives its label at least
    # this probability (its conditioning label; for gan.conditioning none, its own argmax, i.e. the
    # pseudo-label); 0 keeps every image (conditional) or every pseudo-label (unconditional)
    min_confidence: float = Field(0.0, ge=0, lt=1)
    """Keep an added image only if the real-subset classifier gives its label this probability."""
    # gan: generated images; self-training: real data.unlabelled_size images labelled by the
    # real-subset classifier, the most confident ones of each class at or above min_confidence,
    # round(ratio * N) of them class balanced, used exactly as synthetic images (no GAN trained).
    # Controls (labels a user would not have; every report marks them): oracle = round(ratio * N)
    # class-balanced real *labelled* images from outside the budget, its validation images and the
    # unlabelled pool, mixed exactly as generated ones (a perfect generator); placebo = real only
    # again with another data-order seed (an A/A test; needs ratio 0)
    # fixmatch: no images added (ratio 0); the classifier trains by FixMatch on the budget and the
    # data.unlabelled_size images (the fixmatch section)
    # ssgan: no images added (ratio 0); the classifier is the discriminator of a semi-supervised GAN
    # trained on the budget, the data.unlabelled_size images and its generator's samples (the ssgan section)
    source: Literal["gan", "self-training", "fixmatch", "ssgan", "oracle", "placebo"] = "gan"
    """Where added images come from: gan, self-training, fixmatch, ssgan, or the controls oracle, placebo."""
    # self-training only: rounds of pseudo-labelling; round 1's teacher is the real-subset labeller,
    # each later round's is the student of the round before (trained on the budget and its
    # pseudo-labelled images, with classifier.augment as its noise); the last student is the result
    rounds: int = Field(1, ge=1, le=10)
    """self-training only: rounds of pseudo-labelling, each student labelling the next round."""
    # mix union only: this share of every batch (round(real_fraction * batch_size) images) is drawn
    # from the real images and the rest from the synthetic ones, whatever the ratio, so every ratio
    # presents the real images equally often; None: batches drawn uniformly from real ∪ synthetic
    real_fraction: float | None = Field(None, gt=0, lt=1)
    """mix union only: this share of every batch is real images; null: drawn uniformly."""


class QualityConfig(StrictModel):
    # GAN quality in a domain feature space (quality.py), logged under quality/: FCD, KID,
    # precision/recall/density/coverage, per-class FCD and CAS; costs a CAS classifier training
    enabled: bool = False
    """Score the generator (FCD, KID, precision/recall/density/coverage, CAS)."""
    # generated images scored against the real test split
    num_samples: int = Field(2000, ge=100, le=MAX_SAMPLES)
    """Generated images scored against the test split."""
    k: int = Field(5, ge=1, le=100)
    """Nearest neighbours for precision/recall/density/coverage (Naeem et al.)."""
    # a sample is a copy when nearer its nearest same-class budget image than this percentile of the
    # same distance for unseen real images (the test split): a non-copying generator scores about it
    copy_percentile: float = Field(5.0, gt=0, lt=50)
    """Percentile of unseen real images' nearest-training distances below which a sample is a copy."""


class ClassifierConfig(StrictModel):
    # bn-cnn: two 3x3 conv + batch norm + max-pool stages (the strong default, bench/baseline.py);
    # seed-cnn: the seed article's discriminator-shaped CNN, fixed; resnet18: torchvision's, small stem;
    # mlp: Salimans et al.'s MNIST network (1000-500-250-250-250 hidden units), the semi-supervised GAN's
    arch: Literal["bn-cnn", "seed-cnn", "resnet18", "mlp"] = "bn-cnn"
    """bn-cnn (the strong default), seed-cnn (the seed article's), resnet18 or mlp (Salimans et al.'s)."""
    # scratch | discriminator (the trained GAN's D trunk, new head) | pretrained (a `ganft pretrain`
    # checkpoint from pretrained_source) | torchvision (ImageNet resnet18 from the local torch hub cache)
    init: Literal["scratch", "discriminator", "pretrained", "torchvision"] = "scratch"
    """Where the weights start: scratch, the GAN's discriminator, pretrained or torchvision."""
    # init pretrained: source dataset, resized to the target size
    pretrained_source: BuiltinDataset = "digits"
    """init pretrained: the source dataset."""
    # init pretrained: optimiser steps of the source training
    pretrain_steps: int = Field(2000, ge=1, le=MAX_STEPS)
    """init pretrained: optimiser steps of the source training."""
    # full | linear-probe (only the head trains; trunk frozen, BatchNorm statistics included) |
    # head-then-full (head alone for head_fraction of the fine-tuning steps, then all at lr * full_lr_scale)
    freeze: Literal["full", "linear-probe", "head-then-full"] = "full"
    """full, linear-probe (trunk frozen) or head-then-full."""
    head_fraction: float = Field(0.2, gt=0, lt=1)
    """freeze head-then-full: the share of steps that train the head alone."""
    full_lr_scale: float = Field(0.1, gt=0, le=1)
    """freeze head-then-full: learning-rate factor once every layer trains."""
    synth_fraction: float = Field(0.5, gt=0, lt=1)
    """mix pretrain-then-finetune: the share of steps on added images only."""
    # optimiser steps of the real-only run; with budget equal-steps every ratio gets as many (equal
    # budget), with equal-presentations a run with m added images gets steps * (n + m) / n, so each of
    # its n real images is drawn as often as in the real-only run (synth.mix union only)
    steps: int = Field(400, ge=1, le=MAX_STEPS)
    """Classifier optimiser steps (real only; see classifier.budget for other arms)."""
    budget: Literal["equal-steps", "equal-presentations"] = "equal-steps"
    """Equal-steps for every arm, or equal-presentations of each real image."""
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    """Images per classifier step."""
    lr: float = Field(1e-3, gt=0, le=1)
    """Classifier learning rate (AdamW)."""
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    """Learning-rate schedule per phase: constant, cosine or step (x step_gamma at 1/2 and 3/4)."""
    step_gamma: float = Field(0.1, gt=0, le=1)
    """schedule step: factor at 1/2 and 3/4 of the steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy."""
    # none | flip: mirror images only, where that keeps the label (centred data) | crop-flip: whole-
    # pixel crop with padding, h-flip where it keeps the label (no resampling) |
    # affine (classic: its earlier name): crop+pad, small rotation and scale, h-flip if label-safe, one
    # bilinear resampling of every image | strong: crop-flip + RandAugment + cutout (FixMatch's strong view)
    augment: Literal["none", "flip", "crop-flip", "affine", "classic", "strong"] = "none"
    """Training augmentation: none, flip, crop-flip, affine (classic), or strong."""
    width: int = Field(32, ge=4, le=512)
    """First-stage channels of bn-cnn and seed-cnn (resnet18 and mlp: fixed)."""
    # validation accuracy every K steps; the best checkpoint is kept
    eval_every: int = Field(50, ge=1, le=MAX_STEPS)
    """Validation every K steps (with a validation set, the best checkpoint is kept)."""
    # early stop after this many evaluations without a better val acc; 0: off
    patience: int = Field(0, ge=0, le=MAX_STEPS)
    """Early stop after this many validations without a better accuracy; 0: off."""


class FixMatchConfig(StrictModel):
    # synth.source fixmatch (Sohn et al. 2020), for classifier.steps steps: each step a labelled batch
    # of classifier.batch_size images (weak view: classifier.augment, cross-entropy) and mu x batch
    # unlabelled images drawn from the whole pool (every image once per pass); an unlabelled image's
    # pseudo-label is the argmax of its weak view where the max probability is at least tau, and the
    # cross-entropy of its strong view (classifier_augment strong) against it, weight lambda_u, joins
    # the loss. The EMA of the weights (decay ema_decay) is the trained classifier. Defaults: the
    # paper's (tau 0.95, mu 7, lambda 1, EMA 0.999); its optimiser is the classifier recipe's
    tau: float = Field(0.95, gt=0, le=1)
    """Confidence a pseudo-label needs (max probability of the weak view)."""
    mu: int = Field(7, ge=1, le=64)
    """Unlabelled images per labelled image in each step."""
    lambda_u: float = Field(1.0, ge=0, le=100)
    """Weight of the unlabelled (strong view) loss."""
    ema_decay: float = Field(0.999, ge=0, lt=1)
    """EMA decay of the weights that are evaluated; 0: the raw weights."""


class SsganConfig(StrictModel):
    # synth.source ssgan (Salimans et al. 2016, "Improved Techniques for Training GANs"): the
    # classifier (classifier.arch seed-cnn or bn-cnn, no batch norm, weight-normalised) is the
    # discriminator; K class logits, the fake logit fixed at 0, so D(x) = sigmoid(logsumexp of the
    # class logits). Each of classifier.steps steps: a labelled batch (cross-entropy), an unlabelled
    # batch (real) and a generated batch (fake), each classifier.batch_size images; the generator
    # (gan.arch dcgan, unconditional, gan.width and gan.z_dim) is trained by feature matching on D's
    # trunk output. Both use Adam(lr, beta1 0.5) on classifier.schedule; the EMA of D's weights is
    # the trained classifier
    input_noise: float = Field(0.3, ge=0, le=2)
    """Std of the Gaussian noise added to D's inputs while training (pixels in [-1, 1])."""
    # the paper's MNIST discriminator adds Gaussian noise (std 0.5) after every hidden layer as well;
    # 0 (the default) keeps the earlier recipe, and the trained D's store key, as they were
    hidden_noise: float = Field(0.0, ge=0, le=2)
    """Std of the Gaussian noise added after each of D's hidden activations while training; 0: none."""
    dropout: float = Field(0.5, ge=0, lt=1)
    """Dropout before D's class head while training."""
    # the paper's 3e-4 is for 10^5 steps and more; at the 10^3 steps of a study here 1e-3 (the
    # classifier recipe's rate) fits the labelled images (tests/test_ssgan.py)
    lr: float = Field(1e-3, gt=0, le=1)
    """Adam learning rate of D and G (beta1 0.5)."""
    unlabelled_weight: float = Field(1.0, ge=0, le=100)
    """Weight of the real/fake (unlabelled and generated) loss beside the supervised one."""
    ema_decay: float = Field(0.99, ge=0, lt=1)
    """EMA decay of D's weights that are evaluated; 0: the raw weights."""


class DiffusionConfig(StrictModel):
    # gan.arch ddpm: a class-conditional DDPM (Ho et al., 2020) from Hugging Face diffusers, a
    # UNet2DModel with a class embedding and a null class for classifier-free guidance (Ho & Salimans,
    # 2022) learnt by label dropout; trained gan.steps steps of gan.batch_size images on the noise-
    # prediction loss, sampled with the EMA weights. 28x28 images are padded to 32x32
    width: int = Field(32, ge=8, le=256, multiple_of=8)
    """Channels of the UNet's first level (the next ones double it, once); a multiple of 8."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Training noise schedule over train_timesteps: cosine (Nichol & Dhariwal) or linear (Ho et al.)."""
    train_timesteps: int = Field(1000, ge=10, le=10000)
    """Noise levels of the training schedule."""
    sampler: Literal["dpm-solver", "ddim"] = "dpm-solver"
    """Sampler: DPM-Solver++ (2nd order, multistep) or DDIM (deterministic, eta 0)."""
    sample_steps: int = Field(25, ge=1, le=1000)
    """Denoising steps per sample."""
    guidance: float = Field(1.0, ge=0, le=20)
    """Classifier-free guidance scale: 0 unconditional, 1 conditional, above 1 guided."""
    label_dropout: float = Field(0.1, ge=0, le=1)
    """Share of training images whose label is replaced by the null class."""
    lr: float = Field(2e-4, gt=0, le=1)
    """AdamW learning rate."""
    ema_decay: float = Field(0.999, ge=0, lt=1)
    """EMA decay of the weights that sample; 0: the raw weights."""


class TrialConfig(StrictModel):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """The trial's seed: the labelled subset, initialisations and batch order follow from it."""
    data: DataConfig = DataConfig()
    gan: GanConfig = GanConfig()
    synth: SynthConfig = SynthConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    quality: QualityConfig = QualityConfig()
    fixmatch: FixMatchConfig = FixMatchConfig()
    ssgan: SsganConfig = SsganConfig()
    diffusion: DiffusionConfig = DiffusionConfig()

    @model_validator(mode="after")
    def _classifier_recipe_fits(self) -> TrialConfig:
        check_classifier_recipe(self)
        check_unlabelled(self)
        check_diffusion(self)
        return self


def split_steps(total: int, fraction: float) -> tuple[int, int]:
    """(first, rest) with first = round(total * fraction): the exact phase lengths of
    pretrain-then-finetune and head-then-full, which together spend exactly ``total`` steps."""
    first = round(total * fraction)
    return first, total - first


ADDS_NO_IMAGES = {"placebo": "real only with another data order",  # synth.source -> why: needs ratio 0
                  "fixmatch": "it trains on the unlabelled ones by consistency",
                  "ssgan": "its classifier is the GAN's discriminator"}


def check_unlabelled(cfg: TrialConfig) -> None:
    """Rules that join data.unlabelled_size to the GAN and synthetic-set sections, and the controls'."""
    why = ADDS_NO_IMAGES.get(cfg.synth.source)
    if why and cfg.synth.ratio:
        raise ValueError(f"synth.source {cfg.synth.source} adds no images ({why}): set synth.ratio 0, "
                         f"not {cfg.synth.ratio}")
    if cfg.synth.source == "ssgan":
        check_ssgan(cfg)
    if cfg.synth.source == "fixmatch" and cfg.classifier.augment == "none":
        raise ValueError("synth.source fixmatch needs a weak view: set classifier.augment (crop-flip, as "
                         "the paper's flip-and-shift), not none")
    if cfg.synth.source == "fixmatch":
        check_trains_itself(cfg)
    if cfg.synth.rounds > 1 and cfg.synth.source != "self-training":
        raise ValueError(f"synth.rounds {cfg.synth.rounds} applies to synth.source self-training only, "
                         f"not {cfg.synth.source}")
    needs = [(f"gan.train_on {cfg.gan.train_on}", cfg.gan.train_on == "budget+unlabelled"),
             ("gan.transfer_source unlabelled", cfg.gan.train_on == "transfer"
              and cfg.gan.transfer_source == "unlabelled"),
             ("synth.source self-training", cfg.synth.source == "self-training"),
             ("synth.source fixmatch", cfg.synth.source == "fixmatch"),
             ("synth.source ssgan", cfg.synth.source == "ssgan")]
    for what, applies in needs:
        if applies and cfg.data.unlabelled_size == 0:
            raise ValueError(f"{what} needs unlabelled images: set data.unlabelled_size (a count, or all)")
    draw = cfg.fixmatch.mu * cfg.classifier.batch_size
    if cfg.synth.source == "fixmatch" and isinstance(cfg.data.unlabelled_size, int) \
            and 0 < cfg.data.unlabelled_size < draw:
        raise ValueError(f"fixmatch.mu {cfg.fixmatch.mu} x classifier.batch_size {cfg.classifier.batch_size} "
                         f"= {draw} unlabelled images a step, more than data.unlabelled_size "
                         f"{cfg.data.unlabelled_size}: lower mu or the batch, or use more unlabelled images")
    if cfg.gan.train_on == "transfer" and cfg.gan.transfer_source == cfg.data.dataset:
        raise ValueError(f"gan.transfer_source must differ from data.dataset ({cfg.data.dataset}): "
                         f"its whole labelled training split is labels the N-image setting does not "
                         f"have; use transfer_source unlabelled for its images without labels")
    if cfg.gan.freeze_d and cfg.gan.train_on != "transfer":
        raise ValueError(f"gan.freeze_d {cfg.gan.freeze_d} applies to gan.train_on transfer only")


def check_trains_itself(cfg: TrialConfig, *also: tuple[str, str, str]) -> None:
    """FixMatch and the semi-supervised GAN train their classifier themselves: from scratch, every
    layer (and ``also``: (key, value, the value it needs)), kept as its last (EMA) weights."""
    c, source = cfg.classifier, cfg.synth.source
    for key, value, allowed in (("classifier.init", c.init, "scratch"),
                                ("classifier.freeze", c.freeze, "full"), *also):
        if value != allowed:
            raise ValueError(f"synth.source {source} trains its networks from scratch, every layer, at the "
                             f"data's size: set {key} {allowed}, not {value}")
    if cfg.data.validation not in ("none", "kfold"):
        raise ValueError(f"synth.source {source} keeps its last EMA weights and selects nothing: use "
                         f"data.validation none or kfold, not {cfg.data.validation}")


def check_ssgan(cfg: TrialConfig) -> None:
    """What the semi-supervised GAN arm needs: its classifier is a discriminator trained from scratch
    and kept as its last (EMA) weights (that it adds no images: ADDS_NO_IMAGES)."""
    c = cfg.classifier
    if c.arch not in ("seed-cnn", "bn-cnn", "mlp"):
        raise ValueError(f"synth.source ssgan trains the classifier as the GAN's discriminator, in the shape "
                         f"of classifier.arch seed-cnn, bn-cnn or mlp without batch norm (which would mix "
                         f"real and generated batches), not {c.arch}")
    check_trains_itself(cfg, ("gan.arch", cfg.gan.arch, "dcgan"))  # its generator works at the data's size


def label_safe_hflip(dataset: str, hflip: bool | None) -> bool:
    """Whether a mirror image keeps its label: the image folder's ``data.hflip``, else the table."""
    if hflip is not None:
        return hflip
    if dataset not in HFLIP_PRESERVES_LABEL:
        raise ValueError(f"augmentation does not know whether a horizontal flip preserves "
                         f"{dataset!r} labels; add it to HFLIP_PRESERVES_LABEL "
                         f"(known: {', '.join(HFLIP_PRESERVES_LABEL)})")
    return HFLIP_PRESERVES_LABEL[dataset]


def mirror_keeps_label(data: DataConfig) -> bool:
    """``label_safe_hflip`` of a data section: an image folder says it (``data.hflip``), a built-in
    dataset's table does."""
    return label_safe_hflip(data.dataset, data.hflip if data.dataset == "imagefolder" else None)


DIFFUSION_MAX_SIZE = 64  # the UNet's three levels, sized for 8x8 to 32x32 images (and 64x64 at most)


def check_diffusion(cfg: TrialConfig) -> None:
    """What gan.arch ddpm can take (classifier.init discriminator and synth.source ssgan, which need
    a GAN, are refused by their own checks)."""
    if cfg.gan.arch != "ddpm":
        return
    g = cfg.gan
    if g.conditioning == "acgan":
        raise ValueError("gan.arch ddpm has no discriminator: gan.conditioning projection (a class "
                         "embedding) or none, not acgan")
    if g.train_on == "transfer":
        raise ValueError("gan.arch ddpm trains from scratch: gan.train_on budget or budget+unlabelled, "
                         "not transfer")
    size = cfg.data.image_size if cfg.data.dataset == "imagefolder" else 0
    if size > DIFFUSION_MAX_SIZE:
        raise ValueError(f"data.image_size {size}: gan.arch ddpm takes images up to "
                         f"{DIFFUSION_MAX_SIZE}x{DIFFUSION_MAX_SIZE}; set data.image_size to at most "
                         f"{DIFFUSION_MAX_SIZE}")


def check_classifier_recipe(cfg: TrialConfig) -> None:
    """Rules that join the classifier to the GAN, data and mix sections; the error names both keys."""
    c = cfg.classifier
    if cfg.data.validation in ("none", "kfold"):
        for key, value in (("classifier.patience", c.patience), ("gan.eval_every", cfg.gan.eval_every)):
            if value:
                how = "has none" if cfg.data.validation == "none" else \
                    "trains every fit for fixed steps (choose steps by a kfold grid over them instead)"
                raise ValueError(f"{key} {value} selects on validation data, and data.validation "
                                 f"{cfg.data.validation} {how}: set it to 0 or use data.validation "
                                 f"from-budget")
    union = cfg.synth.mix == "union" and cfg.synth.real_fraction is None
    if c.budget == "equal-presentations" and not union:
        raise ValueError("classifier.budget equal-presentations scales the steps of a union mix; it needs "
                         "synth.mix union without synth.real_fraction (which fixes the real share itself)")
    if cfg.synth.real_fraction is not None:
        if cfg.synth.mix != "union":
            raise ValueError(f"synth.real_fraction needs synth.mix union (it fixes the share of real "
                             f"images in each mixed batch), not {cfg.synth.mix}")
        real = round(cfg.synth.real_fraction * c.batch_size)
        if not 1 <= real < c.batch_size:
            raise ValueError(f"synth.real_fraction {cfg.synth.real_fraction} of classifier.batch_size "
                             f"{c.batch_size} leaves {real} real images per batch; it needs at least one "
                             f"real and one synthetic image")
    if c.augment == "flip" and not mirror_keeps_label(cfg.data):
        raise ValueError(f"classifier.augment flip mirrors images, and a mirror image does not keep a "
                         f"{cfg.data.dataset} label (image folders: set data.hflip true if it does): "
                         f"use none or crop-flip")
    if c.init == "discriminator" and c.arch != "seed-cnn":
        raise ValueError(f"classifier.init discriminator needs classifier.arch seed-cnn (the "
                         f"discriminator's shape), not {c.arch}")
    if c.init == "discriminator" and cfg.gan.arch != "dcgan":
        why = " has no discriminator" if cfg.gan.arch == "ddpm" else \
            "'s discriminator works at 64x64, the classifier at the data's size"
        raise ValueError(f"classifier.init discriminator needs gan.arch dcgan: {cfg.gan.arch}{why}")
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


def check_device(name: str) -> str:
    """A --device value's form (no torch needed): auto, cpu, mps, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"--device {name}: unknown device; allowed: auto, cpu, cuda, cuda:N, mps")
    return name


@dataclass(frozen=True)
class Speed:
    """Process-wide performance settings, like ``torch.set_num_threads``: set once by the CLI (and
    passed to worker processes; defined here, not in runtime.py, so the CLI needs no torch for it),
    read by the training and sampling loops. None of them changes what is trained, only how fast;
    ``bf16`` changes the arithmetic's rounding, so runs record it in the tag ``ganft.precision``.

    precision: ``auto`` (bf16 autocast on CPUs with AMX-BF16 or AVX512-BF16, where it is faster;
        fp32 elsewhere, CUDA included: these small models' steps are bound by kernel launches, not
        arithmetic, and bf16 autocast was slower there), ``fp32`` or ``bf16``. The figures are in
        bench/README.md (bench/settings.py, bench/throughput.py).
    channels_last: NHWC memory format for conv models; None (auto) uses it on CUDA, not on the
        CPU, where bench/settings.py found no consistent gain.
    compile: ``torch.compile`` each top-level block of a model (slow to start; pays off on long runs).
    """

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: unknown; allowed: {', '.join(PRECISIONS)}")


PRECISIONS = ("auto", "fp32", "bf16")
