"""Layer 1, nets and equations: pure torch, nothing of Lightning; imports only ``anogan.errors``.

The papers' equations (``scores``: residual, discrimination, anomaly, f-AnoGAN's izi_f; ``losses``;
``prior``: p_z and keeping z in its support; ``optim``: TF1's RMSProp of the released code), the fast
frozen copies the mapping runs (``mapping``), and the network families, one file each:

* ``dcgan``: AnoGAN's DCGAN (Schlegl et al., IPMI 2017): ``Generator``, ``Discriminator``, ``Encoder``
  and the aCAE's ``AdversarialAutoencoder``;
* ``resnet``: f-AnoGAN's released ResNet (tSchlegl/f-AnoGAN): ``ResNetGenerator``, ``ResNetCritic``
  (LayerNorm, for WGAN-GP), ``ResNetEncoder`` (BatchNorm), initialised as the released code does.

Every family supports 1 or 3 channels and the sizes of ``SUPPORTED_SIZES``. Each net has ``config``
(its constructor's arguments) and the class attribute ``family``; ``build(family, role, **config)``
rebuilds a net from a checkpoint's record, and ``encoder_like(D, z_dim, squash)`` makes the encoder of
D's family and architecture (f-AnoGAN: E is the critic's layout with a linear output to z; in the
ResNet family with BatchNorm where the critic has layer normalisation, as released).
"""

from __future__ import annotations

from torch import nn

from anogan.nets.common import SQUASHES, SUPPORTED_SIZES, Critic, layout, running_stats_frozen, squash_latent
from anogan.nets.dcgan import AdversarialAutoencoder, Discriminator, Encoder, Generator, dcgan_init
from anogan.nets.resnet import ResNetCritic, ResNetEncoder, ResNetGenerator, tflib_init
from anogan.errors import InputError

FAMILIES = {
    "dcgan": {"generator": Generator, "discriminator": Discriminator, "encoder": Encoder},
    "resnet": {"generator": ResNetGenerator, "discriminator": ResNetCritic, "encoder": ResNetEncoder},
}

__all__ = [
    "FAMILIES", "SQUASHES", "SUPPORTED_SIZES", "AdversarialAutoencoder", "Critic", "Discriminator", "Encoder",
    "Generator", "ResNetCritic", "ResNetEncoder", "ResNetGenerator", "build", "dcgan_init", "encoder_like",
    "family_of", "layout", "running_stats_frozen", "squash_latent", "tflib_init",
]


def family_of(net: nn.Module) -> str:
    """The family name of one of our nets (``dcgan`` or ``resnet``)."""
    return getattr(net, "family", "") or "dcgan"


def build(family: str, role: str, **config) -> nn.Module:
    """The ``role`` net (``generator``, ``discriminator`` or ``encoder``) of ``family`` built from its
    ``config``. Raises ValueError naming the known families for an unknown one."""
    if family not in FAMILIES:
        raise InputError(f"unknown network family {family!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[family][role](**config)


def encoder_like(discriminator: Critic, z_dim: int, squash: str = "tanh", width: int | None = None) -> nn.Module:
    """f-AnoGAN's E for the GAN whose D is ``discriminator``: D's family and architecture (image size,
    channels, width unless ``width`` is given) with an output of ``z_dim`` values squashed by ``squash``."""
    cfg = discriminator.config
    return build(family_of(discriminator), "encoder", image_size=cfg["image_size"], channels=cfg["channels"],
                 z_dim=z_dim, width=width or cfg["width"], squash=squash)
