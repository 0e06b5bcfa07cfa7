"""HDF5 image files: the schema check done on open, and a lazily-reading Dataset.

Schema (one row per image):

* ``images``: (N, H, W) or (N, C, H, W); uint8 (0..255), uint16 (0..65535) or float in [0, 1]
* ``labels``: (N,) integer or bool, 0 = normal, 1 = anomalous
* ``masks`` (optional): (N, H, W), bool or 0/1 integers, True where the image is anomalous
* ``volume`` (optional): (N,) integer id of the patient or volume the image comes from
* ``split`` (optional): (N,) 0 = train, 1 = val, 2 = test (fixes the split instead of drawing it)

Attributes (optional; written by ``python -m anogan.data.prepare``, checked when present): ``source``,
``patch_size`` (= H = W), ``stride``, ``per_image``, ``normalisation`` (none, image or global),
``percentiles``, ``scale`` (global: the intensities mapped to 0 and 1), ``min_foreground``,
``foreground_threshold``, ``min_anomalous_pixels``, ``volumes`` (the name of each volume id).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from anogan.data.transforms import check_channels, mask_to_size, to_model_range
from anogan.errors import InputError, MissingInputError

_CHUNK = 4096  # rows checked at a time when validating a file


@dataclass
class HDF5Info:
    """What the check on open learned about a file."""

    path: Path
    n: int
    channels: int
    size: int
    labels: np.ndarray
    has_masks: bool
    volume: np.ndarray | None
    split: np.ndarray | None


def _fail(path: Path, dataset: str, what: str) -> None:
    raise InputError(f"{path}: dataset '{dataset}' {what}")


NORMALISATIONS = ("none", "image", "global")


def _check_attrs(path: Path, attrs, size: int) -> None:
    """The optional attributes of the schema, where present, agree with the data."""
    if "patch_size" in attrs and int(attrs["patch_size"]) != size:
        raise InputError(f"{path}: attribute patch_size={attrs['patch_size']} but the images are {size}x{size}")
    if "normalisation" in attrs and attrs["normalisation"] not in NORMALISATIONS:
        raise InputError(f"{path}: attribute normalisation={attrs['normalisation']!r}; expected one of "
                         f"{', '.join(NORMALISATIONS)}")


def inspect_hdf5(path: str | os.PathLike) -> HDF5Info:
    """Check ``path`` against the schema above; raise ValueError naming file, dataset and row."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"HDF5 file {path} does not exist (set data.path to an existing file)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path} is not a readable HDF5 file: {e}") from e
    with f:
        for name in ("images", "labels"):
            if name not in f:
                _fail(path, name, f"is missing; the file has {sorted(f.keys())}")
        images, labels = f["images"], f["labels"]
        if images.ndim not in (3, 4):
            _fail(path, "images", f"has shape {images.shape}; expected (N, H, W) or (N, C, H, W)")
        kind = images.dtype.kind
        if kind == "i":
            _fail(path, "images", f"has dtype {images.dtype} (signed, as CT or OCT exports often are); "
                  "store them as float in [0, 1], e.g. (x - x.min()) / (x.max() - x.min()) over the whole "
                  "set, or as uint16 after subtracting the minimum; or let python -m anogan.data.prepare "
                  "folder --normalise global do it from the scans")
        if not (images.dtype in (np.uint8, np.uint16) or kind == "f"):
            _fail(path, "images", f"has dtype {images.dtype}; expected uint8, uint16 or float")
        n = images.shape[0]
        channels = 1 if images.ndim == 3 else images.shape[1]
        h, w = images.shape[-2:]
        if images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] == images.shape[2] \
                and images.shape[1] not in (1, 3, 4):
            _fail(path, "images", f"has shape {images.shape}: channels-last (N, H, W, C) images; store them "
                  "channels-first, (N, C, H, W), e.g. f.create_dataset('images', data=np.moveaxis(x, -1, 1))")
        if h != w:
            _fail(path, "images", f"holds {h}x{w} images; expected square images")
        if labels.shape != (n,):
            _fail(path, "labels", f"has shape {labels.shape}; expected ({n},) to match images")
        if labels.dtype.kind not in "biu":
            _fail(path, "labels", f"has dtype {labels.dtype}; expected integers 0/1 or bool")
        lab = labels[()].astype(np.int64)
        bad = np.flatnonzero((lab != 0) & (lab != 1))
        if bad.size:
            _fail(path, "labels", f"must be 0 or 1, found {lab[bad[0]]} at row {bad[0]}")
        if kind == "f":
            for start in range(0, n, _CHUNK):
                block = images[start : start + _CHUNK]
                rows = block.reshape(len(block), -1)
                nan = np.flatnonzero(~np.isfinite(rows).all(1))
                if nan.size:
                    _fail(path, "images", f"holds NaN or inf at row {start + nan[0]}")
                out = np.flatnonzero((rows.min(1) < 0) | (rows.max(1) > 1))
                if out.size:
                    _fail(path, "images", f"float values must lie in [0, 1], row {start + out[0]} "
                          "does not (rescale the images, or store uint8 / uint16)")
        has_masks = "masks" in f
        if has_masks:
            masks = f["masks"]
            if masks.shape != (n, h, w):
                _fail(path, "masks", f"has shape {masks.shape}; expected ({n}, {h}, {w}) to match images")
            if masks.dtype.kind not in "biu":
                _fail(path, "masks", f"has dtype {masks.dtype}; expected bool or 0/1 integers")
            for start in range(0, n, _CHUNK):
                block = masks[start : start + _CHUNK].reshape(-1, h * w)
                bad = np.flatnonzero(((block != 0) & (block != 1)).any(1))
                if bad.size:
                    _fail(path, "masks", f"must be binary (0/1), row {start + bad[0]} is not")
        extra = {}
        for name, allowed in (("volume", None), ("split", (0, 1, 2))):
            if name in f:
                arr = f[name][()]
                if arr.shape != (n,) or arr.dtype.kind not in "iu":
                    _fail(path, name, f"has shape {arr.shape} and dtype {arr.dtype}; expected ({n},) integers")
                if allowed is not None:
                    bad = np.flatnonzero(~np.isin(arr, allowed))
                    if bad.size:
                        _fail(path, name, f"must be 0 (train), 1 (val) or 2 (test), found {arr[bad[0]]} "
                              f"at row {bad[0]}")
                extra[name] = arr.astype(np.int64)
        _check_attrs(path, f.attrs, h)
    return HDF5Info(path, n, channels, h, lab, has_masks, extra.get("volume"), extra.get("split"))


def patch_recipe(path: str | os.PathLike) -> dict:
    """How the images of a (checked) file were made, as plain values (they go into checkpoints, which
    load with ``weights_only=True``): the attributes ``normalisation`` (``none`` when absent: values as
    stored), ``percentiles``, ``scale``, ``patch_size``, ``stride``, ``min_foreground``,
    ``foreground_threshold`` where present, the ``dtype`` of ``images`` and ``source`` (the file)."""
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        recipe = {"normalisation": str(attrs.get("normalisation", "none")), "dtype": str(f["images"].dtype),
                  "source": str(path)}
    for key, kind in (("percentiles", list), ("scale", list), ("patch_size", int), ("stride", int),
                      ("min_foreground", float), ("foreground_threshold", float)):
        if key in attrs:
            value = attrs[key]
            recipe[key] = [float(v) for v in value] if kind is list else kind(value)
    return recipe


class HDF5Dataset(Dataset):
    """Rows ``rows`` of an HDF5 file, read lazily: the file is opened on first access in each process
    (so every DataLoader worker has its own handle) and never in ``__init__``."""

    def __init__(self, info: HDF5Info, rows: np.ndarray, split: int, image_size: int, channels: int):
        check_channels(info.channels, channels, f"data.path={info.path}")  # grey is repeated to `channels`
        self.channels = channels
        self.path, self.rows, self.split = info.path, np.asarray(rows, dtype=np.int64), split
        self.labels = info.labels[self.rows]
        self.has_masks, self.image_size = info.has_masks, image_size
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles do not cross process boundaries
        return state

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f, row = self._handle(), int(self.rows[i])
        raw = f["images"][row]
        image = to_model_range(raw[None], self.image_size, channels=self.channels)[0]
        item = {
            "image": image,
            "label": torch.tensor(int(self.labels[i])),
            "index": torch.tensor(row),
            "split": torch.tensor(self.split),
        }
        if self.has_masks:
            item["mask"] = mask_to_size(f["masks"][row], self.image_size)
        return item
