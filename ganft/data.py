"""The labelled budget of a trial and its validation protocols, over the datasets of datasets.py.

Every dataset is two tensor sets: ``train`` (its training split) and ``test`` (its own test split,
or a fixed one), touched only for final metrics. A trial's labelled
budget is N images of ``train``, stratified and chosen by (N, seed); ``data.validation`` divides
it (``labelled_budget``): ``from-budget`` holds out a stratified fraction of the N images for every
selection, ``none`` selects nothing, ``pool`` validates on a fixed set carved from the rest of the
training split (the earlier protocol). Images are float32 in [-1, 1], shape (N, C, H, W), decoded
once: no per-item PIL decoding anywhere.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ganft import datasets
from ganft.config import ConfigError, DataConfig
from ganft.images import Budget, Images, Splits
from ganft.runtime import derive_seed


def load_splits(dataset: str, root: str | None = None) -> Splits:
    """A built-in dataset by name (and its files' folder): training split, test split, classes."""
    return splits_for(DataConfig(dataset=dataset, root=root))


def splits_for(cfg: DataConfig) -> Splits:
    """The dataset of a trial, loaded once per process whatever the trial's N or protocol."""
    return datasets.load(cfg.model_copy(update={"train_size": DataConfig().train_size,
                                                "validation": "from-budget", "val_size": None,
                                                "val_fraction": DataConfig().val_fraction}))


def pool_positions(splits: Splits, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions in ``splits.train`` of the ``pool`` protocol's pool and of its fixed
    stratified validation set of ``val_size`` images."""
    pool_idx, val_idx = train_test_split(np.arange(len(splits.train)), test_size=val_size,
                                         stratify=splits.train.y.numpy(), random_state=0)  # fixed
    return np.sort(pool_idx), np.sort(val_idx)


def pool_and_validation(splits: Splits, val_size: int) -> tuple[Images, Images]:
    """The ``pool`` protocol's fixed stratified validation set of ``val_size`` images carved from the
    training split, and the rest (where its labelled subsets come from): labelled data beyond N,
    kept as the comparison protocol it was before ``from-budget``."""
    pool_idx, val_idx = pool_positions(splits, val_size)
    return splits.train.take(pool_idx), splits.train.take(val_idx)


def subset_indices(labels: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """Sorted positions of the stratified subset of size n, chosen by (n, seed) alone."""
    if n == len(labels):
        return np.arange(n)
    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels.numpy(),
                              random_state=derive_seed("subset", n, seed) % 2**32)
    return np.sort(idx)


def labelled_subset(pool: Images, n: int, seed: int) -> Images:
    """The stratified labelled subset of size n of ``pool``, chosen by (n, seed) alone."""
    return pool if n == len(pool) else pool.take(subset_indices(pool.y, n, seed))


def budget_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions of a stratified split of labels ``y``: round(fraction * n_c) of each
    class's n_c images go to validation, at least one, and at least one stays for training.

    Written out rather than sklearn's ``train_test_split(stratify=...)``, which allocates the
    validation count over classes by rounding and can leave a small class with no validation image
    (or none for training)."""
    gen = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y.numpy()):
        idx = np.flatnonzero(y.numpy() == c)
        if len(idx) < 2:
            raise ConfigError(f"data.validation from-budget: class {int(c)} has {len(idx)} labelled "
                              f"image(s); it needs 2 (one to train on, one to validate)")
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        idx = gen.permutation(idx)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def labelled_budget(splits: Splits, cfg: DataConfig, seed: int) -> Budget:
    """The labelled budget of a trial: N images chosen by (N, seed), divided as ``cfg.validation`` says."""
    if cfg.validation == "pool":
        pool, val = pool_and_validation(splits, cfg.val_size)
        return Budget("pool", labelled_subset(pool, cfg.train_size, seed), val)
    labelled = labelled_subset(splits.train, cfg.train_size, seed)
    if cfg.validation in ("none", "kfold"):  # kfold: the trial's own fit uses all N (the folds: budget_folds)
        return Budget(cfg.validation, labelled, None)
    train_idx, val_idx = budget_holdout(labelled.y, cfg.val_fraction,
                                        derive_seed("budget-val", cfg.train_size, seed) % 2**32)
    return Budget("from-budget", labelled.take(train_idx), labelled.take(val_idx))


def budget_folds(budget: Budget, cfg: DataConfig, seed: int) -> list[tuple[Budget, Images]]:
    """``data.validation kfold``: the budget's repeated stratified k-fold splits (scikit-learn's
    RepeatedStratifiedKFold, seeded by (N, seed)): per fold, a budget of its training part (no
    validation images inside: every fit trains for fixed steps) and its held-out images. Every image
    is held out once per repeat; nothing outside the N images is touched."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    folds = RepeatedStratifiedKFold(n_splits=cfg.folds, n_repeats=cfg.fold_repeats,
                                    random_state=derive_seed("kfold", cfg.train_size, seed) % 2**32)
    y = budget.train.y.numpy()
    return [(Budget("kfold-fold", budget.train.take(np.sort(tr)), None), budget.train.take(np.sort(va)))
            for tr, va in folds.split(np.zeros(len(y)), y)]


# --------------------------------------------------------------------------- unlabelled images


def budget_positions(splits: Splits, cfg: DataConfig, seed: int) -> np.ndarray:
    """Positions in ``splits.train`` of every image whose label the trial may read: the N budget
    images, and under ``pool`` the fixed validation set too (the same choice ``labelled_budget`` makes)."""
    if cfg.validation == "pool":
        pool_idx, val_idx = pool_positions(splits, cfg.val_size)
        chosen = pool_idx[subset_indices(splits.train.y[torch.as_tensor(pool_idx)], cfg.train_size, seed)]
        return np.sort(np.concatenate([chosen, val_idx]))
    return subset_indices(splits.train.y, cfg.train_size, seed)


def unlabelled_positions(splits: Splits, cfg: DataConfig, seed: int) -> np.ndarray:
    """Sorted positions in ``splits.train`` of the trial's ``data.unlabelled_size`` unlabelled images:
    outside the budget and any validation set (the test split is another tensor altogether), chosen
    by (N, U, seed) uniformly, not stratified, since stratifying would need their labels."""
    rest = np.setdiff1d(np.arange(len(splits.train)), budget_positions(splits, cfg, seed))
    u = cfg.unlabelled_size
    if u == "all" or u == len(rest):
        return rest
    if u > len(rest):
        raise ConfigError(f"data.unlabelled_size {u} is more than the {len(rest)} images of "
                          f"{cfg.dataset}'s training split outside the budget; allowed: 0 to "
                          f"{len(rest)}, or all")
    gen = np.random.default_rng(derive_seed("unlabelled", cfg.train_size, u, seed) % 2**32)
    return np.sort(gen.choice(rest, size=u, replace=False))


def unlabelled_images(splits: Splits, cfg: DataConfig, seed: int) -> torch.Tensor:
    """The unlabelled images (U, C, H, W), pixels only: their labels are dropped here and no later
    stage can read them (a test poisons them and checks that nothing changes)."""
    if cfg.unlabelled_size == 0:
        return splits.train.x[:0]
    return splits.train.x[torch.as_tensor(unlabelled_positions(splits, cfg, seed))]


def unlabelled_truth(splits: Splits, cfg: DataConfig, seed: int) -> torch.Tensor | None:
    """The true labels (U,) of ``unlabelled_images``, for metrics only (pseudo-label precision,
    fixmatch.LabelProbe): no training or choice reads them. None without unlabelled images."""
    if cfg.unlabelled_size == 0:
        return None
    return splits.train.y[torch.as_tensor(unlabelled_positions(splits, cfg, seed))]


def oracle_positions(splits: Splits, cfg: DataConfig, seed: int) -> np.ndarray:
    """Sorted positions in ``splits.train`` of the labelled images the ``oracle`` control draws from:
    outside the budget, any validation set and the unlabelled pool (the test split is another tensor
    altogether). Their labels are beyond the budget: only a control reads them."""
    taken = budget_positions(splits, cfg, seed)
    if cfg.unlabelled_size != 0:
        taken = np.concatenate([taken, unlabelled_positions(splits, cfg, seed)])
    return np.setdiff1d(np.arange(len(splits.train)), taken)


def oracle_pool(splits: Splits, cfg: DataConfig, seed: int) -> Images:
    """The images at ``oracle_positions``, with their labels."""
    return splits.train.take(oracle_positions(splits, cfg, seed))
