"""Generated image trees for the data=folder / data=mvtec tests: no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image(rng: np.random.Generator, size: tuple[int, int], colour: bool, bits: int = 8,
          defect: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A smooth textured image (H, W) or (H, W, 3) and its defect mask (a bright square when ``defect``)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.35 + 0.1 * np.sin(6 * xx + rng.uniform(0, 6)) + 0.05 * rng.standard_normal((h, w))
    mask = np.zeros((h, w), bool)
    if defect:
        s = max(3, min(h, w) // 4)
        y, x = rng.integers(0, h - s), rng.integers(0, w - s)
        mask[y : y + s, x : x + s] = True
    top = 255 if bits == 8 else 65535
    if colour:
        pix = np.stack([base * 0.6, base, base * 1.3], -1)
        pix[mask] = [1.0, 0.1, 0.1]  # a red defect: visible in colour
    else:
        pix = base.copy()
        pix[mask] = 1.0
    return (np.clip(pix, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16), mask


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def save_mask(path: Path, mask: np.ndarray) -> Path:
    return save(path, (mask * 255).astype(np.uint8))


def make_mvtec(root: Path, category: str = "widget", size=(40, 40), colour: bool = True, n_train: int = 24,
               n_good: int = 6, defects: dict | None = None, seed: int = 0) -> Path:
    """``root/category`` in the MVTec AD layout; returns ``root``."""
    rng = np.random.default_rng(seed)
    base = root / category
    for i in range(n_train):
        save(base / "train" / "good" / f"{i:03d}.png", image(rng, size, colour)[0])
    for i in range(n_good):
        save(base / "test" / "good" / f"{i:03d}.png", image(rng, size, colour)[0])
    for defect, n in (defects or {"scratch": 4, "hole": 3}).items():
        for i in range(n):
            pix, mask = image(rng, size, colour, defect=True)
            save(base / "test" / defect / f"{i:03d}.png", pix)
            save_mask(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


def make_folders(root: Path, size=(37, 45), colour: bool = False, bits: int = 8, n_normal: int = 20,
                 n_abnormal: int = 5, mask_suffix: str | None = "", suffix: str = ".png", seed: int = 1) -> dict:
    """normal/, abnormal/ and (``mask_suffix`` not None) masks/ under ``root``; returns the folders."""
    rng = np.random.default_rng(seed)
    for i in range(n_normal):
        save(root / "normal" / f"n{i:02d}{suffix}", image(rng, size, colour, bits)[0])
    for i in range(n_abnormal):
        pix, mask = image(rng, size, colour, bits, defect=True)
        save(root / "abnormal" / f"a{i:02d}{suffix}", pix)
        if mask_suffix is not None:
            save_mask(root / "masks" / f"a{i:02d}{mask_suffix}.png", mask)
    out = {"normal_dir": root / "normal", "abnormal_dir": root / "abnormal"}
    if mask_suffix is not None:
        out["mask_dir"] = root / "masks"
    return out
