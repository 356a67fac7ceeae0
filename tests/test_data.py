import gzip
import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fake_fashion, write_idx

from ganft import datasets
from ganft.catalog import check_sizes
from ganft.config import ConfigError, DataConfig
from ganft.data import (
    labelled_budget,
    labelled_subset,
    load_splits,
    pool_and_validation,
)
from ganft.datasets import read_idx


def fashion_files() -> tuple:
    """Fashion-MNIST's loader with no data.root: local files, then torchvision's download."""
    train, test, _ = datasets.LOADERS["fashion-mnist"](DataConfig(dataset="fashion-mnist"))
    return train, test


def test_digits_splits_are_fixed_disjoint_and_stratified() -> None:
    s = load_splits("digits")
    assert s.image_shape == (1, 8, 8) and s.num_classes == 10
    assert (len(s.train), len(s.test)) == (1437, 360)
    assert s.train.x.dtype == torch.float32 and -1 <= s.train.x.min() and s.train.x.max() <= 1
    pool, val = pool_and_validation(s, 300)  # the pool protocol's fixed validation set
    assert (len(pool), len(val)) == (1137, 300)
    # every class is present in proportion in val and test
    assert torch.bincount(val.y).min() >= 28 and torch.bincount(s.test.y).min() >= 35
    # no image of val or test appears in the pool (digits holds no duplicate images)
    rows = {tuple(r) for r in pool.x.flatten(1).tolist()}
    assert len(rows) == len(pool)
    assert not any(tuple(r) in rows for r in val.x.flatten(1).tolist())
    assert not any(tuple(r) in rows for r in s.test.x.flatten(1).tolist())


def test_subset_depends_only_on_n_and_seed() -> None:
    s = load_splits("digits")
    a, b = labelled_subset(s.train, 100, 3), labelled_subset(s.train, 100, 3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = labelled_subset(s.train, 100, 4)
    assert not torch.equal(a.x, c.x)
    assert len(a) == 100 and torch.bincount(a.y, minlength=10).tolist() == [10] * 10  # stratified
    assert len(labelled_subset(s.train, len(s.train), 0)) == len(s.train)


def test_pool_protocol_subsets_never_overlap_its_validation_set() -> None:
    s = load_splits("digits")
    budget = labelled_budget(s, DataConfig(train_size=500, validation="pool", val_size=300), 0)
    val_rows = {tuple(r) for r in budget.val.x.flatten(1).tolist()}
    assert len(budget.val) == 300
    assert not any(tuple(r) in val_rows for r in budget.train.x.flatten(1).tolist())


def test_check_sizes_names_key_and_range() -> None:
    msg = (r"data.train_size: 5000 is out of range for digits with data.validation from-budget; "
           r"allowed: 20..1437")
    with pytest.raises(ConfigError, match=msg):
        check_sizes(DataConfig(train_size=5000, validation="from-budget"))
    check_sizes(DataConfig(train_size=1437, validation="from-budget"))
    with pytest.raises(ConfigError, match=r"data.validation none; allowed: 10..1437"):  # the default
        check_sizes(DataConfig(train_size=5000))
    with pytest.raises(ConfigError, match=r"allowed: 10..1137 \(one per class up to the training split "
                       r"without the 300 validation images\)"):
        check_sizes(DataConfig(train_size=1200, validation="pool", val_size=300))
    check_sizes(DataConfig(train_size=10, validation="none"))


def test_fashion_reads_idx_gz_from_a_configured_root(tmp_path: Path) -> None:
    arrays = fake_fashion(tmp_path / "fm")
    s = load_splits("fashion-mnist", str(tmp_path / "fm"))
    assert s.image_shape == (1, 28, 28)
    assert (len(s.train), len(s.test)) == (300, 60)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.float32)) / 255 * 2 - 1
    assert torch.allclose(s.test.x[:, 0], expected)
    assert s.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_read_idx_rejects_truncated_files(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.gz", np.zeros((4, 3, 3)))
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "cut").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "cut")
    assert read_idx(tmp_path / "x.gz").shape == (4, 3, 3)


@pytest.mark.skipif(not datasets.DEBIAN_FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist "
                    "is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_from_the_debian_package() -> None:
    s = load_splits("fashion-mnist")
    assert (len(s.train), len(s.test)) == (60000, 10000)
    assert torch.bincount(s.test.y).tolist() == [1000] * 10


def test_fashion_download_path_through_torchvision(tmp_path: Path, home: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No Debian files and no root: torchvision's real download code runs, against a loopback
    server holding small files in the real format (never the network)."""
    from torchvision.datasets import FashionMNIST

    served = tmp_path / "mirror"
    arrays = fake_fashion(served, n_train=120, n_test=40)
    resources = [(f"{name}.gz", hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest())
                 for name in arrays]
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", tmp_path / "absent")
        monkeypatch.setattr(FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
        monkeypatch.setattr(FashionMNIST, "resources", resources)
        train, test = fashion_files()
    finally:
        server.shutdown()
    assert (len(train), len(test)) == (120, 40)
    assert (home / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    assert test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_download_failure_says_what_to_install(tmp_path: Path, home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", tmp_path / "absent")
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # discard port: refused
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        fashion_files()
