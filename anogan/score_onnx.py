"""``python -m anogan.score_onnx MODEL.onnx IMAGES OUT_DIR``: score a folder of images with a file of
``python -m anogan.export``, with onnxruntime, numpy and Pillow only (torch is never imported).

IMAGES: a folder of PNG / JPEG / TIFF images (searched recursively; every page of a multi-page TIFF is an
image) or one image, each of the GAN's size and channel count, read as ``evaluate.py data=scans`` reads
a scan of that size (``anogan.engine.onnx_detector.OnnxDetector.read_image``). Writes, atomically:

* ``OUT_DIR/predictions.csv``: one row per image: ``file`` (relative to IMAGES), ``page``, ``map`` (its
  PNG), and per score ``<score>`` (higher = more anomalous), ``<score>_p_value`` ((1 + #{normal >= s}) /
  (n + 1) over the run's normal validation scores; empty where the file holds none),
  ``<score>_threshold`` (the evaluation's calibrated threshold; empty where none) and
  ``<score>_flagged`` (1 when score > threshold, i.e. p-value <= the target FPR, else 0; empty without a threshold);
* ``OUT_DIR/maps/<file without suffix>.png`` (``_p<page>`` for TIFF pages): the residual map as a 16-bit
  grey PNG, pixel value = round(65535 * map / (2 C)), C the channels (the map lies in [0, 2C]).

Nothing is written when an image is refused (another size or channel count, an unreadable file): the
error is one line naming the file and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAP_LEVELS = 65535  # a map PNG's largest value: the map's upper bound 2C


def list_images(images: Path) -> list[Path]:
    """The image files of ``images`` (a folder, searched recursively, or one file), sorted."""
    from anogan.errors import InputError, MissingInputError

    if images.is_file():
        return [images]
    if not images.is_dir():
        raise MissingInputError(f"{images} does not exist; pass a folder of PNG / JPEG / TIFF images or one image")
    files = sorted(f for f in images.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not files:
        raise InputError(f"{images}: no PNG, JPEG or TIFF image in it or its sub-folders; pass the images' folder")
    return files


def map_png(residual_map: np.ndarray, channels: int, path: Path, about: dict) -> None:
    """Write a residual map (S, S) in [0, 2C] as a 16-bit grey PNG (value = round(65535 map / 2C)),
    atomically, with ``about`` as JSON in its text chunk ``anogan``."""
    from PIL import Image, PngImagePlugin

    from anogan.runtime.io import atomic_path

    levels = np.clip(np.rint(residual_map.astype(np.float64) * MAP_LEVELS / (2.0 * channels)), 0, MAP_LEVELS)
    info = PngImagePlugin.PngInfo()
    info.add_text("anogan", json.dumps(about))
    with atomic_path(path) as tmp:
        Image.fromarray(levels.astype(np.uint16)).save(tmp, format="PNG", pnginfo=info)


def _cell(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{float(value):.9g}"


def score_folder(model: str | Path, images: str | Path, out_dir: str | Path, batch_size: int = 64) -> dict:
    """Score every image of ``images`` with the exported detector ``model``; write ``out_dir/predictions.csv``
    and ``out_dir/maps/`` (module docstring). Every image is read and checked before anything is written.
    Returns {"n": images, "flagged": {score: count or None}, "csv": path, "maps": folder}."""
    from anogan.engine.onnx_detector import MAP, OnnxDetector
    from anogan.runtime.io import atomic_path

    detector = OnnxDetector(model)
    images, out_dir = Path(images), Path(out_dir)
    root = images if images.is_dir() else images.parent
    items = []  # (file relative to root, page, map name, model input)
    for f in list_images(images):
        pages = detector.read_image(f)
        rel = f.relative_to(root)
        for k, x in enumerate(pages):
            stem = rel.with_suffix("").as_posix() + (f"_p{k:03d}" if len(pages) > 1 else "")
            items.append((rel.as_posix(), k, f"maps/{stem}.png", x))
    names = detector.scores
    columns = ["file", "page", "map"] + [f"{n}{s}" for n in names for s in ("", "_p_value", "_threshold", "_flagged")]
    about = {"of": detector.meta.get("residual_map", {}).get("of"), "model": detector.path.name,
             "value": f"pixel / {MAP_LEVELS} * {2 * detector.channels}"}
    rows, flagged = [], {n: None if detector.thresholds[n] is None else 0 for n in names}
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        out = detector(np.stack([x for *_, x in batch]), batch_size)
        p, flags = detector.p_values(out), detector.flags(out)
        for j, (rel, page, map_name, _) in enumerate(batch):
            map_png(out[MAP][j], detector.channels, out_dir / map_name, {**about, "file": rel, "page": page})
            row = {"file": rel, "page": page, "map": map_name}
            for n in names:
                threshold = detector.thresholds[n]
                row.update({n: _cell(out[n][j]), f"{n}_p_value": _cell(p[n][j]), f"{n}_threshold": _cell(threshold),
                            f"{n}_flagged": "" if flags[n] is None else int(flags[n][j])})
                if flags[n] is not None:
                    flagged[n] += int(flags[n][j])
            rows.append(row)
    csv_path = out_dir / "predictions.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return {"n": len(rows), "flagged": flagged, "csv": csv_path, "maps": out_dir / "maps", "detector": detector}


def main(argv: list[str] | None = None) -> int:
    from anogan.errors import InputError, full_error_asked, report

    ap = argparse.ArgumentParser(prog="python -m anogan.score_onnx", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="the .onnx file written by python -m anogan.export")
    ap.add_argument("images", type=Path, help="a folder of PNG / JPEG / TIFF images (recursive), or one image")
    ap.add_argument("out_dir", type=Path, help="where predictions.csv and maps/ go")
    ap.add_argument("--batch-size", type=int, default=64, help="images per onnxruntime call (default 64)")
    args = ap.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise InputError(f"--batch-size {args.batch_size}: expected >= 1")
        done = score_folder(args.model, args.images, args.out_dir, args.batch_size)
    except InputError as e:
        if full_error_asked():
            raise
        return report(e)
    detector = done["detector"]
    n_normal = {len(v) for v in detector.normal_scores.values()}
    print(f"scored {done['n']} image(s) with {args.model}: {done['csv']}, {done['maps']}/ (16-bit PNGs: "
          f"pixel / {MAP_LEVELS} * {2 * detector.channels} = the residual)")
    shown = [f"{k} {v} of {done['n']}" for k, v in done["flagged"].items() if v is not None]
    print("flagged (score > the stored threshold): " + (", ".join(shown) if shown else "none: the file holds no "
                                                           "threshold"))
    print(f"p-values against {max(n_normal)} normal validation scores" if max(n_normal, default=0) else
          "no p-values: the file holds no normal validation scores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
