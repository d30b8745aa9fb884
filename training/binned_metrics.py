"""Metrics from logit-scale score histograms: binned AUROC with its DeLong SE, ROC/PR curves, calibration fit.

The math and its accuracy bounds are in docs/validation.md ("Statistics").
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "auroc_interval",
    "auroc_se",
    "average_precision",
    "calibration_fit",
    "expit",
    "pr_curve",
    "roc_curve",
]

_Z975 = 1.959963984540054


def expit(x: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-free and accurate in both tails."""
    x = np.asarray(x, dtype=float)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def auroc_se(hp: np.ndarray, hn: np.ndarray) -> tuple[float | None, float | None]:
    """Binned AUROC and its DeLong standard error; ``None`` when undefined."""
    n_pos, n_neg = hp.sum(), hn.sum()
    if n_pos == 0 or n_neg == 0:
        return None, None
    v10 = (np.cumsum(hn) - hn + 0.5 * hn) / n_neg  # per bin, structural component of a positive
    v01 = (n_pos - np.cumsum(hp) + 0.5 * hp) / n_pos  # per bin, structural component of a negative
    auc = float((hp * v10).sum() / n_pos)
    if n_pos < 2 or n_neg < 2:
        return auc, None
    s10 = (hp * (v10 - auc) ** 2).sum() / (n_pos - 1)
    s01 = (hn * (v01 - auc) ** 2).sum() / (n_neg - 1)
    return auc, math.sqrt(max(s10 / n_pos + s01 / n_neg, 0.0))


def auroc_interval(auc: float | None, se: float | None) -> list[float] | None:
    """95% Wald interval on the AUROC scale, clipped to [0, 1]; ``None`` without a standard error."""
    if auc is None or se is None:
        return None
    return [max(0.0, auc - _Z975 * se), min(1.0, auc + _Z975 * se)]


def roc_curve(hp: np.ndarray, hn: np.ndarray, n_pos: float, n_neg: float, curve_points: int) -> dict[str, list[float]]:
    """The binned ROC curve (at most ``curve_points`` points); empty without positives or negatives."""
    if n_pos == 0 or n_neg == 0:
        return {"fpr": [], "tpr": []}
    tp_c, fp_c = _descending(hp, hn)
    fpr = np.concatenate([[0.0], fp_c / n_neg])
    tpr = np.concatenate([[0.0], tp_c / n_pos])
    keep = _downsample(fpr.size, curve_points)
    return {"fpr": [float(v) for v in fpr[keep]], "tpr": [float(v) for v in tpr[keep]]}


def _descending(hp: np.ndarray, hn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative TP/FP counts when lowering the cut-off bin by bin, at non-empty bins only."""
    hp_r, hn_r = hp[::-1], hn[::-1]
    keep = (hp_r + hn_r) > 0
    return np.cumsum(hp_r)[keep], np.cumsum(hn_r)[keep]


def average_precision(hp: np.ndarray, hn: np.ndarray) -> float | None:
    n_pos = hp.sum()
    if n_pos == 0:
        return None
    hp_r, hn_r = hp[::-1], hn[::-1]
    tp, fp = np.cumsum(hp_r), np.cumsum(hn_r)
    hit = hp_r > 0
    return float((hp_r[hit] * tp[hit] / (tp[hit] + fp[hit])).sum() / n_pos)


def calibration_fit(hp: np.ndarray, hn: np.ndarray, centres: np.ndarray) -> tuple[float | None, float | None]:
    """Calibration-in-the-large (intercept with logit offset) and slope of y ~ a + b logit(p), by count."""
    m = hp + hn
    keep = m > 0
    x, k, m = centres[keep], hp[keep], m[keep]
    n_pos, n = k.sum(), m.sum()
    if n_pos == 0 or n_pos == n:
        return None, None
    lo, hi = -60.0, 60.0  # sum(m * expit(a + x)) increases in a: bisect for the root
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float((m * expit(mid + x)).sum()) < n_pos else (lo, mid)
    intercept = 0.5 * (lo + hi)

    if np.unique(x).size < 2:
        return intercept, None
    design = np.column_stack([np.ones_like(x), x])

    def nll(beta: np.ndarray) -> float:
        eta = design @ beta
        return float((m * np.logaddexp(0.0, eta) - k * eta).sum())

    beta = np.array([0.0, 1.0])
    current = nll(beta)
    for _ in range(100):  # Newton-Raphson (= IRLS) with step halving
        mu = expit(design @ beta)
        hess = (design * (m * mu * (1.0 - mu))[:, None]).T @ design
        try:
            step = np.linalg.solve(hess, design.T @ (k - m * mu))
        except np.linalg.LinAlgError:
            return intercept, None
        t = 1.0
        while t > 1e-10 and nll(beta + t * step) > current + 1e-12 * abs(current):
            t /= 2
        beta = beta + t * step
        current = nll(beta)
        if not np.all(np.isfinite(beta)) or abs(beta[1]) > 1e3:
            return intercept, None  # (quasi-)separation: the maximum-likelihood slope does not exist
        if np.max(np.abs(t * step)) < 1e-10:
            return intercept, float(beta[1])
    return intercept, None


def _downsample(points: int, limit: int) -> np.ndarray:
    if points <= limit:
        return np.arange(points)
    return np.unique(np.linspace(0, points - 1, limit).round().astype(np.int64))



def pr_curve(hp: np.ndarray, hn: np.ndarray, n_pos: float, n_neg: float, curve_points: int) -> dict[str, list[float]]:
    """The binned precision-recall curve (at most ``curve_points`` points); empty without positives or negatives."""
    if n_pos == 0 or n_neg == 0:
        return {"recall": [], "precision": []}
    tp_c, fp_c = _descending(hp, hn)
    recall = np.concatenate([[0.0], tp_c / n_pos])
    precision = np.concatenate([[1.0], tp_c / (tp_c + fp_c)])
    keep = _downsample(recall.size, curve_points)
    return {"recall": [float(v) for v in recall[keep]], "precision": [float(v) for v in precision[keep]]}
