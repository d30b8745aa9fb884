"""Differentially private table statistics for the federated-statistics round (counts, sums, category values).

The mechanism (clipping to declared ranges, one Gaussian release, partition selection of
category values) is described in docs/privacy.md.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from training.categories import canonical_series
from training.dp_statistics import gaussian_noise_scale, release_rng
from training.tabular.contract import DataContract

__all__ = ["dp_table_statistics"]


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
    rng = release_rng()
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
