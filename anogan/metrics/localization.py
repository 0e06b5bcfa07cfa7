"""Detection and localisation metrics beyond AUROC, and the rates at an operating point.

Pure functions of scores, anomaly maps and masks (no Lightning), used by ``AnomalyMetrics`` (patch maps,
``metrics.json``) and ``ScanMaps`` (stitched maps, ``map_metrics.json``). Every metric returns
``(value, reason)``: ``value`` is None with the ``reason`` where the data leave it undefined, never 0.

* AUPRC: average precision, sum_n (R_n - R_{n-1}) P_n over the thresholds (scikit-learn's
  ``average_precision_score``; torchmetrics' ``BinaryAveragePrecision``); its chance level is the
  fraction of positives.
* F1-max: the maximum over thresholds of F1 = 2 P R / (P + R), and the threshold that reaches it. On
  pixels this is the **best Dice** (Dice = F1 of the thresholded map, pooled over all test pixels):
  Baur et al., "Autoencoders for unsupervised anomaly segmentation in brain MR images: a comparative
  study", MedIA 69, 2021 (their [Dice] upper bound).
* AUPRO: the area under the per-region-overlap curve up to a false-positive rate ``fpr_limit`` (0.3),
  divided by ``fpr_limit``, so 1.0 is perfect: Bergmann et al., "The MVTec anomaly detection dataset",
  IJCV 129, 2021, sec. 5.2 (and their evaluation code). The regions are the connected components of the
  masks (8-connectivity, ``scipy.ndimage.label``), per image; at a threshold t, PRO(t) is the mean over
  all regions of the fraction of the region's pixels with map >= t, and FPR(t) the fraction of normal
  pixels (mask 0) with map >= t (over the pixels a stitched map defines: ``covered_pixels``); the curve
  (FPR, PRO) starts at (0, 0) and is integrated with the trapezoid rule, linearly interpolated at ``fpr_limit``.

Exact by default: every distinct value is a threshold. ``thresholds=n`` evaluates the curves at n
evenly spaced thresholds over ``[low, high]`` instead (bounded time and memory for large images); then
best Dice is a lower bound of the exact one (the maximum over a subset of thresholds) and AUPRC, AUPRO
come from the coarser curves; a map value between two grid thresholds is ranked with the grid point
below it, so the error shrinks with the bin width (high - low) / (n - 1). ``tests/test_localization.py``
holds both against independent computations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Result = tuple[float | None, str | None]

FPR_LIMIT = 0.3


def _grid(thresholds: int | None, low: float, high: float) -> torch.Tensor | None:
    if thresholds is None:
        return None
    if int(thresholds) != thresholds or thresholds < 2:
        raise ValueError(f"thresholds={thresholds} must be None (exact) or an integer >= 2")
    return torch.linspace(low, high, int(thresholds), dtype=torch.float64)


def _both_classes(labels: np.ndarray, what: str, metric: str) -> str | None:
    pos = int(labels.sum())
    if pos == 0 or pos == labels.size:
        return f"undefined: the {what} hold {pos} anomalous of {labels.size}, and {metric} needs both classes"
    return None


def _as_arrays(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(np.asarray(scores, np.float64)).flatten()
    y = torch.as_tensor(np.asarray(labels)).flatten().long()
    if s.shape != y.shape:
        raise ValueError(f"{s.numel()} scores but {y.numel()} labels")
    return s, y


def average_precision(scores, labels, thresholds: int | None = None, low: float = 0.0, high: float = 1.0,
                      what: str = "labels") -> Result:
    """AUPRC (average precision) of raw ``scores`` (higher = more anomalous) against 0/1 ``labels``
    (any equal shapes; torchmetrics, no sigmoid). ``thresholds``: None exact, n binned over [low, high]."""
    from torchmetrics.classification import BinaryAveragePrecision

    s, y = _as_arrays(scores, labels)
    reason = _both_classes(y.numpy(), what, "AUPRC")
    if reason:
        return None, reason
    metric = BinaryAveragePrecision(thresholds=_grid(thresholds, low, high), normalization=None)
    return float(metric(s, y)), None


def f1_max(scores, labels, thresholds: int | None = None, low: float = 0.0, high: float = 1.0,
           what: str = "labels") -> tuple[float | None, float | None, str | None]:
    """(max F1 over thresholds, its threshold, reason): an item is positive when its score >= the
    threshold. On pixels (maps against masks) this is the best Dice. None with the reason when the labels
    hold no positive (F1 is 0 at every threshold, which says nothing) or no negative."""
    from torchmetrics.classification import BinaryPrecisionRecallCurve

    s, y = _as_arrays(scores, labels)
    reason = _both_classes(y.numpy(), what, "F1 / Dice")
    if reason:
        return None, None, reason
    curve = BinaryPrecisionRecallCurve(thresholds=_grid(thresholds, low, high), normalization=None)
    precision, recall, thr = curve(s, y)
    thr = thr.reshape(-1)  # torchmetrics returns a 0-d tensor when the scores hold one value
    precision, recall = precision[: len(thr)].double(), recall[: len(thr)].double()  # drop the (R 0, P 1) end
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros(()))
    best = int(torch.argmax(f1))
    # the curve's own threshold (float64, a score of the data when exact): ``scores >= it`` gives F1 f1[best]
    return float(f1[best]), float(thr[best]), None


def rates(called, labels) -> dict[str, float | str | None]:
    """Sensitivity, specificity, precision and F1 (Dice on pixels) of the decisions ``called`` (bool, True =
    called anomalous) against 0/1 ``labels`` (equal shapes); each None where its denominator is 0, with
    ``<key>_reason`` saying why (no positive, no negative, nothing called). With a conformal threshold t,
    ``called = anogan.metrics.conformal.above(scores, t)``."""
    pred = torch.as_tensor(np.asarray(called, bool)).flatten()
    y = torch.as_tensor(np.asarray(labels)).flatten().long()
    if pred.shape != y.shape:
        raise ValueError(f"{pred.numel()} decisions but {y.numel()} labels")
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    out, why = {}, {
        "sensitivity": (tp, tp + fn, "undefined: no anomalous sample"),
        "specificity": (tn, tn + fp, "undefined: no normal sample"),
        "precision": (tp, tp + fp, "undefined: no sample called anomalous"),
        "f1": (2 * tp, 2 * tp + fp + fn, "undefined: no anomalous sample and none called anomalous"),
    }
    for key, (a, b, reason) in why.items():
        out[key] = a / b if b else None
        if not b:
            out[f"{key}_reason"] = reason
    return out


def pick_rates(rates: dict, keys: Sequence[str]) -> dict:
    """``keys`` of a ``rates`` result, each with its ``<key>_reason`` where it has one."""
    return {k: v for k, v in rates.items() if k in keys or k.removesuffix("_reason") in keys}


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = FPR_LIMIT,
          thresholds: int | None = None, low: float = 0.0, high: float = 1.0) -> Result:
    """AUPRO up to ``fpr_limit`` (MVTec AD), normalised by it: in [0, 1], 1 = every region fully found
    before any normal pixel. ``maps``, ``masks``: per image (H, W) arrays (maps float, masks bool).
    Pixels a map leaves undefined (NaN: no scored patch covers them) are left out: the false-positive
    rate is over the covered normal pixels, a region's overlap over its covered pixels, and a region with
    no covered pixel is left out (``covered_pixels`` counts them). None with the reason when the covered
    pixels hold no anomalous region or no normal pixel. Exact (every distinct value a threshold) or binned."""
    from scipy import ndimage

    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit={fpr_limit} must lie in (0, 1]")
    values, region = [], []
    n_regions = 0
    eight = np.ones((3, 3), int)  # 8-connectivity, as MVTec AD's evaluation code
    for m, t in zip(maps, masks):
        t = np.asarray(t, bool)
        m = np.asarray(m, np.float64)
        if m.shape != t.shape:
            raise ValueError(f"a map of shape {m.shape} and its mask of shape {t.shape} differ")
        lab, k = ndimage.label(t, structure=eight)  # regions of the whole mask, then their covered pixels
        covered = np.isfinite(m)
        values.append(m[covered])
        region.append(np.where(lab > 0, lab + n_regions, 0)[covered])  # 0: normal; r > 0: region r
        n_regions += k
    if not values:
        return None, "undefined: no map"
    values, region = np.concatenate(values), np.concatenate(region)
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)  # covered pixels per region
    n_normal, n_regions = int(sizes[0]), int((sizes[1:] > 0).sum())
    if n_regions == 0:
        return None, (f"undefined: the masks hold no anomalous region on the {values.size} covered pixels, and PRO "
                      "needs one")
    if n_normal == 0:
        return None, ("undefined: the masks hold no normal pixel where the maps are defined, and the false-positive "
                      "rate needs one")
    # each pixel's step in the curve when the threshold falls to its value: a normal pixel moves FPR by
    # 1 / n_normal, a pixel of region r moves PRO by 1 / (n_regions |r|)
    d_fpr = (region == 0) / n_normal
    d_pro = np.where(region > 0, 1.0 / (n_regions * np.maximum(sizes[region], 1.0)), 0.0)
    if thresholds is None:
        order = np.argsort(-values, kind="stable")
        v = values[order]
        last = np.r_[v[1:] != v[:-1], True]  # the last pixel of each group of equal values: one threshold
        fpr, pro = np.cumsum(d_fpr[order])[last], np.cumsum(d_pro[order])[last]
    else:
        grid = _grid(thresholds, low, high).numpy()
        bins = np.clip(np.searchsorted(grid, values, side="right") - 1, -1, len(grid) - 1)  # -1: below the grid
        keep = bins >= 0
        fpr_bin = np.bincount(bins[keep], d_fpr[keep], len(grid))[::-1].cumsum()  # >= grid[j], high to low
        pro_bin = np.bincount(bins[keep], d_pro[keep], len(grid))[::-1].cumsum()
        fpr, pro = np.r_[fpr_bin, 1.0], np.r_[pro_bin, 1.0]  # below the grid everything is called
    fpr, pro = np.r_[0.0, np.clip(fpr, 0, 1)], np.r_[0.0, np.clip(pro, 0, 1)]
    return float(_trapezoid_to(fpr, pro, fpr_limit) / fpr_limit), None


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """The area under the piecewise-linear curve (x ascending, from x[0] = 0) up to x_max, the curve
    linearly interpolated at x_max (as MVTec AD's ``trapezoid(..., x_max)``)."""
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max and inside.sum() < len(x):
        j = int(np.argmax(~inside))  # first point beyond x_max
        y_at = y[j - 1] + (y[j] - y[j - 1]) * (x_max - x[j - 1]) / (x[j] - x[j - 1])
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def window_max(amap: np.ndarray, window: int) -> float | None:
    """The largest mean of ``amap`` (H, W) over a ``window`` x ``window`` square lying wholly on finite
    values (NaN: pixels no patch covers): a region-level score, high only where a lesion-sized area is
    anomalous, not where a thin line of pixels is (layer boundaries that G draws slightly off). None
    when no such square fits."""
    found = window_max_at(amap, window)
    return None if found is None else found[0]


def window_max_at(amap: np.ndarray, window: int) -> tuple[float, tuple[int, int]] | None:
    """``window_max`` and where it is: (value, (y, x)), (y, x) the pixel at the square's centre (for
    an even ``window`` the one below and right of it); the first such square in row-major order on ties.
    None when no square fits. Raises ValueError for a window that is not an integer >= 1."""
    from scipy import ndimage

    if int(window) != window or window < 1:
        raise ValueError(f"window={window} must be an integer >= 1 (pixels)")
    m = np.asarray(amap, np.float64)
    covered = np.isfinite(m)
    if min(m.shape) < window or not covered.any():
        return None
    mean = ndimage.uniform_filter(np.where(covered, m, 0.0), int(window), mode="constant", cval=0.0)
    full = ndimage.uniform_filter(covered.astype(np.float64), int(window), mode="constant", cval=0.0) > 1 - 1e-9
    if not full.any():
        return None
    best = np.where(full, mean, -np.inf)
    y, x = np.unravel_index(int(np.argmax(best)), best.shape)
    return float(best[y, x]), (int(y), int(x))


def covered_pixels(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
    """(values, labels, counts): the map values (float64) and mask labels (bool) of the pixels the maps
    define, flattened over all maps, and ``{"n_pixels", "n_anomalous_pixels", "n_uncovered_pixels",
    "n_uncovered_anomalous_pixels"}``. A stitched map is NaN where no scored patch covers the pixel (the
    foreground test skipped it): such pixels have no score, and every pixel metric leaves them out
    instead of counting them as called normal (which would shrink the false-positive rates by the covered
    share); the counts say how many were left out, anomalous ones included (missed by construction)."""
    values, labels, n, pos, uncovered, uncovered_pos = [], [], 0, 0, 0, 0
    for m, t in zip(maps, masks):
        m, t = np.asarray(m, np.float64), np.asarray(t, bool)
        if m.shape != t.shape:
            raise ValueError(f"a map of shape {m.shape} and its mask of shape {t.shape} differ")
        covered = np.isfinite(m)
        values.append(m[covered])
        labels.append(t[covered])
        n, pos = n + t.size, pos + int(t.sum())
        uncovered, uncovered_pos = uncovered + int((~covered).sum()), uncovered_pos + int((t & ~covered).sum())
    counts = {"n_pixels": n, "n_anomalous_pixels": pos, "n_uncovered_pixels": uncovered,
              "n_uncovered_anomalous_pixels": uncovered_pos}
    if not values:
        return np.zeros(0), np.zeros(0, bool), counts
    return np.concatenate(values), np.concatenate(labels), counts


def pixel_metrics(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], thresholds: int | None = None,
                  low: float = 0.0, high: float = 1.0, fpr_limit: float = FPR_LIMIT,
                  threshold: float | None = None) -> dict:
    """Pixel AUPRC, best Dice (with its threshold) and AUPRO of ``maps`` against ``masks`` (lists of (H, W)),
    pooled over the pixels the maps define (NaN pixels left out, see ``covered_pixels``); with a calibrated
    (conformal) ``threshold`` also the sensitivity, specificity, precision and Dice when map > threshold is
    called anomalous. Keys ``pixel_auprc``, ``pixel_best_dice``, ``pixel_best_dice_threshold``,
    ``pixel_aupro`` (with ``pixel_aupro_fpr_limit``), each None with a ``<key>_reason`` where undefined;
    ``pixel_binned`` says how the curves were evaluated."""
    from anogan.metrics.conformal import above

    flat_maps, flat_masks, _ = covered_pixels(maps, masks)
    out: dict = {}
    value, reason = average_precision(flat_maps, flat_masks, thresholds, low, high, "test masks' covered pixels")
    out["pixel_auprc"] = value
    if reason:
        out["pixel_auprc_reason"] = reason
    dice, at, reason = f1_max(flat_maps, flat_masks, thresholds, low, high, "test masks' covered pixels")
    out["pixel_best_dice"], out["pixel_best_dice_threshold"] = dice, at
    if reason:
        out["pixel_best_dice_reason"] = reason
    value, reason = aupro(maps, masks, fpr_limit, thresholds, low, high)
    out["pixel_aupro"], out["pixel_aupro_fpr_limit"] = value, fpr_limit
    if reason:
        out["pixel_aupro_reason"] = reason
    out["pixel_binned"] = ("exact: every distinct map value is a threshold" if thresholds is None else
                           f"binned: {int(thresholds)} thresholds evenly spaced over [{low:g}, {high:g}] (bin width "
                           f"{(high - low) / (int(thresholds) - 1):.3g}); best Dice is a lower bound of the exact one")
    if threshold is not None and flat_maps.size:
        found = rates(above(flat_maps, threshold), flat_masks)
        if "f1_reason" in found:
            found["dice_reason"] = found.pop("f1_reason")
        out["pixel_at_calibrated"] = {"threshold": threshold, "dice": found.pop("f1"), **found}
    return out


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict:
    """The AUROC of stitched maps against their masks over the pixels the maps define (torchmetrics,
    ``normalization=None``; pixels no scored patch covers are left out, ``covered_pixels``). Returns
    ``{"pixel_auroc": float or None, "reason"?, "n_pixels", "n_anomalous_pixels", "n_uncovered_pixels",
    "n_uncovered_anomalous_pixels"}``: None when the covered pixels hold one class only."""
    from torchmetrics.classification import BinaryAUROC

    values, labels, counts = covered_pixels(maps, masks)
    pos = int(labels.sum())
    if pos == 0 or pos == labels.size:
        return {"pixel_auroc": None, "reason": (f"the masks hold {pos} anomalous of the {labels.size} covered pixels: "
                                                "AUROC needs both"), **counts}
    metric = BinaryAUROC(normalization=None, sync_on_compute=False)  # the caller holds every pixel (DDP: rank 0)
    return {"pixel_auroc": float(metric(torch.from_numpy(values), torch.from_numpy(labels).long())), **counts}
