"""Thresholds with a finite-sample false-positive guarantee, and p-values, from n normal scores.

Split conformal prediction (Vovk et al., "Algorithmic Learning in a Random World", 2005; Angelopoulos &
Bates, "A Gentle Introduction to Conformal Prediction", 2021, sec. 1): if the n calibration scores and
a new normal image's score are exchangeable (drawn from the same distribution, in any order), then with
k = ceil((n + 1)(1 - alpha)) and t the k-th smallest calibration score,

    P(s_new > t) <= alpha                         (for every n, whatever the distribution)

and p(s) = (1 + #{calibration scores >= s}) / (n + 1) is a valid p-value: P(p(s_new) <= a) <= a for a
new normal s_new. The flag "s > t" is the same decision as "p(s) <= alpha" (for continuous scores).

The (1 - alpha) quantile with linear interpolation (``numpy.quantile``) does not keep this promise for
small n: its expected false-positive rate on new normal data is about (alpha n + 1 - alpha) / (n + 1),
11.9 % at n = 12 for alpha = 0.05.

numpy only (no torch): ``python -m anogan.score_onnx`` uses it where torch is not installed.
"""

from __future__ import annotations

import math

import numpy as np


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)), the rank (1-based, from the smallest) of the conformal threshold
    among n calibration scores; k > n means no finite threshold keeps the guarantee. ``alpha`` in (0, 1).
    (A tiny tolerance keeps k exact where (n + 1)(1 - alpha) is an integer up to rounding.)"""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: expected a false-positive rate in (0, 1)")
    return math.ceil((n + 1) * (1 - alpha) - 1e-9)


def min_calibration(alpha: float) -> int:
    """The smallest n for which the conformal threshold is finite: n >= 1 / alpha - 1 (19 at 0.05)."""
    return math.ceil(1 / alpha - 1 - 1e-9)


def conformal_threshold(normal_scores, alpha: float, what: str = "normal scores") -> tuple[float | None, str | None]:
    """(threshold, reason): the k-th smallest of ``normal_scores`` (any shape, flattened; NaN dropped),
    k = ``conformal_rank(n, alpha)``, so that a new normal score exceeds it with probability <= alpha.
    (None, reason) when there are no scores, or too few for alpha (n < 1 / alpha - 1): the reason names
    how many are needed. ``what`` names the scores in the reason."""
    values = np.asarray(normal_scores, np.float64).ravel()
    values = values[np.isfinite(values)]
    n = values.size
    if n == 0:
        return None, f"no {what} to calibrate on"
    k = conformal_rank(n, alpha)
    if k > n:
        return None, (f"{n} {what} are too few for a false-positive rate of {alpha:g} with a finite-sample "
                      f"guarantee: it needs at least {min_calibration(alpha)}")
    return float(np.partition(values, k - 1)[k - 1]), None


def p_values(normal_scores, scores) -> np.ndarray:
    """p(s) = (1 + #{normal >= s}) / (n + 1) for each of ``scores`` (any shape; float64 of that shape), in
    [1 / (n + 1), 1]: small where s is higher than the normal scores. NaN where s is NaN, or where there
    are no normal scores (undefined). Higher score = more anomalous."""
    normal = np.sort(np.asarray(normal_scores, np.float64).ravel())
    normal = normal[np.isfinite(normal)]
    scores = np.asarray(scores, np.float64)
    n = normal.size
    if n == 0:
        return np.full(scores.shape, np.nan)
    at_least = n - np.searchsorted(normal, scores, side="left")  # #{normal >= s}
    return np.where(np.isnan(scores), np.nan, (1.0 + at_least) / (n + 1.0))


def above(scores, threshold: float | None) -> np.ndarray:
    """The flag of the conformal threshold: s > ``threshold`` (bool, the shape of ``scores``), the same
    decision as ``p_values(normal, s) <= alpha``. A None threshold (too few normal scores for alpha) flags
    nothing: no p-value can then reach alpha (the smallest is 1 / (n + 1) > alpha). NaN scores are not
    flagged."""
    scores = np.asarray(scores, np.float64)
    if threshold is None:
        return np.zeros(scores.shape, bool)
    return scores > threshold


def leave_one_out_p_values(normal_scores) -> np.ndarray:
    """The p-value of each normal score against the other n - 1 (float64 (n,)): #{normal >= s_i} / n, itself
    left out of the count; the p-value it would have had as a new item scored against the rest, valid under
    the same exchangeability (against all n, itself included, none could fall below 2 / (n + 1)). NaN where
    a score is NaN, and everywhere with fewer than 2 finite normal scores."""
    normal = np.asarray(normal_scores, np.float64).ravel()
    finite = np.sort(normal[np.isfinite(normal)])
    n = finite.size
    if n < 2:
        return np.full(normal.shape, np.nan)
    at_least = n - np.searchsorted(finite, normal, side="left")  # itself included
    return np.where(np.isfinite(normal), at_least / n, np.nan)


def calibrate(normal_scores, alpha: float, what: str) -> dict:
    """The record of one conformal threshold, as written to metrics.json and map_metrics.json:
    ``target_fpr`` (alpha), ``threshold`` (None with ``reason`` when there are too few scores),
    ``n_calibration`` (the finite normal scores), ``rank`` (k, or None without a finite threshold),
    ``calibrated_on`` (``what``), ``rule``. ``what`` names the scores (plural, e.g. "scan scores of
    normal scans")."""
    values = np.asarray(normal_scores, np.float64).ravel()
    n = int(np.isfinite(values).sum())
    threshold, reason = conformal_threshold(values, alpha, what)
    out = {"target_fpr": alpha, "threshold": threshold, "n_calibration": n,
           "rank": conformal_rank(n, alpha) if threshold is not None else None, "calibrated_on": f"{n} {what}",
           "rule": ("conformal: the rank-th smallest of the n_calibration normal scores, rank = ceil((n + 1)(1 - "
                    "target_fpr)); a score above it is flagged (p-value <= target_fpr), so that a new normal item "
                    "is flagged with probability <= target_fpr when it and the normal items are exchangeable")}
    return out if threshold is not None else {**out, "reason": reason}
