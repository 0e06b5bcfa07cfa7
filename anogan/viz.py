"""Small image helpers shared by the callbacks: tensors in [-1, 1] to grids and PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from anogan.io import atomic_path


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> [0, 1]."""
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, fill: float = 1.0) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one (H', W') or (H', W', 3) array, ``nrow`` images per row."""
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = torch.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), fill)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = images[k]
    arr = grid.numpy()
    return arr[0] if c == 1 else arr.transpose(1, 2, 0)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a grid from ``image_grid`` as PNG, atomically (temporary file, then rename)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        plt.imsave(tmp, array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=1, format="png")
    return path


def log_image(loggers, key: str, array: np.ndarray, step: int) -> None:
    """Send an image to every logger that takes images (wandb, TensorBoard); CSV has no images, the
    PNG in the run directory stands for it."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[array], step=step)
        elif isinstance(logger, TensorBoardLogger):
            fmt = "HW" if array.ndim == 2 else "HWC"
            logger.experiment.add_image(key, array, global_step=step, dataformats=fmt)
