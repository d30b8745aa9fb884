"""Differentially private sufficient statistics for the federated-statistics round.

A hospital releases counts, sums and sums of squares (tabular) or pixel sums and class
counts (images) only through the Gaussian mechanism. Every value is first clipped to a
declared range, so one patient's (one image's) effect on each released number is bounded;
every released number gets Gaussian noise scaled to that bound. The whole release is one
Gaussian mechanism whose L2 sensitivity, after dividing each coordinate by its own
bound, is ``sqrt(k)`` for ``k`` coordinates a patient can touch; its noise multiplier is
calibrated with the same RDP accountant as DP-SGD (one step, sampling rate 1), so the
release costs exactly ``(epsilon, delta)`` and composes with training in the ledger.

Category values are data too: a value is released only if its noisy count clears a
threshold that a single patient passes with probability at most ``delta / 2`` per
column (Gaussian partition selection), so a rare value never reveals itself.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from training.categories import canonical_series
from training.tabular.contract import DataContract
from training.privacy import noise_for_budget

__all__ = ["dp_pixel_statistics", "dp_table_statistics", "gaussian_noise_scale"]


def gaussian_noise_scale(*, epsilon: float, delta: float, coordinates: int) -> float:
    """Noise standard deviation per unit of sensitivity for ``coordinates`` numbers released
    together at ``(epsilon, delta)`` (each coordinate's noise is this times its bound)."""
    z = noise_for_budget(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1)
    return z * math.sqrt(max(coordinates, 1))


def _rng() -> np.random.Generator:
    """Fresh OS entropy every release: noise that could be replayed could be subtracted."""
    return np.random.default_rng()


def dp_table_statistics(frame: pd.DataFrame, contract: DataContract, ranges: dict[str, tuple[float, float]], *,
                        epsilon: float, delta: float) -> dict[str, Any]:
    """Noised statistics of one hospital's rows, in the format :func:`merge_statistics` adds.

    Numeric values are clipped to ``ranges[column]`` and centred on its midpoint (the
    released ``sum``/``sumsq`` are of ``x - centre``); missing values count nowhere. The
    label counts ``labels: [negatives, positives]`` (for ``class_weights: balanced``) are one
    more coordinate: a patient is in exactly one of them.

    Args:
        frame: The hospital's training rows (contract columns).
        contract: The experiment's data contract.
        ranges: ``[min, max]`` of every numeric column (public: from the spec).
        epsilon: Epsilon of this release.
        delta: Delta of this release (half for the Gaussian noise, half for releasing
            category values).

    Raises:
        ValueError: a numeric column has no declared range.
    """
    missing = [c for c in contract.numeric if c not in ranges]
    if missing:
        raise ValueError(f"no declared range for numeric column {missing[0]}: the DP statistics round needs one")
    k = 2 + 3 * len(contract.numeric) + len(contract.categorical)  # n, 3 per numeric, 1 per categorical, the label
    scale = gaussian_noise_scale(epsilon=epsilon, delta=delta / 2, coordinates=k)
    rng = _rng()
    numeric: dict[str, dict[str, float]] = {}
    for column in contract.numeric:
        low, high = (float(v) for v in ranges[column])
        centre, half = (low + high) / 2, (high - low) / 2
        values = np.clip(frame[column].dropna().to_numpy(dtype=float), low, high) - centre
        numeric[column] = {
            "count": float(values.size + rng.normal(0, scale)),
            "sum": float(values.sum() + rng.normal(0, scale * half)),
            "sumsq": float(np.square(values).sum() + rng.normal(0, scale * half * half)),
            "centre": centre,
        }
    per_column_delta = (delta / 2) / max(len(contract.categorical), 1)
    threshold = 1.0 + scale * NormalDist().inv_cdf(1.0 - per_column_delta)
    categorical: dict[str, dict[str, float]] = {}
    for column in contract.categorical:
        counts = canonical_series(frame[column], contract.declared(column)).dropna().value_counts()
        noisy = {str(v): float(c + rng.normal(0, scale)) for v, c in counts.items()}
        categorical[column] = {v: c for v, c in noisy.items() if c >= threshold}
    positives = int((frame[contract.label] == 1).sum())  # a patient is in one label count: one coordinate
    labels = [max(float(c + rng.normal(0, scale)), 0.0) for c in (len(frame) - positives, positives)]
    return {"n": float(len(frame) + rng.normal(0, scale)), "numeric": numeric, "categorical": categorical, "labels": labels,
            "dp": {"epsilon": epsilon, "delta": delta, "noise_scale": scale, "category_threshold": threshold}}


def dp_pixel_statistics(images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                        epsilon: float, delta: float) -> dict[str, Any]:
    """Noised per-channel pixel sums and class counts of a hospital's training images.

    One image changes the pixel count by ``H*W``, each channel's sum and sum of squares
    (pixels in [0, 1]) by at most ``H*W``, and one class count by 1; the classes are the
    spec's (public), so every class count is released (noised, rounded, at least 0).

    Returns:
        ``{"pixels": {"pixels", "sum", "sumsq"}, "classes": [...]}`` as the exact
        statistics round would, plus ``dp``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    n, channels, h, w = images.shape
    area = float(h * w)
    scale = gaussian_noise_scale(epsilon=epsilon, delta=delta, coordinates=2 + 2 * channels)
    rng = _rng()
    unit = images.astype(np.float64) / 255.0
    sums = unit.sum(axis=(0, 2, 3))
    sumsq = np.square(unit).sum(axis=(0, 2, 3))
    pixels = max(n * area + rng.normal(0, scale * area), area)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    classes = [max(int(round(c + rng.normal(0, scale))), 0) for c in counts]
    return {
        "pixels": {"pixels": pixels,
                   "sum": [float(s + rng.normal(0, scale * area)) for s in sums],
                   "sumsq": [float(s + rng.normal(0, scale * area)) for s in sumsq]},
        "classes": classes,
        "dp": {"epsilon": epsilon, "delta": delta, "noise_scale": scale},
    }
