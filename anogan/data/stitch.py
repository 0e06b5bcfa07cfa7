"""Patch maps back to scan pixels: sliding-window residual maps x_R = |x - G(z_Gamma)| (paper sec. 2.3) of
overlapping patches stitched into one map per scan (the mean of the covering patches, and their
consensus), and a scan's score from its patches' scores. Pure numpy / torch, used by
``anogan.callbacks.ScanMaps`` and ``benchmarks/scan_decision.py``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Stitcher:
    """Accumulates patch maps into one map of ``shape`` (H, W): every pixel is the mean of the patch
    maps that cover it (overlaps averaged); a pixel no patch covers is NaN (undefined, not 0). It also
    keeps, per pixel, the smallest value of the covering patch maps and their number (``consensus``)."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = tuple(int(s) for s in shape)
        self.total = np.zeros(self.shape, np.float64)
        self.count = np.zeros(self.shape, np.int32)
        self.low = np.full(self.shape, np.inf, np.float64)

    def add(self, maps: np.ndarray, positions: Sequence[tuple[int, int]]) -> Stitcher:
        """maps (K, P, P) (or (K, Ph, Pw)) with top-left corners ``positions`` (K pairs (y, x)); a
        patch reaching beyond the map is an error."""
        maps = np.asarray(maps, np.float64)
        if len(maps) != len(positions):
            raise ValueError(f"{len(maps)} patch maps but {len(positions)} positions")
        ph, pw = maps.shape[-2:]
        for m, (y, x) in zip(maps, positions):
            y, x = int(y), int(x)
            if y < 0 or x < 0 or y + ph > self.shape[0] or x + pw > self.shape[1]:
                raise ValueError(f"a {ph}x{pw} patch at (y={y}, x={x}) leaves the {self.shape[0]}x{self.shape[1]} map")
            self.total[y : y + ph, x : x + pw] += m
            self.count[y : y + ph, x : x + pw] += 1
            np.minimum(self.low[y : y + ph, x : x + pw], m, out=self.low[y : y + ph, x : x + pw])
        return self

    def result(self, crop: tuple[int, int] | None = None) -> np.ndarray:
        """The stitched map, float32 (H, W) (cropped to ``crop`` (H, W) from the top left: scans padded
        up to one patch)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan).astype(np.float32)
        return out if crop is None else out[: crop[0], : crop[1]]

    def consensus(self, min_votes: int, crop: tuple[int, int] | None = None) -> np.ndarray:
        """The consensus map, float32 (H, W): at each pixel the smallest value of the patch maps covering
        it, where at least ``min_votes`` patches cover it, else NaN. A pixel is high here only when no
        covering patch's reconstruction explains it: a lesion G cannot draw is high in every patch that
        holds it, while a mapping caught in a poor local minimum (a wrong layer boundary over a whole
        patch) raises one patch's map only (``scan_score``)."""
        out = np.where(self.count >= max(int(min_votes), 1), self.low, np.nan).astype(np.float32)
        return out if crop is None else out[: crop[0], : crop[1]]


def to_patch_size(maps: torch.Tensor, p: int) -> torch.Tensor:
    """Residual maps (K, S, S) of patches resized to the GAN's size S, back to the patches' size (K, p, p)
    in scan pixels (bilinear, as the patches were resized); unchanged when S == p."""
    import torch.nn.functional as F

    if maps.shape[-1] == p:
        return maps
    return F.interpolate(maps[:, None], size=(p, p), mode="bilinear", align_corners=False)[:, 0]


def stitch(maps: np.ndarray, positions: Sequence[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """One (H, W) float32 map of ``shape`` from patch maps (K, P, P) at top-left ``positions``: the mean
    of the covering patches at every pixel, NaN where none covers it. A constant patch map stitches to
    a constant image map (no seams); with the grid of ``anogan.data.patches.positions`` every pixel is
    covered, the last row and column included."""
    return Stitcher(shape).add(maps, positions).result()


def image_score(patch_scores: np.ndarray, q: float) -> float | None:
    """The scan's score: the q-quantile of its patch scores (q = 1: the maximum; linear interpolation).
    None for a scan without scored patches (undefined, not 0)."""
    patch_scores = np.asarray(patch_scores, np.float64)
    if patch_scores.size == 0:
        return None
    return float(np.max(patch_scores) if q == 1 else np.quantile(patch_scores, q))
