"""What G has learned: sample grids from a fixed z, saved each epoch (the quickest look), and after
training a sample-quality figure (G's samples against the normal training images), with a warning when
G is far from its data."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from anogan.callbacks.viz import image_grid, log_image, save_png, to_unit
from anogan.models.baselines import knn_distance, training_images
from anogan.runtime.io import write_json_atomic

log = logging.getLogger(__name__)


class SampleGrid(L.Callback):
    """At the end of every ``every_n_epochs``-th training epoch, G(z_fixed) -> ``dirpath/epoch_XXXX.png``
    (and ``last.png``), also sent to the logger. z_fixed is drawn once from ``seed``."""

    def __init__(self, dirpath: str, n: int = 64, nrow: int = 8, every_n_epochs: int = 1, seed: int = 0):
        self.dirpath, self.n, self.nrow = Path(dirpath), n, nrow
        self.every_n_epochs, self.seed = every_n_epochs, seed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        z = pl_module.sample_z(self.n, torch.Generator().manual_seed(self.seed))
        g = pl_module.generator
        was_training = g.training
        g.eval()
        with torch.no_grad():
            grid = image_grid(to_unit(g(z)), self.nrow)
        g.train(was_training)
        if trainer.is_global_zero:
            save_png(grid, self.dirpath / f"epoch_{epoch:04d}.png")
            save_png(grid, self.dirpath / "last.png")
            log_image(trainer.loggers, "train/samples", grid, trainer.global_step)


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) Euclidean distance in pixels from each image of ``queries`` (B, C, H, W) to its nearest image
    of ``reference`` (N, C, H, W) (``anogan.models.baselines.knn_distance`` with k = 1, float64)."""
    return knn_distance(queries.flatten(1), reference.flatten(1), 1)


def sample_quality(samples: torch.Tensor, train: torch.Tensor, held_out: int) -> dict:
    """How close G's samples are to the normal class, against how close normal images are to each other.

    ``train`` (N, C, H, W) in [-1, 1], normal training images in dataset order: the last ``held_out`` are
    kept apart, the others are the reference. Returns ``{"ratio", "sample_nn_median", "held_out_nn_median",
    "samples", "reference", "held_out"}``: the median distance of ``samples`` (S, C, H, W) to their nearest
    reference image over the median distance of the held-out normal images to theirs. About 1 for a G
    that draws the normal class (its samples lie as close to the training images as new normal images
    do); well above 1 for a G that draws texture or blobs, whose mapping then fits anomalies as well as
    normals; below 1 for a G that copies training images or draws a blurred average. ``spread_ratio``:
    the median distance between two of G's samples over that between two held-out images; well below 1
    for a G whose samples collapse onto a few images. Both None (with ``reason``) when fewer than 2
    training images leave no reference or no held-out image."""
    held_out = min(int(held_out), len(train) // 2)
    out = {"samples": len(samples), "reference": len(train) - held_out, "held_out": held_out}
    if held_out < 1:
        return {**out, "ratio": None, "reason": f"{len(train)} training image(s): none to hold out"}
    reference, kept_apart = train[:-held_out], train[-held_out:]
    sample_nn = float(nearest_distances(samples, reference).median())
    held_nn = float(nearest_distances(kept_apart, reference).median())
    ratio = sample_nn / held_nn if held_nn > 0 else None
    held_spread = _median_pairwise(kept_apart)
    spread = _median_pairwise(samples) / held_spread if held_spread > 0 else None
    out.update(sample_nn_median=sample_nn, held_out_nn_median=held_nn, ratio=ratio, spread_ratio=spread)
    return out if ratio is not None else {**out, "reason": "held-out images equal to training images"}


def _median_pairwise(images: torch.Tensor) -> float:
    """The median Euclidean distance between two different images of ``images`` (B, C, H, W); 0 for B < 2."""
    if len(images) < 2:
        return 0.0
    d = torch.cdist(images.flatten(1).double(), images.flatten(1).double())
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


class SampleQuality(L.Callback):
    """After training, ``sample_quality`` of ``n`` samples of G (eval mode, z drawn from ``seed``) against
    the normal training images (at most ``max_images``; the last ``held_out`` of them kept apart): written
    to ``path`` (JSON), logged as ``train/sample_nn_ratio``, and a warning when the ratio exceeds
    ``warn_ratio``: G has not learned the normal class, and the mapping's scores (residual,
    discrimination, anomaly) cannot be trusted. Run on the first process only."""

    def __init__(self, path: str, n: int = 256, max_images: int = 4096, held_out: int = 256,
                 warn_ratio: float = 1.5, seed: int = 0):
        self.path, self.n, self.max_images, self.held_out = Path(path), int(n), int(max_images), int(held_out)
        self.warn_ratio, self.seed = float(warn_ratio), int(seed)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        train_set = getattr(trainer.datamodule, "train_set", None)
        if not trainer.is_global_zero or train_set is None:
            return
        z = pl_module.sample_z(self.n, torch.Generator().manual_seed(self.seed)).to(pl_module.device)
        g = pl_module.generator
        was_training = g.training
        g.eval()
        with torch.no_grad():
            samples = g(z).float().cpu()
        g.train(was_training)
        result = sample_quality(samples, training_images(train_set, self.max_images), self.held_out)
        result["warn_ratio"] = self.warn_ratio
        write_json_atomic(result, self.path)
        ratio = result["ratio"]
        if ratio is None:
            log.info("sample quality: not measured (%s)", result["reason"])
            return
        for lg in trainer.loggers:
            lg.log_metrics({"train/sample_nn_ratio": ratio}, step=trainer.global_step)
        what = (f"G's samples lie {ratio:.2f}x as far from their nearest training image as held-out normal "
                f"images do ({result['sample_nn_median']:.2f} vs {result['held_out_nn_median']:.2f}, medians)")
        spread = result["spread_ratio"]
        if spread is not None and spread < 1 / self.warn_ratio:
            log.warning("G's samples are %.2fx as spread as held-out normal images (median pairwise distance): "
                        "they collapse onto few images; AnoGAN's mapping can only reach those", spread)
        if ratio > self.warn_ratio:
            log.warning("%s: G has not learned the normal class, and AnoGAN's mapping scores (residual, "
                        "discrimination, anomaly) cannot be trusted; train longer or with a larger G "
                        "(see %s/last.png)", what, Path(trainer.default_root_dir) / "samples")
        else:
            log.info("sample quality: %s (%s)", what, self.path)
