"""Image-level detection metrics of the paper's evaluation: AUROC of raw scores, the table row at the
ROC's maximal Youden index (the paper's operating point), the operating point calibrated on normal
validation images without test labels (a conformal threshold, ``anogan.metrics.conformal``), the name of
a score that carries no information (constant over the test set), and the pixel AUROC metric of residual
maps.

Scores are unbounded (a residual is a sum over pixels), and torchmetrics' binary curves squash any
input outside [0, 1] with a sigmoid by default, which saturates to 1.0 and turns the AUROC into 0.5.
Every metric here is built with ``normalization=None`` so that it ranks the raw scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.classification import BinaryAUROC, BinaryROC
from torchmetrics.functional.classification import binary_stat_scores

from anogan.metrics import localization as LZ
from anogan.metrics.conformal import above, calibrate

YOUDEN = "test labels: maximal Youden index on the test set (the paper's operating point; optimistic)"


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC of raw scores (higher = more anomalous) against labels (1 = anomalous)."""
    metric = BinaryAUROC(normalization=None)
    return float(metric(scores.double(), labels.long()))


def degenerate(scores, what: str = "test images") -> str | None:
    """Why a score says nothing about these items, or None: it is constant over them (every one scores
    the same value, e.g. an f-AnoGAN latent score of 0 from an encoder whose tanh saturated). Its AUROC is
    then 0.5 and its thresholds call all or none of them: numbers of the ties, not of the score's merit.
    NaN scores are ignored."""
    values = np.asarray(scores, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < 2 or values.min() < values.max():
        return None
    return (f"constant: every one of the {values.size} {what} scores {values[0]:.6g}, so it ranks nothing "
            "(AUROC 0.5 from ties) and its thresholds call all or none; check the model that produced it")


def operating_point(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The paper's table row for one score: AUROC, and at the threshold of maximal Youden index
    (sensitivity + specificity - 1) the threshold, precision, recall, sensitivity, specificity; beside
    it AUPRC, F1-max and ``degenerate`` (bool; with ``degenerate_reason`` when the score is constant over
    the test images, ``degenerate``). An image is called anomalous when its score >= threshold."""
    scores, labels = scores.double(), labels.long()
    fpr, tpr, thresholds = BinaryROC(normalization=None)(scores, labels)
    # the first point of the curve is the "nothing is anomalous" corner, with a sentinel threshold
    youden = (tpr - fpr)[1:]
    best = int(torch.argmax(youden)) + 1
    threshold = float(thresholds[best])
    tp, fp, tn, fn, _ = binary_stat_scores((scores >= threshold).long(), labels).tolist()
    auprc, _ = LZ.average_precision(scores, labels)
    f1, f1_threshold, _ = LZ.f1_max(scores, labels)
    constant = degenerate(scores.numpy())
    return {
        "auroc": auroc(scores, labels),
        "threshold": threshold,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "sensitivity": tp / (tp + fn) if tp + fn else 0.0,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "threshold_chosen_on": YOUDEN,
        "auprc": auprc,
        "f1_max": f1,
        "f1_max_threshold": f1_threshold,
        "degenerate": constant is not None,
        **({"degenerate_reason": constant} if constant else {}),
    }


def calibrated_point(scores: torch.Tensor, labels: torch.Tensor, normal: torch.Tensor, target_fpr: float,
                     what: str) -> dict:
    """The operating point chosen without test labels: the conformal threshold at false-positive rate
    ``target_fpr`` of the scores ``normal`` (N,) of normal validation images
    (``anogan.metrics.conformal.calibrate``: its record, ``what`` naming them), and the test's
    sensitivity, specificity and precision when score > threshold is called anomalous (None where
    undefined). Without a threshold (no validation image, or fewer than 1 / target_fpr - 1 of them) the
    record has its ``reason`` and no rates."""
    out = calibrate(normal.double().numpy(), target_fpr, what)
    if out["threshold"] is None:
        return out
    found = LZ.rates(above(scores.double().numpy(), out["threshold"]), labels.numpy())
    return {**out, **LZ.pick_rates(found, ("sensitivity", "specificity", "precision"))}


def pixel_auroc_metric(channels: int, thresholds: int | None = None) -> BinaryAUROC:
    """The pixel-level AUROC of residual maps x_R = |x - G(z)| summed over ``channels`` C of [-1, 1]
    images, values in [0, 2C]: exact (``thresholds`` None, memory grows with the pixels), or binned at
    ``thresholds`` evenly spaced thresholds over [0, 2C] (constant memory), not over torchmetrics'
    default [0, 1], where most of a map's range would fall into the last bin."""
    grid = None if thresholds is None else torch.linspace(0, 2 * channels, int(thresholds), dtype=torch.float64)
    return BinaryAUROC(thresholds=grid, normalization=None)
