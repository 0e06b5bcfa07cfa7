"""One-class DataModules: train on normal images only, validate and test on normal and anomalous ones.

Every item is a dict: ``image`` (C, H, W) float in [-1, 1], ``label`` (0 normal, 1 anomalous),
``index`` (the image's row in its source, the key of its initial z), ``split`` (see SPLITS) and,
where the source is annotated, ``mask`` (H, W) bool.

The test dataloader serves the test split followed by a sample of ``eval_train_samples`` training
images (split = train), which the evaluation maps too for the paper's Fig. 3c, d, and a sample of
``eval_val_samples`` normal validation images (split = val), on which the evaluation calibrates its
label-free thresholds and p-values (``anogan.metrics.conformal``, ``calibration_rows``); test metrics use
the test split only. With ``evaluate_on="val"`` (``data.evaluate_on=val``) the labelled validation split
takes the test split's place and no threshold is calibrated: development runs that choose a recipe
without looking at a test label. All splits and samples are deterministic functions of ``seed``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from anogan.data import sources
from anogan.data.hdf5 import HDF5Dataset, inspect_hdf5, patch_recipe
from anogan.data.transforms import to_model_range
from anogan.errors import InputError

log = logging.getLogger(__name__)
SPLITS = {"train": 0, "val": 1, "test": 2}
# data.evaluate_on: the split the evaluation scores (val: development runs, no test label looked at)
EVALUATE_ON = ("test", "val")


def calibration_rows(split: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The rows (bool, the shape of ``split``) whose scores calibrate the label-free thresholds and
    p-values: split = val and label 0 (the normal validation images) or -1 (unknown, known normal:
    the patches of ``data=scans``'s ``data.normal_path`` scans). Never test or training rows (the GAN saw
    the training images: their scores are not exchangeable with new normal images')."""
    split, label = np.asarray(split), np.asarray(label)
    return (split == SPLITS["val"]) & ((label == 0) | (label == -1))


class ArrayDataset(Dataset):
    """In-memory images (N, C, H, W) in [-1, 1] with labels and the source row of each image."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, rows: np.ndarray, split: str):
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.split = SPLITS[split]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[i],
            "label": self.labels[i],
            "index": self.rows[i],
            "split": torch.tensor(self.split),
        }


class OneClassDataModule(L.LightningDataModule):
    """Shared splitting and loading; subclasses implement ``build`` for their source."""

    more_normal = "more normal training images"  # how to give this source more: named in errors

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 1,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        eval_train_samples: int = 64,
        test_subset: int | None = None,
        eval_val_samples: int = 256,
        evaluate_on: str = "test",
    ):
        super().__init__()
        if evaluate_on not in EVALUATE_ON:
            raise InputError(f"data.evaluate_on={evaluate_on!r}: expected test (the test split) or val (the "
                             "labelled validation split, to choose a recipe without the test labels)")
        if not 0 <= val_fraction < 1:
            raise InputError(f"data.val_fraction={val_fraction} must lie in [0, 1)")
        for key, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("image_size", image_size, 1), ("channels", channels, 1),
                                ("num_workers", num_workers, 0), ("eval_train_samples", eval_train_samples, 0),
                                ("eval_val_samples", eval_val_samples, 0),
                                ("test_subset", test_subset, 1)):
            if value is not None and (int(value) != value or value < low):
                raise InputError(f"data.{key}={value} must be an integer >= {low}")
        self.image_size, self.channels = image_size, channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.val_fraction = val_fraction
        self.eval_train_samples, self.test_subset = eval_train_samples, test_subset
        self.eval_val_samples = eval_val_samples
        self.evaluate_on = evaluate_on
        self.train_set = self.val_set = self.test_set = None

    # -- subclasses --------------------------------------------------------------------------------
    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        """(train with normal images only, val, test)."""
        raise NotImplementedError

    # -- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build()
            if len(self.train_set) == 0:
                raise InputError(f"{type(self).__name__}: no normal image in the training split; train on "
                                 f"{self.more_normal}")
            if self.evaluate_on == "val":
                self.test_set = self._val_as_test()
            if self.test_subset is not None and self.test_subset < len(self.test_set):
                self.test_set = Subset(self.test_set, self._sample(len(self.test_set), self.test_subset, 1))

    def _val_as_test(self) -> Dataset:
        """``data.evaluate_on=val``: the validation split served as the test split (its items' ``split`` is
        test, so every score and metric of the evaluation describes it), for development runs that choose
        a recipe without looking at the test labels. Raises InputError when it does not hold both normal
        (label 0) and anomalous (label 1) images: no AUROC is defined on it."""
        labels = set(np.unique(np.asarray(self.val_set.labels) if self.val_set is not None else []).tolist())
        if not {0, 1} <= labels:
            raise InputError(
                f"data.evaluate_on=val: the validation split of {type(self).__name__} holds "
                f"{len(self.val_set) if self.val_set is not None else 0} image(s) with labels {sorted(labels)}, "
                "not both normal and anomalous ones, so no AUROC is defined on it; use data.evaluate_on=test, or "
                "a source whose validation split is labelled by class (fashion_mnist, mnist, digits)")
        view = copy.copy(self.val_set)
        view.split = SPLITS["test"]
        return view

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def _sample(self, n: int, k: int, stream: int) -> list[int]:
        return sorted(self._rng(stream).choice(n, size=min(k, n), replace=False).tolist())

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int, drop_last: bool = False):
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of ``batch_size`` normal images per process; under DDP each process trains
        on its share of the images (Lightning's DistributedSampler: ceil(N / processes), padded by
        repeating a few). The last incomplete batch is dropped (a batch of 1 breaks BatchNorm) unless
        the share is one batch or less, which then trains as one smaller batch.

        Raises InputError, before training, when a process would get fewer than 2 images."""
        world = int(getattr(self.trainer, "world_size", 1) or 1)
        share = -(-len(self.train_set) // world)
        if share < 2:
            raise InputError(
                f"{len(self.train_set)} normal training image(s) over {world} process(es) is {share} image per "
                f"process (data.batch_size={self.batch_size}), and a training batch needs at least 2 (BatchNorm): "
                f"train with fewer processes (trainer.devices) or on {self.more_normal}"
            )
        if world > 1 and share <= self.batch_size:
            log.info("%d normal training images over %d processes: one batch of %d per process and epoch "
                     "(data.batch_size=%d)", len(self.train_set), world, share, self.batch_size)
        return self._loader(self.train_set, True, self.batch_size, drop_last=share > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def train_sample(self) -> Dataset:
        """The deterministic sample of training images that the evaluation maps for Fig. 3c, d."""
        return Subset(self.train_set, self._sample(len(self.train_set), self.eval_train_samples, 2))

    def val_sample(self) -> Dataset:
        """The deterministic sample of at most ``eval_val_samples`` normal validation images (label 0)
        that the evaluation maps to calibrate thresholds without test labels; empty without a val split, and
        with ``data.evaluate_on=val`` (the validation images are then the ones scored, and a threshold
        calibrated on them is not a label-free one: the calibrated thresholds are null with their reason)."""
        if self.evaluate_on == "val":
            return Subset(self.val_set, [])
        normal = np.flatnonzero(np.asarray(self.val_set.labels) == 0) if self.val_set is not None else []
        pick = self._sample(len(normal), self.eval_val_samples, 4) if len(normal) else []
        return Subset(self.val_set, [int(normal[i]) for i in pick])

    def test_dataloader(self) -> DataLoader:
        parts = [self.test_set]
        if self.eval_train_samples > 0:
            parts.append(self.train_sample())
        if self.eval_val_samples > 0 and len(self.val_sample()):
            parts.append(self.val_sample())
        return self._loader(ConcatDataset(parts), False, self.eval_batch_size)


class ClassDataModule(OneClassDataModule):
    """A labelled-by-class source: the images of ``normal_classes`` are normal, all others anomalous."""

    more_normal = "more normal classes (data.normal_classes)"

    def __init__(self, normal_classes: Sequence[int] = (0,), **kwargs):
        super().__init__(**kwargs)
        self.normal_classes = [int(c) for c in normal_classes]
        if not self.normal_classes:
            raise InputError("data.normal_classes is empty; name at least one class, e.g. [0]")

    def _check_classes(self, classes: np.ndarray, where: str) -> None:
        unknown = sorted(set(self.normal_classes) - set(np.unique(classes).tolist()))
        if unknown:
            raise InputError(
                f"data.normal_classes={self.normal_classes}: {where} has no image of class "
                f"{unknown}; its classes are {sorted(np.unique(classes).tolist())}"
            )

    def _labels(self, classes: np.ndarray) -> np.ndarray:
        return (~np.isin(classes, self.normal_classes)).astype(np.int64)

    def _split_train_val(self, images: torch.Tensor, classes: np.ndarray, rows: np.ndarray):
        """Hold out ``val_fraction`` of a training pool (all classes) for validation; keep its normal
        images for training."""
        order = self._rng(0).permutation(len(rows))
        n_val = int(round(self.val_fraction * len(rows)))
        val, rest = order[:n_val], order[n_val:]
        rest = np.sort(rest[~self._labels(classes[rest]).astype(bool)])
        val = np.sort(val)
        train = ArrayDataset(images[rest], np.zeros(len(rest)), rows[rest], "train")
        val_set = ArrayDataset(images[val], self._labels(classes[val]), rows[val], "val")
        return train, val_set


class DigitsDataModule(ClassDataModule):
    """scikit-learn's bundled 8x8 digits (1797 images), resized to ``image_size``; no file, no network.

    The images are split at random (from ``seed``) into test (``test_fraction``), val and train."""

    def __init__(self, test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not 0 < test_fraction < 1:
            raise InputError(f"data.test_fraction={test_fraction} must lie in (0, 1)")
        self.test_fraction = test_fraction

    def build(self):
        raw, classes = sources.load_digits_arrays()
        self._check_classes(classes, "sklearn digits")
        images = to_model_range(raw, self.image_size, max_value=16.0, channels=self.channels)
        rows = np.arange(len(raw))
        order = self._rng(3).permutation(len(raw))
        n_test = int(round(self.test_fraction * len(raw)))
        test, pool = np.sort(order[:n_test]), np.sort(order[n_test:])
        train, val = self._split_train_val(images[pool], classes[pool], rows[pool])
        test_set = ArrayDataset(images[test], self._labels(classes[test]), rows[test], "test")
        return train, val, test_set


class IDXDataModule(ClassDataModule):
    """MNIST-style IDX files (``dataset``: fashion_mnist or mnist), the standard one-class protocol:
    train on the training images of ``normal_classes``, test on the whole test set.

    Files are looked for in ``root``, then in the system copy (Debian's dataset-fashion-mnist), else
    downloaded into ``root`` (``download``)."""

    def __init__(self, dataset: str = "fashion_mnist", root: str = "data", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.dataset, self.root, self.download = dataset, root, download

    def build(self):
        files = sources.locate_idx_files(self.dataset, self.root, self.download)
        tr_raw, tr_classes = sources.load_idx_split(files, "train")
        te_raw, te_classes = sources.load_idx_split(files, "test")
        self._check_classes(tr_classes, f"{self.dataset} training set")
        images = to_model_range(tr_raw, self.image_size, channels=self.channels)
        train, val = self._split_train_val(images, tr_classes, np.arange(len(tr_raw)))
        test = ArrayDataset(
            to_model_range(te_raw, self.image_size, channels=self.channels), self._labels(te_classes),
            np.arange(len(te_raw)), "test",
        )
        return train, val, test


class HDF5DataModule(OneClassDataModule):
    """An HDF5 file of images with 0/1 labels and optional masks (schema in ``anogan.data.hdf5``).

    Uses the file's ``split`` dataset when present; otherwise draws a test split of ``test_fraction``
    (patient-wise when a ``volume`` dataset exists) and a val split from the rest. A file whose ``split``
    has no val rows (``prepare folder``: volumes without masks train, annotated volumes test) gets a
    held-out normal set: ``val_fraction`` of its training volumes (rounded; 0 keeps all for training)
    become the val split, for thresholds calibrated without test labels. Training keeps the normal
    images only. Rows are read lazily in each worker."""

    more_normal = "a file with more normal images (data.path), or a smaller data.val_fraction"

    def __init__(self, path: str = "???", test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.path, self.test_fraction = path, test_fraction

    def _assign(self, n: int, groups: np.ndarray | None) -> np.ndarray:
        """Split code of each row: groups (volumes) are never shared between splits."""
        keys = np.arange(n) if groups is None else groups
        uniq = np.unique(keys)
        order = self._rng(3).permutation(len(uniq))
        n_test = int(round(self.test_fraction * len(uniq)))
        n_val = int(round(self.val_fraction * len(uniq)))
        code = np.full(len(uniq), SPLITS["train"])
        code[order[:n_test]] = SPLITS["test"]
        code[order[n_test : n_test + n_val]] = SPLITS["val"]
        return code[np.searchsorted(uniq, keys)]

    def _hold_out_val(self, split: np.ndarray, volume: np.ndarray | None) -> np.ndarray:
        """``split`` with ``val_fraction`` of the training volumes (rows without ``volume``) moved to val."""
        train = split == SPLITS["train"]
        keys = volume[train] if volume is not None else np.flatnonzero(train)
        uniq = np.unique(keys)
        n_val = int(round(self.val_fraction * len(uniq)))
        if n_val == 0 or n_val == len(uniq):
            return split
        held = self._rng(5).choice(uniq, size=n_val, replace=False)
        split = split.copy()
        split[np.flatnonzero(train)[np.isin(keys, held)]] = SPLITS["val"]
        log.info("data.path=%s has no val split: %d of its %d training %s held out as normal validation data "
                 "(data.val_fraction=%g)", self.path, n_val, len(uniq),
                 "volumes" if volume is not None else "rows", self.val_fraction)
        return split

    def build(self):
        info = inspect_hdf5(self.path)
        if info.size != self.image_size:  # said once: silently resized data is a classic wrong result
            log.warning("data.path=%s holds %dx%d images; they are resized (bilinear) to the model's %dx%d",
                        info.path, info.size, info.size, self.image_size, self.image_size)
        self.recipe = patch_recipe(info.path)  # stored in checkpoints: new scans are read the same way
        split = info.split if info.split is not None else self._assign(info.n, info.volume)
        if info.split is not None and not (split == SPLITS["val"]).any():
            split = self._hold_out_val(split, info.volume)
        train_rows = np.flatnonzero((split == SPLITS["train"]) & (info.labels == 0))
        if len(train_rows) == 0:
            raise InputError(f"{info.path}: the training split holds no normal image (label 0)")

        def part(name: str, rows: np.ndarray) -> HDF5Dataset:
            return HDF5Dataset(info, rows, SPLITS[name], self.image_size, self.channels)

        return (
            part("train", train_rows),
            part("val", np.flatnonzero(split == SPLITS["val"])),
            part("test", np.flatnonzero(split == SPLITS["test"])),
        )
