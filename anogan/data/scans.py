"""Unlabelled scans to score (``data=scans``): whole images cut into overlapping patches of the GAN's
size, read with the normalisation of the GAN's training data.

Inputs (``data.path``): a folder of PNG / TIFF images (8 or 16 bit, any size, searched recursively; a
multi-page TIFF is a volume, one scan per page), a single image, or an HDF5 file with a dataset
``images`` (N, H, W) or (N, C, H, W) of any size (``labels`` not needed). Optional ``data.masks``: a
folder parallel to a folder input (same relative path, any image suffix), or one mask file for a single
image; binary, the size of its scan; used only to measure the maps (pixel AUROC), never by the model.
Colour images are scored in colour by a GAN trained with data.channels=3, else as grey (their luminance).

The training recipe (``training``, recorded by ``HDF5DataModule.recipe`` in the checkpoint, see
``training_recipe``) fixes the normalisation (``none``: stored value / dtype maximum;
``image``: per-scan percentiles; ``global``: the training set's recorded intensities ``scale``), the
patch size, the default stride and the foreground test. A setting asked for on the command line that
differs from it, or scans of another channel count or bit depth, is refused with the fix.

Every item is a patch: ``image`` (C, S, S) in [-1, 1] (S = the GAN's image size; patches of another
``patch_size`` are resized like the training patches were), ``label`` -1 (unknown), ``index`` (the
patch's row in the run), ``split`` (test), ``z_key`` (``patch_key``: the key of its initial z, from the
scan's name and the patch's position only, so that a scan gets the same initial z whatever other scans
are scored with it).

Optional ``data.normal_path``: scans known to be normal and not used in training (same forms as
``data.path``, read the same way). Their patches follow the test scans' with ``split`` val (their
``z_key`` hashes ``normal/`` before the name); ``anogan.callbacks.ScanMaps`` maps them like the test scans
and calibrates the scan flag and the pixel threshold on their stitched maps, without labels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from anogan.data.datamodule import SPLITS
from anogan.data.hdf5 import NORMALISATIONS
from anogan.data.patches import PatchOptions, check_mask, kept_positions
from anogan.data.pixels import IMAGE_SUFFIXES, PrepareError, read_pages, unit
from anogan.data.transforms import to_model_range
from anogan.errors import InputError

log = logging.getLogger(__name__)


class ScanError(InputError):
    """Scans that cannot be scored as the GAN's training data was read; the message names the fix."""


@dataclass
class Scan:
    """One scan: ``name`` (relative path without suffix, ``_p<page>`` for a page of a multi-page
    TIFF, ``<file>_<row>`` for an HDF5 row; also the name of its outputs), where it is stored
    (``source``, ``page``: TIFF page or HDF5 row), ``shape`` (H, W), ``mask`` (a file, or None) and
    ``normal``: a scan of ``data.normal_path``, known to be normal, that calibrates the scan flag."""

    name: str
    source: Path
    page: int
    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    mask: Path | None = None
    normal: bool = False


def _hdf5_images(path: Path, key: str = "data.path") -> h5py.Dataset:
    f = h5py.File(path, "r")
    if "images" not in f:
        f.close()
        raise ScanError(f"{key}={path}: no dataset 'images' (it has {sorted(f.keys())}); store the scans "
                        "as images (N, H, W) or (N, C, H, W)")
    return f["images"]


def list_scans(path: str | os.PathLike, masks: str | os.PathLike | None = None, colour: bool = False,
               mask_suffix: str = "", key: str = "data.path") -> list[Scan]:
    """Every scan of ``path`` (folder, image file or HDF5 file) in a fixed order, with its mask file;
    ``colour``: colour images keep their 3 channels (for a GAN trained on colour), else read as grey.
    ``key``: the setting that gave ``path``, named in errors. Raises ScanError for a missing or unreadable
    input."""
    path = Path(path)
    if not path.exists():
        raise ScanError(f"{key}={path} does not exist; pass a folder of PNG / TIFF scans, an image or an HDF5 file")
    masks = Path(masks) if masks else None
    if masks is not None and not masks.exists():
        raise ScanError(f"data.masks={masks} does not exist; pass the mask folder (or file), or drop data.masks")
    if path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
        return _hdf5_scans(path, masks, key)
    if path.is_file():
        return _image_scans(path, masks, colour)
    return _folder_scans(path, masks, colour, mask_suffix, key)


def _hdf5_scans(path: Path, masks: Path | None, key: str) -> list[Scan]:
    """One scan per row of the file's ``images`` (N, H, W) or (N, C, H, W); no masks."""
    if masks is not None:
        raise ScanError("data.masks is for image folders; an HDF5 input is scored without masks (drop data.masks)")
    images = _hdf5_images(path, key)
    with images.file:
        if images.ndim not in (3, 4) or images.dtype.kind not in "uf":
            raise ScanError(f"{path}: 'images' of shape {images.shape} and dtype {images.dtype}; expected "
                            "(N, H, W) or (N, C, H, W), unsigned integers or floats in [0, 1]")
        c = 1 if images.ndim == 3 else images.shape[1]
        return [Scan(f"{path.stem}_{i:05d}", path, i, tuple(images.shape[-2:]), c, images.dtype)
                for i in range(images.shape[0])]


def _image_scans(path: Path, mask: Path | None, colour: bool) -> list[Scan]:
    """The pages of one image file; ``mask``: its mask file (a folder is refused)."""
    if mask is not None and mask.is_dir():
        raise ScanError(f"data.masks={mask} is a folder but data.path is one image; pass its mask file")
    return _file_scans(path, path.parent, mask, colour)


def _folder_scans(path: Path, masks: Path | None, colour: bool, mask_suffix: str, key: str) -> list[Scan]:
    """The pages of every PNG / TIFF under ``path``, sorted; each with the mask of the same relative path
    under ``masks`` (any image suffix, ``mask_suffix`` after the name), or ``masks`` itself when it is one
    file. A mask folder in which no scan finds its mask is refused."""
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sorted({f.suffix.lower() or f.name for f in path.rglob("*") if f.is_file()})
        raise ScanError(f"{key}={path}: no PNG or TIFF image in it or its sub-folders"
                        + (f" (found only {', '.join(others[:5])} files: convert them to PNG or TIFF)"
                           if others else ""))
    out = []
    for f in files:
        mask = masks if masks is None or masks.is_file() else _find_mask(f, path, masks, mask_suffix)
        out += _file_scans(f, path, mask, colour)
    if masks is not None and masks.is_dir() and not any(scan.mask for scan in out):
        rel = files[0].relative_to(path).with_suffix("")
        raise ScanError(f"data.masks={masks}: no mask matches a scan (for {files[0].name} it looks for "
                        f"{rel.parent / (rel.name + (mask_suffix or ''))}.<png|tif> there); name the masks as "
                        "the scans, set data.mask_suffix=<suffix> (e.g. _mask), or drop data.masks")
    return out


def _find_mask(file: Path, root: Path, masks: Path, mask_suffix: str) -> Path | None:
    """The mask of ``file`` (under ``root``) in the folder ``masks``: the same relative path, or its name
    plus ``mask_suffix`` with any suffix; None when there is none (the scan is mapped, not measured)."""
    rel = file.relative_to(root).with_suffix("")
    stem = rel.name + (mask_suffix or "")
    found = [m for m in (masks / file.relative_to(root), *(masks / rel.parent).glob(stem + ".*")) if m.is_file()]
    return found[0] if found else None


def _file_scans(file: Path, root: Path, mask: Path | None, colour: bool) -> list[Scan]:
    """One scan per page of ``file``, named by its path relative to ``root`` (``_p<page>`` for a page of
    a multi-page TIFF)."""
    rel = file.relative_to(root).with_suffix("")
    try:
        pages = read_pages(file, colour=colour)
    except PrepareError as e:
        raise ScanError(str(e)) from None
    if not colour:
        _note_colour(file)
    return [Scan(str(rel) if len(pages) == 1 else f"{rel}_p{k:03d}", file, k, page.shape[-2:],
                 1 if page.ndim == 2 else page.shape[0], page.dtype, mask) for k, page in enumerate(pages)]


def _note_colour(path: Path) -> None:
    """Say that a colour image is scored as grey: ``read_pages`` takes its luminance, as ``prepare``
    does for the training scans."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("RGB", "RGBA", "LA", "P"):
            log.warning("%s is a colour (%s) image: scored as grey (its luminance), as prepare reads the "
                        "training scans", path, img.mode)


def read_scan(scan: Scan) -> np.ndarray:
    """The stored pixels of a scan: (H, W), or (C, H, W): colour (GAN of 3 channels) or a multi-channel HDF5 row."""
    if scan.source.suffix.lower() in (".h5", ".hdf5"):
        images = _hdf5_images(scan.source)
        with images.file:
            return images[scan.page]
    return read_pages(scan.source, page=scan.page, colour=scan.channels == 3)[0]  # one page, not all of them


def read_scan_mask(scan: Scan) -> np.ndarray | None:
    """The scan's mask, bool (H, W), or None."""
    if scan.mask is None:
        return None
    try:
        (page,) = read_pages(scan.mask, mask=True, page=scan.page)  # palette masks by index
    except PrepareError as e:
        raise ScanError(f"{e}, but its scan {scan.source} has a page {scan.page}") from None
    return check_mask(page, scan.mask, scan.shape, scan.source)


class PatchDataset(Dataset):
    """The kept patches of ``scans``: row i is patch (``scan[i]``, ``y[i]``, ``x[i]``) (top-left corner in
    the scan). A scan is read and normalised once and kept while its patches are served in order."""

    def __init__(self, scans: list[Scan], scan: np.ndarray, y: np.ndarray, x: np.ndarray, opts: PatchOptions,
                 image_size: int):
        self.scans, self.scan, self.y, self.x = scans, scan, y, x
        self.opts, self.image_size = opts, image_size
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.scan)

    def unit_scan(self, s: int) -> np.ndarray:
        """Scan s scaled to [0, 1] as the training data was, padded (edge values) to at least one patch."""
        if self._cached is None or self._cached[0] != s:
            self._cached = (s, pad_to_patch(unit(read_scan(self.scans[s]), self.opts), self.opts.patch_size))
        return self._cached[1]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img, p = self.unit_scan(int(self.scan[i])), self.opts.patch_size
        y, x = int(self.y[i]), int(self.x[i])
        patch = img[..., y : y + p, x : x + p]
        scan = self.scans[int(self.scan[i])]
        return {
            "image": to_model_range(patch[None], self.image_size)[0],
            "label": torch.tensor(-1),
            "index": torch.tensor(i),
            "split": torch.tensor(SPLITS["val" if scan.normal else "test"]),
            "z_key": torch.tensor(patch_key(scan.name, y, x, scan.normal)),
        }


def patch_key(name: str, y: int, x: int, normal: bool = False) -> int:
    """The key of a patch's initial z (``anogan.nets.prior.initial_z``): a 40-bit integer hash (BLAKE2b) of
    the scan's name, the patch's top-left corner (y, x) and whether it is a normal scan of
    ``data.normal_path``; the same in every run and process."""
    import hashlib

    text = f"{'normal/' if normal else ''}{name}|{int(y)}|{int(x)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=5).digest(), "big")


def pad_to_patch(image: np.ndarray, p: int) -> np.ndarray:
    """(…, H, W) padded at the bottom and right with edge values to at least p x p (scans smaller than
    a patch); the map is cropped back to (H, W)."""
    h, w = image.shape[-2:]
    if h >= p and w >= p:
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, max(0, p - h)), (0, max(0, p - w))]
    return np.pad(image, pad, mode="edge")


class ScansDataModule(L.LightningDataModule):
    """Unlabelled scans as patches for ``Trainer.test`` (see the module docstring).

    Args:
        path, masks: the inputs (module docstring); mask_suffix: a mask's name is the scan's plus this
            (e.g. ``_mask``: ``a.png`` -> ``a_mask.png``). Raises ScanError when no mask matches a scan.
        normal_path: scans known to be normal, for the label-free calibration of the scan flag (module
            docstring); None: no scan flag.
        training: the training data's recipe (``training_recipe``): normalisation,
            percentiles, scale, patch_size, stride, min_foreground, foreground_threshold, dtype.
        stride: grid stride in scan pixels; None: the training data's (``patch_size // 2`` without one).
        normalise, percentiles, scale, patch_size, min_foreground, foreground_threshold: None takes the
            training recipe's; a value that differs from a recorded one is refused.
        image_size, channels: the GAN's (set by the evaluation from the checkpoint).
    """

    def __init__(self, path: str = "???", masks: str | None = None, mask_suffix: str = "",
                 normal_path: str | None = None, training: dict | None = None,
                 stride: int | None = None, patch_size: int | None = None, normalise: str | None = None,
                 percentiles: list[float] | None = None, scale: list[float] | None = None,
                 min_foreground: float | None = None, foreground_threshold: float | None = None,
                 image_size: int = 32, channels: int = 1, eval_batch_size: int = 256, num_workers: int = 0):
        super().__init__()
        self.path, self.masks, self.mask_suffix = path, masks, mask_suffix or ""
        self.normal_path = normal_path or None
        self.image_size, self.channels = int(image_size), int(channels)
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        self.recipe = resolve_recipe(training or {}, dict(
            patch_size=patch_size, stride=stride, normalisation=normalise, percentiles=percentiles, scale=scale,
            min_foreground=min_foreground, foreground_threshold=foreground_threshold), self.image_size)
        r = self.recipe
        try:
            self.opts = PatchOptions(patch_size=r["patch_size"], stride=r["stride"], normalise=r["normalisation"],
                                     percentiles=tuple(r["percentiles"] or (1.0, 99.0)),
                                     min_foreground=r["min_foreground"],
                                     foreground_threshold=r["foreground_threshold"],
                                     scale=tuple(r["scale"]) if r["scale"] else None)
        except PrepareError as e:
            raise ScanError(str(e).replace("--", "data.").replace("-", "_")) from None
        self.test_set: PatchDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        scans = list_scans(self.path, self.masks, colour=self.channels == 3, mask_suffix=self.mask_suffix)
        if self.normal_path is not None:
            if Path(self.normal_path).resolve() == Path(self.path).resolve():
                raise ScanError(f"data.normal_path={self.normal_path} is data.path itself; pass a folder of scans "
                                "known to be normal and not among those scored, or drop data.normal_path")
            normal = list_scans(self.normal_path, colour=self.channels == 3, key="data.normal_path")
            scored = {(scan.source.resolve(), scan.page) for scan in scans}
            both = [scan for scan in normal if (scan.source.resolve(), scan.page) in scored]
            if both:
                raise ScanError(f"data.normal_path={self.normal_path}: {len(both)} of its scans (e.g. "
                                f"{both[0].source}) are also scans of data.path={self.path}; the normal scans "
                                "calibrate the flag and must not be among those scored: pass a separate folder")
            for scan in normal:
                scan.normal = True
            scans += normal
        self.check_scans(scans)
        rng = np.random.default_rng(0)  # unused by the grid; positions() takes one for random patches
        rows = []
        for s, scan in enumerate(scans):
            raw = read_scan(scan)
            if raw.dtype.kind == "f" and not (np.isfinite(raw).all() and (self.opts.normalise != "none" or (
                    raw.min() >= 0 and raw.max() <= 1))):
                raise ScanError(f"{scan.source} ({scan.name}): float pixels with NaN / inf or, without normalisation, "
                                "outside [0, 1]; rescale them to [0, 1] or store uint8 / uint16")
            scaled = pad_to_patch(unit(raw, self.opts), self.opts.patch_size)
            grey = scaled if scaled.ndim == 2 else scaled.mean(0)
            rows += [(s, y, x) for y, x in kept_positions(grey, self.opts, rng, scan.source)]
        if not any(not scans[s].normal for s, _, _ in rows):
            n = sum(not scan.normal for scan in scans)
            raise ScanError(f"data.path={self.path}: no patch of its {n} scan(s) passes the foreground "
                            f"test (data.min_foreground={self.opts.min_foreground}); pass data.min_foreground=0")
        if self.normal_path is not None and not any(scans[s].normal for s, _, _ in rows):
            raise ScanError(f"data.normal_path={self.normal_path}: no patch of its scans passes the foreground test "
                            f"(data.min_foreground={self.opts.min_foreground}), so nothing calibrates the scan flag; "
                            "pass normal scans of the same kind as those scored (with tissue), or drop "
                            "data.normal_path")
        table = np.array(rows, dtype=np.int64)
        self.scans = scans
        self.fingerprint = fingerprint(scans, table, self.recipe)
        self.test_set = PatchDataset(scans, table[:, 0], table[:, 1], table[:, 2], self.opts, self.image_size)

    def check_scans(self, scans: list[Scan]) -> None:
        """Refuse scans that cannot be read as the training data was: channels, bit depth."""
        for scan in scans:
            if scan.channels != self.channels:
                raise ScanError(
                    f"{scan.source}: {scan.channels}-channel scan(s), but the GAN was trained on {self.channels}-"
                    f"channel images; score {self.channels}-channel scans with it (data.path), or train a GAN on "
                    f"{scan.channels}-channel data")
        want = self.recipe.get("dtype")
        if self.opts.normalise == "none" and want is not None:
            bad = [s for s in scans if np.dtype(s.dtype) != np.dtype(want)]
            if bad:
                raise ScanError(
                    f"{bad[0].source}: {np.dtype(bad[0].dtype)} pixels, but the GAN's training patches were stored "
                    f"as {want} without normalisation (value / dtype maximum), so the intensities would not "
                    f"match; convert the scans to {want} ({len(bad)} of {len(scans)} differ)")

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


_RECIPE_KEYS = ("patch_size", "stride", "normalisation", "percentiles", "scale", "min_foreground",
                "foreground_threshold", "dtype")


def fingerprint(scans: list[Scan], table: np.ndarray, recipe: dict) -> str:
    """A digest of the scans (names, files' sizes and times, shapes), the patch table and the recipe: a
    resumed ``scores.h5.partial`` is reused only for the same patches (``ScoreFile``)."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode())
    h.update(b"z_key: patch_key(name, y, x)\n")  # rows mapped with z_1 keyed by row index are not reused
    for s in scans:
        st = s.source.stat()
        normal = "|normal" if s.normal else ""  # scans without data.normal_path keep their old digest
        h.update(f"{s.name}|{s.page}|{s.shape}|{st.st_size}|{st.st_mtime_ns}{normal}\n".encode())
    h.update(np.ascontiguousarray(table).tobytes())
    return h.hexdigest()


_FIXED = ("normalisation", "percentiles", "scale", "patch_size")  # what decides the intensities the GAN sees


def _differs(recorded, value) -> bool:
    if isinstance(recorded, str) or isinstance(value, str):
        return recorded != value
    a, b = np.asarray(recorded, float), np.asarray(value, float)
    return a.shape != b.shape or not np.allclose(a, b)


def resolve_recipe(training: dict, asked: dict, image_size: int) -> dict:
    """The patch recipe of the scans: the training data's, where recorded, with what was asked on the
    command line (None = not asked) where not; a value asked that differs from a recorded one is refused
    for the settings that decide the intensities the GAN sees (normalisation, percentiles, scale,
    patch_size). Stride and the foreground test may differ from training."""
    names = {"normalisation": "normalise"}
    if training.get("whole_image"):
        h, w = training["whole_image"]
        raise ScanError(
            f"the GAN was trained on whole {h}x{w} images resized to {image_size}x{image_size} "
            f"({training.get('source', 'data=folder / data=mvtec without data.patch_size')}), but data=scans cuts "
            "scans into square patches, which the GAN never saw: score new images with evaluate.py data=folder "
            "(data.normal_dir, data.abnormal_dir), or train on patches with data.patch_size=<pixels>")
    out = {k: training.get(k) for k in _RECIPE_KEYS}
    for key, value in asked.items():
        if value is None:
            continue
        value = value if isinstance(value, (str, int, float)) else [float(v) for v in value]
        recorded = out.get(key)
        if key in _FIXED and recorded is not None and _differs(recorded, value):
            name = names.get(key, key)
            raise ScanError(
                f"data.{name}={value} but the GAN's training data was prepared with {name}={recorded} "
                f"({training.get('source', 'its HDF5 attributes')}); the GAN knows only intensities read that "
                f"way: drop data.{name}")
        out[key] = value
    if out["normalisation"] is None:
        raise ScanError(
            "the normalisation of the GAN's training data is not recorded (no recipe in the checkpoint and "
            f"its HDF5 file {training.get('source_path', '')} is not readable here); pass it as prepared: "
            "data.normalise=none|image|global (global also data.scale=[low,high])")
    if out["normalisation"] not in NORMALISATIONS:
        raise ScanError(f"data.normalise={out['normalisation']}: expected one of {', '.join(NORMALISATIONS)}")
    if out["normalisation"] == "global" and not out["scale"]:
        raise ScanError(
            "the GAN's training data was normalised globally (--normalise global), but its intensity scale is "
            "not recorded (a file prepared before it was); pass the intensities that map to 0 and 1: "
            "data.scale=[low,high], or prepare the training data again")
    if out["normalisation"] == "image" and not out["percentiles"]:
        out["percentiles"] = [1.0, 99.0]
    out["patch_size"] = int(out["patch_size"] or image_size)
    out["stride"] = int(out["stride"] or max(1, out["patch_size"] // 2))
    out["min_foreground"] = float(out["min_foreground"] or 0.0)
    out["foreground_threshold"] = float(out["foreground_threshold"] if out["foreground_threshold"] is not None
                                        else 0.1)
    return out


# -- the DataModule of an evaluation ---------------------------------------------------------------
SCANS_TARGET = "anogan.data.scans.ScansDataModule"


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

    from anogan.runtime.checkpoints import read_checkpoint

    return instantiate(data_cfg, training=training_recipe(read_checkpoint(ckpt_path)), _convert_="all")
