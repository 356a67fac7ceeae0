"""What ganft knows about each dataset without loading it (no torch): class names, split sizes,
and the checks a study file gets when it loads (data.root, the range of N)."""

from __future__ import annotations

import os
from pathlib import Path

from ganft.config import ConfigError, DataConfig

# dataset -> (images in its training split, classes)
SIZES: dict[str, tuple[int, int]] = {"digits": (1437, 10), "fashion-mnist": (60000, 10)}

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES: dict[str, tuple[str, ...]] = {"digits": tuple(str(i) for i in range(10)),
                                           "fashion-mnist": FASHION_CLASSES}


def budget_range(cfg: DataConfig) -> tuple[int, int]:
    """The smallest and largest N the dataset can give under ``cfg.validation``."""
    train_total, num_classes = SIZES[cfg.dataset]
    if cfg.validation == "pool":
        return num_classes, train_total - cfg.val_size
    per_class = 2 if cfg.validation == "from-budget" else 1  # from-budget: one to train, one to validate
    return per_class * num_classes, train_total


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
    train_total, num_classes = SIZES[cfg.dataset]
    if cfg.validation == "pool" and cfg.val_size >= train_total:
        raise ConfigError(f"data.val_size: {cfg.val_size} leaves no training pool for {cfg.dataset} "
                          f"(training split has {train_total:,} images)")
    lo, hi = budget_range(cfg)
    if not lo <= cfg.train_size <= hi:
        why = {"pool": f"one per class up to the training split without the {cfg.val_size or 0:,} "
                       f"validation images",
               "from-budget": "two per class (one to train, one to validate) up to the whole training split",
               "none": "one per class up to the whole training split"}[cfg.validation]
        raise ConfigError(f"data.train_size: {cfg.train_size} is out of range for {cfg.dataset} with "
                          f"data.validation {cfg.validation}; allowed: {lo}..{hi} ({why})")
