"""The GAN LightningModule: DCGAN training on normal images, alternating a D step and a G step."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F

from anogan.nets import Discriminator, Generator
from anogan.prior import sample_prior
from anogan.reliability import NonFiniteLossError, check_finite_loss, check_optimizer

__all__ = ["GAN", "NonFiniteLossError"]
LR_HINT = "Lower the learning rates (model.optimizer_g.lr, model.optimizer_d.lr) or check the data for NaN."


class GAN(L.LightningModule):
    """Manual optimisation, per batch: D on real vs detached fake, then G with the non-saturating loss.

    ``optimizer_g`` / ``optimizer_d`` are partially configured optimisers (Hydra ``_partial_: true``)
    completed here with the networks' parameters. ``prior`` is p_z: ``uniform`` on [-1, 1]^z_dim
    (DCGAN's choice) or ``normal``.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        optimizer_g: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        prior: str = "uniform",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        check_optimizer(optimizer_g, "model.optimizer_g")
        check_optimizer(optimizer_d, "model.optimizer_d")
        sample_prior(prior, torch.Generator(), 1, 1)  # fail now on an unknown prior name
        self.prior = prior
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer_g", "optimizer_d"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # enough to rebuild G and D without Hydra (see anogan.inversion.load_gan)
        checkpoint["anogan_nets"] = {
            "generator": dict(self.generator.config),
            "discriminator": dict(self.discriminator.config),
            "prior": self.prior,
        }

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_prior(self.prior, generator, n, self.generator.z_dim, device=self.device)

    def configure_optimizers(self):
        return (
            self.optimizer_g(self.generator.parameters()),
            self.optimizer_d(self.discriminator.parameters()),
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = batch["image"]
        n = real.shape[0]
        step = self.global_step // 2  # each batch makes two optimiser steps
        ones, zeros = real.new_ones(n), real.new_zeros(n)
        fake = self.generator(self.sample_z(n))

        with self.toggled_optimizer(opt_d):
            logits_real = self.discriminator(real)
            logits_fake = self.discriminator(fake.detach())
            d_loss = F.binary_cross_entropy_with_logits(logits_real, ones) + \
                F.binary_cross_entropy_with_logits(logits_fake, zeros)
            check_finite_loss("train/d_loss", d_loss, step, LR_HINT)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()

        with self.toggled_optimizer(opt_g):
            g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
            check_finite_loss("train/g_loss", g_loss, step, LR_HINT)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()

        self.log_dict(
            {
                "train/d_loss": d_loss.detach(),
                "train/g_loss": g_loss.detach(),
                "train/d_real": torch.sigmoid(logits_real.detach()).mean(),
                "train/d_fake": torch.sigmoid(logits_fake.detach()).mean(),
            },
            prog_bar=True, on_step=True, on_epoch=True, batch_size=n,
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """D's mean output on normal and anomalous validation images: a cheap health signal."""
        prob = torch.sigmoid(self.discriminator(batch["image"]))
        for name, sel in (("normal", batch["label"] == 0), ("anomalous", batch["label"] == 1)):
            if sel.any():
                self.log(f"val/d_{name}", prob[sel].mean(), batch_size=int(sel.sum()))
