"""Scan-level numbers of ``data=scans`` (``anogan.callbacks.ScanMaps``): the label-free thresholds calibrated
on normal scans, and the scan AUROC, AUPRC and flag rates against the scans' masks. Pure numpy / torch.

Calibration (``calibrate_scans``): the scan threshold is the conformal threshold of the normal scans' scan
scores at ``scan_target_fpr`` (``anogan.metrics.conformal``: a new normal scan, exchangeable with them, is
flagged with probability <= scan_target_fpr, for any number n of normal scans); it needs
n >= 1 / scan_target_fpr - 1 (19 at 0.05), else it is null with the reason and the flag flags nothing.
The pixel threshold is the conformal threshold of their stitched maps' covered pixels at
``pixel_target_fpr``: pixels of one scan are not exchangeable with each other, so for pixels it is a
calibrated rate, not a guarantee.
"""

from __future__ import annotations

import numpy as np
import torch

from anogan.metrics.conformal import calibrate, min_calibration
from anogan.metrics.detection import auroc, degenerate
from anogan.metrics.localization import average_precision, pick_rates, rates


def calibrate_scans(scan_scores, pixels, scan_target_fpr: float, pixel_target_fpr: float) -> dict:
    """The ``calibration`` record of ``map_metrics.json`` from the normal scans: ``scan_scores`` (n,) one per
    normal scan (NaN: no scan score, not calibrated on), ``pixels`` their stitched maps' covered pixels
    (any shape). Keys: ``scan_threshold`` (None with ``scan_threshold_reason``), ``scan_target_fpr``,
    ``scan_rank``, ``n_normal_scans``, ``n_normal_scans_scored``, ``n_normal_scans_needed``,
    ``pixel_threshold`` (None with ``pixel_threshold_reason``), ``pixel_target_fpr``, ``scan_source``,
    ``rule``."""
    scores = np.asarray(scan_scores, np.float64).ravel()
    scan = calibrate(scores, scan_target_fpr, "scan scores of normal scans")
    pixel = calibrate(pixels, pixel_target_fpr, "map pixels of normal scans")
    out = {"scan_threshold": scan["threshold"], "scan_target_fpr": scan_target_fpr, "scan_rank": scan["rank"],
           "n_normal_scans": int(scores.size), "n_normal_scans_scored": scan["n_calibration"],
           "n_normal_scans_needed": min_calibration(scan_target_fpr),
           "pixel_threshold": pixel["threshold"], "pixel_target_fpr": pixel_target_fpr,
           "scan_source": (f"{scan['n_calibration']} normal scans of data.normal_path, stitched and scored as the "
                           "test scans"),
           "rule": scan["rule"]}
    if "reason" in scan:
        out["scan_threshold_reason"] = scan["reason"] + "; scan_flagged flags no scan"
    if "reason" in pixel:
        out["pixel_threshold_reason"] = pixel["reason"]
    return out


def scan_metrics(labels, scores: dict[str, np.ndarray], left_out: dict[str, str], called=None,
                 threshold: float | None = None) -> dict:
    """Scan-level AUROC and AUPRC of each of ``scores`` ({name: (N,) float, NaN where a scan has no such
    score}) against ``labels`` (N,) (1: the scan's mask holds a pixel). Per name: ``<name>_auroc``,
    ``<name>_auprc`` (None with ``<name>_reason`` when the scored scans hold one class), ``<name>_n_left_out``
    (scans without the score, left out of both) with ``<name>_left_out_reason`` (``left_out[name]``) when
    any, ``<name>_degenerate`` (bool; with ``<name>_degenerate_reason`` when the score is constant over the
    scored scans). With ``called`` (N,) bool (the flag; False where a scan has no flag) and its
    ``threshold``: ``at_flag`` (the rates of the flag over the scans of the first score that have it)."""
    labels = np.asarray(labels, int)
    out: dict = {"n_abnormal": int(labels.sum()), "n_normal": int(labels.size - labels.sum())}
    for name, values in scores.items():
        values = np.asarray(values, np.float64)
        keep = np.isfinite(values)
        y, v = labels[keep], values[keep]
        out[f"{name}_n_left_out"] = int((~keep).sum())
        if not keep.all():
            out[f"{name}_left_out_reason"] = left_out[name]
        reason = None if 0 < y.sum() < y.size else (
            f"undefined: {int(y.sum())} abnormal of {y.size} scored scans with masks; AUROC needs both")
        out[f"{name}_auroc"] = None if reason else auroc(torch.from_numpy(v), torch.from_numpy(y))
        out[f"{name}_auprc"] = None if reason else average_precision(v, y)[0]
        if reason:
            out[f"{name}_reason"] = reason
        constant = degenerate(v, "scored scans")
        out[f"{name}_degenerate"] = constant is not None
        if constant:
            out[f"{name}_degenerate_reason"] = constant
    if called is not None:
        first = np.isfinite(np.asarray(next(iter(scores.values())), np.float64))
        found = rates(np.asarray(called, bool)[first], labels[first])
        out["at_flag"] = {"threshold": threshold, "n_scans": int(first.sum()),
                          **pick_rates(found, ("sensitivity", "specificity", "precision"))}
    return out
