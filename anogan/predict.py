"""Scoring new, unlabelled scans: sliding-window anomaly maps stitched from patches, an image score and
a flag per scan (``python evaluate.py ckpt_path=... data=scans data.path=DIR``).

The scans are cut into overlapping patches of the GAN's size (``anogan.data.scans``), all patches are
mapped in batches by the same ``Inversion`` as a labelled evaluation, and ``anogan.callbacks.ScanMaps``
stitches the per-patch residual maps x_R = |x - G(z_Gamma)| (paper sec. 2.3) back into one map per scan
with ``anogan.data.stitch``. This module is the command that draws the figure; the library is in
``anogan.data.scans`` (the DataModule), ``anogan.data.stitch`` and ``anogan.callbacks.maps``.

``python -m anogan.predict figure RUN_DIR NAME --scans DIR --masks DIR --out PNG`` draws a scan, its
stitched map and its true mask side by side (the figure of docs/oct.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


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
    from anogan.data.pixels import DTYPE_MAX
    from anogan.data.scans import list_scans, read_scan, read_scan_mask
    from anogan.callbacks.viz import scan_map_figure

    found = [s for s in list_scans(args.scans, args.masks) if s.name == args.name]
    npy = args.run / "maps" / f"{args.name}.npy"
    if not found or not npy.is_file():
        print(f"error: no scan {args.name!r} in {args.scans}, or no {npy}; names are in {args.run}/predictions.csv",
              file=sys.stderr)
        return 2
    scan = found[0]
    raw = read_scan(scan).astype(np.float32)
    scan01 = raw / DTYPE_MAX.get(np.dtype(scan.dtype), 1.0)
    scan_map_figure(scan01, np.load(npy), args.out, mask=read_scan_mask(scan), title=args.name)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
