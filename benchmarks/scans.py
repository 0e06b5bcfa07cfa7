"""Scoring whole scans (``data=scans``): scans per second for 496x512 B-scans (a common SD-OCT B-scan)
at the default stride, side by side with the mapping of the same patches alone.

The scans are phantom B-scans (``anogan.data.phantom.bscan``) saved as 8-bit PNG and read with the
recipe of ``experiment=oct_phantom`` (32-pixel patches, stride 16, the same foreground test); G and D are
the default DCGAN at 32 px (width 32) with random weights (the speed does not depend on them). Timed:

* ``predict``: the evaluation's path, ``Trainer(inference_mode=False).test`` of ``Inversion`` on the
  ``ScansDataModule`` with the prediction callbacks (scores.h5, stitched maps .npy + .png, predictions.csv);
* ``mapping``: ``Inversion.map_batch`` over the same patches, already in memory (no reading, no files).

Their ratio is the cost of everything but the mapping. Usage::

    OMP_NUM_THREADS=1 python benchmarks/scans.py --scans 2 --steps 100     # CPU (inversion.steps default)
    python benchmarks/scans.py --device cuda --scans 16 --steps 100 --batch 1024
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from _common import environment, networks, parser, result_line, sync

from anogan.callbacks import ScanMaps, ScoreFile
from anogan.data.phantom import bscan
from anogan.data.scans import ScansDataModule
from anogan.models.inversion import Inversion

# experiment=oct_phantom's patches (conf/data/oct_phantom.yaml), as its checkpoint records them
RECIPE = {"normalisation": "none", "dtype": "uint8", "patch_size": 32, "stride": 16, "min_foreground": 0.2,
          "foreground_threshold": 0.2}


def write_scans(root: Path, n: int, height: int, width: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(n):
        image, _ = bscan(rng, height, width, n_fluid=3)
        (root / "scans").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(root / "scans" / f"{k:03d}.png")
    return root / "scans"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--scans", type=int, default=2, help="B-scans per timed run")
    p.add_argument("--scan-size", type=int, nargs=2, default=(496, 512), metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--steps", type=int, default=100, help="inversion.steps (conf/inversion/default.yaml: 100)")
    p.add_argument("--batch", type=int, default=256, help="data.eval_batch_size (conf/data/scans.yaml: 256)")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="inversion.reference (default on)")
    p.set_defaults(rounds=1)
    args = p.parse_args()
    dev = args.device
    G, D = networks(32, args.width, args.z_dim, dev)
    kw = dict(lam=0.1, steps=args.steps, lr=0.05, reference=args.reference, seed=0, channels_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scans = write_scans(tmp, args.scans, *args.scan_size)
        dm = ScansDataModule(str(scans), training=RECIPE, image_size=32, eval_batch_size=args.batch)
        dm.setup()
        n_patches = len(dm.test_set)
        batches = [(torch.stack([dm.test_set[i]["image"] for i in range(s, min(s + args.batch, n_patches))]).to(dev),
                    torch.arange(s, min(s + args.batch, n_patches))) for s in range(0, n_patches, args.batch)]
        model = Inversion(G, D, **kw)  # trainer.test moves it to the device and back to the CPU after
        mapper = Inversion(*copy.deepcopy((G, D)), **kw).to(dev)  # nets of its own: stays on the device
        runs = iter(range(10**6))

        def predict():
            out = tmp / f"run{next(runs)}"
            out.mkdir()
            callbacks = [ScoreFile(out / "scores.h5"), ScanMaps(out / "maps", out / "predictions.csv", out / "m.json")]
            trainer = L.Trainer(accelerator="gpu" if dev.startswith("cuda") else "cpu", devices=1, logger=False,
                                inference_mode=False, callbacks=callbacks, enable_progress_bar=False,
                                enable_model_summary=False)
            trainer.test(model, datamodule=ScansDataModule(str(scans), training=RECIPE, image_size=32,
                                                           eval_batch_size=args.batch), verbose=False)
            assert (out / "predictions.csv").is_file() and len(list((out / "maps").glob("*.npy"))) == args.scans

        def mapping():
            for x, index in batches:
                mapper.map_batch(x, index)

        best = {}
        for _ in range(args.rounds):  # no warm-up round: one round already maps every patch many times
            for name, fn in (("predict", predict), ("mapping", mapping)):
                sync(dev)
                t0 = time.perf_counter()
                fn()
                sync(dev)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    per_scan = n_patches / args.scans
    for name, t in best.items():
        print(f"{name:8s} {args.scans / t:8.4f} scans/s  {n_patches * args.steps / t:9.1f} patch-steps/s  ({t:.1f} s)",
              flush=True)
    result_line({"device": dev, "scan": "x".join(map(str, args.scan_size)), "patches_per_scan": per_scan,
                 "steps": args.steps, "reference": args.reference, "batch": args.batch,
                 "predict_scans_per_s": args.scans / best["predict"],
                 "mapping_scans_per_s": args.scans / best["mapping"],
                 "predict_over_mapping_time": best["predict"] / best["mapping"], **environment()})


if __name__ == "__main__":
    main()
