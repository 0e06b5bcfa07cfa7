"""The ResNet family of f-AnoGAN's released code (tSchlegl/f-AnoGAN, MIT, ``wgangp_64x64.py`` and
``z_encoding_izif.py``, after Gulrajani et al. 2017's 64x64 ResNet) as pure ``nn.Module``s.

For an image of side S = s0 * 2**n (``anogan.nets.common.layout``; at 64 pixels s0 = 4 and n = 4, the
published setting) and ``width`` (the code's DIM, 64 there):

* ``ResNetGenerator``: a linear layer z -> (c_0, s0, s0), n residual blocks that upsample (nearest, then
  3x3 convolutions; BatchNorm + ReLU before each convolution; a 1x1 convolution on the upsampled
  shortcut), then BatchNorm, ReLU, a 3x3 convolution to ``channels`` and Tanh. Channels as multiples of
  width: 8, 8, 4, 2, 1 at 64 pixels; in general 2**(n-1-i) capped at 8.
* ``ResNetCritic``: a 3x3 convolution to width, n residual blocks that downsample (3x3 convolutions,
  then mean pooling; a mean-pooled 1x1 convolution as shortcut), a linear layer to one value. Layer
  normalisation over (C, H, W) per image (``GroupNorm(1, C)``), **no BatchNorm**: the gradient penalty
  is per image. Channels mirror G's (2, 4, 8, 8 at 64 pixels). f(x) = ``features(x)``: the flattened
  output of block ``feature_layer`` (default -1: the last feature map before the linear output, as in
  the official code).
* ``ResNetEncoder``: the critic's architecture with the linear layer going to z_dim and an output
  squashing (official "tanh_fc": tanh; also ``none`` and ``clip``).

Weights keep PyTorch's default initialisation (not compared with the official code's initialisers).
"""

from __future__ import annotations

import torch
from torch import nn

from anogan.nets.common import Critic, check_channels, check_feature_layer, check_squash, layout, squash_latent

FAMILY = "resnet"
MAX_MULT = 8  # the widest layer is 8 * width, as at 64 pixels in the official code


def generator_multipliers(n: int) -> list[int]:
    """Channel multiples of width from G's first feature map to its last block's output: n + 1 values
    (8, 8, 4, 2, 1 for n = 4, the official 64x64 layout)."""
    outs = [min(MAX_MULT, 2 ** (n - 1 - i)) for i in range(n)]
    return [min(MAX_MULT, 2 ** (n - 1))] + outs


def layer_norm(channels: int) -> nn.Module:
    """Layer normalisation over (C, H, W) of each image with a per-channel scale and shift, as the
    official critic's layernorm over axes [1, 2, 3]."""
    return nn.GroupNorm(1, channels)


class ResidualBlock(nn.Module):
    """x (B, c_in, h, w) -> (B, c_out, 2h, 2w) (``up``) or (B, c_out, h/2, w/2) (``down``):
    ``shortcut(x) + main(x)`` (Gulrajani et al. 2017, the official code's ``ResidualBlock``)."""

    def __init__(self, c_in: int, c_out: int, resample: str, norm):
        super().__init__()
        if resample == "up":
            self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 1))
            self.main = nn.Sequential(
                norm(c_in), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1),
                norm(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
            )
        elif resample == "down":
            self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1))
            self.main = nn.Sequential(
                norm(c_in), nn.ReLU(), nn.Conv2d(c_in, c_in, 3, padding=1),
                norm(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, padding=1), nn.AvgPool2d(2),
            )
        else:
            raise ValueError(f"resample={resample!r} must be 'up' or 'down'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.main(x)


class ResNetGenerator(nn.Module):
    """G: z (B, z_dim) -> image (B, channels, image_size, image_size) in [-1, 1].

    Raises ValueError for an unsupported ``image_size`` or ``channels``."""

    family = FAMILY

    def __init__(self, image_size: int = 64, channels: int = 1, z_dim: int = 128, width: int = 64):
        super().__init__()
        check_channels(channels)
        s0, n = layout(image_size)
        self.config = dict(image_size=image_size, channels=channels, z_dim=z_dim, width=width)
        self.z_dim, self.s0 = z_dim, s0
        mults = generator_multipliers(n)
        self.c0 = mults[0] * width
        self.project = nn.Linear(z_dim, self.c0 * s0 * s0)
        self.blocks = nn.ModuleList(
            ResidualBlock(a * width, b * width, "up", nn.BatchNorm2d) for a, b in zip(mults, mults[1:])
        )
        self.out = nn.Sequential(
            nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1), nn.Tanh()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z.view(z.shape[0], self.z_dim)).view(-1, self.c0, self.s0, self.s0)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


class ResNetCritic(Critic):
    """The WGAN-GP critic: image (B, C, H, W) in [-1, 1] -> value (B,) (higher = more real);
    ``features(x)`` -> f(x) (B, F).

    Raises ValueError for an unsupported size or channel count, or a ``feature_layer`` outside it."""

    family = FAMILY

    def __init__(self, image_size: int = 64, channels: int = 1, width: int = 64, feature_layer: int = -1,
                 out_features: int = 1):
        super().__init__()
        check_channels(channels)
        s0, n = layout(image_size)
        self.feature_layer = check_feature_layer(feature_layer, n, image_size)
        self.config = dict(image_size=image_size, channels=channels, width=width, feature_layer=feature_layer)
        mults = generator_multipliers(n)[::-1]  # 1, 2, 4, 8, 8 at 64 pixels
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            ResidualBlock(a * width, b * width, "down", layer_norm) for a, b in zip(mults, mults[1:])
        )
        self.linear = nn.Linear(mults[-1] * width * s0 * s0, out_features)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.flatten(1))


class ResNetEncoder(ResNetCritic):
    """E of f-AnoGAN's official code: image (B, C, H, W) in [-1, 1] -> z (B, z_dim); the critic's
    architecture, a linear layer to z, then ``squash`` (``tanh``, ``none`` or ``clip``)."""

    def __init__(self, image_size: int = 64, channels: int = 1, z_dim: int = 128, width: int = 64,
                 squash: str = "tanh"):
        super().__init__(image_size, channels, width, out_features=z_dim)
        self.squash = check_squash(squash)
        self.config = dict(image_size=image_size, channels=channels, z_dim=z_dim, width=width, squash=squash)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash_latent(self.encode(x), self.squash)
