"""What every network family shares: the supported image sizes, the layout of the resolution ladder,
the output squashing of an encoder, and the critic interface the mapping and the scores use."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from anogan.errors import InputError

# 28 (MNIST-like) and every power of two from 16 to 256 (OCT / MRI patch pipelines use 64-256)
SUPPORTED_SIZES = (16, 28, 32, 64, 128, 256)
SQUASHES = ("tanh", "none", "clip")


def layout(image_size: int) -> tuple[int, int]:
    """(s0, n): the smallest feature-map side and the number of doublings for ``image_size``: s0 = 7
    for 28-pixel images, 4 otherwise, and ``image_size = s0 * 2**n``.

    Raises ValueError naming ``data.image_size`` for any other size."""
    if image_size not in SUPPORTED_SIZES:
        raise InputError(
            f"image_size={image_size} is not supported; use one of {SUPPORTED_SIZES} "
            "(set data.image_size, e.g. data.image_size=32)"
        )
    s0 = 7 if image_size == 28 else 4
    return s0, int(math.log2(image_size // s0))


def check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise InputError(f"channels={channels} is not supported; use 1 (grey) or 3 (RGB) (data.channels)")


def check_feature_layer(feature_layer: int, n: int, image_size: int) -> int:
    """``feature_layer`` as an index in [0, n); ValueError naming the valid range otherwise."""
    if not -n <= feature_layer < n:
        raise InputError(
            f"feature_layer={feature_layer} is out of range for {image_size}-pixel images: "
            f"D has {n} blocks, so use an index in [{-n}, {n - 1}] (-1 = last block)"
        )
    return feature_layer % n


def check_squash(squash: str) -> str:
    if squash not in SQUASHES:
        raise InputError(f"squash={squash!r} is not one of {SQUASHES} or 'auto' (encoder.module.squash)")
    return squash


def squash_latent(z: torch.Tensor, squash: str) -> torch.Tensor:
    """E's output squashing (official f-AnoGAN ``z_encoding_izif.py``): ``tanh`` into (-1, 1) (the
    published default, "tanh_fc"), ``none`` (a plain linear output, for the normal prior) or ``clip``
    to [-1, 1]. z: (B, z_dim)."""
    if squash == "tanh":
        return torch.tanh(z)
    if squash == "clip":
        return z.clamp(-1.0, 1.0)
    return z


@contextmanager
def running_stats_frozen(net: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``net``'s BatchNorm layers in train mode normalise with the batch's statistics
    but leave their running averages (and counters) as they are; restored on exit. The official WGAN-GP
    (tSchlegl/f-AnoGAN ``wgangp_64x64.py``) ties G's moving-average updates to G's train op, so a critic
    step, which runs G on batch statistics, does not move them."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False  # in train mode: batch statistics, no update (nn.BatchNorm2d.forward)
    try:
        yield net
    finally:
        for m, t in zip(norms, tracked):
            m.track_running_stats = t


class Critic(nn.Module):
    """The interface of D (DCGAN discriminator or WGAN-GP critic) that training, the mapping and the
    scores use. A subclass defines ``stem`` (a module before the blocks), ``blocks`` (an
    ``nn.ModuleList``), ``feature_layer`` (an index into ``blocks``) and ``head`` (blocks' output ->
    (B, k)).

    ``features(x)`` is f(x) of both papers: the flattened output of block ``feature_layer``."""

    family = ""

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The output of block ``feature_layer`` unflattened, (B, C, h, w): f(x) before ``flatten(1)``."""
        h = self.stem(x)
        for block in self.blocks[: self.feature_layer + 1]:
            h = block(h)
        return h

    def logits_from_feature_map(self, h: torch.Tensor) -> torch.Tensor:
        """The output (B,) from ``feature_map``'s output: the remaining blocks and the head."""
        for block in self.blocks[self.feature_layer + 1 :]:
            h = block(h)
        return self.head(h).flatten()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): flattened output of block ``feature_layer``, (B, F). Runs D only up to that block."""
        return self.feature_map(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> (B,): DCGAN's logit (P(real) = sigmoid) or the critic's value."""
        return self.logits_from_feature_map(self.feature_map(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x), output) from one pass through D."""
        h = self.feature_map(x)
        return h.flatten(1), self.logits_from_feature_map(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Every block, then the head, unflattened per image: (B, k). Used by the encoders."""
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h).flatten(1)


def freeze(*nets: nn.Module) -> None:
    """Eval mode (BatchNorm on running statistics) and no weight gradients."""
    for net in nets:
        net.requires_grad_(False)
        net.eval()
