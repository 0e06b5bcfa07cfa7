"""Failed mappings, made visible by mapping each image from several starts (``inversion.restarts``).

The mapping (paper sec. 2.2) is gradient descent on z from one random z_1; G is not invertible and the
loss ``(1 - lam) L_R + lam L_D`` has local minima, so a mapping can end where G draws the image badly
(e.g. a retinal boundary in the wrong place) although another z draws it well. Such a failure cannot be
told from an anomaly by its loss alone: both end high. It can be told by mapping the same image from
other starts: when another start ends clearly lower, the first one failed. With R starts per image
(``anogan.models.inversion.best_start`` keeps the lowest), this module counts the images whose first
start, the one the paper's single-start mapping uses, ended more than ``tol`` (relative) above their
best start: an estimate of how often the single-start mapping fails, per split and label.
"""

from __future__ import annotations

import numpy as np

FAILURE_TOL = 0.1  # a start failed when its final loss is more than 10 % above the image's best start's


def first_start_failed(restart_losses: np.ndarray, tol: float | None = None) -> np.ndarray:
    """Per image, whether start 0 ended more than ``tol`` (relative; None: ``FAILURE_TOL``) above the lowest
    of its starts.

    restart_losses: (N, R) final mapping losses (``scores.h5``'s ``restart_losses``), R >= 1, >= 0.
    Returns bool (N,); all False with R = 1 (one start cannot be compared)."""
    tol = FAILURE_TOL if tol is None else tol
    losses = np.asarray(restart_losses, np.float64)
    if losses.ndim != 2:
        raise ValueError(f"restart_losses must be (N, R), got shape {losses.shape}")
    return losses[:, 0] > (1.0 + tol) * losses.min(1)


def failure_summary(restart_losses: np.ndarray | None, groups: dict[str, np.ndarray],
                    tol: float | None = None) -> dict:
    """The ``mapping_failures`` block of metrics.json.

    restart_losses: (N, R) or None (``inversion.restarts=1``: nothing to compare, so the counts are null
    with the reason). groups: name -> bool (N,) row selection (e.g. normal test images, anomalous test
    images, normal validation images). Per group: ``n``, ``first_start_failed`` (count), ``fraction``
    (null for an empty group) and ``median_spread``, the median over its images of (worst - best) / best
    final loss over the starts."""
    tol = FAILURE_TOL if tol is None else tol
    if restart_losses is None or np.asarray(restart_losses).shape[1] < 2:
        return {"restarts": 1, "tol": tol, "groups": None,
                "reason": "one start per image (inversion.restarts=1): a failed mapping shows only against "
                          "another start; evaluate with inversion.restarts=4 to count them"}
    losses = np.asarray(restart_losses, np.float64)
    failed = first_start_failed(losses, tol)
    best = losses.min(1)
    spread = np.where(best > 0, (losses.max(1) - best) / np.where(best > 0, best, 1.0), 0.0)
    out = {}
    for name, rows in groups.items():
        rows = np.asarray(rows, bool)
        n = int(rows.sum())
        if not n:
            out[name] = {"n": 0, "first_start_failed": 0, "fraction": None, "median_spread": None,
                         "reason": "no image of this group was mapped"}
            continue
        out[name] = {"n": n, "first_start_failed": int(failed[rows].sum()), "fraction": float(failed[rows].mean()),
                     "median_spread": float(np.median(spread[rows]))}
    return {"restarts": int(losses.shape[1]), "tol": tol, "groups": out}


def failure_line(summary: dict) -> str:
    """One log line of a ``failure_summary`` with groups: each group's failed first starts out of its images."""
    return (f"mapping failures (the first of {summary['restarts']} starts ended > {round(100 * summary['tol'])} % "
            "above the best): " + ", ".join(f"{k} {g['first_start_failed']}/{g['n']}"
                                            for k, g in summary["groups"].items()))
