"""Discrimination and calibration metrics for binary risk (scikit-learn underneath)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, log_loss, roc_auc_score

__all__ = ["risk_metrics"]


def risk_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, AUPRC, accuracy, Brier score and log loss of predicted risks.

    AUROC and AUPRC are NaN when ``y_true`` holds a single class (they are undefined);
    callers aggregate with that in mind.
    """
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.clip(np.asarray(y_prob, dtype=float), 1e-7, 1 - 1e-7)
    both = len(np.unique(y_true)) == 2
    return {
        "auroc": float(roc_auc_score(y_true, y_prob)) if both else math.nan,
        "auprc": float(average_precision_score(y_true, y_prob)) if both else math.nan,
        "accuracy": float(accuracy_score(y_true, y_prob >= threshold)),
        "brier": float(brier_score_loss(y_true, y_prob)),
        "log_loss": float(log_loss(y_true, y_prob, labels=[0, 1])),
    }
