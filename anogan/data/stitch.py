"""Patch maps back to scan pixels: sliding-window residual maps x_R = |x - G(z_Gamma)| (paper sec. 2.3) of
overlapping patches stitched into one map per scan (the mean of the covering patches, and their
consensus), the patches of many scans assembled scan by scan as they arrive (``ScanAssembler``), and a
scan's score from its patches' scores. Pure numpy / torch, used by ``anogan.callbacks.ScanMaps`` and
``benchmarks/scan_decision.py``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anogan.data.patches import PatchOptions, positions


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

    def consensus(self, min_votes: int, crop: tuple[int, int] | None = None,
                  coverage: np.ndarray | None = None) -> np.ndarray:
        """The consensus map, float32 (H, W): at each pixel the smallest value of the patch maps covering
        it, where at least ``min_votes`` patches cover it, else NaN. A pixel is high here only when no
        covering patch's reconstruction explains it: a lesion G cannot draw is high in every patch that
        holds it, while a mapping caught in a poor local minimum (a wrong layer boundary over a whole
        patch) raises one patch's map only (``scan_score``).

        ``coverage`` (H, W), the most patches that can cover each pixel (``grid_coverage``): the votes asked
        for are then min(min_votes, coverage), so that the band at the border, where the grid places fewer
        patches (2 along an edge, 1 at a corner, at half-patch stride), counts on all of the patches that
        cover it instead of none (``ScanMaps``' ``scan_border=include``); pixels where the foreground test
        skipped covering patches still need the votes their grid position allows. Without it the band is
        NaN: there every covering patch holds the pixel at its own border, where G's reconstructions are
        worst (docs/oct.md)."""
        need = max(int(min_votes), 1)
        if coverage is not None:
            need = np.minimum(need, np.maximum(coverage, 1))
        out = np.where(self.count >= need, self.low, np.nan).astype(np.float32)
        return out if crop is None else out[: crop[0], : crop[1]]


def grid_coverage(shape: tuple[int, int], opts: PatchOptions) -> np.ndarray:
    """(H, W) int32: how many patches of the grid (``anogan.data.patches.positions``, every position,
    before the foreground test) cover each pixel of an image of ``shape`` (at least one patch)."""
    p = opts.patch_size
    count = np.zeros(shape, np.int32)
    for y, x in positions(shape, opts, np.random.default_rng(0), "scan"):
        count[y : y + p, x : x + p] += 1
    return count


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


def votable_region(coverage: np.ndarray, min_votes: int) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), inclusive: the bounding box of the pixels that ``min_votes`` grid patches can cover
    (``grid_coverage`` >= min_votes), the part of a scan a consensus map without ``coverage`` can define;
    None when no pixel can. Where the image's size is the patch size plus a multiple of the stride it is
    exactly those pixels (the scan without its border band); where the grid's last patch is shifted
    back to the last row or column, a few pixels at the edge of the box have fewer votes."""
    rows, cols = np.flatnonzero((coverage >= min_votes).any(1)), np.flatnonzero((coverage >= min_votes).any(0))
    if not rows.size:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@dataclass
class StitchedScan:
    """One scan's patches, stitched (``ScanAssembler``): ``scan`` its index among the scans; ``mean`` the
    averaged map and ``consensus`` the consensus map (float32 (H, W), the scan's size, NaN where no
    scored patch covers a pixel, resp. too few); ``scores`` (K,) float64 its patches' scores and
    ``positions`` (K, 2) their top-left corners (y, x) in scan pixels, in arrival order; ``region`` the
    bounding box (y0, y1, x0, x1, inclusive) of the part the consensus map can define (``votable_region``;
    the whole scan with the border band included), None when it is empty."""

    scan: int
    mean: np.ndarray
    consensus: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    region: tuple[int, int, int, int] | None


class ScanAssembler:
    """Patches of many scans arriving in any order and in any batches (a resumed run, DDP gathers), each
    at most once, back to whole scans: a scan is returned, stitched, as soon as its last patch is in.

    Args:
        shapes: (H, W) of each scan. patch_scan, y, x: per patch (row of the dataset) its scan and
            top-left corner. opts: the patches' ``PatchOptions`` (patch size, stride: the grid).
        min_votes: the consensus map's votes (``Stitcher.consensus``). border: also the band at the border
            where the grid places fewer than ``min_votes`` patches, on the patches it places there (the
            grid's coverage); False leaves it NaN."""

    def __init__(self, shapes: Sequence[tuple[int, int]], patch_scan: np.ndarray, y: np.ndarray, x: np.ndarray,
                 opts: PatchOptions, min_votes: int, border: bool = False):
        self.shapes, self.patch_scan, self.y, self.x = list(shapes), np.asarray(patch_scan), y, x
        self.opts, self.min_votes, self.p, self.border = opts, int(min_votes), int(opts.patch_size), bool(border)
        self.seen = np.zeros(len(self.patch_scan), bool)
        self.remaining = np.bincount(self.patch_scan, minlength=len(self.shapes))
        self.stitchers: dict[int, Stitcher] = {}
        self.scores: dict[int, list[np.ndarray]] = {}

    def padded(self, s: int) -> tuple[int, int]:
        """Scan s's shape padded up to one patch (scans smaller than a patch are padded, then cropped)."""
        h, w = self.shapes[s]
        return max(h, self.p), max(w, self.p)

    def empty(self) -> list[StitchedScan]:
        """The scans without a patch (none passed the foreground test): done from the start."""
        return [self._done(int(s)) for s in np.flatnonzero(self.remaining == 0)]

    def add(self, index: np.ndarray, maps: np.ndarray, scores: np.ndarray) -> list[StitchedScan]:
        """Patches ``index`` (K,) with their maps (K, p, p) in scan pixels and scores (K,); patches seen
        before are skipped. Returns the scans these patches completed."""
        index = np.asarray(index)
        new = ~self.seen[index]
        index, maps, scores = index[new], np.asarray(maps)[new], np.asarray(scores, np.float64)[new]
        self.seen[index] = True
        done = []
        for s in np.unique(self.patch_scan[index]).tolist():
            here = self.patch_scan[index] == s
            if s not in self.stitchers:
                self.stitchers[s], self.scores[s] = Stitcher(self.padded(s)), []
            pos = np.stack([self.y[index[here]], self.x[index[here]]], 1)
            self.stitchers[s].add(maps[here], pos.tolist())
            self.scores[s].append(np.concatenate([scores[here, None], pos], 1))
            self.remaining[s] -= int(here.sum())
            if self.remaining[s] == 0:
                done.append(self._done(s))
        return done

    def _done(self, s: int) -> StitchedScan:
        shape = self.shapes[s]
        stitcher = self.stitchers.pop(s, None)
        rows = np.concatenate(self.scores.pop(s, [np.zeros((0, 3))]))
        coverage = grid_coverage(self.padded(s), self.opts)  # of the scan padded up to one patch
        region = votable_region(coverage[: shape[0], : shape[1]], 1 if self.border else self.min_votes)
        if stitcher is None:
            empty = np.full(shape, np.nan, np.float32)
            return StitchedScan(s, empty, empty.copy(), rows[:, 0], rows[:, 1:].astype(int), None)
        consensus = stitcher.consensus(self.min_votes, crop=shape, coverage=coverage if self.border else None)
        return StitchedScan(s, stitcher.result(crop=shape), consensus, rows[:, 0], rows[:, 1:].astype(int), region)
