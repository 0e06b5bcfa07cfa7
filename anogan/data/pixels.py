"""From an image file to the pixels a model sees, in numpy only (no torch): reading PNG / JPEG / TIFF
pages as stored (``read_pages``), scaling them to [0, 1] as the training data was (``unit``), and the
map from [0, 1] to the models' range [-1, 1] (``model_range``).

The one implementation of these steps: training sources (``anogan.data.folder``), the patch library
(``anogan.data.patches``), new scans (``anogan.data.scans``), ``anogan.data.transforms`` and the
onnxruntime-only scorer (``python -m anogan.score_onnx``), which runs where torch is not installed, use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anogan.errors import InputError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
DTYPE_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}  # stored integers: the value read as 1


class PrepareError(InputError):
    """Bad input to the prepare command; the message names the file and the fix."""


@dataclass(frozen=True)
class Normalisation:
    """How stored pixel values become [0, 1] (``unit``): ``normalise`` ``none`` (value / dtype maximum,
    floats as they are), ``image`` (per image, between its ``percentiles``) or ``global`` (between the
    training set's intensities ``scale`` = (low, high)). ``anogan.data.patches.PatchOptions`` carries the
    same three fields."""

    normalise: str = "none"
    percentiles: tuple[float, float] = (1.0, 99.0)
    scale: tuple[float, float] | None = None

    @classmethod
    def from_recipe(cls, recipe: dict) -> Normalisation:
        """From a training recipe (``anogan.data.scans.training_recipe``: keys ``normalisation``,
        ``percentiles``, ``scale``; missing ones take the defaults)."""
        percentiles = recipe.get("percentiles") or (1.0, 99.0)
        scale = recipe.get("scale")
        return cls(str(recipe.get("normalisation") or "none"), tuple(float(v) for v in percentiles),
                   tuple(float(v) for v in scale) if scale else None)


def read_pages(path: Path, mask: bool = False, page: int | None = None, colour: bool = False) -> list[np.ndarray]:
    """Every page of an image file as stored, (H, W) each: one for PNG, one per B-scan for a multi-page
    TIFF (a common way to store an OCT volume); only page ``page`` (a list of one) when given, without
    decoding the others. uint8, uint16 (16-bit PNG / TIFF keep their range), int32 for signed integers
    (their values kept), or float. Colour images become grey (luminance), or with ``colour`` stay
    colour, (3, H, W) (RGBA and palette images as RGB; grey images stay (H, W)); ``mask``: palette (``P``)
    images are read by palette index, not converted to grey levels. A ``page`` beyond the file's last
    raises PrepareError."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    pages = []
    try:
        with Image.open(path) as img:
            if page is not None:
                try:
                    img.seek(page)
                except EOFError:
                    raise PrepareError(f"{path}: has {getattr(img, 'n_frames', 1)} page(s), no page {page}") from None
            for page_img in [img] if page is not None else ImageSequence.Iterator(img):
                page_img.load()
                if colour and not mask and page_img.mode in ("RGBA", "P", "CMYK", "YCbCr"):
                    page_img = page_img.convert("RGB")
                elif page_img.mode in ("RGBA", "LA") or (page_img.mode == "RGB" and not colour) or (
                        page_img.mode == "P" and not mask):
                    page_img = page_img.convert("L")
                arr = np.array(page_img)
                pages.append(np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr)  # colour: (3, H, W)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise PrepareError(f"{path}: cannot read the image ({e}); replace or remove the file") from e
    return [_stored(arr, path) for arr in pages]


def _stored(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:  # Pillow gives 16-bit images as I;16 or int32
        if arr.min() < 0:
            arr = arr.astype(np.int32)  # signed data (int16 CT / OCT exports): --normalise maps it to [0, 1]
        elif arr.max() > 65535:
            raise PrepareError(f"{path}: values {arr.min()}..{arr.max()} do not fit 16 bits; store 8- or 16-bit")
        else:
            arr = arr.astype(np.uint16)
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[0] == 3):
        raise PrepareError(f"{path}: image of shape {arr.shape}; expected a greyscale or RGB image")
    return arr


def unit(image: np.ndarray, opts: Normalisation) -> np.ndarray:
    """An image (any shape) scaled to [0, 1] as float32 by ``opts.normalise``: ``opts`` is a
    ``Normalisation`` or anything with its three fields (``anogan.data.patches.PatchOptions``)."""
    x = image.astype(np.float32)
    if opts.normalise == "image":
        lo, hi = np.percentile(x, opts.percentiles)
    elif opts.normalise == "global":
        lo, hi = opts.scale
    else:
        return x / DTYPE_MAX.get(image.dtype, 1.0)
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)


def model_range(x01):
    """[0, 1] -> the models' range [-1, 1] (2x - 1, clipped), for numpy arrays and torch tensors alike
    (``anogan.data.transforms.to_model_range`` and ``python -m anogan.score_onnx``): the same float32
    operations, so both give the same bits."""
    return (x01 * 2 - 1).clip(-1, 1)
