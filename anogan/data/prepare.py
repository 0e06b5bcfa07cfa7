"""``python -m anogan.data.prepare``: from B-scans and masks (or a MedMNIST .npz, or IDX files) to an
HDF5 patch file in the schema of ``anogan.data.hdf5``.

    python -m anogan.data.prepare folder SCANS OUT.h5 [--masks MASKS] [--patch-size 64] [--stride 32]
    python -m anogan.data.prepare npz octmnist.npz OUT.h5 --normal-classes 3 [--patch-size 28]
    python -m anogan.data.prepare idx DIR OUT.h5 --normal-classes 0

``folder``: one sub-folder of PNG / TIFF B-scans (8 or 16 bit; a multi-page TIFF holds one B-scan per
page) per volume; ``--masks`` a parallel folder with one binary mask image per annotated scan (same
relative path, same size, same pages; palette masks are read by index). As in the paper,
volumes without annotation (no mask sub-folder) go to training, annotated volumes to test, where a patch
is anomalous when it holds at least ``--min-anomalous-pixels`` mask pixels.

The output is written to a temporary file beside OUT and renamed when complete, so a failure leaves no
partial output. Every input error is a ``PrepareError`` naming the file and the fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anogan.data.hdf5 import NORMALISATIONS, inspect_hdf5
from anogan.data.patches import load_idx_dir, load_npz, prepare_arrays, prepare_folder
from anogan.errors import InputError, full_error_asked, report


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m anogan.data.prepare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stride", type=int, default=None, help="grid stride (default: patch size / 2)")
    common.add_argument("--per-image", type=int, default=None, help="random patches per image instead of the grid")
    common.add_argument("--normalise", choices=NORMALISATIONS, default="none",
                        help="intensities: as stored (none), per image or global percentiles -> [0, 1]")
    common.add_argument("--percentiles", type=float, nargs=2, default=(1.0, 99.0), metavar=("LOW", "HIGH"))
    common.add_argument("--min-foreground", type=float, default=0.0,
                        help="skip patches with less than this fraction of pixels above --foreground-threshold")
    common.add_argument("--foreground-threshold", type=float, default=0.1, help="in [0, 1] intensity")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    common.add_argument("--no-progress", action="store_true")
    f = sub.add_parser("folder", parents=[common], help="PNG / TIFF B-scans, one sub-folder per volume")
    f.add_argument("scans", type=Path, help="folder with one sub-folder of B-scans per volume")
    f.add_argument("output", type=Path, help="the HDF5 file to write")
    f.add_argument("--masks", type=Path, default=None, help="parallel folder of binary mask images")
    f.add_argument("--patch-size", type=int, default=64)
    f.add_argument("--min-anomalous-pixels", type=int, default=1, help="mask pixels that make a patch anomalous")
    f.add_argument("--split", choices=("paper", "none"), default="paper",
                   help="paper: unannotated volumes train, annotated ones test; none: drawn by the DataModule")
    for kind, what in (("npz", "a MedMNIST-style .npz (e.g. OCTMNIST)"), ("idx", "a folder of the four IDX files")):
        p = sub.add_parser(kind, parents=[common], help=what)
        p.add_argument("input", type=Path, help=what)
        p.add_argument("output", type=Path, help="the HDF5 file to write")
        p.add_argument("--normal-classes", type=int, nargs="+", required=True, help="classes that count as normal")
        p.add_argument("--patch-size", type=int, default=None,
                       help="default: the whole image, one item each (non-square images padded to square); "
                            "with a size, each patch is an item with its image's label")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = dict(patch_size=args.patch_size, stride=args.stride, per_image=args.per_image,
                   normalise=args.normalise, percentiles=tuple(args.percentiles),
                   min_foreground=args.min_foreground, foreground_threshold=args.foreground_threshold,
                   seed=args.seed)
    common = dict(overwrite=args.overwrite, progress=not args.no_progress)
    try:
        if args.kind == "folder":
            out = prepare_folder(args.scans, args.output, masks=args.masks, split=args.split,
                                 min_anomalous_pixels=args.min_anomalous_pixels, **common, **options)
        else:
            parts = load_npz(args.input) if args.kind == "npz" else load_idx_dir(args.input)
            out = prepare_arrays(parts, args.output, args.normal_classes, f"{args.kind}:{args.input}",
                                 **common, **options)
    except InputError as e:  # PrepareError, and the schema check of the file written
        if full_error_asked():
            raise
        return report(e)
    info = inspect_hdf5(out)
    n_anom = int(info.labels.sum())
    print(f"wrote {out}: {info.n} patches of {info.size}x{info.size} ({info.n - n_anom} normal, {n_anom} anomalous)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
