"""Conformal thresholds and p-values (anogan.metrics.conformal): the false-positive guarantee for every n."""

from __future__ import annotations

import numpy as np
import pytest

from anogan.metrics.conformal import (
    above,
    calibrate,
    conformal_rank,
    conformal_threshold,
    leave_one_out_p_values,
    min_calibration,
    p_values,
)

ALPHA = 0.05


def _mean_fpr(n: int, threshold_of, draws: int = 40000, fresh: int = 64, rng=None, dist: str = "uniform") -> float:
    """Mean over ``draws`` calibration sets of n normal scores of the share of ``fresh`` new normal scores
    called anomalous (s > threshold)."""
    rng = rng or np.random.default_rng(0)
    sample = rng.random if dist == "uniform" else rng.standard_normal
    calib, new = sample((draws, n)), sample((draws, fresh))
    thresholds = np.array([threshold_of(c) for c in calib])
    return float((new > thresholds[:, None]).mean())


@pytest.mark.parametrize("dist", ["uniform", "normal"])
@pytest.mark.parametrize("n", [12, 20, 40, 256])
def test_the_conformal_threshold_keeps_the_false_positive_rate_at_most_alpha(n, dist):
    """n = 12 < 1 / alpha - 1: no finite threshold keeps the guarantee, so nothing is flagged (rate 0)."""
    draws = 40000 if n < 100 else 4000
    def threshold(c):
        t, _ = conformal_threshold(c, ALPHA)
        return np.inf if t is None else t

    fpr = _mean_fpr(n, threshold, draws=draws, dist=dist)
    exact = max(n + 1 - conformal_rank(n, ALPHA), 0) / (n + 1)  # P(rank of the new score among n + 1 > k)
    se = np.sqrt(exact * (1 - exact) / (draws * 8))  # fresh scores of one set are correlated: a wide margin
    assert exact <= ALPHA
    assert fpr <= ALPHA + 4 * se and abs(fpr - exact) < 4 * se + 1e-3, (fpr, exact)


@pytest.mark.parametrize("n, expected", [(12, 0.119), (20, 0.093)])
def test_the_interpolated_quantile_does_not_keep_it_at_small_n(n, expected):
    fpr = _mean_fpr(n, lambda c: np.quantile(c, 1 - ALPHA))
    assert fpr > ALPHA + 0.03 and abs(fpr - expected) < 0.005, fpr  # (alpha n + 1 - alpha) / (n + 1)


def test_too_few_normal_scores_give_no_threshold_and_say_how_many_are_needed():
    threshold, reason = conformal_threshold(np.arange(12.0), ALPHA, "scan scores of normal scans")
    assert threshold is None and "12 scan scores of normal scans" in reason and "at least 19" in reason
    assert min_calibration(ALPHA) == 19 and conformal_threshold(np.arange(19.0), ALPHA) == (18.0, None)
    assert conformal_threshold([], ALPHA) == (None, "no normal scores to calibrate on")
    assert conformal_threshold(np.arange(256.0), ALPHA)[0] == 244.0  # k = ceil(257 * 0.95) = 245
    with pytest.raises(ValueError, match="alpha=0"):
        conformal_rank(10, 0.0)


def test_p_values_count_the_normal_scores_at_or_above():
    normal = [1.0, 2.0, 2.0, 3.0]
    p = p_values(normal, [0.5, 2.0, 2.5, 3.0, 9.0, np.nan])
    np.testing.assert_allclose(p[:5], [5 / 5, 4 / 5, 2 / 5, 2 / 5, 1 / 5])
    assert np.isnan(p[5]) and np.isnan(p_values([], [1.0])).all()


def test_p_values_of_new_normal_scores_are_valid_and_match_the_threshold():
    rng = np.random.default_rng(1)
    calib, new = rng.random((20000, 20)), rng.random((20000, 1))
    p = np.array([p_values(c, s)[0] for c, s in zip(calib, new)])
    for a in (0.05, 0.1, 0.25):
        assert (p <= a).mean() <= a + 0.006
    c = calib[0]
    t, _ = conformal_threshold(c, ALPHA)
    s = np.concatenate([c, rng.random(500)])
    np.testing.assert_array_equal(s > t, p_values(c, s) <= ALPHA)  # flag = p-value at most alpha


@pytest.mark.parametrize("n", [19, 20, 40, 256])
def test_the_flag_above_the_threshold_is_the_p_value_at_most_alpha(n):
    rng = np.random.default_rng(n)
    normal, new = rng.random(n), rng.random(2000)
    t, _ = conformal_threshold(normal, ALPHA)
    np.testing.assert_array_equal(above(new, t), p_values(normal, new) <= ALPHA)
    np.testing.assert_array_equal(above(normal, t), p_values(normal, normal) <= ALPHA)  # ties at t: not flagged
    assert not above(new, None).any() and not above([np.nan], t).any()


def test_leave_one_out_p_values_score_each_normal_item_against_the_others():
    normal = np.array([3.0, 1.0, 2.0, 2.0, np.nan])
    want = [p_values(np.delete(normal[:4], i), normal[i]) for i in range(4)]
    np.testing.assert_allclose(leave_one_out_p_values(normal)[:4], want)
    assert np.isnan(leave_one_out_p_values(normal)[4]) and np.isnan(leave_one_out_p_values([1.0])).all()


def test_the_calibration_record_names_the_rule_the_count_and_the_reason():
    record = calibrate(np.arange(40.0), ALPHA, "scan scores of normal scans")
    assert (record["threshold"], record["rank"], record["n_calibration"]) == (38.0, 39, 40)
    assert record["calibrated_on"] == "40 scan scores of normal scans" and "exchangeable" in record["rule"]
    few = calibrate(np.r_[np.arange(12.0), np.nan], ALPHA, "scan scores of normal scans")
    assert few["threshold"] is None and few["rank"] is None and few["n_calibration"] == 12
    assert "at least 19" in few["reason"]
