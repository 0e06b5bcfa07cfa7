"""The patch library: B-scans and masks (or a MedMNIST .npz, or IDX files) cut into patches and written
as an HDF5 patch file in the schema of ``anogan.data.hdf5`` (``prepare_folder``, ``prepare_arrays``); its
command is ``python -m anogan.data.prepare``, whose docstring and help describe the inputs. As in the
paper, unannotated volumes go to training and annotated ones to test, where a patch is anomalous when it
holds at least ``min_anomalous_pixels`` mask pixels.

The output is written to a temporary file beside it and renamed when complete, so a failure leaves no
partial output. Every input error is a ``PrepareError`` naming the file and the fix.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from anogan.data import sources
from anogan.data.datamodule import SPLITS
from anogan.data.hdf5 import NORMALISATIONS, inspect_hdf5
from anogan.data.pixels import IMAGE_SUFFIXES, PrepareError, read_pages, unit

@dataclass
class PatchOptions:
    """How scans become patches. ``stride`` None: ``patch_size // 2``; ``per_image``: that many random
    positions per image instead of the grid. Intensities are scaled to [0, 1] (``normalise``: by the
    dtype's maximum, per image or globally between the ``percentiles``) for the foreground test: a patch
    is kept when at least ``min_foreground`` of its pixels exceed ``foreground_threshold``."""

    patch_size: int | None = 64
    stride: int | None = None
    per_image: int | None = None
    normalise: str = "none"
    percentiles: tuple[float, float] = (1.0, 99.0)
    min_foreground: float = 0.0
    foreground_threshold: float = 0.1
    min_anomalous_pixels: int = 1
    seed: int = 0
    scale: tuple[float, float] | None = field(default=None, repr=False)  # global percentiles, once computed

    def __post_init__(self):
        if self.normalise not in NORMALISATIONS:
            raise PrepareError(f"--normalise {self.normalise}: expected one of {', '.join(NORMALISATIONS)}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise PrepareError(f"--percentiles {lo} {hi}: expected 0 <= low < high <= 100")
        for name in ("patch_size", "stride", "per_image", "min_anomalous_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PrepareError(f"--{name.replace('_', '-')} {value}: expected >= 1")
        if not 0 <= self.min_foreground <= 1:
            raise PrepareError(f"--min-foreground {self.min_foreground}: expected a fraction in [0, 1]")


# -- reading ---------------------------------------------------------------------------------------
def check_mask(mask: np.ndarray, path: Path, shape: tuple[int, ...], image: Path) -> np.ndarray:
    """A binary mask page (0 and one other value: 1 or the dtype's maximum; palette masks by index)
    -> bool (H, W)."""
    if mask.shape != shape:
        raise PrepareError(
            f"{path}: mask of size {mask.shape[1]}x{mask.shape[0]} but its image {image} is "
            f"{shape[1]}x{shape[0]}; masks must have the size of their image"
        )
    values = np.unique(mask)
    top = np.iinfo(mask.dtype).max if mask.dtype.kind in "iu" else 1.0
    if values.size > 2 or not set(values.tolist()) <= {0, 1, top}:
        raise PrepareError(
            f"{path}: mask is not binary (values {values[:6].tolist()}{'...' if values.size > 6 else ''}); "
            "store 0 for background and 1 or 255 for fluid, e.g. as PNG (no JPEG)"
        )
    return mask > 0


def warn_small_range(top: float, dtype: np.dtype, normalise: str, source: str) -> None:
    """Warn when integer images stored as they are (``--normalise none``) use a small part of their
    dtype's range, e.g. 12-bit scans in uint16, which reach the model squeezed near -1."""
    if normalise != "none" or dtype.kind != "u":
        return
    full = np.iinfo(dtype).max
    if top < full / 4:
        low = 2 * top / full - 1
        warnings.warn(
            f"{source}: the images' values span 0..{int(top)} of {dtype}'s 0..{full}: with --normalise none "
            f"they reach the model in [-1, {low:.3f}]; pass --normalise global (or image) to scale them to "
            "the full range", UserWarning, stacklevel=3)


def global_scale(images: Iterable[np.ndarray], percentiles: tuple[float, float], per_image: int = 65536,
                 seed: int = 0) -> tuple[float, float]:
    """The ``percentiles`` of the intensities of all images (up to ``per_image`` sampled pixels each)."""
    rng = np.random.default_rng(seed)
    samples = []
    for img in images:
        flat = img.reshape(-1)
        samples.append(flat if flat.size <= per_image else rng.choice(flat, per_image, replace=False))
    lo, hi = np.percentile(np.concatenate(samples).astype(np.float64), percentiles)
    return float(lo), float(hi)


# -- patches ---------------------------------------------------------------------------------------
def positions(shape: tuple[int, int], opts: PatchOptions, rng: np.random.Generator, where: Path | str
              ) -> list[tuple[int, int]]:
    """Top-left corners of the patches of an image of ``shape``: a grid of ``stride`` (covering the last
    row and column too), or ``per_image`` random ones."""
    p, (h, w) = opts.patch_size, shape
    if p > h or p > w:
        raise PrepareError(f"{where}: {w}x{h} image is smaller than --patch-size {p}; use --patch-size "
                           f"{min(h, w)} or less")
    if opts.per_image:
        return list(zip(rng.integers(0, h - p + 1, opts.per_image).tolist(),
                        rng.integers(0, w - p + 1, opts.per_image).tolist()))
    stride = opts.stride or max(1, p // 2)

    def grid(n: int) -> list[int]:
        starts = list(range(0, n - p + 1, stride))
        return starts if starts[-1] == n - p else [*starts, n - p]

    return [(y, x) for y in grid(h) for x in grid(w)]


def kept_positions(scaled: np.ndarray, opts: PatchOptions, rng: np.random.Generator, where: Path | str
                   ) -> list[tuple[int, int]]:
    """The ``positions`` of an image (scaled to [0, 1] by ``unit``) whose patch passes the foreground
    test: at least ``min_foreground`` of its pixels above ``foreground_threshold``."""
    p = opts.patch_size
    pos = positions(scaled.shape, opts, rng, where)
    if opts.min_foreground <= 0:
        return pos
    return [(y, x) for y, x in pos
            if float((scaled[y : y + p, x : x + p] > opts.foreground_threshold).mean()) >= opts.min_foreground]


def cut(image: np.ndarray, mask: np.ndarray | None, opts: PatchOptions, rng: np.random.Generator,
        where: Path | str) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(patch as stored or normalised, mask patch) of every kept position of one image."""
    scaled = unit(image, opts)
    stored = image if opts.normalise == "none" else scaled
    p = opts.patch_size
    for y, x in kept_positions(scaled, opts, rng, where):
        yield stored[y : y + p, x : x + p], None if mask is None else mask[y : y + p, x : x + p]


# -- writing ---------------------------------------------------------------------------------------
def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path; an error when it exists and ``overwrite`` is not set (checked before any work)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise PrepareError(f"{out} exists; pass --overwrite to replace it, or choose another output")
    return out


class PatchWriter:
    """Appends patches to ``<out>.tmp`` (gzip, one patch per chunk) and renames it to ``out`` on a
    clean exit; on any error the temporary file is deleted and ``out`` is left as it was."""

    def __init__(self, out: str | os.PathLike, patch_size: int, dtype: np.dtype, with_masks: bool,
                 with_volume: bool = True, with_split: bool = True, overwrite: bool = False,
                 attrs: dict | None = None):
        self.out = check_output(out, overwrite)
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        self.p, self.dtype, self.with_masks = patch_size, np.dtype(dtype), with_masks
        self.columns = ["labels"] + ["volume"] * with_volume + ["split"] * with_split
        self.attrs = dict(attrs or {})
        self.n = 0

    def __enter__(self) -> PatchWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.tmp, "w")
        p, opts = self.p, dict(compression="gzip", compression_opts=4)
        self.f.create_dataset("images", (0, p, p), self.dtype, maxshape=(None, p, p), chunks=(1, p, p), **opts)
        if self.with_masks:
            self.f.create_dataset("masks", (0, p, p), bool, maxshape=(None, p, p), chunks=(1, p, p), **opts)
        for name in self.columns:
            self.f.create_dataset(name, (0,), np.int64, maxshape=(None,), chunks=(4096,))
        return self

    def add(self, images: list[np.ndarray], labels, volume=None, split=None, masks: list[np.ndarray] | None = None
            ) -> None:
        """Append ``images`` with their labels, volume id and split code (arrays or one value for all)."""
        k = len(images)
        if k == 0:
            return
        given = {"labels": labels, "volume": volume, "split": split}
        cols = {"images": np.stack(images).astype(self.dtype)} | {c: given[c] for c in self.columns}
        if self.with_masks:
            cols["masks"] = np.stack(masks) if masks is not None else np.zeros((k, self.p, self.p), bool)
        for name, arr in cols.items():
            ds = self.f[name]
            ds.resize(self.n + k, axis=0)
            ds[self.n :] = np.broadcast_to(np.asarray(arr), (k, *ds.shape[1:]))
        self.n += k

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                labels = self.f["labels"][()]
                train = self.f["split"][()] == SPLITS["train"] if "split" in self.f else True
                if self.n == 0 or not np.any((labels == 0) & train):
                    raise PrepareError(
                        f"{self.attrs.get('source', self.out)}: no normal patch for training ({self.n} patches "
                        "in all); "
                        "lower --min-foreground, raise --min-anomalous-pixels or add volumes without fluid"
                    )
                self.f.attrs.update({k: v for k, v in self.attrs.items() if v is not None})
            self.f.close()
            if exc_type is None:
                inspect_hdf5(self.tmp)  # the schema check the training does, before the file is published
                os.replace(self.tmp, self.out)
        finally:
            self.f.close()  # a no-op when closed above
            self.tmp.unlink(missing_ok=True)


def _attrs(source: str, opts: PatchOptions, extra: dict | None = None) -> dict:
    attrs = {
        "source": source,
        "patch_size": opts.patch_size,
        "stride": 0 if opts.per_image else (opts.stride or max(1, opts.patch_size // 2)),
        "per_image": opts.per_image or 0,
        "normalisation": opts.normalise,
        "percentiles": list(opts.percentiles) if opts.normalise != "none" else None,
        "min_foreground": opts.min_foreground,
        "foreground_threshold": opts.foreground_threshold,
        "min_anomalous_pixels": opts.min_anomalous_pixels,
        # the intensities mapped to 0 and 1 by --normalise global: scoring new scans needs the same
        "scale": list(opts.scale) if opts.scale is not None else None,
    }
    return attrs | (extra or {})


def _progress(items: list, description: str, enabled: bool):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, console=None, transient=False)


# -- folder of B-scans -----------------------------------------------------------------------------
def list_scans(scans: Path, masks: Path | None) -> list[tuple[str, Path, Path | None]]:
    """(volume, image, mask or None) of every image, volume by volume; checks that each scan of an
    annotated volume (one with a mask sub-folder) has its mask."""
    if not scans.is_dir():
        raise PrepareError(f"{scans}: no such folder; expected one sub-folder of B-scans per volume")
    if masks is not None and not masks.is_dir():
        raise PrepareError(f"--masks {masks}: no such folder; expected the mask images in sub-folders like {scans}")
    out = []
    for vol in sorted(d for d in scans.iterdir() if d.is_dir()):
        mask_dir = masks / vol.name if masks is not None and (masks / vol.name).is_dir() else None
        for img in sorted(f for f in vol.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            mask = None
            if mask_dir is not None:
                found = [m for m in (mask_dir / img.name, *(mask_dir.glob(img.stem + ".*"))) if m.is_file()]
                if not found:
                    raise PrepareError(f"{img}: volume {vol.name} is annotated ({mask_dir}) but this scan has no "
                                       f"mask; add {mask_dir / img.name}, or remove {mask_dir} to train on it")
                mask = found[0]
            out.append((vol.name, img, mask))
    if not out:
        raise PrepareError(f"{scans}: no PNG or TIFF image in its sub-folders (one sub-folder per volume)")
    return out


def prepare_folder(scans: str | os.PathLike, out: str | os.PathLike, masks: str | os.PathLike | None = None,
                   split: str = "paper", overwrite: bool = False, progress: bool = True,
                   attrs: dict | None = None, **options) -> Path:
    """B-scans (one sub-folder per volume) and optional masks -> HDF5 patch file ``out``.

    ``split="paper"``: volumes without annotation train, annotated volumes test (the file's ``split``);
    ``split="none"``: no ``split`` dataset, the DataModule draws a patient-wise split by ``volume``."""
    if split not in ("paper", "none"):
        raise PrepareError(f"--split {split}: expected paper or none")
    check_output(out, overwrite)
    scans, masks = Path(scans), Path(masks) if masks is not None else None
    opts = PatchOptions(**options)
    items = list_scans(scans, masks)
    first = read_pages(items[0][1])[0]
    if opts.normalise == "none":
        if first.dtype.kind == "i":
            raise PrepareError(f"{items[0][1]}: signed {first.dtype} values ({first.min()}..{first.max()}); "
                               "pass --normalise global (or image), which maps them to [0, 1]")
        dtype = first.dtype if first.dtype.kind in "u" else np.float32
    else:
        dtype = np.float32
    if opts.normalise == "global":
        opts.scale = global_scale((p for _, i, _ in items for p in read_pages(i)), opts.percentiles, seed=opts.seed)
    volumes = {v: k for k, v in enumerate(dict.fromkeys(v for v, _, _ in items))}
    annotated = {v for v, _, m in items if m is not None}
    rng = np.random.default_rng(opts.seed)
    extra = {"volumes": list(volumes), "annotated_volumes": sorted(annotated)}
    writer = PatchWriter(out, opts.patch_size, dtype, with_masks=bool(annotated), with_split=split == "paper",
                         overwrite=overwrite, attrs=_attrs(f"folder:{scans}", opts, extra | (attrs or {})))
    top = 0
    with writer:
        for vol, img_path, mask_path in _progress(items, "cutting patches", progress):
            pages = read_pages(img_path)  # a multi-page TIFF: every page is a B-scan of this volume
            mask_pages = read_pages(mask_path, mask=True) if mask_path is not None else [None] * len(pages)
            if len(mask_pages) != len(pages):
                raise PrepareError(f"{mask_path}: {len(mask_pages)} mask page(s) but its image {img_path} has "
                                   f"{len(pages)}; store one mask page per B-scan")
            for page, (image, mask) in enumerate(zip(pages, mask_pages)):
                where = img_path if len(pages) == 1 else f"{img_path} page {page}"
                if opts.normalise == "none" and image.dtype != dtype:
                    raise PrepareError(f"{where}: {image.dtype} image among {np.dtype(dtype)} ones ({items[0][1]}); "
                                       "store all scans with one bit depth, or pass --normalise image")
                if image.dtype.kind == "f" and opts.normalise == "none" and (image.min() < 0 or image.max() > 1):
                    raise PrepareError(f"{where}: float image outside [0, 1]; pass --normalise image or global")
                top = max(top, image.max())
                if mask is not None:
                    mask = check_mask(mask, mask_path, image.shape, img_path)
                pairs = list(cut(image, mask, opts, rng, where))
                if not pairs:
                    continue
                patches = [p for p, _ in pairs]
                if mask is None:
                    labels, pmasks = 0, None
                else:
                    pmasks = [m for _, m in pairs]
                    labels = np.array([int(m.sum() >= opts.min_anomalous_pixels) for m in pmasks])
                code = SPLITS["test"] if vol in annotated else SPLITS["train"]
                writer.add(patches, labels, volumes[vol], code, pmasks)
    warn_small_range(top, np.dtype(dtype), opts.normalise, str(scans))
    return writer.out


# -- labelled arrays: MedMNIST .npz, IDX ----------------------------------------------------------
def prepare_arrays(parts: dict[str, tuple[np.ndarray, np.ndarray]], out: str | os.PathLike,
                   normal_classes: Iterable[int], source: str, overwrite: bool = False, progress: bool = True,
                   **options) -> Path:
    """Images (N, H, W) with classes (N,) per split (train, val, test) -> HDF5 patch file; a patch is
    normal when its image's class is in ``normal_classes``. ``patch_size`` None: whole images."""
    check_output(out, overwrite)
    normal = [int(c) for c in normal_classes]
    if not normal:
        raise PrepareError("--normal-classes is empty; name the classes that count as normal, e.g. 0")
    shape = next(iter(parts.values()))[0].shape[1:]
    extra = {"normal_classes": normal}
    if options.get("patch_size") is None:  # whole images: one image, one item
        side = max(shape)
        if shape[0] != shape[1]:
            parts = {k: (pad_to_square(images), classes) for k, (images, classes) in parts.items()}
            extra["padded_to_square"] = f"{shape[1]}x{shape[0]} centred in {side}x{side}, zeros around"
            print(f"{source}: {shape[1]}x{shape[0]} images are padded with zeros to {side}x{side} (one item "
                  "each); pass --patch-size to cut patches instead (each patch gets its image's label)",
                  file=sys.stderr)
        options["patch_size"] = side
    opts = PatchOptions(**options)
    first = next(iter(parts.values()))[0]
    if opts.normalise == "none" and first.dtype.kind == "i":
        raise PrepareError(f"{source}: signed {first.dtype} images; pass --normalise global (or image), which "
                           "maps them to [0, 1]")
    dtype = first.dtype if opts.normalise == "none" and first.dtype.kind == "u" else np.float32
    if opts.normalise == "global":
        opts.scale = global_scale((imgs[i] for imgs, _ in parts.values() for i in range(len(imgs))),
                                  opts.percentiles, seed=opts.seed)
    rng = np.random.default_rng(opts.seed)
    writer = PatchWriter(out, opts.patch_size, dtype, with_masks=False, with_volume=False, overwrite=overwrite,
                         attrs=_attrs(source, opts, extra))
    with writer:
        for name, (images, classes) in parts.items():
            for i in _progress(range(len(images)), f"cutting {name} patches", progress):
                patches = [p for p, _ in cut(images[i], None, opts, rng, f"{source} {name} image {i}")]
                label = int(classes[i] not in normal)
                writer.add(patches, label, split=SPLITS[name])
    if np.dtype(dtype).kind == "u":
        top = max(int(imgs.max()) for imgs, _ in parts.values() if imgs.size)
        warn_small_range(top, np.dtype(dtype), opts.normalise, source)
    return writer.out


def pad_to_square(images: np.ndarray) -> np.ndarray:
    """(N, H, W) images centred in (N, S, S), S = max(H, W), zeros around: whole images of any shape
    become one square item each (no crop, no resize)."""
    n, h, w = images.shape
    side = max(h, w)
    out = np.zeros((n, side, side), images.dtype)
    y, x = (side - h) // 2, (side - w) // 2
    out[:, y : y + h, x : x + w] = images
    return out


def load_npz(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A MedMNIST-style .npz: ``train_images``, ``train_labels`` and optionally val_*, test_*."""
    path = Path(path)
    try:
        data = np.load(path)
        keys = set(data.files)
    except (OSError, ValueError) as e:
        raise PrepareError(f"{path}: cannot read as .npz ({e})") from e
    parts = {}
    for split in ("train", "val", "test"):
        ik, lk = f"{split}_images", f"{split}_labels"
        if ik not in keys and lk not in keys:
            continue
        if ik not in keys or lk not in keys:
            raise PrepareError(f"{path}: has {ik if ik in keys else lk} but not {lk if ik in keys else ik}")
        images, labels = data[ik], data[lk]
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 or len(labels) != len(images):
            raise PrepareError(f"{path}: {ik} of shape {images.shape} and {lk} of shape {labels.shape}; "
                               "expected greyscale (N, H, W) images and N labels")
        parts[split] = (images, np.asarray(labels).reshape(len(images), -1)[:, 0].astype(np.int64))
    if "train" not in parts:
        raise PrepareError(f"{path}: keys {sorted(keys)}; expected MedMNIST keys train_images, train_labels "
                           "(and optionally val_images, val_labels, test_images, test_labels)")
    return parts


def load_idx_dir(root: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four MNIST-style IDX files (gzipped or not) of folder ``root``: train and test splits."""
    root = Path(root)
    names = [n for pair in sources.IDX_FILES.values() for n in pair]
    found = {n: sources._find(n, [root]) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise PrepareError(f"{root}: IDX files {', '.join(missing)} (with or without .gz) not found; "
                           "expected the four files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                           "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")
    try:
        return {split: sources.load_idx_split(found, split) for split in ("train", "test")}
    except ValueError as e:
        raise PrepareError(str(e)) from e
