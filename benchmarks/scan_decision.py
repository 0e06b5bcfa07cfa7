"""How the scan-level score of ``data=scans`` was chosen: candidate scan scores compared on the phantom's
whole test B-scans, on a development seed, then reported with the chosen rule on other seeds.

Each run is a pair of directories: a training run of ``experiment=oct_phantom`` (its ``metrics.json``
and ``scores.h5`` hold the residual maps of the normal validation patches, on which pixel thresholds are
calibrated) and a ``data=scans`` evaluation of its test volumes (``maps/<scan>.npy``), with the mask
folder (used here only to know which scans hold fluid). Candidates, per scan, from the stitched map
over the pixels a scored patch covers:

* ``max patch``: the image score of predictions.csv (the scan's most anomalous patch, before this issue);
* ``map q<q>``: the q-quantile of the map's pixels;
* ``area@<a>``: the fraction of pixels at or above the pixel threshold calibrated at target FPR a (the
  (1 - a) quantile of the normal validation patches' residual pixels).

Prints the scan AUROC of every candidate (scikit-learn; label = the scan's mask holds fluid)::

    python benchmarks/scan_decision.py TRAIN_RUN SCANS_RUN MASKS [TRAIN_RUN SCANS_RUN MASKS ...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from anogan.callbacks import read_scores
from anogan.data import SPLITS
from anogan.data.scans import list_scans, read_scan_mask

QUANTILES = (0.99, 0.999, 0.9999, 1.0)
AREA_FPRS = (0.01, 0.001, 0.0001)


def candidates(train_run: Path, scans_run: Path, masks: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows = read_scores(train_run / "scores.h5")
    val = rows["split"] == SPLITS["val"]
    normal_pixels = rows["residual_map"][val].ravel()
    thresholds = {a: float(np.quantile(normal_pixels, 1 - a)) for a in AREA_FPRS}
    with open(scans_run / "predictions.csv") as f:
        max_patch = {r["image"]: float(r["image_score"]) for r in csv.DictReader(f)}
    labels, scores = [], {"max patch": []}
    for scan in list_scans(masks.parent / "scans", masks):
        amap = np.load(scans_run / "maps" / f"{scan.name}.npy")
        covered = amap[np.isfinite(amap)]
        labels.append(int(read_scan_mask(scan).any()))
        scores["max patch"].append(max_patch[scan.name])
        for q in QUANTILES:
            scores.setdefault(f"map q{q:g}", []).append(float(np.quantile(covered, q)))
        for a, t in thresholds.items():
            scores.setdefault(f"area@{a:g}", []).append(float(np.mean(covered >= t)))
    return np.array(labels), {k: np.array(v) for k, v in scores.items()}


def main(argv: list[str]) -> int:
    if not argv or len(argv) % 3:
        print(__doc__.split("Prints")[1], file=sys.stderr)
        return 2
    for i in range(0, len(argv), 3):
        train_run, scans_run, masks = (Path(a) for a in argv[i : i + 3])
        labels, scores = candidates(train_run, scans_run, masks)
        print(f"{train_run}: {int(labels.sum())} fluid / {int((1 - labels).sum())} healthy scans")
        for name, s in scores.items():
            print(f"  {name:12s} scan AUROC {roc_auc_score(labels, s):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
