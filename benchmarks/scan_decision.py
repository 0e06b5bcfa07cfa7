"""How the scan-level score of ``data=scans`` was chosen: candidate scan scores compared on the phantom's
whole test B-scans of development seeds, then the chosen rule reported on other seeds.

Each argument is the run directory of ``python evaluate.py ... data=scans data.masks=... data.normal_path=...``
(its ``scores.h5`` holds every patch's residual map; its ``.hydra/config.yaml`` names the checkpoint, the
scans, the masks, used here only to know which scans hold fluid, and the normal scans). The patch maps
are stitched again here (``anogan.data.stitch.Stitcher``) and each candidate scores every scan:

* ``max patch``: the image score of predictions.csv (the scan's most anomalous patch);
* ``mean w<k>``: the largest mean over a k x k square of the averaged map (``maps/<scan>.npy``);
* ``min v<n> w<k>``: the largest mean over a k x k square of the consensus map (per pixel the smallest
  residual of the patches covering it, where at least n patches cover it): the rule of ``ScanMaps`` is
  ``min v3 w7``; ``min v3 w7 border``: the same with the border band scored on the patches the grid places
  there (``scan_border=include``);
* ``map q<q>``: the q-quantile of the averaged map's pixels.

Prints the scan AUROC of every candidate per run (scikit-learn; label = the scan's mask holds fluid), and
for the rule of ``ScanMaps`` the rates of its flag at the conformal threshold of the run's normal scans
(``anogan.metrics.conformal``; none with fewer than 19 normal scans at 0.05)::

    python benchmarks/scan_decision.py SCANS_RUN [SCANS_RUN ...]

Relative paths in a run's config are read from the directory the evaluation ran in (Hydra's
``runtime.cwd``), so the script runs from anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from anogan.callbacks import read_scores
from anogan.data.scans import read_scan_mask
from anogan.data.scans import scans_datamodule
from anogan.data.stitch import Stitcher, grid_coverage, to_patch_size
from anogan.metrics.conformal import above, conformal_threshold
from anogan.metrics.localization import rates, window_max

WINDOWS = (5, 7, 9)
VOTES = (1, 2, 3, 4)
QUANTILES = (0.99, 0.999, 1.0)
RULE = "min v3 w7"  # the rule of anogan.callbacks.ScanMaps (scan_min_votes=3, scan_window=7)


def candidates(run: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(labels of the test scans, {candidate: test scans' scores}, {candidate: normal scans' scores})."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    if not cfg.data.get("masks"):
        raise SystemExit(f"error: {run} was evaluated without data.masks: a scan AUROC needs them (which scans "
                         "hold a lesion); rerun its evaluate.py command with data.masks=<mask folder>")
    dm = scans_datamodule(cfg.data, cfg.ckpt_path)
    dm.setup()
    ds = dm.test_set
    rows = read_scores(run / "scores.h5")
    residual = to_patch_size(torch.from_numpy(rows["residual_map"]), dm.opts.patch_size)
    maps = np.empty((len(ds), *residual.shape[1:]), np.float32)
    maps[rows["index"]] = residual.numpy()
    with open(run / "predictions.csv") as f:
        max_patch = {r["image"]: float(r["image_score"]) for r in csv.DictReader(f)}
    labels, test, normal = [], {}, {}
    for s, scan in enumerate(dm.scans):
        here = np.flatnonzero(ds.scan == s)
        padded = tuple(max(n, dm.opts.patch_size) for n in scan.shape)  # scans smaller than a patch are padded
        st = Stitcher(padded).add(maps[here], list(zip(ds.y[here], ds.x[here])))
        mean = st.result(crop=scan.shape)
        score = {f"mean w{w}": window_max(mean, w) for w in WINDOWS}
        score |= {f"min v{v} w{w}": window_max(st.consensus(v, crop=scan.shape), w) for v in VOTES for w in WINDOWS}
        border = st.consensus(3, crop=scan.shape, coverage=grid_coverage(padded, dm.opts))
        score[f"{RULE} border"] = window_max(border, 7)
        score |= {f"map q{q:g}": float(np.quantile(mean[np.isfinite(mean)], q)) for q in QUANTILES}
        if scan.normal:
            target = normal
        else:
            target = test
            score["max patch"] = max_patch[scan.name]
            labels.append(int(read_scan_mask(scan).any()))
        for k, v in score.items():
            target.setdefault(k, []).append(np.nan if v is None else v)
    as_arrays = lambda d: {k: np.array(v, np.float64) for k, v in d.items()}  # noqa: E731
    return np.array(labels), as_arrays(test), as_arrays(normal)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/scan_decision.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, metavar="SCANS_RUN",
                    help="run directory of evaluate.py data=scans with data.masks (and data.normal_path)")
    runs = ap.parse_args(argv).runs
    for run in runs:
        if not (run / ".hydra" / "config.yaml").is_file() or not (run / "scores.h5").is_file():
            ap.error(f"{run}: not a finished run directory of evaluate.py data=scans (no .hydra/config.yaml or "
                     "scores.h5)")
    table: dict[str, list[float]] = {}
    for run in runs:
        run = run.resolve()
        cwd = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.cwd  # where its relative paths start
        with contextlib.chdir(cwd):
            labels, scores, normal = candidates(run)
        print(f"{run}: {int(labels.sum())} fluid / {int((1 - labels).sum())} healthy test scans, "
              f"{len(normal.get(RULE, []))} normal scans")
        for name, s in sorted(scores.items()):
            value = roc_auc_score(labels, np.nan_to_num(s, nan=-1.0))
            table.setdefault(name, []).append(value)
            print(f"  {name:14s} scan AUROC {value:.3f}" + ("   <- ScanMaps' rule" if name == RULE else ""))
        if RULE in normal:
            threshold, reason = conformal_threshold(normal[RULE], 0.05, "normal scans' scores")
            if threshold is None:
                print(f"  no flag: {reason}")
            else:
                found = rates(above(scores[RULE], threshold), labels)
                print(f"  flag above the normal scans' conformal threshold {threshold:.4g} (target FPR 0.05): "
                      f"sensitivity {found['sensitivity']:.3f}, specificity {found['specificity']:.3f}")
    if len(runs) > 1:
        print(f"mean (min) over the {len(runs)} runs:")
        for name, values in sorted(table.items(), key=lambda kv: -np.mean(kv[1])):
            print(f"  {name:14s} {np.mean(values):.3f} ({np.min(values):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
