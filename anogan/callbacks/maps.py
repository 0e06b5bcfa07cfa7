"""Whole-scan outputs of ``data=scans``: each scan's patch residual maps stitched into one anomaly map,
its image score and flag.

Per scan, written as soon as its last patch is mapped: ``maps/<scan>.npy`` (float32, the scan's size;
NaN where no scored patch covers a pixel) and ``maps/<scan>.png`` (the scan with the map overlaid, a
colour bar in map units). When the test epoch ends: ``predictions.csv`` (one row per scan, with its
scan-level score and flag), ``normal_scans.csv`` (with ``data.normal_path``: the scan scores the flag
is calibrated on) and, where ``data.masks`` gave masks, ``map_metrics.json`` (pixel AUROC, AUPRC, best
Dice, AUPRO of the stitched maps over whole scans, and the scan-level AUROC, AUPRC and rates at the
flag, a scan counting as abnormal when its mask holds a pixel).

The scan decision: ``scan_score`` is the largest mean over a lesion-sized ``scan_window`` square of the
scan's consensus map (``anogan.data.stitch.Stitcher.consensus``: per pixel the smallest residual of the
patches covering it, where at least ``scan_min_votes`` patches cover it), so that a patch whose mapping
ended in a poor local minimum does not flag a healthy scan. ``scan_flagged`` calls a scan abnormal when
its score reaches the (1 - ``scan_target_fpr``) quantile of the scan scores of the normal scans of
``data.normal_path``, mapped and stitched in the same run: no test label is used. The rule was chosen on
phantom seeds 0-2 and is reported on seeds 3-5 (docs/oct.md, ``benchmarks/scan_decision.py``).
Every file is written atomically; with ``ScoreFile`` a resumed run rebuilds the maps of the patches
already in ``scores.h5.partial`` without mapping them again.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch

from anogan.metrics.detection import auroc
from anogan.runtime.distributed import gather_rows
from anogan.runtime.io import write_json_atomic
from anogan.metrics.localization import (
    average_precision,
    pick_rates,
    pixel_metrics,
    quantile_threshold,
    rates_at,
    pixel_auroc,
    window_max_at,
)
from anogan.runtime.io import atomic_path
from anogan.data.stitch import Stitcher, image_score, to_patch_size
from anogan.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

COLUMNS = ("image", "height", "width", "patches", "score", "image_score", "top_patches", "n_above_threshold",
           "threshold", "flagged", "scan_score", "scan_score_at", "scan_threshold", "scan_flagged", "note")
DEFAULT_MIN_VOTES = 3  # scan_min_votes=null: chosen on the phantom's development seeds (docs/oct.md)
NORMAL_COLUMNS = ("image", "height", "width", "patches", "scan_score", "scan_score_at", "note")


class ScanMaps(L.Callback):
    """Stitched maps, image scores and flags of the scans of a ``ScansDataModule``.

    Args:
        dirpath: folder of the maps. predictions: the CSV. metrics: the JSON of the pixel AUROC (masks).
        score: the per-patch score behind the image score, the top patches and the flag (``anomaly``:
            A(x), eq. 6; ``fanogan`` with an encoder).
        reduce: image score = ``max`` of the scan's patch scores, or their quantile ``reduce`` in (0, 1].
        top_k: the most anomalous patches listed per scan (positions ``y x`` of the top-left corner in
            scan pixels, and score).
        threshold_from: a labelled evaluation's ``metrics.json`` (its Youden threshold of ``score``) or
            ``scores.h5`` (the ``threshold_quantile`` of its training-normal patches); None: the threshold
            of ``score`` calibrated on normal validation images, when ``calibration_from`` has one, else no
            flag. ``flagged``: the scan's image score >= the threshold; ``n_above_threshold`` counts its
            patches at or above it.
        calibration_from: the training run's ``metrics.json`` or a checkpoint of that run (the config passes
            ``ckpt_path``: ``<run>/metrics.json``): its label-free thresholds (``anogan.metrics.localization``) for
            ``flagged`` without ``threshold_from``, and the pixel threshold of ``map_metrics.json`` when no
            normal scans are given.
        scan_window: the side of the square of ``scan_score`` in scan pixels (lesion-sized; 7 on the phantom).
        scan_min_votes: the patches that must cover a pixel for it to count in ``scan_score`` (1 up to
            ceil(patch / stride)^2: 4 at the default stride of half a patch); None: 3 (the phantom's rule,
            chosen at half-patch stride), or the most the stride allows when that is fewer (1 for whole
            images scored as one patch each).
        scan_target_fpr: the share of normal scans the flag may call abnormal: ``scan_threshold`` is the
            (1 - scan_target_fpr) quantile (linear interpolation) of the normal scans' ``scan_score``.
            Without ``data.normal_path`` no scan is flagged (``scan_threshold``, ``scan_flagged`` empty).
        pixel_target_fpr: the pixel threshold of ``map_metrics.json`` is the (1 - pixel_target_fpr) quantile
            of the normal scans' stitched map pixels.
        overlay: write the PNGs (the ``.npy`` maps are always written).

    Raises InputError for a setting out of range (naming it) before any patch is mapped.
    """

    def __init__(self, dirpath: str | os.PathLike, predictions: str | os.PathLike, metrics: str | os.PathLike,
                 score: str = "anomaly", reduce: str | float = "max", top_k: int = 5,
                 threshold_from: str | None = None, threshold_quantile: float = 0.99,
                 calibration_from: str | None = None, scan_window: int = 7, scan_min_votes: int | None = None,
                 scan_target_fpr: float = 0.05, pixel_target_fpr: float = 0.01, overlay: bool = True):
        self.dirpath, self.predictions, self.metrics = Path(dirpath), Path(predictions), Path(metrics)
        self.score, self.q, self.top_k, self.overlay = score, parse_reduce(reduce), int(top_k), overlay
        self.reduce = str(reduce)
        # checked here, before any scan is mapped
        self.threshold, self.threshold_source = _threshold_from(threshold_from, score, threshold_quantile)
        self.calibration = _calibration_from(calibration_from, score)
        if not threshold_from and self.calibration.get("image_threshold") is not None:
            self.threshold = float(self.calibration["image_threshold"])
            self.threshold_source = (f"{score} threshold at target FPR {self.calibration['target_fpr']} of "
                                     f"{self.calibration['source']}")
        for key, value in (("scan_window", scan_window), ("scan_min_votes", scan_min_votes)):
            if value is not None and (int(value) != value or value < 1):
                raise InputError(f"prediction_callbacks.maps.{key}={value} must be an integer >= 1")
        for key, value in (("scan_target_fpr", scan_target_fpr), ("pixel_target_fpr", pixel_target_fpr)):
            if not 0 < value < 1:
                raise InputError(f"prediction_callbacks.maps.{key}={value} must lie in (0, 1), e.g. 0.05")
        self.window = int(scan_window)
        self.asked_votes = None if scan_min_votes is None else int(scan_min_votes)
        self.scan_target_fpr, self.pixel_target_fpr = float(scan_target_fpr), float(pixel_target_fpr)
        self.scan_threshold: float | None = None  # set when the test epoch ends (from the normal scans)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.check_data(trainer.datamodule)

    def check_data(self, dm) -> None:
        """The scan decision's settings against the scans of ``dm`` (a set-up ``ScansDataModule``): the
        evaluation calls it before the Trainer starts, so a refusal leaves no partial output. Raises
        InputError naming the setting and a value that works."""
        from anogan.data.scans import ScansDataModule

        if not isinstance(dm, ScansDataModule):
            raise TypeError("ScanMaps scores the scans of data=scans (anogan.data.scans.ScansDataModule)")
        p = dm.opts.patch_size
        stride = dm.opts.stride or p // 2
        votes = math.ceil(p / stride) ** 2
        self.min_votes = min(DEFAULT_MIN_VOTES, votes) if self.asked_votes is None else self.asked_votes
        if self.min_votes > votes:
            raise InputError(f"prediction_callbacks.maps.scan_min_votes={self.min_votes}, but patches of {p} "
                             f"pixels at stride {stride} cover a pixel inside the scan {votes} time(s); pass "
                             f"prediction_callbacks.maps.scan_min_votes={votes} or a smaller data.stride")
        side = max(min(scan.shape) for scan in dm.scans)
        if self.window > side:
            raise InputError(f"prediction_callbacks.maps.scan_window={self.window} is larger than every scan (the "
                             f"largest is {side} pixels on its short side), so no scan would get a scan_score; pass "
                             f"a lesion-sized window, e.g. prediction_callbacks.maps.scan_window=7")

    def on_test_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        ds = dm.test_set
        self.scans, self.ds, self.p = dm.scans, ds, dm.opts.patch_size
        self.seen = np.zeros(len(ds), bool)
        self.remaining = np.bincount(ds.scan, minlength=len(self.scans))
        self.stitchers: dict[int, Stitcher] = {}
        self.patch_scores: dict[int, list[tuple[float, int, int]]] = {}
        self.rows: dict[int, dict] = {}
        self.measured: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.scan_scores: dict[int, float | None] = {}
        self.normal_rows: dict[int, dict] = {}
        self.normal_pixels: list[np.ndarray] = []
        self.progress = None
        if trainer.is_global_zero:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=len(self.scans), desc="scans", unit="scan", leave=True)
            for s in np.flatnonzero(self.remaining == 0):  # no patch passed the foreground test
                self._finish(int(s))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.score not in outputs["scores"]:
            raise InputError(f"prediction_callbacks.maps.score={self.score!r} is not among the scores "
                             f"{sorted(outputs['scores'])}; choose one of them")
        rows = {"split": outputs["split"], "index": outputs["index"], "map": outputs["residual_map"],
                "score": outputs["scores"][self.score]}
        if trainer.world_size > 1:
            rows = gather_rows(pl_module, rows)
        if not trainer.is_global_zero:
            return
        index = rows["index"].cpu().numpy()
        new = ~self.seen[index]  # a resumed batch or a DDP padding repeat may be here twice
        if not new.any():
            return
        index = index[new]
        maps = rows["map"].detach().float().cpu()[torch.from_numpy(new)]
        maps = to_patch_size(maps, self.p)  # patches resized to the GAN's size: back to scan pixels
        maps, scores = maps.numpy(), rows["score"].detach().double().cpu().numpy()[new]
        self.seen[index] = True
        ds = self.ds
        for s in np.unique(ds.scan[index]):
            s = int(s)
            here = ds.scan[index] == s
            if s not in self.stitchers:
                h, w = self.scans[s].shape
                self.stitchers[s] = Stitcher((max(h, self.p), max(w, self.p)))
                self.patch_scores[s] = []
            pos = list(zip(ds.y[index[here]].tolist(), ds.x[index[here]].tolist()))
            self.stitchers[s].add(maps[here], pos)
            self.patch_scores[s] += [(float(v), y, x) for v, (y, x) in zip(scores[here], pos)]
            self.remaining[s] -= int(here.sum())
            if self.remaining[s] == 0:
                self._finish(s)

    def _finish(self, s: int) -> None:
        """Scan s is mapped: its scan score; for a test scan its map, PNG and row of predictions.csv, for
        a normal scan (``data.normal_path``) its row of normal_scans.csv and its map's pixels."""
        from anogan.data.scans import read_scan_mask

        scan = self.scans[s]
        stitcher = self.stitchers.pop(s, None)
        amap = stitcher.result(crop=scan.shape) if stitcher is not None else np.full(scan.shape, np.nan, np.float32)
        found = (window_max_at(stitcher.consensus(self.min_votes, crop=scan.shape), self.window)
                 if stitcher is not None else None)
        self.scan_scores[s] = None if found is None else found[0]
        score = {"scan_score": "" if found is None else f"{found[0]:.6g}",
                 "scan_score_at": "" if found is None else "{} {}".format(*found[1])}
        why = "" if found is not None or stitcher is None else (
            f"no scan_score: no {self.window}x{self.window} square of pixels covered by >= {self.min_votes} "
            "patches (scan too small; lower prediction_callbacks.maps.scan_window, .scan_min_votes or data.stride)")
        if scan.normal:
            self.normal_rows[s] = {"image": scan.name, "height": scan.shape[0], "width": scan.shape[1],
                                   "patches": len(self.patch_scores.pop(s, [])), **score, "note": why}
            self.normal_pixels.append(amap[np.isfinite(amap)])
        else:
            out = self.dirpath / f"{scan.name}.npy"
            with atomic_path(out) as tmp, open(tmp, "wb") as f:
                np.save(f, amap)
            if self.overlay:
                from anogan.callbacks.viz import scan_map_figure

                unit = self.ds.unit_scan(s)
                grey = unit if unit.ndim == 2 else unit.mean(0)
                scan_map_figure(grey[: scan.shape[0], : scan.shape[1]], amap, self.dirpath / f"{scan.name}.png",
                                title=scan.name)
            mask = read_scan_mask(scan)
            if mask is not None:
                self.measured[s] = (amap, mask)
            self.rows[s] = {**self._row(scan, self.patch_scores.pop(s, [])), **score}
            if why:
                self.rows[s]["note"] = "; ".join(filter(None, (self.rows[s]["note"], why)))
        if self.progress is not None:
            self.progress.update(1)

    def _calibrate(self) -> dict:
        """The label-free thresholds from the normal scans (``data.normal_path``): the scan threshold at the
        (1 - scan_target_fpr) quantile of their scan scores, the pixel threshold at the (1 - pixel_target_fpr)
        quantile of their stitched maps' pixels; ``{}`` without normal scans."""
        if not self.normal_rows:
            return {}
        values = [self.scan_scores[s] for s in self.normal_rows]
        scored = [v for v in values if v is not None]
        threshold, reason = quantile_threshold(scored, self.scan_target_fpr, "scan scores of normal scans")
        pixel, pixel_reason = quantile_threshold(np.concatenate(self.normal_pixels), self.pixel_target_fpr,
                                                 "map pixels of normal scans")
        out = {"scan_threshold": threshold, "scan_target_fpr": self.scan_target_fpr,
               "n_normal_scans": len(values), "n_normal_scans_scored": len(scored),
               "pixel_threshold": pixel, "pixel_target_fpr": self.pixel_target_fpr,
               "scan_source": f"{len(scored)} normal scans of data.normal_path, stitched and scored as the test scans"}
        if reason:
            out["scan_threshold_reason"] = reason
            log.warning("scan_flagged left empty: %s (none of the %d normal scans has a scan_score; see the note "
                        "column of normal_scans.csv)", reason, len(values))
        elif len(scored) < math.ceil(1 / self.scan_target_fpr):
            log.warning("scan_threshold from %d normal scans: the %g quantile of so few lies between the largest "
                        "ones, so the flag's false-positive rate is controlled to about 1/%d only, not to "
                        "scan_target_fpr=%g; give %d or more normal scans (data.normal_path)", len(scored),
                        1 - self.scan_target_fpr, len(scored), self.scan_target_fpr,
                        math.ceil(1 / self.scan_target_fpr))
        if pixel_reason:
            out["pixel_threshold_reason"] = pixel_reason
        return out

    def _row(self, scan, patches: list[tuple[float, int, int]]) -> dict:
        values = np.array([v for v, _, _ in patches])
        top = sorted(patches, key=lambda t: -t[0])[: self.top_k]
        score = image_score(values, self.q)
        row = {"image": scan.name, "height": scan.shape[0], "width": scan.shape[1], "patches": len(patches),
               "score": self.score if self.q == 1 else f"{self.score} q{self.q:g}",
               "image_score": "" if score is None else f"{score:.6g}",
               "top_patches": "; ".join(f"{y} {x} {v:.5g}" for v, y, x in top),
               "n_above_threshold": "", "threshold": "", "flagged": "", "scan_score": "", "scan_score_at": "",
               "scan_threshold": "", "scan_flagged": "", "note": ""}
        if score is None:
            row["note"] = "no patch passed the foreground test: no score"
        elif self.threshold is not None:
            row.update(n_above_threshold=int((values >= self.threshold).sum()), threshold=f"{self.threshold:.6g}",
                       flagged=int(score >= self.threshold))
        return row

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self.progress is not None:
            self.progress.close()
        missing = [scan.name for s, scan in enumerate(self.scans) if s not in self.rows and s not in self.normal_rows]
        if missing:
            raise RuntimeError(f"{len(missing)} scan(s) were not completely mapped: {missing[:5]}")
        scan_calibration = self._calibrate()
        self.scan_threshold = scan_calibration.get("scan_threshold")
        test = [s for s in range(len(self.scans)) if s in self.rows]
        if self.scan_threshold is not None:
            for s in test:
                if self.scan_scores[s] is not None:
                    self.rows[s].update(scan_threshold=f"{self.scan_threshold:.6g}",
                                        scan_flagged=int(self.scan_scores[s] >= self.scan_threshold))
        with atomic_path(self.predictions) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows[s] for s in test)
        log.info("wrote %s (%d scans; %s) and %s/", self.predictions, len(test), self.threshold_source, self.dirpath)
        if self.normal_rows:
            normal_csv = self.predictions.with_name("normal_scans.csv")
            with atomic_path(normal_csv) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=NORMAL_COLUMNS)
                writer.writeheader()
                writer.writerows(self.normal_rows[s] for s in sorted(self.normal_rows))
            log.info("scan flag calibrated on %d normal scans (%s): scan_threshold %s at target FPR %g",
                     len(self.normal_rows), normal_csv, scan_calibration.get("scan_threshold"), self.scan_target_fpr)
        else:
            log.info("no data.normal_path: scan_flagged left empty; pass data.normal_path=<folder of normal scans "
                     "not used in training> to flag scans at a calibrated threshold")
        if self.measured:
            maps, masks = zip(*self.measured.values())
            calibration = self._calibration_record(scan_calibration)
            pixel_threshold = (calibration or {}).get("pixel_threshold")
            result = {"n_scans": len(self.measured), "score_map": "residual |x - G(z)|, overlaps averaged",
                      **pixel_auroc(maps, masks),
                      **pixel_metrics(maps, masks, threshold=pixel_threshold),
                      "scan": self._scan_metrics(),
                      "calibration": calibration}
            write_json_atomic(result, self.metrics)
            self.result = result
            if result["pixel_auroc"] is not None:
                pl_module.log("test/pixel_auroc_stitched", result["pixel_auroc"])
                log.info("pixel AUROC of the stitched maps over %d whole scans: %.4f", len(maps),
                         result["pixel_auroc"])
            scan = result["scan"]
            if scan.get("scan_score_auroc") is not None:
                flag = scan.get("at_flag") or {}
                rates = ", ".join(f"{k} {flag[k]:.3f}" for k in ("sensitivity", "specificity")
                                  if flag.get(k) is not None)
                log.info("scan AUROC of scan_score over %d scans with masks: %.4f%s", len(maps),
                         scan["scan_score_auroc"], f"; scan_flagged: {rates}" if rates else "")

    def _calibration_record(self, scan_calibration: dict) -> dict | None:
        """What ``map_metrics.json`` says the thresholds are and what each was calibrated on: the image
        threshold from the training run, the scan and pixel thresholds from the normal scans (the pixel one
        from the training run's normal validation patches without them); None when there is neither."""
        run = self.calibration
        if not run and not scan_calibration:
            return None
        out = {"image_threshold": run.get("image_threshold"), "target_fpr": run.get("target_fpr"),
               "source": run.get("source")}
        if scan_calibration:
            return {**out, **scan_calibration, "pixel_source": scan_calibration["scan_source"]}
        return {**out, "pixel_threshold": run.get("pixel_threshold"), "pixel_target_fpr": run.get("pixel_target_fpr"),
                "pixel_source": run.get("source"), "scan_threshold": None,
                "scan_threshold_reason": "no data.normal_path: no normal scans to calibrate the scan flag on"}

    def _scan_metrics(self) -> dict:
        """Scan-level AUROC and AUPRC of ``scan_score`` and of the image score, against the scans' labels
        (abnormal: the mask holds a pixel), and the rates at ``scan_flagged``; None with the reason where
        undefined (one class only)."""
        ids = [s for s in self.measured if self.scan_scores.get(s) is not None]
        labels = np.array([int(self.measured[s][1].any()) for s in ids])
        out: dict = {"n_abnormal": int(labels.sum()), "n_normal": int(len(labels) - labels.sum()),
                     "scan_score": (f"largest mean over a {self.window}x{self.window} square of the consensus "
                                    f"map (per pixel the smallest residual of the >= {self.min_votes} patches "
                                    "covering it)")}
        image = np.array([float(self.rows[s]["image_score"] or "nan") for s in ids])
        for name, values in (("scan_score", np.array([self.scan_scores[s] for s in ids])), ("image_score", image)):
            reason = None if 0 < labels.sum() < len(labels) else (
                f"undefined: {int(labels.sum())} abnormal of {len(labels)} scans with masks; AUROC needs both")
            out[f"{name}_auroc"] = None if reason else auroc(torch.from_numpy(values), torch.from_numpy(labels))
            out[f"{name}_auprc"] = average_precision(values, labels)[0]
            if reason:
                out[f"{name}_reason"] = reason
        if self.scan_threshold is not None:
            rates = rates_at(np.array([self.scan_scores[s] for s in ids]), labels, self.scan_threshold)
            out["at_flag"] = {"threshold": self.scan_threshold,
                              **pick_rates(rates, ("sensitivity", "specificity", "precision"))}
        return out

    def on_exception(self, trainer, pl_module, exception) -> None:
        if getattr(self, "progress", None) is not None:
            self.progress.close()


# -- settings and thresholds read from a labelled run ----------------------------------------------
def parse_reduce(reduce: str | float) -> float:
    """``max`` -> 1.0, a quantile in (0, 1] -> itself; anything else is an error naming the setting."""
    if str(reduce) == "max":
        return 1.0
    try:
        q = float(reduce)
    except ValueError:
        q = math.nan
    if not 0 < q <= 1:
        raise InputError(f"prediction_callbacks.maps.reduce={reduce!r}: expected max or a quantile in (0, 1], "
                         "e.g. 0.99")
    return q


def threshold_from(path: str | os.PathLike | None, score: str, quantile: float = 0.99) -> tuple[float | None, str]:
    """(threshold, where it comes from) for the flag of each scan, from ``path``:

    * a labelled evaluation's ``metrics.json``: the threshold of ``score`` at the maximal Youden index
      (the paper's operating point, per patch);
    * a ``scores.h5`` of an evaluation: the ``quantile`` of the ``score`` of its training-normal rows
      (split = train);
    * None: (None, reason): no flag.
    A missing file, or one without ``score``, is an error naming the fix."""
    if not path:
        return None, "no threshold: pass prediction_callbacks.maps.threshold_from=<metrics.json or scores.h5>"
    path = Path(path)
    fix = "pass the metrics.json or scores.h5 of a labelled evaluation of the same checkpoint"
    if not path.is_file():
        raise MissingInputError(f"prediction_callbacks.maps.threshold_from={path} does not exist; {fix}")
    if path.suffix == ".json":
        table = json.loads(path.read_text()).get("scores", {})
        if score not in table:
            raise InputError(f"{path} has no score {score!r} (it has {sorted(table)}); set "
                             f"prediction_callbacks.maps.score to one of them, or {fix}")
        return float(table[score]["threshold"]), f"Youden point of {score} in {path}"
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        from anogan.data import SPLITS

        if not 0 < quantile < 1:
            raise InputError(f"prediction_callbacks.maps.threshold_quantile={quantile}: expected a value in (0, 1)")
        with h5py.File(path, "r") as f:
            if f"scores/{score}" not in f:
                raise InputError(f"{path} has no score {score!r} (it has {sorted(f.get('scores', {}))}); {fix}")
            values = f[f"scores/{score}"][()][f["split"][()] == SPLITS["train"]]
        if values.size == 0:
            raise InputError(f"{path} holds no training-normal rows (split = train); {fix} "
                             "(data.eval_train_samples > 0), or pass its metrics.json")
        return float(np.quantile(values, quantile)), (
            f"{quantile} quantile of {score} over the {values.size} training-normal patches of {path}")
    raise InputError(f"prediction_callbacks.maps.threshold_from={path}: expected a metrics.json or a scores.h5")


def calibration_from(path: str | os.PathLike | None, score: str) -> dict:
    """The label-free thresholds of a training run's evaluation (``anogan.metrics.localization``), from ``path``:
    its ``metrics.json`` or a checkpoint of the run (``<run>/checkpoints/*.ckpt``: ``<run>/metrics.json``).
    Returns ``{"pixel_threshold", "image_threshold", "region_threshold", "region_window", "target_fpr",
    "pixel_target_fpr", "source"}`` (None where not recorded), or ``{}`` when the run has no calibrated
    thresholds (no metrics.json, one written before they existed, or no normal validation images)."""
    if not path:
        return {}
    path = Path(path)
    if path.suffix != ".json":
        path = path.parent.parent / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    pixel = metrics.get("pixel_calibration") or {}
    region = metrics.get("region_calibration") or {}
    image = (metrics.get("scores", {}).get(score) or {}).get("calibrated") or {}
    if pixel.get("threshold") is None and region.get("threshold") is None:
        return {}
    return {"pixel_threshold": pixel.get("threshold"), "pixel_target_fpr": pixel.get("target_fpr"),
            "image_threshold": image.get("threshold"), "target_fpr": image.get("target_fpr"),
            "region_threshold": region.get("threshold"), "region_window": region.get("window"),
            "source": f"{path} (calibrated on {image.get('calibrated_on') or pixel.get('calibrated_on')})"}


_threshold_from, _calibration_from = threshold_from, calibration_from  # ScanMaps' arguments shadow both names
