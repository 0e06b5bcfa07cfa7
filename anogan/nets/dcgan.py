"""The DCGAN family of AnoGAN (Schlegl et al., IPMI 2017) as pure ``nn.Module``s (no Lightning here).

Layout for an image of side S (28 or a power of two from 16 to 256) and ``n = log2(S / s0)``
resolution doublings, where the smallest feature map is ``s0 = 7`` for 28-pixel images and ``s0 = 4``
otherwise (``anogan.nets.common.layout``):

* Generator: a projection of z to ``(width * 2**(n-1), s0, s0)`` (a transposed convolution over the 1x1
  latent "image"), then ``n`` fractionally-strided convolutions that double the side; BatchNorm + ReLU
  after every layer but the last, Tanh at the output. At 64 pixels this is the paper's generator:
  projection, then 4 fractionally-strided convolutions.
* Discriminator: ``n`` strided convolutions that halve the side (LeakyReLU(0.2), BatchNorm except on the
  first), then one convolution over the whole ``s0 x s0`` map to a single logit. At 64 pixels: 4
  convolution blocks, then the logit layer. ``features(x)`` is the paper's f(): the flattened output of
  block ``feature_layer`` (default -1, the last block before the logit layer).
"""

from __future__ import annotations

import torch
from torch import nn

from anogan.nets.common import Critic, check_channels, check_feature_layer, check_squash, layout, squash_latent

FAMILY = "dcgan"


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al.): conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """G: z (B, z_dim) -> image (B, channels, image_size, image_size) in [-1, 1]."""

    family = FAMILY

    def __init__(self, image_size: int = 32, channels: int = 1, z_dim: int = 100, width: int = 64):
        super().__init__()
        check_channels(channels)
        s0, n = layout(image_size)
        self.config = dict(image_size=image_size, channels=channels, z_dim=z_dim, width=width)
        self.z_dim = z_dim
        ch = width * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, ch, s0, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for i in range(n):
            last = i == n - 1
            out = channels if last else ch // 2
            layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU(True)]
            ch = out
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class Discriminator(Critic):
    """D: image (B, C, H, W) in [-1, 1] -> logit (B,); ``features(x)`` -> f(x) (B, F).

    Raises ValueError for an unsupported size or channel count, or a ``feature_layer`` outside D."""

    family = FAMILY

    def __init__(
        self, image_size: int = 32, channels: int = 1, width: int = 64, feature_layer: int = -1
    ):
        super().__init__()
        check_channels(channels)
        s0, n = layout(image_size)
        self.feature_layer = check_feature_layer(feature_layer, n, image_size)
        self.config = dict(
            image_size=image_size, channels=channels, width=width, feature_layer=feature_layer
        )
        blocks = []
        ch_in, ch = channels, width
        for i in range(n):
            layers: list[nn.Module] = [nn.Conv2d(ch_in, ch, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, True))
            blocks.append(nn.Sequential(*layers))
            ch_in, ch = ch, ch * 2
        self.stem = nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.logit = nn.Conv2d(ch_in, 1, s0, 1, 0)
        self.apply(dcgan_init)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.logit(h)


class Encoder(Discriminator):
    """E of f-AnoGAN: image (B, C, H, W) in [-1, 1] -> z (B, z_dim).

    D's convolution blocks, with the logit layer replaced by a convolution to ``z_dim`` channels and
    the output squashing ``squash`` (``anogan.nets.common.squash_latent``: tanh, the default, keeps
    E(x) in the support of the uniform prior, Schlegl et al. 2019, sec. 2.2.2)."""

    def __init__(
        self, image_size: int = 32, channels: int = 1, z_dim: int = 100, width: int = 64, squash: str = "tanh"
    ):
        super().__init__(image_size=image_size, channels=channels, width=width)
        s0, _ = layout(image_size)
        self.squash = check_squash(squash)
        self.config = dict(image_size=image_size, channels=channels, z_dim=z_dim, width=width, squash=squash)
        self.z_dim = z_dim
        self.logit = nn.Conv2d(self.logit.in_channels, z_dim, s0, 1, 0)
        dcgan_init(self.logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash_latent(self.encode(x), self.squash)


class AdversarialAutoencoder(nn.Module):
    """The paper's aCAE baseline: a convolutional autoencoder x -> E(x) -> Dec(E(x)) whose
    reconstructions are judged by a discriminator on images, as in a GAN (E: ``Encoder``, Dec: the
    ``Generator`` architecture, D: the ``Discriminator`` architecture; all the DCGAN building blocks).
    """

    def __init__(
        self, image_size: int = 32, channels: int = 1, z_dim: int = 100, width: int = 64, feature_layer: int = -1
    ):
        super().__init__()
        self.config = dict(
            image_size=image_size, channels=channels, z_dim=z_dim, width=width, feature_layer=feature_layer
        )
        self.encoder = Encoder(image_size, channels, z_dim, width)
        self.decoder = Generator(image_size, channels, z_dim, width)
        self.discriminator = Discriminator(image_size, channels, width, feature_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction Dec(E(x)): (B, C, H, W) in [-1, 1]."""
        return self.decoder(self.encoder(x))
