"""From stored pixels to model tensors: float in [-1, 1], shape (N, C, H, W), resized to the model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from anogan.data.pixels import DTYPE_MAX, model_range
from anogan.errors import InputError


def check_channels(stored: int, channels: int, where: str) -> None:
    """Images of ``stored`` channels can enter a model of ``channels``: the same count, or grey (1),
    which is repeated; else ValueError naming ``where`` and a fix for train.py and evaluate.py."""
    if stored not in (1, channels):
        raise InputError(
            f"{where} holds {stored}-channel images but data.channels={channels}: train on them with "
            f"data.channels={stored} (python train.py), or evaluate them with a GAN trained at "
            f"data.channels={stored}"
        )


def to_model_range(images: np.ndarray, image_size: int, max_value: float | None = None,
                   channels: int | None = None, where: str = "the data") -> torch.Tensor:
    """images (N, H, W) or (N, C, H, W) -> float32 (N, channels, image_size, image_size) in [-1, 1].

    Integer images are divided by ``max_value`` (default: their dtype's maximum), float images are
    taken to lie in [0, 1]. Resizing is bilinear (antialiased when shrinking). ``channels``: grey
    images (C = 1) are repeated to that many channels, the one behaviour of every source; images of
    another channel count raise ValueError naming ``where``. None keeps C.
    """
    arr = np.asarray(images)
    if max_value is None:
        max_value = DTYPE_MAX.get(arr.dtype, 1.0)
    x = torch.from_numpy(arr.astype(np.float32)) / float(max_value)
    if x.ndim == 3:
        x = x[:, None]
    if channels is not None and x.shape[1] != channels:
        check_channels(x.shape[1], channels, where)
        x = x.expand(-1, channels, -1, -1)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False,
            antialias=x.shape[-1] > image_size,
        )
    return model_range(x).contiguous()


def mask_to_size(mask: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """A mask (H, W) -> bool (image_size, image_size), resized by nearest neighbour like its image."""
    mask = torch.as_tensor(np.asarray(mask, dtype=bool))
    if tuple(mask.shape) != (image_size, image_size):
        mask = F.interpolate(mask[None, None].float(), size=(image_size, image_size), mode="nearest")[0, 0].bool()
    return mask
