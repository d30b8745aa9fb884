"""Distribution drift between a binned reference and a served window: PSI and a binned KS (docs/monitoring.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["PSI_FLOOR", "binned_ks", "numeric_bins", "psi"]

#: A bin's share is floored at this before PSI's logarithm (an empty bin would make PSI infinite).
PSI_FLOOR = 1e-4


def psi(reference: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray, *,
        floor: float = PSI_FLOOR) -> float | None:
    """Population stability index ``sum (w - r) * ln(w / r)`` over the shares of the same bins.

    Args:
        reference: Counts (or shares) per bin of the reference.
        window: Counts per bin of the served window, same bins.
        floor: Shares below this are raised to it (both sides), then renormalised.

    Returns:
        The PSI (0 for identical shares), or None when either side counts nothing.

    Raises:
        ValueError: the two sides have different numbers of bins.
    """
    r = np.asarray(reference, dtype=float)
    w = np.asarray(window, dtype=float)
    if r.shape != w.shape:
        raise ValueError(f"reference has {r.size} bins, window {w.size}")
    if r.sum() <= 0 or w.sum() <= 0:
        return None
    r = np.maximum(r / r.sum(), floor)
    w = np.maximum(w / w.sum(), floor)
    r, w = r / r.sum(), w / w.sum()
    return float(np.sum((w - r) * np.log(w / r)))


def numeric_bins(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of finite ``values`` in the bins ``(-inf, e0), [e0, e1), ..., [e_last, inf)``."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=float), x, side="right"),
                       minlength=len(edges) + 1)


def binned_ks(reference: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray) -> tuple[float, float] | None:
    """Two-sample Kolmogorov-Smirnov distance evaluated at the bin edges, and its asymptotic p-value.

    The reference is known only as counts per bin, so both empirical CDFs are compared at
    the edges; the distance is a lower bound of the exact KS statistic (the largest gap may
    lie inside a bin). The p-value is Kolmogorov's limit ``P(K > D sqrt(nm/(n+m)))``
    (:func:`scipy.special.kolmogorov`), conservative for binned data.

    Returns:
        ``(distance, p_value)``, or None when either side counts nothing.
    """
    r = np.asarray(reference, dtype=float)
    w = np.asarray(window, dtype=float)
    if r.shape != w.shape:
        raise ValueError(f"reference has {r.size} bins, window {w.size}")
    n, m = r.sum(), w.sum()
    if n <= 0 or m <= 0:
        return None
    from scipy.special import kolmogorov  # imported on first use: the API starts without scipy

    distance = float(np.max(np.abs(np.cumsum(r) / n - np.cumsum(w) / m)))
    return distance, float(kolmogorov(distance * math.sqrt(n * m / (n + m))))
