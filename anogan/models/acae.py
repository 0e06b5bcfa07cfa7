"""The paper's aCAE baseline: an adversarial convolutional autoencoder trained on the normal images.

The autoencoder minimises ``|x - Dec(E(x))|`` (mean over pixels) plus ``adversarial_weight`` times the
non-saturating GAN loss of its reconstruction, against a discriminator that tells x from Dec(E(x)).
It is scored like AnoGAN with Dec(E(x)) in place of G(z_Gamma): ``acae_residual``,
``acae_discrimination`` (features of the aCAE's own discriminator) and ``acae_anomaly``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from anogan.nets import losses
from anogan.nets import scores as S
from anogan.nets import AdversarialAutoencoder
from anogan.nets.common import freeze
from anogan.runtime.checkpoints import GAN_IDENTITY, read_stage_checkpoint, sub_state
from anogan.runtime.checks import FiniteLossGuard, check_optimizer

LR_HINT = ("Lower the learning rates (acae.module.optimizer_ae.lr, acae.module.optimizer_d.lr) or check the "
           "data for NaN.")


class ACAE(L.LightningModule):
    """Manual optimisation, per batch: D on x vs the detached reconstruction, then the autoencoder."""

    def __init__(
        self,
        net: AdversarialAutoencoder,
        optimizer_ae: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        adversarial_weight: float = 0.01,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.optimizer_ae, self.optimizer_d = optimizer_ae, optimizer_d
        check_optimizer(optimizer_ae, "acae.module.optimizer_ae")
        check_optimizer(optimizer_d, "acae.module.optimizer_d")
        self.finite = FiniteLossGuard(LR_HINT)
        self.gan_identity: str | None = None  # of the GAN whose run trains it, set by anogan.engine.stages
        self.save_hyperparameters(ignore=["net", "optimizer_ae", "optimizer_d"])

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.finite]

    def configure_optimizers(self):
        autoencoder = list(self.net.encoder.parameters()) + list(self.net.decoder.parameters())
        return self.optimizer_ae(autoencoder), self.optimizer_d(self.net.discriminator.parameters())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_ae, opt_d = self.optimizers()
        x = batch["image"]
        n = len(x)
        step = self.global_step // 2
        D = self.net.discriminator
        recon = self.net(x)

        with self.toggled_optimizer(opt_d):
            d_loss = losses.dcgan_d_loss(D(x), D(recon.detach()))
            self.finite.check("train/acae_d_loss", d_loss, step)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()

        with self.toggled_optimizer(opt_ae):
            rec_loss = (x - recon).abs().mean()
            adv_loss = losses.dcgan_g_loss(D(recon))
            ae_loss = rec_loss + self.hparams.adversarial_weight * adv_loss
            self.finite.check("train/acae_loss", ae_loss, step)
            opt_ae.zero_grad(set_to_none=True)
            self.manual_backward(ae_loss)
            opt_ae.step()

        self.log_dict(
            {"train/acae_rec_loss": rec_loss.detach(), "train/acae_adv_loss": adv_loss.detach(),
             "train/acae_d_loss": d_loss.detach()},
            prog_bar=True, on_step=True, on_epoch=True, batch_size=n,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["anogan_acae"] = dict(self.net.config)
        checkpoint[GAN_IDENTITY] = self.gan_identity


def load_acae(ckpt: str | os.PathLike | dict) -> AdversarialAutoencoder:
    """The aCAE nets from a checkpoint written by ``ACAE`` (``checkpoints/acae.ckpt``), a path or the
    dict of ``read_stage_checkpoint``. Its entry ``GAN_IDENTITY`` holds the
    ``anogan.runtime.checkpoints.gan_identity`` of the GAN of the run that trained it (None outside a run)."""
    ckpt = read_stage_checkpoint(ckpt, "anogan_acae", "acae")
    net = AdversarialAutoencoder(**ckpt["anogan_acae"])
    net.load_state_dict(sub_state(ckpt["state_dict"], "net"))
    return net


class ACAEScores(nn.Module):
    """The aCAE's scores of a batch, AnoGAN's equations with x^ = Dec(E(x)) in place of G(z_Gamma):
    ``acae_residual``, ``acae_discrimination``, ``acae_anomaly`` (weight ``lam``), each (B,);
    ``scores_and_map`` adds the residual map |x - Dec(E(x))| of the same pass."""

    def __init__(self, net: AdversarialAutoencoder, lam: float = 0.1):
        super().__init__()
        self.net, self.lam = net, lam
        freeze(self)

    def train(self, mode: bool = True) -> ACAEScores:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.scores_and_map(x)[0]

    @torch.no_grad()
    def scores_and_map(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(the scores of ``forward``, the residual map |x - Dec(E(x))| summed over channels (B, H, W) in
        [0, 2C], ``anogan.nets.scores.residual_map``) from one pass of the aCAE."""
        recon = self.net(x)
        D = self.net.discriminator
        residual = S.residual(x, recon)
        discrimination = S.discrimination(D.features(x), D.features(recon))
        scores = {
            "acae_residual": residual,
            "acae_discrimination": discrimination,
            "acae_anomaly": S.anomaly(residual, discrimination, self.lam),
        }
        return scores, S.residual_map(x, recon)
