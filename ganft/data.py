"""Datasets as tensors, deterministic splits and the labelled budget.

Every dataset becomes two tensor sets: ``train`` (its training split) and ``test`` (its own test
split; for digits a fixed stratified split), touched only for final metrics. A trial's labelled
budget is N images of ``train``, stratified and chosen by (N, seed); ``data.validation`` divides
it (``labelled_budget``): ``from-budget`` holds out a stratified fraction of the N images for every
selection, ``none`` selects nothing, ``pool`` validates on a fixed set carved from the rest of the
training split (the earlier protocol). Images are float32 in [-1, 1], shape (N, C, H, W), decoded
once: no per-item PIL decoding anywhere.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ganft.catalog import CLASS_NAMES
from ganft.config import ConfigError, DataConfig
from ganft.paths import project_root
from ganft.runtime import derive_seed

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {  # split -> (images, labels), the names used by the dataset's authors and Debian
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Images:
    """A labelled image set held as tensors."""

    x: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    y: torch.Tensor  # (N,) int64 class indices

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray | torch.Tensor) -> Images:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Images(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> Images:
        return Images(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Splits:
    name: str
    train: Images  # the dataset's whole training split: labelled budgets come from here
    test: Images  # touched only for final metrics
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # (C, H, W)




# --------------------------------------------------------------------------- loaders


def _to_unit(x: np.ndarray, max_value: float) -> torch.Tensor:
    # uint8/float pixels -> float32 in [-1, 1], with a channel axis
    t = torch.from_numpy(np.ascontiguousarray(x)).float() / max_value
    if t.ndim == 3:
        t = t.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    return t * 2 - 1


def load_digits_tensors(root: str | None = None) -> tuple[Images, Images]:
    """scikit-learn's bundled 8x8 digits (values 0..16); test = fixed stratified 20% split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = _to_unit(bunch.images.astype(np.float32), 16.0)
    y = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=360, stratify=bunch.target, random_state=0
    )
    return Images(x, y).take(np.sort(train_idx)), Images(x, y).take(np.sort(test_idx))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (.gz or plain), the MNIST family's on-disk format.

    Written here because torchvision's reader only takes uncompressed files and the Debian package
    ships them gzipped; the format is a 4-byte magic (0, 0, dtype, ndim), big-endian dims, data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} values)")
    return data.reshape(dims).copy()  # frombuffer is read-only; torch wants writable memory


def _find_idx_dir(root: Path) -> Path | None:
    for d in (root, root / "FashionMNIST" / "raw"):
        if all((d / f"{name}.gz").is_file() for pair in FASHION_FILES.values() for name in pair):
            return d
    return None


def load_fashion_tensors(root: str | None = None) -> tuple[Images, Images]:
    """Fashion-MNIST from IDX .gz files in ``root`` or the Debian package, else torchvision."""
    candidates = [Path(root).expanduser()] if root else [DEBIAN_FASHION_DIR]
    for cand in candidates:
        found = _find_idx_dir(cand)
        if found is not None:
            out = []
            for img_name, lbl_name in FASHION_FILES.values():
                x = _to_unit(read_idx(found / f"{img_name}.gz"), 255.0)
                y = torch.from_numpy(read_idx(found / f"{lbl_name}.gz").astype(np.int64))
                out.append(Images(x, y))
            return out[0], out[1]
    if root:  # a folder the user gave is read, never written: no download into it
        names = ", ".join(f"{n}.gz" for pair in FASHION_FILES.values() for n in pair)
        raise ConfigError(f"data.root {root}: no Fashion-MNIST IDX files there or in its FashionMNIST/raw/ "
                          f"(expected {names})")
    return _torchvision_fashion(project_root() / "data")


def _torchvision_fashion(root: Path) -> tuple[Images, Images]:
    # torchvision keeps the decoded tensors in .data/.targets: read those, never __getitem__ (PIL)
    from torchvision.datasets import FashionMNIST

    out = []
    for train in (True, False):
        try:
            ds = FashionMNIST(str(root), train=train, download=True)
        except Exception as exc:  # URLError, RuntimeError on a bad checksum, ...
            raise RuntimeError(
                f"fashion-mnist: no IDX files in {DEBIAN_FASHION_DIR} (apt-get install "
                f"dataset-fashion-mnist) or data.root, and the download into {root} failed: {exc}"
            ) from exc
        out.append(Images(_to_unit(ds.data.numpy(), 255.0), ds.targets.long()))
    return out[0], out[1]


LOADERS: dict[str, Callable[[str | None], tuple[Images, Images]]] = {  # root -> (train, test)
    "digits": load_digits_tensors,
    "fashion-mnist": load_fashion_tensors,
}


# --------------------------------------------------------------------------- splits


@functools.lru_cache(maxsize=4)
def load_splits(dataset: str, root: str | None = None) -> Splits:
    """Load a dataset once per process: its whole training split and its test split."""
    train, test = LOADERS[dataset](root)
    return Splits(dataset, train, test, CLASS_NAMES[dataset])


def splits_for(cfg: DataConfig) -> Splits:
    return load_splits(cfg.dataset, cfg.root)


def pool_and_validation(splits: Splits, val_size: int) -> tuple[Images, Images]:
    """The ``pool`` protocol's fixed stratified validation set of ``val_size`` images carved from the
    training split, and the rest (where its labelled subsets come from): labelled data beyond N,
    kept as the comparison protocol it was before ``from-budget``."""
    pool_idx, val_idx = train_test_split(np.arange(len(splits.train)), test_size=val_size,
                                         stratify=splits.train.y.numpy(), random_state=0)  # fixed
    return splits.train.take(np.sort(pool_idx)), splits.train.take(np.sort(val_idx))


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


@dataclass(frozen=True)
class Budget:
    """The N labelled images a user has, divided by the validation protocol (``data.validation``).

    ``train`` is what the classifier and the GAN learn from; ``val`` is what every selection looks at
    (classifier checkpoint, early stopping, the GAN's best step, the filtering labeller's checkpoint,
    the Optuna objective). ``val`` is None under ``none``: no selection, the last step is kept.
    Under ``from-budget`` both parts are inside the N images; under ``pool`` ``val`` is the fixed
    pool validation set, labelled data beyond N (the earlier protocol, kept for comparison)."""

    protocol: str
    train: Images
    val: Images | None


def labelled_budget(splits: Splits, cfg: DataConfig, seed: int) -> Budget:
    """The labelled budget of a trial: N images chosen by (N, seed), divided as ``cfg.validation`` says."""
    if cfg.validation == "pool":
        pool, val = pool_and_validation(splits, cfg.val_size)
        return Budget("pool", labelled_subset(pool, cfg.train_size, seed), val)
    labelled = labelled_subset(splits.train, cfg.train_size, seed)
    if cfg.validation == "none":
        return Budget("none", labelled, None)
    train_idx, val_idx = budget_holdout(labelled.y, cfg.val_fraction,
                                        derive_seed("budget-val", cfg.train_size, seed) % 2**32)
    return Budget("from-budget", labelled.take(train_idx), labelled.take(val_idx))
