"""Federated preprocessing: sites share sufficient statistics, never rows, to build one encoder."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training.categories import CategoryLookup, canonical_series
from training.tabular.contract import DataContract

__all__ = ["MIN_CATEGORY_COUNT", "FeatureEncoder", "local_statistics", "merge_statistics"]

#: A category seen in fewer patients than this, over the whole federation, is folded
#: into "other": rare values identify people and carry little signal.
MIN_CATEGORY_COUNT = 5


def local_statistics(frame: pd.DataFrame, contract: DataContract) -> dict[str, Any]:
    """Sufficient statistics of one hospital's features (counts, sums, category counts) and
    its label counts ``[negatives, positives]`` (for ``class_weights: balanced``).

    Args:
        frame: A table returned by :func:`training.tabular.contract.load_hospital_table`.
        contract: The experiment's data contract.

    Returns:
        A JSON-serialisable dict that :func:`merge_statistics` combines across sites.
    """
    numeric = {}
    for column in contract.numeric:
        values = frame[column].dropna().to_numpy(dtype=float)
        numeric[column] = {
            "count": int(values.size),
            "sum": float(values.sum()),
            "sumsq": float(np.square(values).sum()),
        }
    categorical = {
        column: {str(k): int(v) for k, v in canonical_series(frame[column], contract.declared(column)).dropna()
                 .value_counts().items()}
        for column in contract.categorical
    }
    positives = int((frame[contract.label] == 1).sum())
    return {"n": int(len(frame)), "numeric": numeric, "categorical": categorical,
            "labels": [int(len(frame)) - positives, positives]}


def merge_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the statistics of several hospitals (exact or DP-noised, see
    :mod:`training.tabular.dp_statistics`: sums there are of ``x - centre``, the same centre at
    every hospital)."""
    merged: dict[str, Any] = {"n": 0, "numeric": {}, "categorical": {}}
    for part in parts:
        merged["n"] += part["n"]
        for column, stats in part["numeric"].items():
            acc = merged["numeric"].setdefault(column, {"count": 0, "sum": 0.0, "sumsq": 0.0,
                                                        "centre": float(stats.get("centre", 0.0))})
            if float(stats.get("centre", 0.0)) != acc["centre"]:
                raise ValueError(f"statistics of {column} are centred differently at two hospitals")
            for key in ("count", "sum", "sumsq"):
                acc[key] += stats[key]
        for column, counts in part["categorical"].items():
            acc = merged["categorical"].setdefault(column, {})
            for value, count in counts.items():
                acc[value] = acc.get(value, 0) + count
    return merged


_OTHER, _MISSING = -1, -2


def _codes(values: pd.Series, lookup: CategoryLookup) -> np.ndarray:
    """Slot of each row's value, ``_OTHER`` or ``_MISSING``, looked up once per distinct value."""
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    table = np.asarray([_MISSING if lookup.is_missing(v) else _OTHER if (c := lookup.code(v)) is None else c
                        for v in distinct] + [_MISSING], dtype=np.int64)
    return table[codes]


@dataclass(frozen=True)
class FeatureEncoder:
    """Turns a contract's raw columns into the model's float matrix.

    Numeric columns are standardised with federation-wide mean and standard deviation;
    a missing value becomes 0 (the mean) plus a 1 in the column's ``__missing`` indicator.
    Categorical columns are one-hot over the federation's vocabulary, with ``__missing``
    and ``__other`` slots for absent and unseen or rare values; a value finds its slot by
    its canonical spelling (:class:`training.categories.CategoryLookup`), so ``4.0`` and
    ``4`` are one category.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    vocabulary: tuple[tuple[str, ...], ...]

    @classmethod
    def from_statistics(cls, stats: dict[str, Any], contract: DataContract,
                        ranges: dict[str, tuple[float, float]] | None = None) -> FeatureEncoder:
        """Build the encoder from merged statistics.

        With ``ranges`` (the spec's declared ``[min, max]``, for noised statistics) each
        mean is kept inside its range and each standard deviation between 1/100 and 1/2
        of its width (a quarter of it when the noise left no variance). A column with
        declared categories (``contract.categories``) keeps only declared values.
        """
        means, stds = [], []
        for column in contract.numeric:
            s = stats["numeric"].get(column, {"count": 0, "sum": 0.0, "sumsq": 0.0})
            count = max(s["count"], 1)
            offset = s["sum"] / count  # mean of x - centre
            var = max(s["sumsq"] / count - offset * offset, 0.0)
            mean, std = s.get("centre", 0.0) + offset, math.sqrt(var) if var > 1e-12 else 1.0
            if ranges and column in ranges:  # noised statistics: keep them inside the declared range
                low, high = ranges[column]
                mean = min(max(mean, low), high)
                std = min(max(std if var > 1e-12 else (high - low) / 4, (high - low) / 100), (high - low) / 2)
            means.append(mean)
            stds.append(std)
        vocabulary = tuple(
            tuple(
                sorted(
                    v
                    for v, n in stats["categorical"].get(column, {}).items()
                    if n >= MIN_CATEGORY_COUNT and (contract.declared(column) is None or v in contract.declared(column))
                )
            )
            for column in contract.categorical
        )
        return cls(contract.numeric, contract.categorical, tuple(means), tuple(stds), vocabulary)

    @property
    def feature_names(self) -> list[str]:
        """Names of the encoded columns, in order."""
        names = list(self.numeric) + [f"{c}__missing" for c in self.numeric]
        for column, values in zip(self.categorical, self.vocabulary, strict=True):
            names += [f"{column}={v}" for v in values] + [f"{column}__missing", f"{column}__other"]
        return names

    @property
    def input_dim(self) -> int:
        """Width of the encoded matrix."""
        return 2 * len(self.numeric) + sum(len(v) + 2 for v in self.vocabulary)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode raw feature columns into a float32 matrix of shape (rows, input_dim)."""
        blocks = []
        if self.numeric:
            raw = frame[list(self.numeric)].to_numpy(dtype=np.float64, na_value=np.nan)
            missing = np.isnan(raw)
            z = (raw - np.asarray(self.means)) / np.asarray(self.stds)
            blocks += [np.clip(np.where(missing, 0.0, z), -10.0, 10.0), missing.astype(np.float64)]
        for column, values, lookup in zip(self.categorical, self.vocabulary, self.lookups, strict=True):
            codes = _codes(frame[column], lookup)
            one_hot = (codes[:, None] == np.arange(len(values))[None, :]).astype(np.float64)
            blocks += [one_hot, (codes == _MISSING)[:, None].astype(np.float64), (codes == _OTHER)[:, None].astype(np.float64)]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    @functools.cached_property
    def lookups(self) -> tuple[CategoryLookup, ...]:
        """Per categorical column, how a raw value finds its vocabulary slot."""
        return tuple(CategoryLookup(v) for v in self.vocabulary)

    def unknown_counts(self, frame: pd.DataFrame) -> dict[str, dict[str, int]]:
        """Per categorical column, the present values that fall into ``__other`` (unseen in
        training, or rare there) and how many rows hold each; columns without any are left out."""
        unknown: dict[str, dict[str, int]] = {}
        for column, lookup in zip(self.categorical, self.lookups, strict=True):
            values = frame[column]
            present = values[values.notna()]
            counts: dict[str, int] = {}
            for value, n in present.value_counts().items():
                if not lookup.is_missing(value) and lookup.code(value) is None:
                    key = str(value)
                    counts[key] = counts.get(key, 0) + int(n)
            if counts:
                unknown[column] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return unknown

    def to_json(self) -> str:
        """Serialise for messages and model artifacts."""
        return json.dumps(
            {
                "numeric": self.numeric,
                "categorical": self.categorical,
                "means": self.means,
                "stds": self.stds,
                "vocabulary": self.vocabulary,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureEncoder:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(
            tuple(d["numeric"]),
            tuple(d["categorical"]),
            tuple(d["means"]),
            tuple(d["stds"]),
            tuple(tuple(v) for v in d["vocabulary"]),
        )
