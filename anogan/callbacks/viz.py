"""Small image helpers shared by the callbacks: tensors in [-1, 1] to grids and PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from anogan.runtime.io import atomic_path


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


def scan_map_figure(scan: np.ndarray, amap: np.ndarray, path: str | os.PathLike, mask: np.ndarray | None = None,
                    title: str | None = None, label: str = "|x - G(z)| per pixel",
                    alpha: float = 0.55) -> Path:
    """A scan (H, W) in [0, 1] with its anomaly map (H, W; NaN = not scored, drawn transparent) overlaid,
    a colour bar in map units; with ``mask`` (H, W) bool, the scan alone, the overlay and the mask side by
    side. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    h, w = scan.shape
    panels = 1 if mask is None else 3
    scale = max(1.0, 6.0 / w * 100)  # at least ~6 inches per panel
    fig = Figure(figsize=(panels * w / 100 * scale + 1.2, h / 100 * scale + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    finite = amap[np.isfinite(amap)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    over = axes[0] if mask is None else axes[1]
    if mask is not None:
        axes[0].imshow(scan, cmap="gray", vmin=0, vmax=1)
        axes[0].set_title("scan")
        axes[2].imshow(scan, cmap="gray", vmin=0, vmax=1)
        axes[2].imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.8, vmin=0, vmax=1)
        axes[2].set_title("true mask")
    over.imshow(scan, cmap="gray", vmin=0, vmax=1)
    im = over.imshow(np.ma.masked_invalid(amap), cmap="inferno", alpha=alpha, vmin=0, vmax=max(vmax, 1e-6))
    over.set_title("stitched map" if mask is not None else (title or "anomaly map"))
    fig.colorbar(im, ax=over, fraction=0.046 * h / max(w, 1) * 2, pad=0.02, label=label)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title and mask is not None:
        fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
