"""Monitoring reference of a risk model: binned input features and scores from held-out aggregates (docs/monitoring.md).

A hospital counts its held-out rows per feature slot (:func:`local_feature_counts`: bins over
edges every hospital derives from the federation's encoder, vocabulary values, ``__other``,
``__missing``; small slots suppressed like the report's cells); the coordinator adds them
(:func:`merge_feature_counts`) and stores them in the report with the score bins
(:func:`monitoring_section`). The API bins its served rows the same way (:func:`window_counts`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from training.categories import CategoryLookup
from training.drift import numeric_bins
from training.validation_cells import ALL, reported_values

__all__ = ["FEATURES_KEY", "MISSING", "OTHER", "REFERENCE_BINS", "SCHEMA", "calibration_score_reference",
           "local_feature_counts", "merge_feature_counts", "monitoring_section", "score_reference", "window_counts"]

SCHEMA = "bioverse.monitoring.reference/1"
#: Where a hospital's validation aggregates carry its feature counts (popped before the report's merge).
FEATURES_KEY = "features"
#: Bins per numeric feature and for the score (equal mass under the reference, as far as bins allow).
REFERENCE_BINS = 10
OTHER, MISSING = "__other", "__missing"


def _numeric_edges(mean: float, std: float, bins: int = REFERENCE_BINS) -> list[float]:
    """Edges at the normal quantiles of the encoder's mean and standard deviation (public to every hospital)."""
    dist = NormalDist(mean, std if std > 0 else 1.0)
    return sorted({float(dist.inv_cdf(k / bins)) for k in range(1, bins)})


def _as_float(value: Any) -> float:
    """A finite float, or NaN for None, NaN, infinity and anything that is not a number (counted as missing)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


@functools.lru_cache(maxsize=256)
def _lookup(vocabulary: tuple[str, ...]) -> CategoryLookup:
    return CategoryLookup(vocabulary)


def _slot_counts(feature: Mapping[str, Any], values: Sequence[Any]) -> np.ndarray:
    """Counts per slot of one feature (its bins or values, then ``__missing`` last)."""
    if feature["kind"] == "numeric":
        x = np.asarray([_as_float(v) for v in values], dtype=float)
        return np.concatenate([numeric_bins(x, feature["edges"]), [int(np.isnan(x).sum())]])
    vocabulary = tuple(v for v in feature["values"] if v != OTHER)
    lookup = _lookup(vocabulary)
    counts = np.zeros(len(vocabulary) + 2, dtype=np.int64)  # vocabulary, __other, __missing
    distinct: dict[Any, int] = {}
    for v in values:
        key = (type(v).__name__, v if isinstance(v, (str, int, float, bool)) or v is None else repr(v))
        slot = distinct.get(key)
        if slot is None:
            code = None if lookup.is_missing(v) else lookup.code(v)
            slot = distinct[key] = len(vocabulary) + 1 if lookup.is_missing(v) else len(vocabulary) if code is None else code
        counts[slot] += 1
    return counts


def _feature_slots(encoder: Any) -> dict[str, dict[str, Any]]:
    features: dict[str, dict[str, Any]] = {}
    for column, mean, std in zip(encoder.numeric, encoder.means, encoder.stds, strict=True):
        features[column] = {"kind": "numeric", "edges": _numeric_edges(float(mean), float(std))}
    for column, vocabulary in zip(encoder.categorical, encoder.vocabulary, strict=True):
        features[column] = {"kind": "categorical", "values": [*vocabulary, OTHER]}
    return features


def local_feature_counts(frame: Any, encoder: Any, *, min_cell: int) -> dict[str, Any]:
    """One hospital's held-out rows counted per feature slot, small slots suppressed (None).

    Args:
        frame: The hospital's held-out rows (pandas, contract columns).
        encoder: The federation's :class:`training.tabular.preprocessing.FeatureEncoder`.
        min_cell: A slot with fewer rows is released as None; complementary suppression as
            for subgroup cells (:func:`training.validation_cells.reported_values`).
    """
    features = _feature_slots(encoder)
    for column, feature in features.items():
        counts = _slot_counts(feature, frame[column].tolist())
        sizes = {str(i): int(c) for i, c in enumerate(counts) if c > 0}
        kept = reported_values(sizes, int(counts.sum()), min_cell)
        feature["counts"] = [int(c) if str(i) in kept or c == 0 else None for i, c in enumerate(counts)]
    return {"schema": SCHEMA, "n": int(len(frame)), "min_cell": int(min_cell), "features": features}


def _imputed(counts: Sequence[int | None], n: int | None, min_cell: int) -> list[float]:
    """One hospital's slot counts, each suppressed one given an even share of the hidden remainder
    (``n`` minus the reported slots; ``n`` is the hospital's released cell size), else ``min_cell / 2``."""
    hidden = [i for i, c in enumerate(counts) if c is None]
    if not hidden:
        return [float(c) for c in counts]  # type: ignore[arg-type]
    share = (n - sum(int(c or 0) for c in counts)) / len(hidden) if n is not None else min_cell / 2
    return [float(share) if c is None else float(c) for c in counts]


def merge_feature_counts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Sum hospitals' feature counts slot by slot. A hospital's suppressed slots share its hidden
    remainder evenly (:func:`_imputed`): adding 0 for them would tell the monitor that, say, no
    patient misses a value, and the first served rows missing it would read as drift. How many
    slots were suppressed is kept per feature. None without parts; features whose slots differ
    between hospitals (a different encoder) are left out."""
    if not parts:
        return None
    merged: dict[str, Any] = {}
    for column, first in parts[0]["features"].items():
        same = [p["features"].get(column) for p in parts]
        layout = {k: v for k, v in first.items() if k != "counts"}
        if any(f is None or {k: v for k, v in f.items() if k != "counts"} != layout for f in same):
            continue
        rows = [_imputed(f["counts"], p.get("n"), int(p.get("min_cell", 10)))  # type: ignore[index]
                for p, f in zip(parts, same, strict=True)]
        merged[column] = {**layout, "counts": [math.fsum(slot) for slot in zip(*rows, strict=True)],
                          "suppressed": sum(c is None for f in same for c in f["counts"])}  # type: ignore[union-attr]
    return {"schema": SCHEMA, "features": merged}


def score_reference(cell: Mapping[str, Any], histogram: Mapping[str, Any], bins: int = REFERENCE_BINS) -> dict[str, Any] | None:
    """Score bins of the report's ``all`` cell: its logit histograms coarsened to ~equal-mass bins.

    Edges are the upper bounds (as risks) of the fine bins where the cumulative count passes
    ``k / bins``, so the coarse counts are exact sums of fine ones.
    """
    fine = np.asarray(cell["hist_pos"], dtype=np.int64) + np.asarray(cell["hist_neg"], dtype=np.int64)
    total = int(fine.sum())
    if total == 0:
        return None
    lo, hi, n = float(histogram["logit_min"]), float(histogram["logit_max"]), int(histogram["bins"])
    cum = np.cumsum(fine)
    cuts = sorted({int(np.searchsorted(cum, total * k / bins)) for k in range(1, bins)} - {n - 1})
    edges = [1.0 / (1.0 + math.exp(-(lo + (i + 1) * (hi - lo) / n))) for i in cuts]
    bounds = [0, *[i + 1 for i in cuts], n]
    counts = [int(fine[a:b].sum()) for a, b in zip(bounds, bounds[1:])]
    return {"edges": edges, "counts": counts, "source": "validation histogram (test part)"}


def calibration_score_reference(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """Score bins of a report without a monitoring section: its 10 equal-width calibration bins."""
    curve = (report.get("overall") or {}).get("calibration_curve") or []
    counts = [0] * 10
    for point in curve:
        counts[min(int(float(point["mean_predicted"]) * 10), 9)] += int(point["n"])
    if not sum(counts):
        return None
    return {"edges": [k / 10 for k in range(1, 10)], "counts": counts, "source": "calibration bins of the report"}


def monitoring_section(merged: Mapping[str, Any], feature_parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's ``monitoring`` section: score bins and (when hospitals sent them) feature counts."""
    section: dict[str, Any] = {"schema": SCHEMA, "score": score_reference(merged["cells"][ALL], merged["histogram"])}
    features = merge_feature_counts(feature_parts)
    if features is not None:
        section["features"] = features["features"]
    return section


def window_counts(reference: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """The served rows counted in each reference feature's slots (missing keys count as missing)."""
    return {column: _slot_counts(feature, [row.get(column) for row in rows]).tolist()
            for column, feature in reference.items()}
