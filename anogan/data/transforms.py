"""From stored pixels to model tensors: float in [-1, 1], shape (N, C, H, W), resized to the model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# the largest value of each stored integer dtype, mapped to +1
_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_model_range(images: np.ndarray, image_size: int, max_value: float | None = None) -> torch.Tensor:
    """images (N, H, W) or (N, C, H, W) -> float32 (N, C, image_size, image_size) in [-1, 1].

    Integer images are divided by ``max_value`` (default: their dtype's maximum), float images are
    taken to lie in [0, 1]. Resizing is bilinear (antialiased when shrinking).
    """
    arr = np.asarray(images)
    if max_value is None:
        max_value = _MAX.get(arr.dtype, 1.0)
    x = torch.from_numpy(arr.astype(np.float32)) / float(max_value)
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False,
            antialias=x.shape[-1] > image_size,
        )
    return (x * 2 - 1).clamp_(-1, 1)
