"""An OCT-like phantom for tests and the demo: B-scans with curved retinal layers and speckle, and dark
fluid-like blobs inside the bright tissue as anomalies, with exact masks.

``write_phantom`` writes the folder layout that ``python -m anogan.data.prepare folder`` reads
(``scans/<volume>/<k>.png`` and, for annotated volumes, ``masks/<volume>/<k>.png``); healthy volumes
come without annotation (they train the GAN), fluid volumes and a few healthy test volumes with it.
``PhantomDataModule`` does phantom -> folder -> prepare -> HDF5 once and then reads the HDF5 file like
``data=hdf5``, so the demo runs the whole user path.

Design for a pixel map that needs the GAN: the fluid (intensity 0.2) sits only inside the bright inner
layers (0.72 - 0.85), so |x - G(z)| there is large when G draws healthy tissue; but it is not the
darkest thing in a scan (vitreous 0.04, the outer nuclear layer 0.18), so a detector of dark pixels
alone ranks it poorly (pixel AUROC about 0.6). The speckle is mild (relative std ``speckle``) so that
the residual of healthy tissue stays well below the fluid's contrast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from anogan.data.datamodule import HDF5DataModule

# (thickness in pixels, intensity) of the layers from the inner surface down: NFL, GCL/IPL, INL, OPL,
# ONL, RPE; fluid blobs lie within the first FLUID_LAYERS layers (the bright inner retina)
LAYERS = ((10, 0.85), (16, 0.7), (5, 0.4), (10, 0.22), (6, 0.95))
FLUID_LAYERS = 2
VITREOUS, CHOROID = 0.04, 0.5
FLUID = 0.2


def _smooth(a: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes: speckle grains of about two pixels."""
    for axis in (0, 1):
        a = (np.roll(a, 1, axis) + 2 * a + np.roll(a, -1, axis)) / 4
    return a


def bscan(rng: np.random.Generator, height: int = 128, width: int = 256, n_fluid: int = 0,
          speckle: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """One B-scan: (image float32 (height, width) in [0, 1], mask bool (height, width)).

    The retina's inner surface is a random smooth curve; below it the layers of ``LAYERS``, then a
    choroid fading with depth. ``n_fluid`` dark ellipses are placed inside the bright inner layers;
    the mask holds exactly the pixels they darken."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.2)
    top = (0.25 * height + rng.uniform(-4, 4) + 0.08 * height * np.sin(2 * np.pi * freq * x[0] / width + phase)
           + rng.uniform(-0.05, 0.05) * (x[0] - width / 2))
    depth = y - top[None, :]  # depth below the inner surface, per column
    clean = np.full((height, width), VITREOUS, np.float32)
    bottom, inner = 0.0, 0.0
    for k, (thickness, level) in enumerate(LAYERS):
        t = thickness * rng.uniform(0.85, 1.15)
        clean[(depth >= bottom) & (depth < bottom + t)] = level
        bottom += t
        if k == FLUID_LAYERS - 1:
            inner = bottom  # depth of the bright inner layers' lower edge
    below = depth >= bottom
    clean[below] = (CHOROID * np.exp(-(depth - bottom) / 25.0))[below] + 0.05
    mask = np.zeros((height, width), bool)
    for _ in range(n_fluid):
        cx = rng.uniform(0.1 * width, 0.9 * width)
        ry = rng.uniform(2.0, 4.0)  # small: a normal-trained G has no dark holes of this size to draw
        rx = ry * rng.uniform(1.0, 2.0)
        cy = top[int(cx)] + rng.uniform(3 + ry, max(3 + ry, inner - 2 - ry))
        mask |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    clean[mask] = FLUID
    noise = _smooth(rng.standard_normal((height, width)).astype(np.float32))
    noise *= speckle / noise.std()
    image = clean * (1 + noise) + 0.01 * rng.standard_normal((height, width)).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32), mask


def write_phantom(root: str | os.PathLike, healthy: int = 8, fluid: int = 4, healthy_test: int = 1,
                  scans: int = 4, height: int = 128, width: int = 256, blobs: tuple[int, int] = (1, 3),
                  speckle: float = 0.12, bits: int = 8, seed: int = 0, normal: int = 0) -> Path:
    """Write ``root/scans/<volume>/<k>.png`` and ``root/masks/<volume>/<k>.png``.

    ``healthy`` volumes without annotation (training), ``healthy_test`` healthy volumes with empty
    masks and ``fluid`` volumes with ``blobs`` (min, max) fluid blobs per scan (test). ``normal`` more
    healthy volumes, drawn after all of those (which stay the same), into ``root/normal/<volume>/``:
    normal scans no model trained on, to calibrate ``data=scans``'s scan flag (``data.normal_path``).
    8- or 16-bit PNG. Returns ``root``."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    dtype, top = (np.uint8, 255) if bits == 8 else (np.uint16, 65535)
    kinds = ["healthy"] * healthy + ["healthy_test"] * healthy_test + ["fluid"] * fluid + ["normal"] * normal
    for v, kind in enumerate(kinds):
        name = f"{kind}_{v:03d}"
        folder = root / ("normal" if kind == "normal" else "scans") / name
        for k in range(scans):
            n = int(rng.integers(blobs[0], blobs[1] + 1)) if kind == "fluid" else 0
            image, mask = bscan(rng, height, width, n, speckle)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(image * top).astype(dtype)).save(folder / f"{k:03d}.png")
            if kind not in ("healthy", "normal"):
                (root / "masks" / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name / f"{k:03d}.png")
    return root


class PhantomDataModule(HDF5DataModule):
    """The phantom as an HDF5 patch file at ``path``, made on first use (and again when ``phantom`` or
    ``patches`` change) by ``write_phantom`` and ``anogan.data.patches.prepare_folder``; then read
    like ``data=hdf5`` (the file's ``split``: healthy volumes train, annotated volumes test).

    ``phantom``: keyword arguments of ``write_phantom``; ``patches``: of ``prepare_folder``."""

    def __init__(self, path: str = "oct_phantom.h5", phantom: dict | None = None, patches: dict | None = None,
                 **kwargs):
        super().__init__(path=path, **kwargs)
        # plain dicts and lists (Hydra passes DictConfig): they are compared as JSON with the file's recipe
        self.phantom = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.create(phantom or {}))))
        self.patches = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.create(patches or {}))))

    def _recipe(self) -> str:
        return json.dumps({"phantom": self.phantom, "patches": self.patches}, sort_keys=True)

    def prepare_data(self) -> None:
        import h5py

        from anogan.data.patches import prepare_folder

        path = Path(self.path)
        if path.is_file():
            with h5py.File(path, "r") as f:
                if f.attrs.get("phantom") == self._recipe():
                    return
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            write_phantom(tmp, **self.phantom)
            prepare_folder(Path(tmp) / "scans", path, masks=Path(tmp) / "masks", overwrite=True,
                           attrs={"source": "oct_phantom", "phantom": self._recipe()}, progress=False, **self.patches)

    def build(self):
        self.prepare_data()
        return super().build()


def main(argv: list[str] | None = None) -> int:
    """``python -m anogan.data.phantom OUT [--ckpt CKPT] [--test-only] [--normal N]``: write the phantom's
    scans and masks; with ``--ckpt`` exactly those of that training run (its recorded ``data.phantom``),
    with ``--test-only`` only its annotated test volumes (which the GAN never saw), with ``--normal N``
    also N more healthy volumes into ``OUT/normal`` (``data.normal_path`` of ``data=scans``; the scan flag at
    scan_target_fpr 0.05 needs at least 19 normal scans: ``--normal 5`` at 4 scans per volume)."""
    import argparse
    import math
    import shutil

    from anogan.metrics.conformal import min_calibration

    ap = argparse.ArgumentParser(prog="python -m anogan.data.phantom", description=main.__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder to write scans/ and masks/ into")
    ap.add_argument("--ckpt", type=Path, default=None, help="a checkpoint of experiment=oct_phantom: its recipe")
    ap.add_argument("--test-only", action="store_true", help="keep only the annotated (test) volumes")
    ap.add_argument("--normal", type=int, default=0, metavar="N",
                    help="also write N healthy volumes no model trained on into OUT/normal (data.normal_path; "
                         "the scan flag at 0.05 needs >= 19 normal scans: 5 volumes of 4)")
    args = ap.parse_args(argv)
    if args.normal < 0:
        ap.error(f"--normal {args.normal}: pass a number of volumes >= 0")
    recipe = {}
    if args.ckpt is not None:
        from anogan.runtime.checkpoints import read_checkpoint

        recipe = dict(((read_checkpoint(args.ckpt).get("anogan_config") or {}).get("data") or {}).get("phantom") or {})
        if not recipe:
            print(f"error: {args.ckpt} holds no data.phantom recipe (not an experiment=oct_phantom run)")
            return 2
    if "blobs" in recipe:
        recipe["blobs"] = tuple(recipe["blobs"])
    root = write_phantom(args.out, **recipe, normal=args.normal)
    if args.test_only:
        for vol in (root / "scans").iterdir():
            if not (root / "masks" / vol.name).is_dir():
                shutil.rmtree(vol)
    n = len(list((root / "scans").rglob("*.png")))
    per_volume = recipe.get("scans", 4)
    normal = args.normal * per_volume
    print(f"wrote {n} scans to {root / 'scans'} and their masks to {root / 'masks'}"
          + (f"; {normal} normal scans to {root / 'normal'}" if args.normal else ""))
    needed = min_calibration(0.05)
    if 0 < normal < needed:
        print(f"note: {normal} normal scans are too few for the scan flag at scan_target_fpr 0.05, which needs at "
              f"least {needed} (no scan would be flagged); pass --normal {math.ceil(needed / per_volume)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
