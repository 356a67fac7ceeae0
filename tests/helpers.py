"""Small shared helpers for tests (data fixtures that several test files use)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ganft.config import TrialConfig
from ganft.data import labelled_budget, load_splits, pool_and_validation, splits_for, unlabelled_images
from ganft.images import Images
from ganft.labeller import Labeller
from ganft.trial_gan import gan_key


def digits_pool_val(val_size: int = 300) -> tuple[Images, Images]:
    """The bundled digits' training split as the pool protocol divides it: (pool, validation)."""
    return pool_and_validation(load_splits("digits"), val_size)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file, gzipped: the MNIST family's real on-disk format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion(folder: Path, n_train: int = 300, n_test: int = 60) -> dict[str, np.ndarray]:
    """Random 28x28 images in Fashion-MNIST's on-disk format (gzipped IDX), labels 0..9 in turn."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(folder / f"{name}.gz", arr)
    return arrays


def trial_gan_key(cfg: TrialConfig) -> str:
    """The key of the GAN a trial of ``cfg`` would train or load (nothing is trained for it)."""
    splits = splits_for(cfg.data)
    budget = labelled_budget(splits, cfg.data, cfg.seed)
    labeller = Labeller(cfg.classifier, budget, splits.num_classes, seed=cfg.seed, device=torch.device("cpu"))
    return gan_key(cfg.gan, seed=cfg.seed, budget=budget, splits=splits,
                   unlabelled=unlabelled_images(splits, cfg.data, cfg.seed), labeller=labeller)
