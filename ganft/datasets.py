"""Every dataset as two labelled tensor sets, its training split and its test split: one loader
contract for the bundled digits, Fashion-MNIST, MNIST, CIFAR-10 and a folder of the user's images.

- ``digits``: scikit-learn's bundled 8x8 digits; test = a fixed stratified 360-image split.
- ``fashion-mnist``, ``mnist``: IDX files (``.gz`` or raw) in ``data.root`` or its
  ``FashionMNIST/raw`` / ``MNIST/raw``; Fashion-MNIST also from the Debian package
  (``/usr/share/datasets/fashion-mnist``); with no root and no local files, torchvision's download
  into ``data/`` of the project root. A root the user gave is only read, never written to.
- ``cifar10``: the python batches (``data_batch_1..5``, ``test_batch``) in ``data.root`` or its
  ``cifar-10-batches-py``, else torchvision's download; 3x32x32 images.
- ``imagefolder``: ``root/<class>/<image>`` (PNG or JPEG, any size, grey or RGB), or
  ``root/train/<class>/...`` with ``root/test/<class>/...``. Each image is centre-cropped to a
  square (the shorter side is kept whole), resized to ``data.image_size`` (antialiased) and
  converted to ``data.channels``. Folders inside a class folder are ignored (a warning counts them);
  hidden files are ignored; any other file that does not decode as an image is an error naming it,
  or with ``data.skip_unreadable`` a warning and a count. Without a train/test layout, a fixed
  ``data.test_fraction`` of each class (chosen by the files' content, so never by N or the seed)
  is the test split. The class folders' names are the labels.

Images are decoded once, into uint8 tensors, and kept on disk in ``.ganft-cache/data/`` under a key
of the source files' paths, sizes and mtimes, so the second load of a folder is fast and a changed
folder is decoded again; training never decodes a file. Image files are decoded by Pillow after
two checks (``decode_image``): torchvision's decoder kills the process on a PNG whose data is
short, and an image over MAX_PIXELS is refused before its pixels are read.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganft.catalog import CIFAR10_CLASSES, CLASS_NAMES, check_root, check_sizes, scan_folder
from ganft.config import ConfigError, DataConfig
from ganft.images import Images, Splits
from ganft.paths import project_root
from ganft.store import CheckpointCache, content_key, load_or_make

log = logging.getLogger(__name__)
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {  # split -> (images, labels): the names the MNIST family's authors (and Debian) use
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_FILES = IDX_FILES
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LOADER_VERSION = 2  # bump when a loader's output for the same files changes (invalidates the disk cache)


def to_unit(x: np.ndarray | torch.Tensor, max_value: float) -> torch.Tensor:
    """Pixels (N, H, W) or (N, C, H, W) -> float32 in [-1, 1] with a channel axis."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).float() / max_value
    if t.ndim == 3:
        t = t.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    return t * 2 - 1


# --------------------------------------------------------------------------- digits


def load_digits(cfg: DataConfig) -> tuple[Images, Images, tuple[str, ...]]:
    """scikit-learn's bundled 8x8 digits (values 0..16); test = fixed stratified 20% split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = to_unit(bunch.images.astype(np.float32), 16.0)
    y = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=360, stratify=bunch.target,
                                           random_state=0)
    return Images(x, y).take(np.sort(train_idx)), Images(x, y).take(np.sort(test_idx)), CLASS_NAMES["digits"]


# --------------------------------------------------------------------------- IDX (the MNIST family)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (.gz or plain), the MNIST family's on-disk format.

    Written here because torchvision's reader takes only uncompressed files and the Debian package
    ships them gzipped; the format is a 4-byte magic (0, 0, dtype, ndim), big-endian dims, data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ConfigError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} values)")
    return data.reshape(dims).copy()  # frombuffer is read-only; torch wants writable memory


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """Each IDX file name -> its path in ``folder`` (``.gz`` or raw), or None if one is missing."""
    found = {}
    for name in (n for pair in IDX_FILES.values() for n in pair):
        path = next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
        if path is None:
            return None
        found[name] = path
    return found


def _load_idx(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    out = {}
    for split, (images, labels) in IDX_FILES.items():
        out[f"{split}_x"] = torch.from_numpy(read_idx(files[images]))  # (N, 28, 28) uint8
        out[f"{split}_y"] = torch.from_numpy(read_idx(files[labels]).astype(np.int64))
    return out


def _idx_dataset(name: str, tv_class: str, tv_folder: str, debian: bool = False) -> Any:
    def load(cfg: DataConfig) -> tuple[Images, Images, tuple[str, ...]]:
        dirs = [Path(cfg.root).expanduser()] if cfg.root else [DEBIAN_FASHION_DIR] if debian else []
        dirs += [d / tv_folder / "raw" for d in list(dirs)]
        for d in dirs:
            files = _idx_files(d)
            if files is not None:
                return _from_payload(_cached(name, list(files.values()), cfg, lambda f=files: _load_idx(f)),
                                     CLASS_NAMES[name])
        names = ", ".join(f"{n}[.gz]" for pair in IDX_FILES.values() for n in pair)
        if cfg.root:  # a folder the user gave is read, never written: no download into it
            raise ConfigError(f"data.root {cfg.root}: no {name} IDX files there or in its {tv_folder}/raw/ "
                              f"(expected {names})")
        return _download(name, tv_class, tv_folder, names)

    return load


def _download(name: str, tv_class: str, tv_folder: str, names: str) -> tuple[Images, Images, tuple[str, ...]]:
    """torchvision's download into the project's data/ (never a folder the user gave), then the
    same tensor reader as for local files."""
    import torchvision.datasets as tvd

    root = project_root() / "data"
    try:
        for train in (True, False):
            getattr(tvd, tv_class)(str(root), train=train, download=True)
    except Exception as exc:  # URLError, RuntimeError on a bad checksum, ...
        hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        raise ConfigError(f"{name}: no local files{hint} and the download into {root} failed ({exc}); put "
                          f"{names} in a folder and set data.root to it") from None
    if name == "cifar10":
        return _cifar_from(root / "cifar-10-batches-py")
    files = _idx_files(root / tv_folder / "raw")
    if files is None:
        raise ConfigError(f"{name}: torchvision's download into {root} left no IDX files")
    return _from_payload(_load_idx(files), CLASS_NAMES[name])


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_dir(folder: Path) -> Path | None:
    for d in (folder, folder / "cifar-10-batches-py"):
        if all((d / b).is_file() for batches in CIFAR_BATCHES.values() for b in batches):
            return d
    return None


def _load_cifar(folder: Path) -> dict[str, torch.Tensor]:
    """CIFAR-10's python batches: pickled dicts of b"data" (N, 3072) uint8 and b"labels" (the
    format torchvision's CIFAR10 reads; read here so files written by a test, whose md5 sums
    torchvision would refuse, load the same way)."""
    out = {}
    for split, batches in CIFAR_BATCHES.items():
        xs, ys = [], []
        for b in batches:
            with open(folder / b, "rb") as f:
                try:
                    entry = pickle.load(f, encoding="latin1")  # noqa: S301 - the dataset's own format
                except Exception as exc:
                    raise ConfigError(f"{folder / b}: not a CIFAR-10 python batch ({exc})") from None
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64))
        out[f"{split}_x"] = torch.from_numpy(np.concatenate(xs))  # (N, 3, 32, 32) uint8
        out[f"{split}_y"] = torch.from_numpy(np.concatenate(ys))
    return out


def _cifar_from(folder: Path, cfg: DataConfig | None = None) -> tuple[Images, Images, tuple[str, ...]]:
    files = [folder / b for batches in CIFAR_BATCHES.values() for b in batches]
    return _from_payload(_cached("cifar10", files, cfg, lambda: _load_cifar(folder)), CIFAR10_CLASSES)


def load_cifar10(cfg: DataConfig) -> tuple[Images, Images, tuple[str, ...]]:
    if cfg.root:
        found = _cifar_dir(Path(cfg.root).expanduser())
        if found is None:
            raise ConfigError(f"data.root {cfg.root}: no CIFAR-10 python batches there or in its "
                              f"cifar-10-batches-py/ (expected data_batch_1..5 and test_batch)")
        return _cifar_from(found, cfg)
    local = _cifar_dir(project_root() / "data")
    if local is not None:
        return _cifar_from(local, cfg)
    return _download("cifar10", "CIFAR10", "cifar-10-batches-py", "data_batch_1..5 and test_batch")


# --------------------------------------------------------------------------- the disk cache


def data_key(name: str, files: list[Path], cfg: DataConfig | None) -> str:
    """The key of a dataset's decoded tensors: its files (paths, sizes, mtimes), the loader's
    options and LOADER_VERSION."""
    options = cfg.model_dump(include={"image_size", "channels", "test_fraction", "skip_unreadable"}) \
        if cfg is not None and name == "imagefolder" else {}
    return content_key({"dataset": name, "version": LOADER_VERSION, "options": options,
                        "files": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]})


def _cached(name: str, files: list[Path], cfg: DataConfig | None, build: Any) -> dict[str, torch.Tensor]:
    """The decoded uint8 tensors of ``files``, from ``.ganft-cache/data/`` when the files (paths,
    sizes, mtimes) and the loader's options are what they were, else decoded now and kept."""
    key = data_key(name, files, cfg)
    return load_or_make(CheckpointCache(project_root() / ".ganft-cache" / "data"), key, build)[0]


def _from_payload(p: dict[str, Any], classes: tuple[str, ...]) -> tuple[Images, Images, tuple[str, ...]]:
    classes = tuple(p["classes"]) if "classes" in p else classes
    return (Images(to_unit(p["train_x"], 255.0), p["train_y"].long()),
            Images(to_unit(p["test_x"], 255.0), p["test_y"].long()), classes)


# --------------------------------------------------------------------------- image folders


def carve_test(files: dict[str, list[Path]], fraction: float) -> tuple[dict, dict]:
    """(train, test) files per class: the test split is the ``fraction`` of each class (at least one,
    at least one left) whose file content hashes lowest, so it depends on the images alone."""
    train, test = {}, {}
    for c, paths in files.items():
        if len(paths) < 2:
            raise ConfigError(f"class {c!r} has {len(paths)} image; it needs 2 (one for the test split)")
        ranked = sorted(paths, key=lambda p: hashlib.sha256(p.read_bytes()).hexdigest())
        k = min(max(1, round(fraction * len(paths))), len(paths) - 1)
        test[c], train[c] = sorted(ranked[:k]), sorted(ranked[k:])
    return train, test


MAX_PIXELS = 40_000_000  # larger images are refused before they are decoded (a decompression bomb)


class UnreadableImage(ValueError):
    """An image file ganft will not decode; the message says why."""


def png_rows_missing(data: bytes) -> bool:
    """Whether a non-interlaced PNG's image data holds fewer rows than its header declares.

    Written out (chunk walk + bounded zlib) because no library reports it: torchvision's decoder
    segfaults on such a file (the process dies), and Pillow pads the missing rows with zeros."""
    pos, idat, head = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR" and len(body) >= 13:
            head = struct.unpack(">IIBBBBB", body[:13])  # width, height, depth, colour, _, _, interlace
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if head is None:
        return True
    width, height, depth, colour, _, _, interlace = head
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if interlace or channels is None:
        return False  # Adam7 rows are not laid out this way; Pillow's own checks apply
    row = 1 + -(-width * channels * depth // 8)  # filter byte + packed samples
    try:
        raw = zlib.decompressobj().decompress(b"".join(idat), height * row)  # bounded: no bomb
    except zlib.error:
        return True
    return len(raw) < height * row


def decode_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image file -> (channels, size, size) uint8: centre crop to a square, antialiased resize.
    Decoded by Pillow after checks that raise UnreadableImage instead of crashing or exhausting
    memory: at most MAX_PIXELS pixels (read from the header first), and a PNG's data whole."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    try:
        im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError:  # Pillow's own, coarser limit: ours, said plainly
        raise UnreadableImage(f"more than the {MAX_PIXELS:,} pixels ganft decodes") from None
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise UnreadableImage(f"{w}x{h} pixels, more than the {MAX_PIXELS:,} ganft decodes")
        if im.format == "PNG" and png_rows_missing(path.read_bytes()):
            raise UnreadableImage("its image data holds fewer rows than its header declares")
        pixels = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    img = torch.from_numpy(pixels.copy()).reshape(h, w, -1).permute(2, 0, 1)  # (C, H, W) uint8
    side = min(img.shape[-2:])
    img = TF.center_crop(img, [side, side])
    return TF.resize(img, [size, size], antialias=True)


def _decode_split(per_class: dict[str, list[Path]], classes: tuple[str, ...], cfg: DataConfig,
                  skipped: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for label, c in enumerate(classes):
        for path in per_class[c]:
            try:
                xs.append(decode_image(path, cfg.image_size, cfg.channels))
            except Exception as exc:  # not an image, a corrupt one, or one too large to decode
                if not cfg.skip_unreadable:
                    why = str(exc) if isinstance(exc, UnreadableImage) else type(exc).__name__
                    raise ConfigError(f"{path}: not a readable PNG or JPEG image ({why}); "
                                      f"remove it, or set data.skip_unreadable: true") from None
                skipped.append(path)
                continue
            ys.append(label)
    if not xs:
        raise ConfigError(f"data.root {cfg.root}: no readable image in this split")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def load_folder(cfg: DataConfig) -> tuple[Images, Images, tuple[str, ...]]:
    scan = scan_folder(cfg)
    all_files = [p for split in scan.files.values() for paths in split.values() for p in paths]

    def build() -> dict[str, Any]:
        if "all" in scan.files:
            train, test = carve_test(scan.files["all"], cfg.test_fraction)
        else:
            train, test = scan.files["train"], scan.files["test"]
        skipped: list[Path] = []
        out: dict[str, Any] = {}
        for split, per_class in (("train", train), ("test", test)):
            out[f"{split}_x"], out[f"{split}_y"] = _decode_split(per_class, scan.classes, cfg, skipped)
        if skipped:
            log.warning("data.root %s: skipped %d unreadable file(s), e.g. %s (data.skip_unreadable)",
                        scan.root, len(skipped), skipped[0])
        out["classes"] = list(scan.classes)
        return out

    return _from_payload(_cached("imagefolder", all_files, cfg, build), scan.classes)


LOADERS = {"digits": load_digits,
           "fashion-mnist": _idx_dataset("fashion-mnist", "FashionMNIST", "FashionMNIST", debian=True),
           "mnist": _idx_dataset("mnist", "MNIST", "MNIST"),
           "cifar10": load_cifar10,
           "imagefolder": load_folder}


@functools.lru_cache(maxsize=8)
def load(cfg: DataConfig) -> Splits:
    """The dataset of ``cfg`` (loaded once per process): training split, test split, class names."""
    train, test, classes = LOADERS[cfg.dataset](cfg)
    return Splits(cfg.dataset, train, test, classes)


def describe(cfg: DataConfig, budget: bool = True) -> list[str]:
    """``ganft data check``: what a study's dataset holds, once loaded (and cached) as a trial would;
    ``budget`` False for a bare image folder, whose check has no N to range-check."""
    if budget:
        check_sizes(cfg)
    else:
        check_root(cfg.root)
    splits = load(cfg)
    c, h, w = splits.image_shape
    cached = "bundled with scikit-learn" if cfg.dataset == "digits" else \
        f"decoded tensors cached in {project_root() / '.ganft-cache' / 'data'}"
    lines = [f"{cfg.dataset}" + (f" from {cfg.root}" if cfg.root else "") + f": {c}x{h}x{w} images, "
             f"{splits.num_classes} classes; {cached}"]
    width = max(len("class"), *(len(name) for name in splits.classes))
    lines.append(f"  {'class':{width}s}  {'train':>7s}  {'test':>6s}")
    for k, name in enumerate(splits.classes):
        n_train, n_test = int((splits.train.y == k).sum()), int((splits.test.y == k).sum())
        lines.append(f"  {name:{width}s}  {n_train:7,d}  {n_test:6,d}")
    lines.append(f"  {'total':{width}s}  {len(splits.train):7,d}  {len(splits.test):6,d}")
    val = {"from-budget": round(cfg.val_fraction * cfg.train_size), "pool": cfg.val_size}.get(cfg.validation)
    return lines + [line for line in (tiny_split("test split", len(splits.test)),
                                      tiny_split(f"validation set ({cfg.validation})", val)) if line]


TINY_SPLIT_PP = 2.0  # one image moving accuracy by more than this swamps the effects a study measures


def tiny_split(what: str, n: int | None) -> str:
    """A warning when one image of a split moves its accuracy by more than TINY_SPLIT_PP points."""
    if not n or 100 / n <= TINY_SPLIT_PP:
        return ""
    return (f"warning: the {what} has {n:,} image{'s' if n != 1 else ''}, so one image moves its accuracy "
            f"by {100 / n:.1f} pp (more than {TINY_SPLIT_PP:g} pp): differences smaller than that are one "
            f"image's worth; give it at least {math.ceil(100 / TINY_SPLIT_PP)} images")
