"""What ganft knows about each dataset without loading it (no torch): class names, split sizes,
the listing of an image folder, and the checks a study file gets when it loads (data.root, the
range of N)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ganft.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

# dataset -> (images in its training split, classes)
SIZES: dict[str, tuple[int, int]] = {"digits": (1437, 10), "fashion-mnist": (60000, 10),
                                     "mnist": (60000, 10), "cifar10": (50000, 10)}  # imagefolder: scanned
IMAGE_SIZES = {"digits": 8, "fashion-mnist": 28, "mnist": 28, "cifar10": 32}  # imagefolder: data.image_size

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES: dict[str, tuple[str, ...]] = {"digits": tuple(str(i) for i in range(10)),
                                           "mnist": tuple(str(i) for i in range(10)),
                                           "fashion-mnist": FASHION_CLASSES, "cifar10": CIFAR10_CLASSES}


def train_counts(cfg: DataConfig) -> list[int]:
    """Images per class in the training split (an image folder is listed, not decoded)."""
    if cfg.dataset != "imagefolder":
        total, k = SIZES[cfg.dataset]
        return [total // k + (i < total % k) for i in range(k)]  # nearly balanced, summing to total
    scan = scan_folder(cfg)
    if "train" in scan.files:
        return [len(v) for v in scan.files["train"].values()]
    # the carved test split takes round(test_fraction * n) of each class (at least 1, 1 left)
    sizes = [len(v) for v in scan.files["all"].values()]
    return [n - min(max(1, round(cfg.test_fraction * n)), n - 1) for n in sizes]


def budget_range(cfg: DataConfig, counts: list[int] | None = None) -> tuple[int, int]:
    """The smallest and largest N the dataset can give under ``cfg.validation``: every class needs
    one image in the budget (two under from-budget: one to train, one to validate), in proportion
    to its share of the training split; the pool protocol keeps ``val_size`` images out."""
    counts = counts or train_counts(cfg)
    total = sum(counts)
    per_class = {"from-budget": 2, "kfold": cfg.folds}.get(cfg.validation, 1)
    lo = per_class * len(counts)
    if cfg.dataset == "imagefolder":  # classes may be far from balanced: the smallest one decides
        lo = max(lo, -(-per_class * total // min(counts)))
    if cfg.validation == "pool":
        return len(counts), total - cfg.val_size
    return lo, total


def check_root(root: str | None) -> None:
    """A ``data.root`` the user gave must be a readable folder; checked at study load."""
    if root is None:
        return
    path = Path(root).expanduser()
    if not path.exists():
        raise ConfigError(f"data.root {root}: no such folder")
    if not path.is_dir():
        raise ConfigError(f"data.root {root}: is a file, not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"data.root {root}: not readable by this user")


def check_sizes(cfg: DataConfig) -> None:
    """Checks that need the file system or the dataset's size (``data.root``, N's range); run at
    study load, before any work."""
    check_root(cfg.root)
    counts = train_counts(cfg)
    train_total = sum(counts)
    if cfg.validation == "pool" and cfg.val_size >= train_total:
        raise ConfigError(f"data.val_size: {cfg.val_size} leaves no training pool for {cfg.dataset} "
                          f"(training split has {train_total:,} images)")
    if cfg.validation == "kfold":  # every fold must hold out an image of every class
        smallest = cfg.train_size * min(counts) // train_total  # a stratified budget's smallest class
        if cfg.folds > smallest:
            allowed = f"2..{smallest}" if smallest >= 2 else "none at this N"
            raise ConfigError(f"data.folds: {cfg.folds} is more than the {smallest} image(s) of the smallest "
                              f"class in a budget of N={cfg.train_size:,}; allowed: {allowed}, or a larger "
                              f"data.train_size")
    lo, hi = budget_range(cfg, counts)
    if not lo <= cfg.train_size <= hi:
        why = {"pool": f"one per class up to the training split without the {cfg.val_size or 0:,} "
                       f"validation images",
               "from-budget": "two per class (one to train, one to validate) up to the whole training split",
               "none": "one per class up to the whole training split",
               "kfold": f"data.folds ({cfg.folds}) per class, so every fold holds out each class, up "
                        f"to the whole training split"}[cfg.validation]
        where = f"imagefolder {cfg.root}" if cfg.dataset == "imagefolder" else cfg.dataset
        if cfg.dataset == "imagefolder" and cfg.train_size < lo:
            names = train_class_names(cfg)
            small = names[counts.index(min(counts))]
            why = (f"its smallest class {small!r} has {min(counts)} training images, too few for one "
                   f"per class" + (" to train and one to validate" if cfg.validation == "from-budget" else "")
                   + (f" below N={lo}" if lo <= hi else f" at any N the {hi:,} images allow: add images to "
                      f"it or remove it"))
        raise ConfigError(f"data.train_size: {cfg.train_size} is out of range for {where} with "
                          f"data.validation {cfg.validation}; allowed: "
                          f"{f'{lo}..{hi}' if lo <= hi else 'none, whatever N'} ({why})")


def check_oracle(cfg: DataConfig, ratio: float) -> None:
    """``synth.source oracle`` at ``ratio``: round(ratio x N) class-balanced labelled images must be
    left in every class once the budget and, in proportion to the class's share, the pool
    protocol's validation set and the unlabelled images are taken (an estimate from the split's
    class sizes, rounded against the oracle; the trial's draw is exact). Raises one ConfigError
    naming what it needs and what the dataset has."""
    counts = train_counts(cfg)
    total, k = sum(counts), len(counts)
    need = round(ratio * cfg.train_size)  # N bounds the budget's training part from above
    per_class = -(-need // k)
    val = cfg.val_size or 0
    unlabelled = total - cfg.train_size - val if cfg.unlabelled_size == "all" else cfg.unlabelled_size
    others = val + unlabelled
    names = train_class_names(cfg)
    for c, n_c in enumerate(counts):
        left = n_c - -(-cfg.train_size * n_c // total) - -(-others * n_c // total)
        if left < per_class:
            where = f"imagefolder {cfg.root}" if cfg.dataset == "imagefolder" else cfg.dataset
            raise ConfigError(f"synth.source oracle at synth.ratio {ratio:g} needs {need:,} labelled images "
                              f"outside the budget and the unlabelled pool ({per_class:,} of each class); "
                              f"{where} has about {max(left, 0):,} left in class {names[c]!r} "
                              f"(N={cfg.train_size:,}, data.unlabelled_size {cfg.unlabelled_size}): lower "
                              f"the ratio or N")


def check_unlabelled_pool(cfg: DataConfig, per_step: int, what: str, lower: str) -> None:
    """FixMatch and the semi-supervised GAN draw ``per_step`` distinct unlabelled images a step: the
    pool (the training split less the budget and any validation set, or data.unlabelled_size of it)
    must hold them. Raises one ConfigError naming the keys (``lower``: the keys that set per_step)."""
    total = sum(train_counts(cfg))
    pool = total - cfg.train_size - (cfg.val_size or 0)
    if cfg.unlabelled_size != "all":
        pool = min(pool, cfg.unlabelled_size)
    if pool < per_step:
        where = f"imagefolder {cfg.root}" if cfg.dataset == "imagefolder" else cfg.dataset
        raise ConfigError(f"{what} = {per_step:,} unlabelled images a step, and {where} has {max(pool, 0):,} "
                          f"outside the budget (data.unlabelled_size {cfg.unlabelled_size}): lower {lower}")


def plot_label(name: str) -> str:
    """A class name as matplotlib draws it verbatim: a "$" would open math text (and a folder named
    "$x^$" stops the figure with a parse error), so it is escaped."""
    return name.replace("$", r"\$")


def train_class_names(cfg: DataConfig) -> tuple[str, ...]:
    if cfg.dataset != "imagefolder":
        return CLASS_NAMES[cfg.dataset]
    return scan_folder(cfg).classes


# --------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class FolderScan:
    """What an image folder holds, from listing it (nothing decoded): class names, and per split
    (``train``, ``test``, or ``all`` when the test split is carved) the files of each class."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, dict[str, list[Path]]]
    ignored_dirs: int


def scan_folder(cfg: DataConfig) -> FolderScan:
    """List ``data.root`` as an image folder; every problem is a ConfigError naming it."""
    if not cfg.root:
        raise ConfigError("data.dataset imagefolder needs data.root (a folder of <class>/<image> files)")
    root = Path(cfg.root).expanduser()
    layout = {"train": root / "train", "test": root / "test"}
    if not all(p.is_dir() for p in layout.values()):
        layout = {"all": root}
    files: dict[str, dict[str, list[Path]]] = {}
    ignored = 0
    for split, folder in layout.items():
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ConfigError(f"data.root {folder}: no class folders (expected {folder}/<class>/<image>.png)")
        files[split] = {}
        for c in classes:
            entries = sorted(p for p in (folder / c).iterdir() if not p.name.startswith("."))
            ignored += sum(p.is_dir() for p in entries)
            files[split][c] = [p for p in entries if p.is_file()]
            if not files[split][c]:
                raise ConfigError(f"data.root {folder}: class folder {c!r} holds no images")
    class_sets = {tuple(f) for f in files.values()}
    if len(class_sets) > 1:
        raise ConfigError(f"data.root {root}: train/ and test/ hold different class folders "
                          f"({', '.join(files['train'])} vs {', '.join(files['test'])})")
    classes = tuple(next(iter(files.values())))
    if len(classes) < 2:
        raise ConfigError(f"data.root {root}: one class folder ({classes[0]!r}); a classifier needs "
                          f"at least 2")
    if ignored:
        log.warning("data.root %s: %d folder(s) inside class folders ignored (images must sit directly in "
                    "<class>/)", root, ignored)
    return FolderScan(root, classes, files, ignored)
