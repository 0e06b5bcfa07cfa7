"""The localisation and detection metrics of anogan.metrics.localization against independent computations:
scikit-learn's average precision, a brute-force Dice over every threshold, hand-made AUPRO cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from anogan.metrics.localization import (
    aupro,
    average_precision,
    f1_max,
    pick_rates,
    pixel_metrics,
    rates,
)


def _maps(seed: int = 0, n: int = 6, size: int = 16):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    masks[0, 3:7, 4:9] = True
    masks[2, 10:14, 1:3] = True
    masks[2, 1:3, 12:15] = True
    maps = rng.random((n, size, size)) + 0.8 * masks + rng.random((n, size, size)) * masks
    return np.round(maps, 2), masks  # rounded: many ties, which every threshold convention must handle


def brute_force_dice(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    best = (-1.0, None)
    for t in np.unique(scores):
        pred = scores >= t
        dice = 2 * np.sum(pred & labels) / (pred.sum() + labels.sum())
        if dice > best[0]:
            best = (dice, t)
    return best


def test_average_precision_matches_scikit_learn_on_images_and_pixels():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1) * 7.5  # ties, values far outside [0, 1]
    want = average_precision_score(labels, scores)
    assert average_precision(scores, labels)[0] == pytest.approx(want, abs=1e-6)  # torchmetrics: float32
    maps, masks = _maps()
    got = pixel_metrics(list(maps), list(masks))["pixel_auprc"]
    assert got == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-6)


def test_best_dice_matches_a_brute_force_search_over_every_threshold():
    maps, masks = _maps(2)
    want, at = brute_force_dice(maps.ravel(), masks.ravel())
    out = pixel_metrics(list(maps), list(masks))
    assert out["pixel_best_dice"] == pytest.approx(want, abs=1e-6)  # torchmetrics counts in float32
    assert out["pixel_best_dice_threshold"] == at  # a value of the map: thresholding there gives that Dice
    # F1-max of image scores is the same search
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50).astype(bool)
    s = np.round(rng.normal(size=50) + y, 1)
    f1, thr, _ = f1_max(s, y)
    assert (f1, thr) == pytest.approx(brute_force_dice(s, y), abs=1e-6)
    # binned: a lower bound of the exact value, close with a fine grid
    binned = pixel_metrics(list(maps), list(masks), thresholds=2001, low=0, high=2)
    assert binned["pixel_best_dice"] <= want + 1e-6 and binned["pixel_best_dice"] == pytest.approx(want, abs=1e-3)
    assert binned["pixel_auprc"] == pytest.approx(out["pixel_auprc"], abs=5e-3)
    assert binned["pixel_aupro"] == pytest.approx(out["pixel_aupro"], abs=5e-3)


def test_aupro_of_hand_made_cases():
    size = 20
    mask = np.zeros((size, size), bool)
    mask[2:6, 2:6] = True
    found = np.where(mask, 1.0, 0.0) + np.linspace(0, 0.5, size * size).reshape(size, size) * ~mask
    # one region, above every normal pixel: PRO 1 from FPR 0 on
    assert aupro([found], [mask])[0] == pytest.approx(1.0)
    # two regions (in two images), one above every normal pixel, the other below all: PRO 0.5 up to FPR 1
    other = np.zeros((size, size), bool)
    other[10:13, 10:16] = True
    missed = np.linspace(0.1, 0.5, size * size).reshape(size, size)
    missed[other] = 0.0
    assert aupro([found, missed], [mask, other])[0] == pytest.approx(0.5)
    # a region half found at FPR 0: PRO 0.5 (regions weigh equally whatever their size: mean of overlaps)
    half = found.copy()
    half[2:4, 2:6] = -1.0
    assert aupro([half], [mask])[0] == pytest.approx(0.5, abs=1e-9)
    # no positives, or no normal pixel: null with the reason
    value, reason = aupro([found], [np.zeros_like(mask)])
    assert value is None and "no anomalous region" in reason
    value, reason = aupro([found], [np.ones_like(mask)])
    assert value is None and "no normal pixel" in reason


def test_aupro_integrates_the_pro_curve_up_to_the_fpr_limit():
    """Against a direct evaluation of the curve at every threshold (a loop) and numpy's trapezoid."""
    from scipy import ndimage

    maps, masks = _maps(4)
    limit = 0.3
    labels = [ndimage.label(t, structure=np.ones((3, 3)))[0] for t in masks]
    regions = [(i, r) for i, lab in enumerate(labels) for r in range(1, lab.max() + 1)]
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = float(np.mean(normal >= t))
        pro = float(np.mean([np.mean(maps[i][labels[i] == r] >= t) for i, r in regions]))
        points.append((fpr, pro))
    x, y = np.array(points).T
    grid = np.r_[x[x < limit], limit]
    want = np.trapezoid(np.interp(grid, x, y), grid) / limit
    assert aupro(list(maps), list(masks), limit)[0] == pytest.approx(want, abs=1e-9)


def test_undefined_metrics_are_null_with_their_reason():
    maps, masks = _maps()
    out = pixel_metrics(list(maps), list(np.zeros_like(masks)))
    for key in ("pixel_auprc", "pixel_best_dice", "pixel_aupro"):
        assert out[key] is None and "anomalous" in out[f"{key}_reason"]
    assert average_precision([0.1, 0.2], [1, 1])[0] is None


def test_rates_count_the_decisions_and_name_what_leaves_them_undefined():
    r = rates(np.array([0.1, 0.5, 0.5, 0.9]) >= 0.5, [0, 0, 1, 1])
    assert r == {"sensitivity": 1.0, "specificity": 0.5, "precision": 2 / 3, "f1": 0.8}
    none = rates(np.array([0.1, 0.2]) > 0.5, [0, 0])  # no anomalous sample, nothing called anomalous
    assert none["sensitivity"] is None and none["sensitivity_reason"] == "undefined: no anomalous sample"
    assert none["precision"] is None and "no sample called anomalous" in none["precision_reason"]
    assert none["specificity"] == 1.0 and "specificity_reason" not in none
    assert pick_rates(none, ("precision", "specificity")) == {
        "specificity": 1.0, "precision": None, "precision_reason": none["precision_reason"]}
    with pytest.raises(ValueError, match="3 decisions but 2 labels"):
        rates([True, False, True], [0, 1])


def test_f1_max_threshold_is_the_best_threshold_itself_and_gives_that_f1():
    """Scores a float32 cannot tell apart: the threshold of F1-max 1.0 is 300.00001, not 300 (F1 0.8 there)."""
    s, y = np.array([300.0, 300.00001, 300.00002, 299.0]), np.array([0, 1, 1, 0])
    f1, thr, _ = f1_max(s, y)
    assert f1 == 1.0 and thr == 300.00001
    assert rates(s >= thr, y)["f1"] == 1.0


def test_pixel_metrics_leave_uncovered_pixels_out():
    """A stitched map with a quarter of its pixels uncovered (NaN): AUPRO, AUPRC, Dice and the rates at a
    threshold are those of the covered part alone, not those of a map whose NaN pixels count as normal
    pixels never called anomalous (which stretches the FPR limit to 0.3 / 0.75)."""
    rng = np.random.default_rng(5)
    masks = np.zeros((4, 20, 20), bool)
    masks[0, 3:7, 4:9] = masks[1, 12:16, 2:6] = masks[2, 5:9, 10:14] = True
    maps = rng.random((4, 20, 20)) + 0.4 * masks
    holed = maps.copy()
    holed[:, :, 15:] = np.nan  # 25 % of the pixels
    covered = [m[:, :15] for m in maps], [t[:, :15] for t in masks]
    got = pixel_metrics(list(holed), list(masks), threshold=0.9)
    want = pixel_metrics(*covered, threshold=0.9)
    for key in ("pixel_auprc", "pixel_best_dice", "pixel_aupro"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["pixel_at_calibrated"] == want["pixel_at_calibrated"]
    # before: the NaN pixels ranked lowest, as normal pixels never called anomalous, which shrinks every FPR
    lowest = list(np.where(np.isnan(holed), -1.0, holed))
    assert got["pixel_aupro"] < aupro(lowest, list(masks))[0] - 0.02
    assert got["pixel_at_calibrated"]["specificity"] < rates(np.stack(lowest) > 0.9, masks)["specificity"] - 0.005
    # a region partly under the hole counts its covered pixels; one wholly under it is left out
    masks[3, 8:12, 12:18] = True
    masks[3, 0:4, 16:20] = True
    assert aupro(list(holed), list(masks))[0] == pytest.approx(
        aupro([m[:, :15] for m in maps], [t[:, :15] for t in masks])[0], abs=1e-12)


def test_constant_scores_give_one_threshold_and_chance_level_metrics():
    f1, thr, _ = f1_max(np.ones(6), [0, 0, 0, 1, 1, 0])
    assert (f1, thr) == pytest.approx((2 * 2 / (6 + 2), 1.0))
    assert average_precision(np.ones(6), [0, 0, 0, 1, 1, 0])[0] == pytest.approx(2 / 6)


def test_window_max_is_the_largest_mean_over_a_wholly_covered_square():
    from anogan.metrics.localization import window_max

    m = np.zeros((12, 12))
    m[5, :] = 3.0  # a thin line: its 3x3 means are 1.0
    m[1:4, 8:11] = 2.0  # a 3x3 blob: mean 2.0
    assert window_max(m, 3) == pytest.approx(2.0)
    assert window_max(m, 1) == pytest.approx(3.0)
    covered = m.copy()
    covered[0:5, 7:12] = np.nan  # the blob's area uncovered: the line is left
    assert window_max(covered, 3) == pytest.approx(1.0)
    brute = max(m[i : i + 4, j : j + 4].mean() for i in range(9) for j in range(9))
    assert window_max(m, 4) == pytest.approx(brute)
    assert window_max(np.full((2, 2), np.nan), 1) is None and window_max(np.ones((2, 5)), 3) is None
