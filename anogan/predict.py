"""Scoring new, unlabelled scans: sliding-window anomaly maps stitched from patches, an image score and
a flag per scan (``python evaluate.py ckpt_path=... data=scans data.path=DIR``).

The scans are cut into overlapping patches of the GAN's size (``anogan.data.scans``), all patches are
mapped in batches by the same ``Inversion`` as a labelled evaluation, and ``anogan.callbacks.ScanMaps``
stitches the per-patch residual maps x_R = |x - G(z_Gamma)| (paper sec. 2.3) back into one map per scan
with the pure functions here. This module knows nothing of Lightning except ``scans_datamodule``, which
builds the DataModule for the evaluation.

``python -m anogan.predict figure RUN_DIR NAME --scans DIR --masks DIR --out PNG`` draws a scan, its
stitched map and its true mask side by side (the figure of docs/oct.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from anogan.errors import InputError, MissingInputError

SCANS_TARGET = "anogan.data.scans.ScansDataModule"


# -- stitching -------------------------------------------------------------------------------------
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
    a constant image map (no seams); with the grid of ``anogan.data.prepare.positions`` every pixel is
    covered, the last row and column included."""
    return Stitcher(shape).add(maps, positions).result()


def parse_reduce(reduce: str | float) -> float:
    """``max`` -> 1.0, a quantile in (0, 1] -> itself; anything else is an error naming the setting."""
    if str(reduce) == "max":
        return 1.0
    try:
        q = float(reduce)
    except ValueError:
        q = math.nan
    if not 0 < q <= 1:
        raise InputError(f"prediction_callbacks.maps.reduce={reduce!r}: expected max or a quantile in (0, 1], "
                         "e.g. 0.99")
    return q


def image_score(patch_scores: np.ndarray, q: float) -> float | None:
    """The scan's score: the q-quantile of its patch scores (q = 1: the maximum; linear interpolation).
    None for a scan without scored patches (undefined, not 0)."""
    patch_scores = np.asarray(patch_scores, np.float64)
    if patch_scores.size == 0:
        return None
    return float(np.max(patch_scores) if q == 1 else np.quantile(patch_scores, q))


def threshold_from(path: str | os.PathLike | None, score: str, quantile: float = 0.99) -> tuple[float | None, str]:
    """(threshold, where it comes from) for the flag of each scan, from ``path``:

    * a labelled evaluation's ``metrics.json``: the threshold of ``score`` at the maximal Youden index
      (the paper's operating point, per patch);
    * a ``scores.h5`` of an evaluation: the ``quantile`` of the ``score`` of its training-normal rows
      (split = train);
    * None: (None, reason): no flag.
    A missing file, or one without ``score``, is an error naming the fix."""
    if not path:
        return None, "no threshold: pass prediction_callbacks.maps.threshold_from=<metrics.json or scores.h5>"
    path = Path(path)
    fix = "pass the metrics.json or scores.h5 of a labelled evaluation of the same checkpoint"
    if not path.is_file():
        raise MissingInputError(f"prediction_callbacks.maps.threshold_from={path} does not exist; {fix}")
    if path.suffix == ".json":
        table = json.loads(path.read_text()).get("scores", {})
        if score not in table:
            raise InputError(f"{path} has no score {score!r} (it has {sorted(table)}); set "
                             f"prediction_callbacks.maps.score to one of them, or {fix}")
        return float(table[score]["threshold"]), f"Youden point of {score} in {path}"
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        from anogan.data import SPLITS

        if not 0 < quantile < 1:
            raise InputError(f"prediction_callbacks.maps.threshold_quantile={quantile}: expected a value in (0, 1)")
        with h5py.File(path, "r") as f:
            if f"scores/{score}" not in f:
                raise InputError(f"{path} has no score {score!r} (it has {sorted(f.get('scores', {}))}); {fix}")
            values = f[f"scores/{score}"][()][f["split"][()] == SPLITS["train"]]
        if values.size == 0:
            raise InputError(f"{path} holds no training-normal rows (split = train); {fix} "
                             "(data.eval_train_samples > 0), or pass its metrics.json")
        return float(np.quantile(values, quantile)), (
            f"{quantile} quantile of {score} over the {values.size} training-normal patches of {path}")
    raise InputError(f"prediction_callbacks.maps.threshold_from={path}: expected a metrics.json or a scores.h5")


def calibration_from(path: str | os.PathLike | None, score: str) -> dict:
    """The label-free thresholds of a training run's evaluation (``anogan.localization``), from ``path``:
    its ``metrics.json`` or a checkpoint of the run (``<run>/checkpoints/*.ckpt``: ``<run>/metrics.json``).
    Returns ``{"pixel_threshold", "image_threshold", "region_threshold", "region_window", "target_fpr",
    "pixel_target_fpr", "source"}`` (None where not recorded), or ``{}`` when the run has no calibrated
    thresholds (no metrics.json, one written before they existed, or no normal validation images)."""
    if not path:
        return {}
    path = Path(path)
    if path.suffix != ".json":
        path = path.parent.parent / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    pixel = metrics.get("pixel_calibration") or {}
    region = metrics.get("region_calibration") or {}
    image = (metrics.get("scores", {}).get(score) or {}).get("calibrated") or {}
    if pixel.get("threshold") is None and region.get("threshold") is None:
        return {}
    return {"pixel_threshold": pixel.get("threshold"), "pixel_target_fpr": pixel.get("target_fpr"),
            "image_threshold": image.get("threshold"), "target_fpr": image.get("target_fpr"),
            "region_threshold": region.get("threshold"), "region_window": region.get("window"),
            "source": f"{path} (calibrated on {image.get('calibrated_on') or pixel.get('calibrated_on')})"}


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict:
    """The AUROC of stitched maps against their masks over all pixels of the scans (torchmetrics,
    ``normalization=None``). Pixels no scored patch covers (NaN: skipped by the foreground test) count
    as the lowest score, i.e. as called normal. Returns ``{"pixel_auroc": float or None, "reason"?,
    "n_pixels", "n_anomalous_pixels", "n_uncovered_pixels"}``: None when the masks hold one class only."""
    from torchmetrics.classification import BinaryAUROC

    metric = BinaryAUROC(normalization=None, sync_on_compute=False)  # the caller holds every pixel (DDP: rank 0)
    n = pos = uncovered = 0
    for m, t in zip(maps, masks):
        m = np.asarray(m, np.float64)
        covered = np.isfinite(m)
        # residual maps are >= 0, so -1 ranks an uncovered pixel below every covered one
        metric.update(torch.from_numpy(np.where(covered, m, -1.0).ravel()), torch.from_numpy(t.ravel()).long())
        n, pos, uncovered = n + t.size, pos + int(t.sum()), uncovered + int((~covered).sum())
    out = {"n_pixels": n, "n_anomalous_pixels": pos, "n_uncovered_pixels": uncovered}
    if pos == 0 or pos == n:
        return {"pixel_auroc": None, "reason": f"the masks hold {pos} anomalous of {n} pixels: AUROC needs both",
                **out}
    return {"pixel_auroc": float(metric.compute()), **out}


# -- the DataModule of an evaluation ---------------------------------------------------------------
def is_scans(data_cfg: DictConfig | dict | None) -> bool:
    """Whether an evaluation's data config is ``data=scans`` (unlabelled scans to map and stitch)."""
    return data_cfg is not None and data_cfg.get("_target_") == SCANS_TARGET


def training_recipe(ckpt: dict) -> dict:
    """How the GAN's training images were made: the checkpoint's ``anogan_data`` (written by training
    from ``HDF5DataModule.recipe``), else the attributes of the HDF5 file its data config names when it is
    readable here, else for image sources without patches (digits, IDX) values as stored (``none``);
    ``{}`` when unknown (then data.normalise must be given)."""
    from anogan.data.hdf5 import patch_recipe

    if ckpt.get("anogan_data"):
        return dict(ckpt["anogan_data"])
    data = (ckpt.get("anogan_config") or {}).get("data") or {}
    path = data.get("path")
    if path and Path(path).is_file():
        recipe = patch_recipe(path)
        made = data.get("patches") or {}  # the phantom's prepare options: for attributes older files lack
        for key in ("foreground_threshold", "min_foreground", "stride"):
            if key not in recipe and key in made:
                recipe[key] = made[key]
        return recipe
    if path:
        return {"source_path": str(path)}
    return {"normalisation": "none", "source": data.get("_target_", "the training data")}


def scans_datamodule(data_cfg: DictConfig, ckpt_path: str | os.PathLike):
    """The ``ScansDataModule`` of ``data_cfg`` (sized for the GAN), reading as the GAN's training data."""
    from hydra.utils import instantiate

    from anogan.checkpoints import read_checkpoint

    return instantiate(data_cfg, training=training_recipe(read_checkpoint(ckpt_path)), _convert_="all")


# -- the figure of docs/oct.md -----------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m anogan.predict", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("figure", help="a scan, its stitched map and its true mask side by side")
    f.add_argument("run", type=Path, help="the run directory of python evaluate.py ... data=scans")
    f.add_argument("name", help="the scan's name in predictions.csv, e.g. fluid_010/001")
    f.add_argument("--scans", type=Path, required=True, help="the data.path of that run")
    f.add_argument("--masks", type=Path, default=None, help="the mask folder (same relative paths)")
    f.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    from anogan.data.scans import list_scans, read_scan, read_scan_mask
    from anogan.viz import scan_map_figure

    found = [s for s in list_scans(args.scans, args.masks) if s.name == args.name]
    npy = args.run / "maps" / f"{args.name}.npy"
    if not found or not npy.is_file():
        print(f"error: no scan {args.name!r} in {args.scans}, or no {npy}; names are in {args.run}/predictions.csv",
              file=sys.stderr)
        return 2
    scan = found[0]
    raw = read_scan(scan).astype(np.float32)
    scan01 = raw / {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(np.dtype(scan.dtype), 1.0)
    scan_map_figure(scan01, np.load(npy), args.out, mask=read_scan_mask(scan), title=args.name)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
