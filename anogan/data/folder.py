"""Labelled image folders (``data=folder``) and the MVTec AD layout (``data=mvtec``).

``FolderDataModule``: ``normal_dir`` holds normal images (train, validation and, unless
``normal_test_dir`` is given, the test normals are drawn from it by ``seed``, image by image),
``abnormal_dir`` the test anomalies; ``mask_dir`` optionally holds a binary mask per anomalous image,
at the image's path relative to its folder with ``mask_suffix`` added to the name and any image suffix
(``abnormal/a/x.png`` -> ``masks/a/x_mask.png`` with ``mask_suffix=_mask``); normal test images may have
one, else their mask is empty. PNG, JPEG or TIFF (one page), 8 or 16 bit, grey or colour, any size;
folders are searched recursively unless ``recursive`` is false.

``MVTecDataModule``: ``root/category`` in the MVTec AD layout: ``train/good`` (training, and the
validation split drawn from it), ``test/good`` and ``test/<defect>/`` (every defect type anomalous),
``ground_truth/<defect>/<name>_mask.png``; the official train / test split is kept.

Images are read as ``prepare`` and ``data=scans`` read them (``anogan.data.pixels.read_pages``, scaled
to [0, 1] by ``normalise``: ``none`` = value / dtype maximum, or ``image`` percentiles, then
``anogan.data.transforms.to_model_range``): ``channels=3`` keeps colour (grey images are repeated),
``channels=1`` takes the luminance of colour images. By default (``patch_size: null``) each image is one
item, resized to ``image_size`` (all images of a source must then share one size); with ``patch_size``
each image is cut into patches of that size as ``python -m anogan.data.prepare`` cuts them (``stride``,
``per_image``, ``min_foreground``, ``foreground_threshold``; a patch of an anomalous image is anomalous
when it holds ``min_anomalous_pixels`` mask pixels, or, without masks, always), each resized to
``image_size``. Setup reads only the files' headers (and, for ``min_foreground > 0`` or patch labels,
the pixels it needs); every file is read once, when first served, and kept in memory (resized items, or
the scaled image of a file cut into patches).

Every item is a dict as in ``anogan.data.datamodule`` (``image``, ``label``, ``index``, ``split``, and
``mask`` (image_size, image_size) bool when ``mask_dir`` is given). Bad trees (no image, a mask without
an image, an anomalous image without a mask, mixed sizes without patches, an unreadable file) raise
``InputError`` naming the path and the fix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from anogan.data.datamodule import SPLITS, OneClassDataModule
from anogan.data.patches import PatchOptions, check_mask, kept_positions, positions
from anogan.data.pixels import IMAGE_SUFFIXES, PrepareError, read_pages, unit
from anogan.data.transforms import mask_to_size, to_model_range
from anogan.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

FOLDER_SUFFIXES = (*IMAGE_SUFFIXES, ".jpg", ".jpeg")  # masks: PNG or TIFF only (JPEG is not binary)
_COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")


@dataclass
class ImageFile:
    """One image of a source: where it is, its label, its mask file, and what its header says."""

    path: Path
    label: int
    mask: Path | None
    shape: tuple[int, int]  # (H, W)
    colour: bool


def _data_keys(message: str) -> str:
    """prepare's option names (``--patch-size``) as this source's config keys (``data.patch_size``)."""
    return re.sub(r"--([a-z][a-z-]*) ?", lambda m: "data." + m.group(1).replace("-", "_") + "=", message)


def list_images(folder: str | Path, key: str, recursive: bool = True, exclude: tuple[str, ...] = ()
                ) -> list[Path]:
    """The image files (``FOLDER_SUFFIXES``) of ``folder`` (config key ``key``), sorted; sub-folders
    named in ``exclude`` (first level) are skipped. InputError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{key}={folder} is not a folder; pass the folder that holds the images")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(f for f in found if f.is_file() and f.suffix.lower() in FOLDER_SUFFIXES
                   and f.relative_to(folder).parts[0] not in exclude)
    if not files:
        where = "in it or its sub-folders" if recursive else "directly in it (data.recursive=true searches sub-folders)"
        raise InputError(f"{key}={folder}: no PNG, JPEG or TIFF image {where}; put the images there, or "
                         f"pass the folder that holds them")
    return files


def read_header(path: Path) -> tuple[tuple[int, int], bool]:
    """(H, W) and whether the image is colour, from the file's header only; InputError for a file that
    is not a readable image or holds several pages."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise InputError(f"{path}: holds {img.n_frames} pages; data=folder takes one image per file: "
                                 "save the pages as separate files, or cut the volumes with python -m "
                                 "anogan.data.prepare folder")
            return (img.height, img.width), img.mode in _COLOUR_MODES
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputError(f"{path}: cannot read the image ({e}); replace or remove the file") from None


def match_masks(images: list[Path], root: Path, mask_dir: Path, suffix: str) -> dict[Path, Path]:
    """{image: its mask} of the masks in ``mask_dir`` at the image's path relative to ``root`` with
    ``suffix`` added to the name (any of ``IMAGE_SUFFIXES``)."""
    out = {}
    for image in images:
        rel = image.relative_to(root)
        stem = mask_dir / rel.parent / (rel.stem + suffix)
        found = [stem.with_name(stem.name + s) for s in (*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES))]
        found = [m for m in found if m.is_file()]
        if found:
            out[image] = found[0]
    return out


def mask_files(mask_dir: Path) -> list[Path]:
    return sorted(f for f in mask_dir.rglob("*") if f.is_file() and f.suffix.lower() in FOLDER_SUFFIXES)


class ImageFileDataset(Dataset):
    """Items of image files: rows of ``table`` (file, y, x, label, index); y = x = -1: the whole image,
    resized to ``image_size``; else the patch of ``patch_size`` at (y, x), resized to ``image_size``.
    Each file is read when first served and kept (resized item, or its scaled image for patches);
    ``cache`` may be shared with the DataModule that read some files already."""

    def __init__(self, files: list[ImageFile], table: np.ndarray, split: str, image_size: int, channels: int,
                 opts: PatchOptions, patches: bool, with_masks: bool, cache: dict | None = None):
        self.files, self.table, self.split = files, np.asarray(table, dtype=np.int64).reshape(-1, 5), SPLITS[split]
        self.image_size, self.channels, self.opts = image_size, channels, opts
        self.patches, self.with_masks = patches, with_masks
        self.cache = {} if cache is None else cache
        self.labels = self.table[:, 3]

    def __len__(self) -> int:
        return len(self.table)

    def scaled(self, f: int) -> tuple[np.ndarray, np.ndarray | None]:
        """File f scaled to [0, 1] ((H, W) or (3, H, W) float32) and its mask (H, W) bool or None."""
        if ("scaled", f) not in self.cache:
            self.cache[("scaled", f)] = load(self.files[f], self.opts, self.channels)
        return self.cache[("scaled", f)]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f, y, x, label, index = (int(v) for v in self.table[i])
        if self.patches:
            img, mask = self.scaled(f)
            p = self.opts.patch_size
            img, mask = img[..., y : y + p, x : x + p], None if mask is None else mask[y : y + p, x : x + p]
            image = to_model_range(img[None], self.image_size, channels=self.channels)[0]
        else:
            if ("item", f) not in self.cache:  # the resized image only: no full-size copy is kept
                img, mask = load(self.files[f], self.opts, self.channels)
                self.cache[("item", f)] = (to_model_range(img[None], self.image_size, channels=self.channels)[0],
                                           mask)
            image, mask = self.cache[("item", f)]
        item = {"image": image, "label": torch.tensor(label), "index": torch.tensor(index),
                "split": torch.tensor(self.split)}
        if self.with_masks:
            shape = image.shape[-2:] if mask is None else mask.shape
            item["mask"] = mask_to_size(np.zeros(shape, bool) if mask is None else mask, self.image_size)
        return item


def load(file: ImageFile, opts: PatchOptions, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file scaled to [0, 1] by ``opts.normalise`` ((H, W), or (3, H, W) colour with
    ``channels=3``) and its checked binary mask (H, W) or None."""
    (image,) = read_pages(file.path, colour=channels == 3)
    if image.dtype.kind == "i" and opts.normalise == "none":
        raise InputError(f"{file.path}: signed {image.dtype} pixels; pass data.normalise=image, which maps "
                         "them to [0, 1]")
    if image.dtype.kind == "f" and opts.normalise == "none" and not (
            np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
        raise InputError(f"{file.path}: float pixels outside [0, 1]; pass data.normalise=image, or store "
                         "uint8 / uint16")
    mask = None
    if file.mask is not None:
        (page,) = read_pages(file.mask, mask=True)
        mask = check_mask(page, file.mask, image.shape[-2:], file.path)
    return unit(image, opts), mask


class FolderDataModule(OneClassDataModule):
    """Labelled image folders; see the module docstring.

    Args:
        normal_dir: normal images (train, val and, without ``normal_test_dir``, test normals).
        abnormal_dir: anomalous test images.
        normal_test_dir: normal test images (optional).
        mask_dir, mask_suffix: binary masks of the anomalous (and optionally normal test) images.
        recursive: search sub-folders too.
        patch_size: null: whole images resized to ``image_size``; else cut into patches of this size
            (``stride`` (null: patch_size / 2), ``per_image``, ``min_foreground``,
            ``foreground_threshold``, ``min_anomalous_pixels``: as ``python -m anogan.data.prepare``).
        normalise, percentiles: ``none`` (value / dtype maximum) or ``image`` (per-image percentiles).
        test_fraction: of the normal images, held out for test when ``normal_test_dir`` is not given.
    """

    more_normal = "more normal images in data.normal_dir"

    def __init__(self, normal_dir: str = "???", abnormal_dir: str = "???", normal_test_dir: str | None = None,
                 mask_dir: str | None = None, mask_suffix: str = "", recursive: bool = True,
                 patch_size: int | None = None, stride: int | None = None, per_image: int | None = None,
                 min_foreground: float = 0.0, foreground_threshold: float = 0.1, min_anomalous_pixels: int = 1,
                 normalise: str = "none", percentiles: tuple[float, float] = (1.0, 99.0),
                 test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if normalise not in ("none", "image"):
            raise InputError(f"data.normalise={normalise}: expected none (value / dtype maximum) or image "
                             "(per-image percentiles); for global scaling prepare an HDF5 file with python -m "
                             "anogan.data.prepare folder --normalise global")
        if not 0 < test_fraction < 1:
            raise InputError(f"data.test_fraction={test_fraction} must lie in (0, 1)")
        try:
            self.opts = PatchOptions(patch_size=patch_size, stride=stride, per_image=per_image, normalise=normalise,
                                     percentiles=tuple(percentiles), min_foreground=min_foreground,
                                     foreground_threshold=foreground_threshold,
                                     min_anomalous_pixels=min_anomalous_pixels, seed=self.seed)
        except PrepareError as e:
            raise InputError(_data_keys(str(e))) from None
        self.normal_dir, self.abnormal_dir, self.normal_test_dir = normal_dir, abnormal_dir, normal_test_dir
        self.mask_dir, self.mask_suffix, self.recursive = mask_dir, mask_suffix or "", recursive
        self.test_fraction = test_fraction
        self.cache: dict = {}

    # -- the tree --------------------------------------------------------------------------------
    def sources(self) -> tuple[list[Path], list[Path], list[Path], dict[Path, Path]]:
        """(normal images, normal test images, anomalous images, {image: mask})."""
        normal = list_images(self.normal_dir, "data.normal_dir", self.recursive)
        normal_test = (list_images(self.normal_test_dir, "data.normal_test_dir", self.recursive)
                       if self.normal_test_dir else [])
        abnormal = list_images(self.abnormal_dir, "data.abnormal_dir", self.recursive)
        masks = self.find_masks([(Path(self.abnormal_dir), abnormal, True)]
                                + ([(Path(self.normal_test_dir), normal_test, False)] if normal_test else []))
        return normal, normal_test, abnormal, masks

    def find_masks(self, groups: list[tuple[Path, list[Path], bool]]) -> dict[Path, Path]:
        """Masks of the images of ``groups`` (root, images, required); InputError for an image without
        a mask where required, and for a mask that belongs to no image."""
        if not self.mask_dir:
            return {}
        mask_dir = Path(self.mask_dir)
        if not mask_dir.is_dir():
            raise MissingInputError(f"data.mask_dir={mask_dir} is not a folder; pass the folder of the masks, "
                                    "or data.mask_dir=null to evaluate without pixel AUROC")
        masks: dict[Path, Path] = {}
        for root, images, required in groups:
            found = match_masks(images, root, mask_dir, self.mask_suffix)
            missing = [i for i in images if i not in found]
            if required and missing:
                rel = missing[0].relative_to(root)
                want = mask_dir / rel.parent / f"{rel.stem}{self.mask_suffix}.png"
                raise InputError(f"{missing[0]}: anomalous image without a mask ({len(missing)} of {len(images)} "
                                 f"lack one); add {want}, or check data.mask_suffix={self.mask_suffix!r}")
            masks.update(found)
        owner: dict[Path, Path] = {}
        for image, mask in masks.items():
            other = owner.setdefault(mask.resolve(), image)
            if other != image:
                raise InputError(f"{mask}: the mask of two images, {other} and {image} (same relative name); "
                                 "rename one of them, or keep the normal test images' masks out of data.mask_dir")
        used = set(owner)
        orphans = [m for m in mask_files(mask_dir) if m.resolve() not in used]
        if orphans:
            raise InputError(f"{orphans[0]}: a mask without an image ({len(orphans)} such mask(s) in "
                             f"data.mask_dir={mask_dir}); add its image, remove the mask, or check "
                             f"data.mask_suffix={self.mask_suffix!r}")
        return masks

    # -- splits and items ------------------------------------------------------------------------
    def build(self):
        normal, normal_test, abnormal, masks = self.sources()
        split_of = {}
        order = self._rng(3).permutation(len(normal))
        n_test = 0 if normal_test else int(round(self.test_fraction * len(normal)))
        n_val = int(round(self.val_fraction * len(normal)))
        for k, i in enumerate(order):
            split_of[normal[i]] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
        split_of.update({p: "test" for p in (*normal_test, *abnormal)})
        paths = [*normal, *normal_test, *abnormal]
        labels = [0] * (len(normal) + len(normal_test)) + [1] * len(abnormal)
        self.files = [ImageFile(p, y, masks.get(p), *read_header(p)) for p, y in zip(paths, labels)]
        self.check_files()
        self.recipe = self.scans_recipe()  # stored in checkpoints: data=scans reads new images the same way
        table = self.items()
        parts = []
        for name in ("train", "val", "test"):
            rows = table[[split_of[self.files[f].path] == name for f in table[:, 0]]]
            if name == "train":
                rows = rows[rows[:, 3] == 0]
            parts.append(ImageFileDataset(self.files, rows, name, self.image_size, self.channels, self.opts,
                                          self.opts.patch_size is not None, bool(self.mask_dir), self.cache))
        log.info("%s: %d train, %d val, %d test items (%d anomalous) from %d images", type(self).__name__,
                 *(len(p) for p in parts), int(parts[2].labels.sum()), len(self.files))
        return tuple(parts)

    def check_files(self) -> None:
        """Refuse images of mixed sizes without patches and images smaller than a patch (InputError),
        from the headers of ``self.files``; say when colour is dropped or grey repeated, or the aspect
        ratio changes."""
        files, shapes = self.files, {f.shape for f in self.files}
        if self.opts.patch_size is None and len(shapes) > 1:
            a = files[0]
            b = next(f for f in files if f.shape != a.shape)
            raise InputError(
                f"{b.path} is {b.shape[1]}x{b.shape[0]} but {a.path} is {a.shape[1]}x{a.shape[0]}: without "
                "patches every image is resized to data.image_size, which needs one size for all; resize the "
                "images to one size, or cut patches with data.patch_size=<pixels>")
        if self.opts.patch_size is not None:
            small = [f for f in files if min(f.shape) < self.opts.patch_size]
            if small:
                raise InputError(f"{small[0].path}: {small[0].shape[1]}x{small[0].shape[0]} image is smaller than "
                                 f"data.patch_size={self.opts.patch_size}; use data.patch_size="
                                 f"{min(small[0].shape)} or less")
        if self.channels == 1 and any(f.colour for f in files):
            log.warning("%s: colour images are read as grey (their luminance) because data.channels=1; "
                        "data.channels=3 keeps their colour", type(self).__name__)
        elif self.channels == 3 and not any(f.colour for f in files):
            log.info("%s: every image is grey; each is repeated to data.channels=3 (data.channels=1 trains a "
                     "one-channel GAN)", type(self).__name__)
        (h, w), p = files[0].shape, self.opts.patch_size
        if p is None and h != w:
            log.warning("%s: the %dx%d images are stretched to %dx%d (data.image_size), which changes their "
                        "aspect ratio; cut square patches with data.patch_size=<pixels> to keep it",
                        type(self).__name__, w, h, self.image_size, self.image_size)

    def scans_recipe(self) -> dict:
        """How the training images were read (normalisation, foreground test, patch size and stride, or
        the whole images' shape), for the checkpoint: ``data=scans`` reads new images the same way."""
        (h, w), p = self.files[0].shape, self.opts.patch_size
        side = p if p is not None else (h if h == w else None)
        return {
            "source": f"{type(self).__name__}:{self.normal_dir}", "normalisation": self.opts.normalise,
            "percentiles": list(self.opts.percentiles) if self.opts.normalise == "image" else None,
            "min_foreground": self.opts.min_foreground, "foreground_threshold": self.opts.foreground_threshold,
            **({"patch_size": side, "stride": self.opts.stride or (max(1, p // 2) if p else side)} if side else {}),
            # whole images of another shape than a square: data=scans, which cuts square patches, refuses them
            **({"whole_image": [h, w]} if p is None and h != w else {}),
        }

    def items(self) -> np.ndarray:
        """(file, y, x, label, index) per item; index: the item's number in the whole source."""
        rows = []
        patches = self.opts.patch_size is not None
        for f, file in enumerate(self.files):
            if not patches:
                rows.append((f, -1, -1, file.label, len(rows)))
                continue
            rng = np.random.default_rng([self.seed, f])
            need_pixels = self.opts.min_foreground > 0 or (file.label == 1 and file.mask is not None)
            if need_pixels:  # read once, kept for serving
                if ("scaled", f) not in self.cache:
                    self.cache[("scaled", f)] = load(file, self.opts, self.channels)
                img, mask = self.cache[("scaled", f)]
                grey = img if img.ndim == 2 else img.mean(0)
                where = kept_positions(grey, self.opts, rng, file.path)
            else:
                img, mask, where = None, None, positions(file.shape, self.opts, rng, file.path)
            p = self.opts.patch_size
            for y, x in where:
                label = file.label
                if file.label == 1 and mask is not None:
                    label = int(mask[y : y + p, x : x + p].sum() >= self.opts.min_anomalous_pixels)
                rows.append((f, y, x, label, len(rows)))
        return np.array(rows, dtype=np.int64).reshape(-1, 5)


class MVTecDataModule(FolderDataModule):
    """One category of MVTec AD (``root/category``); see the module docstring."""

    def __init__(self, root: str = "???", category: str = "???", mask_suffix: str = "_mask", **kwargs):
        self.root, self.category = Path(root), str(category)
        base = self.root / self.category
        super().__init__(normal_dir=str(base / "train" / "good"), abnormal_dir=str(base / "test"),
                         normal_test_dir=str(base / "test" / "good"), mask_dir=str(base / "ground_truth"),
                         mask_suffix=mask_suffix, recursive=True, **kwargs)

    def sources(self):
        base = self.root / self.category
        if not base.is_dir():
            have = sorted(d.name for d in self.root.iterdir() if d.is_dir()) if self.root.is_dir() else []
            raise MissingInputError(
                f"data.root={self.root}, data.category={self.category}: no folder {base}; "
                + (f"the categories there are {', '.join(have)}" if have else
                   "pass data.root=<the folder that holds the MVTec AD categories> (e.g. bottle/, cable/)"))
        normal = list_images(base / "train" / "good", "data.root/<category>/train/good")
        normal_test = list_images(base / "test" / "good", "data.root/<category>/test/good")
        abnormal = list_images(base / "test", "data.root/<category>/test (defect folders)", exclude=("good",))
        gt = base / "ground_truth"
        if not gt.is_dir():
            raise MissingInputError(f"{gt} is not a folder; MVTec AD keeps the defect masks there "
                                    "(ground_truth/<defect>/<name>_mask.png)")
        masks = self.find_masks([(base / "test", abnormal, True), (base / "test" / "good", normal_test, False)])
        return normal, normal_test, abnormal, masks
