"""Datasets as tensors, deterministic splits and labelled subsets.

Every dataset becomes three tensor sets: ``pool`` (the training pool minus validation: labelled
subsets of size N come from here), ``val`` (fixed, stratified, disjoint from every subset) and
``test`` (the dataset's own test split; for digits a fixed stratified split). Images are float32
in [-1, 1], shape (N, C, H, W), decoded once: no per-item PIL decoding anywhere.
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

from ganft.config import ConfigError, DataConfig
from ganft.runtime import derive_seed, project_root

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
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
    pool: Images
    val: Images
    test: Images
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pool.x.shape[1:])  # (C, H, W)


@dataclass(frozen=True)
class DatasetInfo:
    load: Callable[[str | None], tuple[Images, Images]]  # root -> (train, test)
    train_total: int  # size of the training split before validation is carved out
    default_val: int
    num_classes: int


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
    return _torchvision_fashion(Path(root).expanduser() if root else project_root() / "data")


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


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(load_digits_tensors, train_total=1437, default_val=300, num_classes=10),
    "fashion-mnist": DatasetInfo(load_fashion_tensors, train_total=60000, default_val=5000,
                                 num_classes=10),
}
CLASS_NAMES = {"digits": tuple(str(i) for i in range(10)), "fashion-mnist": FASHION_CLASSES}


# --------------------------------------------------------------------------- splits


def pool_size(cfg: DataConfig) -> int:
    info = DATASETS[cfg.dataset]
    return info.train_total - (cfg.val_size or info.default_val)


def check_sizes(cfg: DataConfig) -> None:
    """Range checks that need the dataset's size; run at study load, before any work."""
    info = DATASETS[cfg.dataset]
    val = cfg.val_size or info.default_val
    if val >= info.train_total:
        raise ConfigError(f"data.val_size: {val} leaves no training pool for {cfg.dataset} "
                          f"(training split has {info.train_total} images)")
    if not info.num_classes <= cfg.train_size <= pool_size(cfg):
        raise ConfigError(f"data.train_size: {cfg.train_size} is out of range for {cfg.dataset}; "
                          f"allowed: {info.num_classes}..{pool_size(cfg)} (one per class up to the "
                          f"training pool without the {val} validation images)")


@functools.lru_cache(maxsize=4)
def load_splits(dataset: str, root: str | None = None, val_size: int | None = None) -> Splits:
    """Load a dataset once per process and carve the fixed validation set from its training split."""
    info = DATASETS[dataset]
    train, test = info.load(root)
    val_n = val_size or info.default_val
    pool_idx, val_idx = train_test_split(
        np.arange(len(train)), test_size=val_n, stratify=train.y.numpy(), random_state=0
    )  # fixed: the validation set never depends on N or the seed
    return Splits(dataset, train.take(np.sort(pool_idx)), train.take(np.sort(val_idx)), test,
                  CLASS_NAMES[dataset])


def splits_for(cfg: DataConfig) -> Splits:
    return load_splits(cfg.dataset, cfg.root, cfg.val_size)


def labelled_subset(splits: Splits, n: int, seed: int) -> Images:
    """The stratified labelled subset of size n, chosen by (n, seed) alone."""
    if n == len(splits.pool):
        return splits.pool
    idx, _ = train_test_split(
        np.arange(len(splits.pool)), train_size=n, stratify=splits.pool.y.numpy(),
        random_state=derive_seed("subset", n, seed) % 2**32,
    )
    return splits.pool.take(np.sort(idx))
