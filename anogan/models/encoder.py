"""f-AnoGAN's encoder (Schlegl et al., MedIA 2019): E is trained with G and D frozen on one of the
paper's three losses (``mode``): izi_f ``||x - G(E(x))||^2 / n + kappa ||f(x) - f(G(E(x)))||^2 / m``
(the published choice), izi (the image term alone) or ziz (``||z - E(G(z))||^2 / d`` on sampled z);
scoring is then one forward pass.

``EncoderTraining`` is the LightningModule that fits E on the normal training images; ``FAnoGAN``
scores a batch (score ``fanogan``) for the evaluation; ``load_encoder`` reads a checkpoint back.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from anogan.nets import scores as S
from anogan.nets import build, encoder_like, family_of
from anogan.nets.common import freeze
from anogan.nets.resnet import resnet_hint
from anogan.nets.prior import encoder_squash, sample_prior
from anogan.runtime.checkpoints import (
    GAN_IDENTITY,
    CheckpointError,
    gan_identity,
    read_stage_checkpoint,
    sub_state,
)
from anogan.runtime.checks import FiniteLossGuard, check_optimizer
from anogan.errors import InputError

MODES = ("izi_f", "izi", "ziz")  # the paper's three encoder trainings


def check_mode(mode: str) -> None:
    """Refuse an encoder training mode other than the paper's three (``MODES``), naming the key and the
    presets. Raises InputError."""
    if mode not in MODES:
        raise InputError(f"encoder.module.mode={mode!r} must be one of {MODES} (or use encoder=ziz, "
                         "encoder=izi, encoder=izi_f)")


class EncoderTraining(L.LightningModule):
    """Fits E with G and D frozen, in train mode (BatchNorm on batch statistics); logs
    ``train/izif_loss``, ``train/izi_loss`` or ``train/ziz_loss``.

    ``mode`` is the paper's encoder training: ``izi_f`` (default; ``anogan.nets.scores.fanogan`` on the normal
    training images), ``izi`` (``anogan.nets.scores.izi``, the image term alone) or ``ziz``
    (``anogan.nets.scores.ziz`` on a batch of z ~ ``prior`` as large as the image batch; the images are not
    used). Whatever the mode, the evaluation scores with izi_f's expression and ``kappa``, as the paper
    compares the three.

    ``encoder``: E, or None to build f-AnoGAN's E from D (``anogan.nets.encoder_like``: D's family and
    architecture, ``width`` if given, a linear output to G's z_dim) with the output squashing
    ``squash`` (``auto``: tanh for the uniform prior, none for the normal one; ``tanh``, ``none``,
    ``clip``; see ``anogan.nets.prior.encoder_squash``). ``prior`` is the GAN's p_z. ``optimizer`` is a
    partially configured optimiser (Hydra ``_partial_: true``) completed with E's parameters (official
    code: TF1 RMSProp 5e-5, ``anogan.nets.optim.TF1RMSprop``); ``kappa`` weighs the feature term.

    Raises InputError (a ValueError) when E's z_dim differs from G's, or for an unknown mode, squash or prior."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        encoder: nn.Module | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        kappa: float = 1.0,
        squash: str = "auto",
        prior: str = "uniform",
        width: int | None = None,
        mode: str = "izi_f",
    ):
        super().__init__()
        check_mode(mode)
        sample_prior(prior, torch.Generator(), 1, 1)  # fail now on an unknown prior name
        if encoder is None:
            encoder = encoder_like(discriminator, generator.z_dim, encoder_squash(squash, prior), width)
        if encoder.z_dim != generator.z_dim:
            raise InputError(f"encoder.z_dim={encoder.z_dim} differs from the generator's z_dim={generator.z_dim}")
        if optimizer is None:
            raise InputError("EncoderTraining needs an optimizer (encoder.module.optimizer)")
        self.generator, self.discriminator, self.encoder = generator, discriminator, encoder
        freeze(generator, discriminator)
        check_optimizer(optimizer, "encoder.module.optimizer")
        if not kappa >= 0:
            raise InputError(f"encoder.module.kappa={kappa} must be >= 0 (the weight of the feature term)")
        self.optimizer, self.kappa, self.mode, self.prior = optimizer, kappa, mode, prior
        self.finite = FiniteLossGuard("Lower encoder.module.optimizer.lr or check the data for NaN.")
        self.save_hyperparameters(ignore=["generator", "discriminator", "encoder", "optimizer"])

    def train(self, mode: bool = True) -> EncoderTraining:
        super().train(mode)
        freeze(self.generator, self.discriminator)  # frozen whatever Lightning asks
        return self

    def loss(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``mode`` per sample (B,): of the images x (B, C, H, W) for izi_f and izi, of the
        latent vectors z (B, z_dim) for ziz (drawn from the prior when None)."""
        if self.mode == "ziz":
            if z is None:
                z = sample_prior(self.prior, None, len(x), self.generator.z_dim, device=x.device)
            return S.ziz(z, self.encoder(self.generator(z)))
        gez = self.generator(self.encoder(x))
        if self.mode == "izi":
            return S.izi(x, gez)
        fx = self.discriminator.features(x)
        return S.fanogan(x, gez, fx, self.discriminator.features(gez), self.kappa)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        loss = self.loss(x).mean()
        name = f"train/{self.mode.replace('_', '')}_loss"
        self.finite.check(name, loss, self.global_step)
        self.log(name, loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        return self.optimizer(self.encoder.parameters())

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.finite]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["anogan_encoder"] = {"encoder": dict(self.encoder.config), "kappa": float(self.kappa),
                                        "family": family_of(self.encoder), "mode": self.mode}
        checkpoint[GAN_IDENTITY] = gan_identity(self.generator, self.discriminator)


def load_encoder(ckpt: str | os.PathLike | dict) -> tuple[nn.Module, float]:
    """(E, kappa) from a checkpoint written by ``EncoderTraining`` (``checkpoints/encoder.ckpt``), a
    path or the dict of ``read_stage_checkpoint``; E of the family it records (``dcgan`` for
    checkpoints written before families existed). Its entry ``GAN_IDENTITY`` holds the
    ``anogan.runtime.checkpoints.gan_identity`` of the G and D it was trained against."""
    path = ckpt if not isinstance(ckpt, dict) else "<checkpoint dict>"
    ckpt = read_stage_checkpoint(ckpt, "anogan_encoder", "encoder")
    meta = ckpt["anogan_encoder"]
    encoder = build(meta.get("family", "dcgan"), "encoder", **meta["encoder"])
    try:
        encoder.load_state_dict(sub_state(ckpt["state_dict"], "encoder"))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the encoder it describes ({meta}){resnet_hint(meta)}: "
                              f"{e}") from None
    return encoder, meta["kappa"]


class FAnoGAN(nn.Module):
    """The f-AnoGAN scores of a batch x (B, C, H, W) in one forward pass (no optimisation):
    ``{"fanogan": (B,), "fanogan_latent": (B,)}``, the izi_f score and the latent distance
    ||E(x) - E(G(E(x)))||^2 that the official ``anomaly_detection.py`` reports beside it.
    ``scores_and_map`` adds the residual map |x - G(E(x))| of the same pass (what ``python -m
    anogan.export`` exports)."""

    def __init__(self, encoder: nn.Module, generator: nn.Module, discriminator: nn.Module, kappa: float = 1.0):
        super().__init__()
        self.encoder, self.generator, self.discriminator, self.kappa = encoder, generator, discriminator, kappa
        freeze(self)

    def train(self, mode: bool = True) -> FAnoGAN:
        return super().train(False)  # always scores with BatchNorm's running statistics

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.scores_and_map(x)[0]

    @torch.no_grad()
    def scores_and_map(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(the scores of ``forward``, the residual map |x - G(E(x))| summed over channels (B, H, W) in
        [0, 2C], ``anogan.nets.scores.residual_map``) from one pass of E, G and D."""
        ex = self.encoder(x)
        gez = self.generator(ex)
        fx = self.discriminator.features(x)
        scores = {"fanogan": S.fanogan(x, gez, fx, self.discriminator.features(gez), self.kappa),
                  "fanogan_latent": S.fanogan_latent(ex, self.encoder(gez))}
        return scores, S.residual_map(x, gez)
