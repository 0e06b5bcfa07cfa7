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
* ``ResNetEncoder``: the critic's layout with **BatchNorm** in its residual blocks (the official
  ``my_Normalize`` gives layer normalisation only to layers named "Discriminator"), the linear layer
  going to z_dim and an output squashing (official "tanh_fc": tanh; also ``none`` and ``clip``).

As in the released code: the first convolution of every residual block has no bias; BatchNorm is
``tf.layers.batch_normalization``'s (moving-average decay 0.99, i.e. PyTorch momentum 0.01, eps 1e-3);
every net is initialised at construction as tflib does (``tflib_init``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anogan.nets.common import Critic, check_channels, check_feature_layer, check_squash, layout, squash_latent

FAMILY = "resnet"
MAX_MULT = 8  # the widest layer is 8 * width, as at 64 pixels in the official code


def resnet_hint(meta: dict) -> str:
    """For the error of a checkpoint whose weights do not load (``meta``: its record of the nets, with
    ``family``): why a ResNet-family checkpoint written by an earlier anogan fails, and the fix."""
    if meta.get("family") != FAMILY:
        return ""
    return ("; ResNet checkpoints written before the nets followed the released code (bias-free first "
            "convolutions in the residual blocks, E with BatchNorm) do not load: train them again")


def generator_multipliers(n: int) -> list[int]:
    """Channel multiples of width from G's first feature map to its last block's output: n + 1 values
    (8, 8, 4, 2, 1 for n = 4, the official 64x64 layout)."""
    outs = [min(MAX_MULT, 2 ** (n - 1 - i)) for i in range(n)]
    return [min(MAX_MULT, 2 ** (n - 1))] + outs


def layer_norm(channels: int) -> nn.Module:
    """Layer normalisation over (C, H, W) of each image with a per-channel scale and shift, as the
    official critic's layernorm over axes [1, 2, 3] (tflib ``Layernorm``, eps 1e-5)."""
    return nn.GroupNorm(1, channels)


def batch_norm(channels: int) -> nn.Module:
    """BatchNorm as the official G and E use it (``tf.layers.batch_normalization`` defaults: moving
    averages with decay 0.99, i.e. PyTorch momentum 0.01, and eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def tflib_init(layer: nn.Conv2d | nn.Linear, he: bool) -> None:
    """The official initialisation of one layer (tflib ``ops/conv2d.py``, ``ops/linear.py``): weights
    uniform with standard deviation sqrt(g / (fan_in + fan_out)), g = 4 (``he``, tflib's ``he_init``,
    the residual and output convolutions) or 2 (Glorot, the input convolution, the 1x1 shortcuts and the
    linear layers), fans counted with the kernel area (c_in k^2, c_out k^2); biases zero."""
    area = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1
    fan_in, fan_out = layer.weight.shape[1] * area, layer.weight.shape[0] * area
    bound = math.sqrt(3 * (4.0 if he else 2.0) / (fan_in + fan_out))  # a uniform's std is bound / sqrt(3)
    nn.init.uniform_(layer.weight, -bound, bound)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class ResidualBlock(nn.Module):
    """x (B, c_in, h, w) -> (B, c_out, 2h, 2w) (``up``) or (B, c_out, h/2, w/2) (``down``):
    ``shortcut(x) + main(x)`` (Gulrajani et al. 2017, the official code's ``ResidualBlock``)."""

    def __init__(self, c_in: int, c_out: int, resample: str, norm):
        super().__init__()
        if resample == "up":
            self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 1))
            self.main = nn.Sequential(
                norm(c_in), nn.ReLU(), nn.Upsample(scale_factor=2),
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                norm(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
            )
        elif resample == "down":
            self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1))
            self.main = nn.Sequential(
                norm(c_in), nn.ReLU(), nn.Conv2d(c_in, c_in, 3, padding=1, bias=False),
                norm(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, padding=1), nn.AvgPool2d(2),
            )
        else:
            raise ValueError(f"resample={resample!r} must be 'up' or 'down'")
        tflib_init(self.shortcut[1], he=False)
        for conv in (m for m in self.main if isinstance(m, nn.Conv2d)):
            tflib_init(conv, he=True)

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
            ResidualBlock(a * width, b * width, "up", batch_norm) for a, b in zip(mults, mults[1:])
        )
        self.out = nn.Sequential(
            batch_norm(width), nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1), nn.Tanh()
        )
        tflib_init(self.project, he=False)
        tflib_init(self.out[2], he=True)  # the official 'Generator.Output' keeps Conv2D's he_init=True

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
    norm = staticmethod(layer_norm)  # of the residual blocks

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
            ResidualBlock(a * width, b * width, "down", self.norm) for a, b in zip(mults, mults[1:])
        )
        self.linear = nn.Linear(mults[-1] * width * s0 * s0, out_features)
        tflib_init(self.stem, he=False)
        tflib_init(self.linear, he=False)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.flatten(1))


class ResNetEncoder(ResNetCritic):
    """E of f-AnoGAN's official code (``z_encoding_izif.py``, ``Encoder``): image (B, C, H, W) in
    [-1, 1] -> z (B, z_dim); the critic's layout with BatchNorm (``batch_norm``) in place of its layer
    normalisation, a linear layer to z, then ``squash`` (``tanh``, ``none`` or ``clip``). Trains in
    train mode (batch statistics, moving averages updated), scores in eval mode."""

    norm = staticmethod(batch_norm)

    def __init__(self, image_size: int = 64, channels: int = 1, z_dim: int = 128, width: int = 64,
                 squash: str = "tanh"):
        super().__init__(image_size, channels, width, out_features=z_dim)
        self.squash = check_squash(squash)
        self.config = dict(image_size=image_size, channels=channels, z_dim=z_dim, width=width, squash=squash)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash_latent(self.encode(x), self.squash)
