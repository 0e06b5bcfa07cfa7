"""What the fluid scans that the scan decision misses have in common, from a seed study's outputs.

For every fluid scan of every seed of ``benchmarks/oct_seed_study.py``'s folder, one row: its ``scan_score``,
whether it scores below the highest healthy test scan of its seed (so that no threshold calls it without
also calling a healthy scan), its fluid's size (pixels, connected blobs, the largest blob, the rows its
fluid spans) and the averaged stitched map (``maps/<scan>.npy``, the residual |x - G(z)| averaged over the
covering patches) over the fluid and over a 4-pixel ring around it::

    python benchmarks/oct_fluid_scans.py logs/oct_seed_study [--name scans] [--out fluid_scans.csv]

The fluid masks come from the phantom (``S/phantom/masks``), used here only to describe the scans, as
the seed study uses them to measure.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

COLUMNS = ("seed", "scan", "scan_score", "top_healthy_score", "below_top_healthy", "fluid_pixels", "blobs",
           "largest_blob", "fluid_rows", "map_in_fluid", "map_around_fluid")
RING = 4  # pixels around the fluid


def _mask(folder: Path, scan: str) -> np.ndarray:
    found = sorted((folder / "phantom" / "masks").glob(f"{scan}.*"))
    if not found:
        raise SystemExit(f"error: no mask for scan {scan} under {folder / 'phantom' / 'masks'}")
    return np.asarray(Image.open(found[0])) > 0


def fluid_rows(folder: Path, seed: int, name: str = "scans") -> list[dict]:
    """The rows of one seed's folder (``OUT/S``): one per test scan whose mask marks fluid."""
    with open(folder / name / "predictions.csv", newline="") as f:
        scans = list(csv.DictReader(f))
    masks = {r["image"]: _mask(folder, r["image"]) for r in scans}
    healthy = [float(r["scan_score"]) for r in scans if r["scan_score"] and not masks[r["image"]].any()]
    top = max(healthy) if healthy else None
    out = []
    for r in scans:
        mask = masks[r["image"]]
        if not mask.any():
            continue
        labels, n = ndimage.label(mask)
        ring = ndimage.binary_dilation(mask, iterations=RING) & ~mask
        score_map = np.load(folder / name / "maps" / f"{r['image']}.npy")
        score = float(r["scan_score"]) if r["scan_score"] else None
        rows = np.nonzero(mask.any(1))[0]
        out.append({"seed": seed, "scan": r["image"], "scan_score": score, "top_healthy_score": top,
                    "below_top_healthy": None if score is None or top is None else int(score < top),
                    "fluid_pixels": int(mask.sum()), "blobs": int(n),
                    "largest_blob": int(np.bincount(labels.ravel())[1:].max()),
                    "fluid_rows": int(rows.max() - rows.min() + 1),
                    "map_in_fluid": float(np.nanmean(score_map[mask])),
                    "map_around_fluid": float(np.nanmean(score_map[ring]))})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", type=Path, help="the --out folder of benchmarks/oct_seed_study.py")
    p.add_argument("--name", default="scans", help="the evaluation's --name in the study (default: scans)")
    p.add_argument("--out", type=Path, help="the CSV to write (default: STUDY/NAME_fluid_scans.csv)")
    a = p.parse_args(argv)
    if not a.study.is_dir():
        p.error(f"{a.study} is not a folder: give the --out folder of benchmarks/oct_seed_study.py")
    seeds = sorted(int(d.name) for d in a.study.iterdir()
                   if d.name.isdigit() and (d / a.name / "predictions.csv").is_file())
    if not seeds:
        p.error(f"no seed folder with {a.name}/predictions.csv under {a.study}")
    rows = [row for s in seeds for row in fluid_rows(a.study / str(s), s, a.name)]
    out = a.out or a.study / f"{a.name}_fluid_scans.csv"
    tmp = out.with_suffix(".partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    missed = [r for r in rows if r["below_top_healthy"]]
    print(f"{out}: {len(rows)} fluid scans of {len(seeds)} seeds, {len(missed)} below their seed's top healthy scan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
