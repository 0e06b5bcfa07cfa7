"""Sample grids from a fixed z, saved each epoch: the quickest look at what G has learned."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from anogan.callbacks.viz import image_grid, log_image, save_png, to_unit


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
