"""Readers for the raw image sources: scikit-learn's bundled digits, IDX files (MNIST, Fashion-MNIST).

Each reader returns numpy arrays as stored (uint8 images (N, H, W), integer classes (N,)); turning
them into model tensors is the DataModule's job.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from anogan.errors import InputError, MissingInputError

# Debian's dataset-fashion-mnist package installs the four gzipped IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

IDX_DATASETS = {
    "fashion_mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "system_dirs": [DEBIAN_FASHION_MNIST],
        "hint": "apt-get install -y dataset-fashion-mnist",
    },
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "system_dirs": [],
        "hint": "download the four MNIST IDX files into data.root",
    },
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: images uint8 (1797, 8, 8) in [0, 16], classes (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.uint8), digits.target.astype(np.int64)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its stored shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise InputError(
            f"{path} is truncated or corrupt: header says shape {dims} ({expected} bytes), "
            f"found {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` atomically (temporary file, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def locate_idx_files(dataset: str, root: str | os.PathLike, download: bool = True) -> dict[str, Path]:
    """Paths of the four IDX files of ``dataset``: from ``root``, else the system copy, else download.

    Raises FileNotFoundError listing every place looked in and how to get the files.
    """
    if dataset not in IDX_DATASETS:
        raise InputError(f"unknown IDX dataset {dataset!r}; expected one of {sorted(IDX_DATASETS)}")
    spec = IDX_DATASETS[dataset]
    root = Path(root)
    dirs = [root, *spec["system_dirs"]]
    names = [n for pair in IDX_FILES.values() for n in pair]
    found = {n: _find(n, dirs) for n in names}
    missing = [n for n, p in found.items() if p is None]
    errors = []
    if missing and download:
        for n in missing:
            dest = root / f"{n}.gz"
            try:
                _download(spec["url"] + f"{n}.gz", dest)
                found[n] = dest
            except Exception as e:  # network down, HTTP error, ...
                errors.append(f"{n}.gz: {e}")
        missing = [n for n, p in found.items() if p is None]
    if missing:
        where = ", ".join(str(d) for d in dirs)
        msg = (
            f"{dataset}: IDX files not found: {', '.join(missing)} (with or without .gz), "
            f"looked in {where}"
        )
        if errors:
            msg += f"; download from {spec['url']} failed ({'; '.join(errors)})"
        msg += f". To get them: {spec['hint']}, or put the files in data.root={root}."
        raise MissingInputError(msg)
    return found  # type: ignore[return-value]


def load_idx_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W), classes int64 (N,)) of the ``train`` or ``test`` split."""
    image_name, label_name = IDX_FILES[split]
    images, classes = read_idx(files[image_name]), read_idx(files[label_name])
    if images.ndim != 3 or classes.ndim != 1 or len(images) != len(classes):
        raise InputError(
            f"IDX {split} split: images {files[image_name]} of shape {images.shape} and labels "
            f"{files[label_name]} of shape {classes.shape} do not match (expected (N, H, W) and (N,))"
        )
    return images.astype(np.uint8), classes.astype(np.int64)
