"""The GAN LightningModule: training on normal images with AnoGAN's DCGAN objective (alternating a D
step and a G step) or f-AnoGAN's WGAN-GP (``critic_iterations`` critic steps per G step)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from anogan.nets import losses
from anogan.nets import family_of, running_stats_frozen
from anogan.nets.prior import sample_prior
from anogan.runtime.checks import FiniteLossGuard, NonFiniteLossError, check_optimizer
from anogan.errors import InputError

__all__ = ["GAN", "NonFiniteLossError"]
LR_HINT = "Lower the learning rates (model.optimizer_g.lr, model.optimizer_d.lr) or check the data for NaN."


class GAN(L.LightningModule):
    """Manual optimisation of G and D (the critic, for WGAN-GP) on the normal training images.

    * ``objective=dcgan`` (AnoGAN), per batch: D on real vs detached fake (sigmoid cross-entropy), then
      G with the non-saturating loss; two optimiser steps per batch.
    * ``objective=wgangp`` (f-AnoGAN's released code, Gulrajani et al. 2017), per batch: one critic step
      on ``-(mean D(real) - mean D(fake)) + gp_weight * gradient penalty``; after every
      ``critic_iterations``-th batch of the run (counted across epochs) also one G step on
      ``-mean D(G(z))``. So ``trainer.global_step`` grows by ``1 + 1 / critic_iterations`` per batch.
      G's BatchNorm running statistics move in G steps only (the critic step runs G on batch
      statistics), as the official code's ``update_ops`` tied to G's train op.
      Logs ``train/wasserstein`` and ``train/gradient_penalty``. D must have no BatchNorm.

    ``optimizer_g`` / ``optimizer_d`` are partially configured optimisers (Hydra ``_partial_: true``)
    completed here with the networks' parameters (f-AnoGAN: Adam 1e-4, betas (0, 0.9)). ``prior`` is p_z:
    ``uniform`` on [-1, 1]^z_dim (DCGAN's choice) or ``normal`` (f-AnoGAN's).

    Raises ValueError for an unknown prior or objective, ``critic_iterations < 1``, a negative
    ``gp_weight``, or WGAN-GP with a BatchNorm critic.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer_g: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        prior: str = "uniform",
        objective: str = "dcgan",
        critic_iterations: int = 5,
        gp_weight: float = 10.0,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        check_optimizer(optimizer_g, "model.optimizer_g")
        check_optimizer(optimizer_d, "model.optimizer_d")
        sample_prior(prior, torch.Generator(), 1, 1)  # fail now on an unknown prior name
        if objective not in losses.OBJECTIVES:
            raise InputError(f"model.objective={objective!r} must be one of {losses.OBJECTIVES}")
        if int(critic_iterations) != critic_iterations or critic_iterations < 1 or gp_weight < 0:
            raise InputError(f"model.critic_iterations={critic_iterations} must be an integer >= 1 and "
                             f"model.gp_weight={gp_weight} >= 0 (f-AnoGAN: 5 and 10)")
        if objective == "wgangp" and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                         for m in discriminator.modules()):
            raise InputError(
                "model.objective=wgangp needs a critic without BatchNorm (the gradient penalty is per "
                "image, and BatchNorm mixes the images of a batch): use model=wgangp_resnet, whose critic "
                "has LayerNorm, or model.objective=dcgan"
            )
        if family_of(generator) != family_of(discriminator):
            raise InputError(f"G is of the {family_of(generator)} family but D of the "
                             f"{family_of(discriminator)} family; configure both from one model= preset")
        self.prior, self.objective = prior, objective
        self.finite = FiniteLossGuard(LR_HINT)
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer_g", "optimizer_d"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # enough to rebuild G and D without Hydra (see anogan.models.inversion.load_gan)
        checkpoint["anogan_nets"] = {
            "generator": dict(self.generator.config),
            "discriminator": dict(self.discriminator.config),
            "prior": self.prior,
            "family": family_of(self.generator),
            "objective": self.objective,
        }

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_prior(self.prior, generator, n, self.generator.z_dim, device=self.device)

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.finite]  # stops training at a non-finite loss (anogan.runtime.checks.FiniteLossGuard)

    def configure_optimizers(self):
        return (
            self.optimizer_g(self.generator.parameters()),
            self.optimizer_d(self.discriminator.parameters()),
        )

    def _step(self, opt, name: str, loss: torch.Tensor, step: int, guarded: torch.Tensor | None = None) -> None:
        self.finite.check(name, loss if guarded is None else guarded, step)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.objective == "wgangp":
            return self._wgangp_step(batch["image"])
        opt_g, opt_d = self.optimizers()
        real = batch["image"]
        n = real.shape[0]
        step = self.global_step // 2  # each batch makes two optimiser steps
        fake = self.generator(self.sample_z(n))

        with self.toggled_optimizer(opt_d):
            logits_real = self.discriminator(real)
            logits_fake = self.discriminator(fake.detach())
            d_loss = losses.dcgan_d_loss(logits_real, logits_fake)
            self._step(opt_d, "train/d_loss", d_loss, step)

        with self.toggled_optimizer(opt_g):
            g_loss = losses.dcgan_g_loss(self.discriminator(fake))
            self._step(opt_g, "train/g_loss", g_loss, step)

        self.log_dict(
            {
                "train/d_loss": d_loss.detach(),
                "train/g_loss": g_loss.detach(),
                "train/d_real": torch.sigmoid(logits_real.detach()).mean(),
                "train/d_fake": torch.sigmoid(logits_fake.detach()).mean(),
            },
            prog_bar=True, on_step=True, on_epoch=True, batch_size=n,
        )

    def _wgangp_step(self, real: torch.Tensor) -> None:
        opt_g, opt_d = self.optimizers()
        hp, D = self.hparams, self.discriminator
        n = real.shape[0]
        step = self.trainer.fit_loop.epoch_loop.total_batch_idx  # batches of the run, kept on resume
        with self.toggled_optimizer(opt_d):
            with torch.no_grad(), running_stats_frozen(self.generator):  # G's statistics move in G steps only
                fake = self.generator(self.sample_z(n))
            wasserstein = losses.wasserstein_estimate(D(real), D(fake))
            eps = torch.rand(n, 1, 1, 1, device=real.device, dtype=real.dtype)
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed: a GradScaler
            # PyTorch's AMP recipe: the penalty's gradient scaled before autograd.grad, unscaled after; the
            # scale read as a device tensor (scaler.scale of 1), not get_scale(), which syncs the host
            scale = scaler.scale(torch.ones((), device=real.device)) if scaler is not None else 1.0
            penalty = losses.gradient_penalty(D, real, fake, eps, scale)
            d_loss = -wasserstein + hp.gp_weight * penalty
            # with a scaler an overflowed penalty gradient is the scaler's to skip (it lowers the scale);
            # the guard then watches the Wasserstein term
            self._step(opt_d, "train/d_loss", d_loss, step, None if scaler is None else -wasserstein)
        logs = {"train/d_loss": d_loss.detach(), "train/wasserstein": wasserstein.detach(),
                "train/gradient_penalty": penalty.detach()}
        if (step + 1) % hp.critic_iterations == 0:
            with self.toggled_optimizer(opt_g):
                g_loss = -D(self.generator(self.sample_z(n))).mean()
                self._step(opt_g, "train/g_loss", g_loss, step)
            self.log("train/g_loss", g_loss.detach(), on_step=True, on_epoch=True, batch_size=n)
        self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """D's mean output on normal and anomalous validation images: a cheap health signal (the
        probability of "real" for DCGAN, the critic's value for WGAN-GP)."""
        out = self.discriminator(batch["image"])
        prob = torch.sigmoid(out) if self.objective == "dcgan" else out
        name = "d" if self.objective == "dcgan" else "critic"
        for group, sel in (("normal", batch["label"] == 0), ("anomalous", batch["label"] == 1)):
            if sel.any():
                self.log(f"val/{name}_{group}", prob[sel].mean(), batch_size=int(sel.sum()))
