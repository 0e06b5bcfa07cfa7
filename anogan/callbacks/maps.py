"""Whole-scan outputs of ``data=scans``: each scan's patch residual maps stitched into one anomaly map,
its scan decision, image score and p-values.

Per scan, written as soon as its last patch is mapped: ``maps/<scan>.npy`` (float32, the scan's size;
NaN where no scored patch covers a pixel) and ``maps/<scan>.png`` (the scan with the map overlaid, a
colour bar in map units). When the test epoch ends: ``predictions.csv`` (one row per scan, the scan
decision first), ``normal_scans.csv`` (with ``data.normal_path``: the scans the flag is calibrated on)
and, where ``data.masks`` gave masks, ``map_metrics.json`` (pixel AUROC, AUPRC, best Dice, AUPRO of the
stitched maps over their covered pixels, and the scan-level AUROC, AUPRC and rates at the flag, a scan
counting as abnormal when its mask holds a pixel).

The scan decision: ``scan_score`` is the largest mean over a lesion-sized ``scan_window`` square of the
scan's consensus map (``anogan.data.stitch.Stitcher.consensus``: per pixel the smallest residual of the
patches covering it, where at least ``scan_min_votes`` patches cover it), so that a patch whose mapping
ended in a poor local minimum does not flag a healthy scan. The band at the border where the grid places
fewer patches (one stride wide at the default) is not scored: there every covering patch holds the pixel
at its own border, where G's reconstructions are worst, and healthy scans score high (docs/oct.md);
``scan_scored_region`` names the part that is scored, and ``scan_border=include`` scores the band on the
patches the grid places there. ``scan_p_value`` = (1 + #{normal scans with scan_score >= s})
/ (n + 1) against the n normal scans of ``data.normal_path`` (mapped and stitched in the same run; no
test label is used), and ``scan_flagged`` = 1 when it is <= ``scan_target_fpr``, i.e. the scan score is
above the conformal threshold (``anogan.metrics.scan_level.calibrate_scans``): a new normal scan is
flagged with probability <= scan_target_fpr, for any n, when it and the normal scans are exchangeable.
With fewer than 1 / scan_target_fpr - 1 normal scans (19 at 0.05) no threshold keeps that promise: it is
null, no scan is flagged, and the log says how many are needed. The rule was chosen on phantom seeds 0-2
(docs/oct.md, ``benchmarks/scan_decision.py``).

The pieces: ``anogan.data.stitch.ScanAssembler`` (patches to stitched scans), ``summarise`` (one scan's
scores), ``anogan.metrics.scan_level`` (calibration and scan metrics), the row functions below (CSV);
``ScanMaps`` only wires them to the Trainer. Every file is written atomically; with ``ScoreFile`` a
resumed run rebuilds the maps of the patches already in ``scores.h5.partial`` without mapping them again.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np

from anogan.data.stitch import ScanAssembler, StitchedScan, image_score, to_patch_size
from anogan.errors import InputError, MissingInputError
from anogan.metrics.conformal import above, leave_one_out_p_values, min_calibration, p_values
from anogan.metrics.localization import pixel_auroc, pixel_metrics, window_max_at
from anogan.metrics.restarts import failure_line, failure_summary, first_start_failed
from anogan.metrics.scan_level import calibrate_scans, scan_metrics
from anogan.runtime.distributed import gather_rows
from anogan.runtime.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

COLUMNS = ("image", "height", "width", "patches",
           "scan_score", "scan_p_value", "scan_threshold", "scan_flagged", "scan_score_at", "scan_scored_region",
           "image_score", "image_p_value", "score", "top_patches",
           "patch_threshold", "patches_above_threshold", "any_patch_flagged", "failed_first_starts", "note",
           *("threshold", "n_above_threshold", "flagged"))  # the old names of the patch columns: one more release
NORMAL_COLUMNS = ("image", "height", "width", "patches", "scan_score", "scan_p_value", "scan_score_at",
                  "scan_scored_region", "image_score", "image_p_value", "failed_first_starts", "note")
BORDERS = ("exclude", "include")
DEFAULT_MIN_VOTES = 3  # scan_min_votes=null: chosen on the phantom's development seeds (docs/oct.md)


@dataclass
class ScanResult:
    """What is kept of one mapped scan until the epoch ends: its name, shape (H, W), whether it is a
    normal scan (``data.normal_path``), its patches' scores (K,) and top-left corners (K, 2), its image
    score, scan score and where (the square's centre, y x), the rectangle its scan score can cover
    (``StitchedScan.region``), a note, and for a test scan with a mask the mask and its averaged map
    (``map_metrics.json``)."""

    name: str
    shape: tuple[int, int]
    normal: bool
    patch_scores: np.ndarray
    positions: np.ndarray
    image_score: float | None
    scan_score: float | None
    scan_score_at: tuple[int, int] | None
    region: tuple[int, int, int, int] | None = None
    note: str = ""
    mask: np.ndarray | None = None
    map: np.ndarray | None = None
    failed_first_starts: int | None = None  # patches whose first start failed (inversion.restarts >= 2)


def summarise(scan, stitched: StitchedScan, q: float, window: int, min_votes: int) -> ScanResult:
    """One scan's scores from its stitched patches: the image score (``image_score``: the q-quantile of
    the patch scores, q = 1 the maximum) and the scan score (the largest mean over a ``window`` square of
    the consensus map, ``window_max_at``); each None with the reason in the note where undefined."""
    found = window_max_at(stitched.consensus, window)
    notes = []
    if not len(stitched.scores):
        notes.append("no patch passed the foreground test: no score")
    elif found is None:
        notes.append(f"no scan_score: no {window}x{window} square of pixels covered by >= {min_votes} patches "
                     "(scan too small or with gaps; lower prediction_callbacks.maps.scan_window, .scan_min_votes "
                     "or data.stride)")
    return ScanResult(scan.name, tuple(scan.shape), bool(scan.normal), stitched.scores, stitched.positions,
                      image_score(stitched.scores, q), None if found is None else found[0],
                      None if found is None else found[1], stitched.region, "; ".join(notes))


def region_text(region: tuple[int, int, int, int] | None) -> str:
    """``y0-y1 x0-x1`` (inclusive scan pixels), empty for None."""
    return "" if region is None else "{}-{} {}-{}".format(*region)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _text(value, fmt: str = ".6g") -> str:
    """A CSV cell: empty for None / NaN (undefined), else the number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, fmt) if isinstance(value, float) else str(value)


def patch_columns(result: ScanResult, threshold: float | None, top_k: int) -> dict:
    """The patch-level columns of a row: the ``top_k`` patches (``y x score``), and at the per-patch
    ``threshold``: ``patches_above_threshold`` (patch score > it), ``any_patch_flagged`` (one or more) and,
    for one more release, the old ``n_above_threshold`` (>= it) and ``flagged`` (image score >= it)."""
    order = np.argsort(-result.patch_scores, kind="stable")[:top_k]
    out = {"top_patches": "; ".join(f"{y} {x} {v:.5g}" for v, (y, x) in
                                    zip(result.patch_scores[order], result.positions[order].tolist())),
           "patch_threshold": "", "patches_above_threshold": "", "any_patch_flagged": "",
           "threshold": "", "n_above_threshold": "", "flagged": ""}
    if threshold is None or result.image_score is None:
        return out
    above_count = int((result.patch_scores > threshold).sum())
    return {**out, "patch_threshold": _text(threshold), "patches_above_threshold": above_count,
            "any_patch_flagged": int(above_count > 0), "threshold": _text(threshold),
            "n_above_threshold": int((result.patch_scores >= threshold).sum()),
            "flagged": int(result.image_score >= threshold)}


def scan_columns(result: ScanResult, normal: np.ndarray | None, threshold: float | None) -> dict:
    """The scan decision's columns of a test scan: ``scan_score``, ``scan_score_at``, and against the
    normal scans' scan scores ``normal`` (None without ``data.normal_path``): ``scan_p_value``,
    ``scan_threshold`` and ``scan_flagged`` (scan score > threshold, i.e. p-value <= scan_target_fpr; 0 for
    every scan when the threshold is None for too few normal scans)."""
    out = {"scan_score": _text(result.scan_score), "scan_score_at": "" if result.scan_score_at is None else
           "{} {}".format(*result.scan_score_at), "scan_scored_region": region_text(result.region),
           "scan_p_value": "", "scan_threshold": "", "scan_flagged": ""}
    if normal is None or result.scan_score is None:
        return out
    return {**out, "scan_p_value": _text(float(p_values(normal, result.scan_score))),
            "scan_threshold": _text(threshold), "scan_flagged": int(above(result.scan_score, threshold))}


def _count(n: int | None) -> str:
    return "" if n is None else str(n)


def normal_rows(results: list[ScanResult]) -> list[dict]:
    """The rows of normal_scans.csv: each normal scan's scores and its p-values against the others (leave
    one out: what it would get as a scored scan, ``leave_one_out_p_values``)."""
    scan_p = leave_one_out_p_values([_nan(r.scan_score) for r in results])
    image_p = leave_one_out_p_values([_nan(r.image_score) for r in results])
    return [{"image": r.name, "height": r.shape[0], "width": r.shape[1], "patches": len(r.patch_scores),
             "scan_score": _text(r.scan_score), "scan_p_value": _text(float(sp)),
             "scan_score_at": "" if r.scan_score_at is None else "{} {}".format(*r.scan_score_at),
             "scan_scored_region": region_text(r.region), "image_score": _text(r.image_score),
             "image_p_value": _text(float(ip)), "failed_first_starts": _count(r.failed_first_starts), "note": r.note}
            for r, sp, ip in zip(results, scan_p, image_p)]


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


class ScanMaps(L.Callback):
    """Stitched maps, scan decisions, image scores and p-values of the scans of a ``ScansDataModule``.

    Args:
        dirpath: folder of the maps. predictions: the CSV. metrics: the JSON of the map metrics (masks).
        score: the per-patch score behind the image score, the top patches and the patch flag
            (``anomaly``: A(x), eq. 6; ``fanogan`` with an encoder).
        reduce: image score = ``max`` of the scan's patch scores, or their quantile ``reduce`` in (0, 1].
        top_k: the most anomalous patches listed per scan (positions ``y x`` of the top-left corner in
            scan pixels, and score).
        threshold_from: a labelled evaluation's ``metrics.json`` (its Youden threshold of ``score``) or
            ``scores.h5`` (the ``threshold_quantile`` of its training-normal patches); None: the threshold
            of ``score`` calibrated on normal validation images, when ``calibration_from`` has one, else no
            patch flag. ``patches_above_threshold`` counts a scan's patches above it, ``any_patch_flagged``
            says whether there is one: a per-patch decision, which flags most healthy scans of ~90 patches
            (``scan_flagged`` is the scan decision).
        calibration_from: the training run's ``metrics.json`` or a checkpoint of that run (the config passes
            ``ckpt_path``: ``<run>/metrics.json``): its label-free thresholds for the patch flag without
            ``threshold_from``, and the pixel threshold of ``map_metrics.json`` when no normal scans are given.
        scan_window: the side of the square of ``scan_score`` in scan pixels (lesion-sized; 7 on the phantom).
        scan_min_votes: the patches that must cover a pixel for it to count in ``scan_score`` (1 up to
            ceil(patch / stride)^2: 4 at the default stride of half a patch); None: 3 (the phantom's rule,
            chosen at half-patch stride), or the most the stride allows when that is fewer (1 for whole
            images scored as one patch each).
        scan_border: ``exclude``: the band at the border where the grid places fewer than scan_min_votes
            patches is not scored (``scan_scored_region`` says which part is); ``include``: it is, on the
            patches the grid places there (healthy scans then score higher: docs/oct.md).
        scan_target_fpr: the share of normal scans the flag may call abnormal: the conformal threshold of
            the normal scans' ``scan_score`` (``anogan.metrics.scan_level``). Without ``data.normal_path`` no
            scan is flagged and no p-value computed (those columns empty).
        pixel_target_fpr: the pixel threshold of ``map_metrics.json``: the conformal threshold of the normal
            scans' stitched map pixels at this rate.
        overlay: write the PNGs (the ``.npy`` maps are always written).

    Raises InputError for a setting out of range (naming it) before any patch is mapped.
    """

    def __init__(self, dirpath: str | os.PathLike, predictions: str | os.PathLike, metrics: str | os.PathLike,
                 score: str = "anomaly", reduce: str | float = "max", top_k: int = 5,
                 threshold_from: str | None = None, threshold_quantile: float = 0.99,
                 calibration_from: str | None = None, scan_window: int = 7, scan_min_votes: int | None = None,
                 scan_border: str = "exclude", scan_target_fpr: float = 0.05, pixel_target_fpr: float = 0.01,
                 overlay: bool = True):
        self.dirpath, self.predictions, self.metrics = Path(dirpath), Path(predictions), Path(metrics)
        self.patch_losses = None  # (patches, R) every start's final loss, with inversion.restarts >= 2
        self.score, self.q, self.top_k, self.overlay = score, parse_reduce(reduce), int(top_k), overlay
        # checked here, before any scan is mapped
        self.threshold, self.threshold_source = read_patch_threshold(threshold_from, score, threshold_quantile)
        self.calibration = read_run_calibration(calibration_from, score)
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
        if scan_border not in BORDERS:
            raise InputError(f"prediction_callbacks.maps.scan_border={scan_border!r}: expected exclude or include")
        self.window, self.border = int(scan_window), scan_border == "include"
        self.asked_votes = None if scan_min_votes is None else int(scan_min_votes)
        self.scan_target_fpr, self.pixel_target_fpr = float(scan_target_fpr), float(pixel_target_fpr)

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

    # -- wiring: patches in, scans out ------------------------------------------------------------
    def on_test_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        self.scans, self.ds, self.p = dm.scans, dm.test_set, dm.opts.patch_size
        self.assembler = ScanAssembler([scan.shape for scan in self.scans], self.ds.scan, self.ds.y, self.ds.x,
                                       dm.opts, self.min_votes, self.border)
        self.results: dict[int, ScanResult] = {}
        self.normal_pixels: list[np.ndarray] = []
        self.patch_losses = None  # (patches, R) every start's final loss, with inversion.restarts >= 2
        self.progress = None
        if trainer.is_global_zero:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=len(self.scans), desc="scans", unit="scan", leave=True)
            for stitched in self.assembler.empty():
                self._finish(stitched)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.score not in outputs["scores"]:
            raise InputError(f"prediction_callbacks.maps.score={self.score!r} is not among the scores "
                             f"{sorted(outputs['scores'])}; choose one of them")
        rows = {"split": outputs["split"], "index": outputs["index"], "map": outputs["residual_map"],
                "score": outputs["scores"][self.score]}
        if outputs.get("restart_losses") is not None:
            rows["restart_losses"] = outputs["restart_losses"]
        if trainer.world_size > 1:
            rows = gather_rows(pl_module, rows)
        if not trainer.is_global_zero:
            return
        if "restart_losses" in rows:  # before the scans these patches complete are finished
            losses = rows["restart_losses"].detach().double().cpu().numpy()
            if self.patch_losses is None:
                self.patch_losses = np.full((len(self.ds.scan), losses.shape[1]), np.nan)
            self.patch_losses[rows["index"].cpu().numpy()] = losses  # by patch: a repeat rewrites the same
        maps = to_patch_size(rows["map"].detach().float().cpu(), self.p)  # GAN-sized maps back to scan pixels
        for stitched in self.assembler.add(rows["index"].cpu().numpy(), maps.numpy(),
                                           rows["score"].detach().double().cpu().numpy()):
            self._finish(stitched)

    def _finish(self, stitched: StitchedScan) -> None:
        """A scan is mapped: its scores; a test scan's map and PNG are written (its map kept with its
        mask for the map metrics), a normal scan's covered map pixels kept for the pixel threshold."""
        from anogan.data.scans import read_scan_mask

        scan = self.scans[stitched.scan]
        result = summarise(scan, stitched, self.q, self.window, self.min_votes)
        if self.patch_losses is not None:
            mine = self.patch_losses[np.asarray(self.ds.scan) == stitched.scan]
            result.failed_first_starts = int(first_start_failed(mine).sum())
        if scan.normal:
            self.normal_pixels.append(stitched.mean[np.isfinite(stitched.mean)])
        else:
            self._write_map(stitched.scan, stitched.mean)
            result.mask = read_scan_mask(scan)
            result.map = stitched.mean if result.mask is not None else None
        self.results[stitched.scan] = result
        if self.progress is not None:
            self.progress.update(1)

    def _write_map(self, s: int, amap: np.ndarray) -> None:
        scan = self.scans[s]
        out = self.dirpath / f"{scan.name}.npy"
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, amap)
        if self.overlay:
            from anogan.callbacks.viz import scan_map_figure

            unit = self.ds.unit_scan(s)
            grey = unit if unit.ndim == 2 else unit.mean(0)
            scan_map_figure(grey[: scan.shape[0], : scan.shape[1]], amap, self.dirpath / f"{scan.name}.png",
                            title=scan.name)

    # -- the epoch's end: calibration, decisions, files ------------------------------------------
    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self.progress is not None:
            self.progress.close()
        missing = [scan.name for s, scan in enumerate(self.scans) if s not in self.results]
        if missing:
            raise RuntimeError(f"{len(missing)} scan(s) were not completely mapped: {missing[:5]}")
        test = [self.results[s] for s in sorted(self.results) if not self.results[s].normal]
        normal = [self.results[s] for s in sorted(self.results) if self.results[s].normal]
        calibration = self._calibrate(normal)
        threshold = calibration.get("scan_threshold")
        normal_scan = np.array([_nan(r.scan_score) for r in normal]) if normal else None
        normal_image = np.array([_nan(r.image_score) for r in normal]) if normal else None
        rows = [self._row(r, normal_scan, normal_image, calibration) for r in test]
        write_csv(self.predictions, COLUMNS, rows)
        log.info("wrote %s (%d scans; patch threshold: %s) and %s/", self.predictions, len(test),
                 self.threshold_source, self.dirpath)
        if normal:
            write_csv(self.predictions.with_name("normal_scans.csv"), NORMAL_COLUMNS, normal_rows(normal))
        measured = [r for r in test if r.mask is not None]
        if measured:
            called = np.array([r.scan_score is not None and bool(above(r.scan_score, threshold)) for r in measured])
            self.result = self._map_metrics(measured, calibration, called if normal else None)
            write_json_atomic(self.result, self.metrics)
            self._log_map_metrics(pl_module, self.result)

    def _calibrate(self, normal: list[ScanResult]) -> dict:
        """The scan and pixel thresholds from the normal scans (``calibrate_scans``), with the log lines
        that say what the flag can do; ``{}`` without normal scans."""
        if not normal:
            log.info("no data.normal_path: scan_flagged and the p-values left empty; pass data.normal_path=<folder "
                     "of normal scans not used in training, at least %d> to flag scans at a calibrated threshold",
                     min_calibration(self.scan_target_fpr))
            return {}
        pixels = np.concatenate(self.normal_pixels) if self.normal_pixels else np.zeros(0)
        out = calibrate_scans([_nan(r.scan_score) for r in normal], pixels, self.scan_target_fpr,
                              self.pixel_target_fpr)
        if out["scan_threshold"] is None:
            log.warning("scan_threshold is null, so scan_flagged flags no scan (scan_p_value still ranks them): %s "
                        "(%d normal scans of data.normal_path, %d with a scan_score; see the note column of "
                        "normal_scans.csv)", out["scan_threshold_reason"], out["n_normal_scans"],
                        out["n_normal_scans_scored"])
        else:
            log.info("scan flag calibrated on %d normal scans: scan_threshold %.6g (their scan scores' rank %d from "
                     "the smallest; scan_target_fpr %g)", out["n_normal_scans_scored"], out["scan_threshold"],
                     out["scan_rank"], self.scan_target_fpr)
        return out

    def _row(self, result: ScanResult, normal_scan, normal_image, calibration: dict) -> dict:
        """One row of predictions.csv (``COLUMNS``)."""
        row = {"image": result.name, "height": result.shape[0], "width": result.shape[1],
               "patches": len(result.patch_scores),
               **scan_columns(result, normal_scan, calibration.get("scan_threshold")),
               "image_score": _text(result.image_score),
               "image_p_value": "" if normal_image is None or result.image_score is None else
               _text(float(p_values(normal_image, result.image_score))),
               "score": self.score if self.q == 1 else f"{self.score} q{self.q:g}",
               **patch_columns(result, self.threshold, self.top_k),
               "failed_first_starts": _count(result.failed_first_starts), "note": result.note}
        if normal_scan is not None and result.scan_score is not None and calibration.get("scan_threshold") is None:
            row["note"] = "; ".join(filter(None, (row["note"], (
                f"no scan_threshold: {calibration['n_normal_scans_scored']} normal scans, the flag needs >= "
                f"{calibration['n_normal_scans_needed']} (no scan flagged)"))))
        return row

    def _map_metrics(self, measured: list[ScanResult], calibration: dict, called: np.ndarray | None) -> dict:
        """``map_metrics.json``: the pixel metrics of the stitched maps over their covered pixels, the scan
        metrics, and the thresholds with where each was calibrated."""
        maps, masks = [r.map for r in measured], [r.mask for r in measured]
        record = self._calibration_record(calibration)
        scan = scan_metrics(
            [int(r.mask.any()) for r in measured],
            {"scan_score": np.array([_nan(r.scan_score) for r in measured]),
             "image_score": np.array([_nan(r.image_score) for r in measured])},
            {"scan_score": f"no scan_score: no {self.window}x{self.window} square of covered pixels (the note column "
                           "of predictions.csv)",
             "image_score": "no patch passed the foreground test"},
            called, calibration.get("scan_threshold"))
        if called is not None and calibration.get("scan_threshold") is None:
            scan["at_flag"]["reason"] = calibration["scan_threshold_reason"]
        votes = f"min({self.min_votes}, the patches the grid places there)" if self.border else str(self.min_votes)
        scan["scan_score"] = (f"largest mean over a {self.window}x{self.window} square of the consensus map (per "
                              f"pixel the smallest residual of the patches covering it, where at least {votes} "
                              "cover it; scan_scored_region in predictions.csv)")
        return {"n_scans": len(measured), "score_map": "residual |x - G(z)|, overlaps averaged",
                "pixels": "pixel metrics over the pixels the maps cover (n_uncovered_pixels left out, "
                          "n_uncovered_anomalous_pixels of them anomalous)",
                **pixel_auroc(maps, masks),
                **pixel_metrics(maps, masks, threshold=(record or {}).get("pixel_threshold")),
                "scan": scan, "calibration": record, "mapping_failures": self._mapping_failures()}

    def _mapping_failures(self) -> dict:
        """How often the first of ``inversion.restarts`` starts failed (``anogan.metrics.restarts``), over
        the patches of the normal scans, of the test scans whose mask marks a lesion and of those whose
        mask is empty; logged with several starts. Null with the reason when no start was compared (one
        start per patch, or no patch mapped)."""
        if self.patch_losses is None:
            return failure_summary(None, {})
        scan_of = np.asarray(self.ds.scan)

        def group(r: ScanResult) -> str | None:
            if r.normal:
                return "patches_of_normal_scans"
            if r.mask is None:
                return None
            return "patches_of_scans_with_lesion" if r.mask.any() else "patches_of_scans_without_lesion"

        kinds = {s: group(r) for s, r in self.results.items()}
        names = ("patches_of_normal_scans", "patches_of_scans_without_lesion", "patches_of_scans_with_lesion")
        out = failure_summary(self.patch_losses, {g: np.isin(scan_of, [s for s, k in kinds.items() if k == g])
                                                  for g in names})
        if out["groups"] is not None:
            log.info(failure_line(out))
        return out

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

    @staticmethod
    def _log_map_metrics(pl_module, result: dict) -> None:
        if result["pixel_auroc"] is not None:
            pl_module.log("test/pixel_auroc_stitched", result["pixel_auroc"])
            log.info("pixel AUROC of the stitched maps over %d whole scans (%d uncovered pixels left out): %.4f",
                     result["n_scans"], result["n_uncovered_pixels"], result["pixel_auroc"])
        scan = result["scan"]
        for name in ("scan_score", "image_score"):
            if scan.get(f"{name}_degenerate"):
                log.warning("%s is degenerate over the test scans: %s", name, scan[f"{name}_degenerate_reason"])
        if scan.get("scan_score_auroc") is not None:
            flag = scan.get("at_flag") or {}
            rates = ", ".join(f"{k} {flag[k]:.3f}" for k in ("sensitivity", "specificity") if flag.get(k) is not None)
            left = scan["scan_score_n_left_out"]
            log.info("scan AUROC of scan_score over %d scans with masks%s: %.4f%s", result["n_scans"] - left,
                     f" ({left} without a scan_score left out)" if left else "", scan["scan_score_auroc"],
                     f"; scan_flagged: {rates}" if rates else "")

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


def read_patch_threshold(path: str | os.PathLike | None, score: str, quantile: float = 0.99
                         ) -> tuple[float | None, str]:
    """(threshold, where it comes from) for the patch flag of each scan, from ``path``:

    * a labelled evaluation's ``metrics.json``: the threshold of ``score`` at the maximal Youden index
      (the paper's operating point, per patch);
    * a ``scores.h5`` of an evaluation: the ``quantile`` of the ``score`` of its training-normal rows
      (split = train). A plain quantile, not a conformal threshold: the GAN was trained on these patches,
      so their scores are not exchangeable with a new normal patch's (lower), and no rank of them carries
      a false-positive guarantee; it is a user-chosen level (``prediction_callbacks.maps.threshold_quantile``);
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


def read_run_calibration(path: str | os.PathLike | None, score: str) -> dict:
    """The label-free thresholds of a training run's evaluation (``anogan.callbacks.AnomalyMetrics``), from ``path``:
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


