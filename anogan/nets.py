"""The DCGAN networks of AnoGAN as pure ``nn.Module``s (no Lightning here).

Layout for an image of side S (28, 32 or 64) and ``n = log2(S / s0)`` resolution doublings, where the
smallest feature map is ``s0 = 7`` for 28-pixel images and ``s0 = 4`` otherwise:

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

import math

import torch
from torch import nn

SUPPORTED_SIZES = (28, 32, 64)


def _layout(image_size: int) -> tuple[int, int]:
    """(s0, n): the smallest feature-map side and the number of doublings for ``image_size``."""
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(
            f"image_size={image_size} is not supported; use one of {SUPPORTED_SIZES} "
            "(set data.image_size, e.g. data.image_size=32)"
        )
    s0 = 7 if image_size == 28 else 4
    return s0, int(math.log2(image_size // s0))


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels={channels} is not supported; use 1 (grey) or 3 (RGB)")


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

    def __init__(self, image_size: int = 32, channels: int = 1, z_dim: int = 100, width: int = 64):
        super().__init__()
        _check_channels(channels)
        s0, n = _layout(image_size)
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


class Discriminator(nn.Module):
    """D: image (B, C, H, W) in [-1, 1] -> logit (B,); ``features(x)`` -> f(x) (B, F)."""

    def __init__(
        self, image_size: int = 32, channels: int = 1, width: int = 64, feature_layer: int = -1
    ):
        super().__init__()
        _check_channels(channels)
        s0, n = _layout(image_size)
        if not -n <= feature_layer < n:
            raise ValueError(
                f"feature_layer={feature_layer} is out of range for {image_size}-pixel images: "
                f"D has {n} blocks, so use an index in [{-n}, {n - 1}] (-1 = last block)"
            )
        self.config = dict(
            image_size=image_size, channels=channels, width=width, feature_layer=feature_layer
        )
        self.feature_layer = feature_layer % n
        blocks = []
        ch_in, ch = channels, width
        for i in range(n):
            layers: list[nn.Module] = [nn.Conv2d(ch_in, ch, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, True))
            blocks.append(nn.Sequential(*layers))
            ch_in, ch = ch, ch * 2
        self.blocks = nn.ModuleList(blocks)
        self.logit = nn.Conv2d(ch_in, 1, s0, 1, 0)
        self.apply(dcgan_init)

    def _run_blocks(self, h: torch.Tensor, stop: int) -> torch.Tensor:
        for block in self.blocks[: stop + 1]:
            h = block(h)
        return h

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): flattened output of block ``feature_layer``, (B, F). Runs D only up to that block."""
        return self.feature_map(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B,); the probability that x is real is ``sigmoid(logits)``."""
        return self.logit(self._run_blocks(x, len(self.blocks) - 1)).flatten()

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The output of block ``feature_layer`` unflattened, (B, C, h, w): f(x) before ``flatten(1)``."""
        return self._run_blocks(x, self.feature_layer)

    def logits_from_feature_map(self, h: torch.Tensor) -> torch.Tensor:
        """The logits (B,) from ``feature_map``'s output: D's remaining blocks and its logit layer."""
        for block in self.blocks[self.feature_layer + 1 :]:
            h = block(h)
        return self.logit(h).flatten()

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x), logits) from one pass through D."""
        h = self.feature_map(x)
        return h.flatten(1), self.logits_from_feature_map(h)


class Encoder(Discriminator):
    """E of f-AnoGAN: image (B, C, H, W) in [-1, 1] -> z (B, z_dim) in (-1, 1).

    D's convolution blocks, with the logit layer replaced by a convolution to ``z_dim`` channels and a
    Tanh, so that E(x) lies in the support of the uniform prior (Schlegl et al. 2019, sec. 2.2.2)."""

    def __init__(self, image_size: int = 32, channels: int = 1, z_dim: int = 100, width: int = 64):
        super().__init__(image_size=image_size, channels=channels, width=width)
        s0, _ = _layout(image_size)
        self.config = dict(image_size=image_size, channels=channels, z_dim=z_dim, width=width)
        self.z_dim = z_dim
        self.logit = nn.Conv2d(self.logit.in_channels, z_dim, s0, 1, 0)
        dcgan_init(self.logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.logit(self._run_blocks(x, len(self.blocks) - 1)).flatten(1))


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
