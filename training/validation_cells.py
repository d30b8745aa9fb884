"""Shared plumbing of the federated validation aggregates: histograms, subgroup cells, merge, report layout.

Used by every modality's validation module; the disclosure-control rules and accuracy bounds are in
docs/validation.md ("Statistics").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from training.errors import ValidationInputError

__all__ = [
    "AGE_BANDS",
    "ALL",
    "CALIBRATION_BINS",
    "DEFAULT_MIN_CELL",
    "HIST_BINS",
    "HOSPITAL",
    "LOGIT_RANGE",
    "age_band",
    "histogram_spec",
    "json_number",
    "logit_bins",
    "merge_parts",
    "ratio",
    "report_cells",
    "report_hash",
    "reported_values",
    "require_schema",
    "subgroup_cells",
    "sum_float_lists",
    "sum_floats",
    "sum_int_lists",
    "sum_ints",
]

HIST_BINS = 2400
LOGIT_RANGE: tuple[float, float] = (-12.0, 12.0)
CALIBRATION_BINS = 10
DEFAULT_MIN_CELL = 10
AGE_BANDS: tuple[str, ...] = ("<50", "50-59", "60-69", "70-79", ">=80")
ALL = "all"
HOSPITAL = "hospital"


def age_band(age: Any) -> str | None:
    """``"<50"``, ``"50-59"``, ``"60-69"``, ``"70-79"``, ``">=80"``; ``None`` for a missing age."""
    if age is None:
        return None
    value = float(age)
    if math.isnan(value):
        return None
    if value < 50:
        return "<50"
    if value >= 80:
        return ">=80"
    lower = int(value // 10) * 10
    return f"{lower}-{lower + 9}"


def report_hash(report: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``report`` (sorted keys, no whitespace, no NaN)."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _subgroup_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value)
    return text if text else None


def require_schema(agg: Mapping[str, Any], schema: str, *, name_expected: bool = False) -> None:
    if agg.get("schema") != schema:
        expected = f" (expected {schema!r})" if name_expected else ""
        raise ValidationInputError(f"unsupported aggregate schema {agg.get('schema')!r}{expected}")


def histogram_spec(hist_bins: int, logit_range: tuple[float, float], min_cell: int) -> tuple[int, float, float]:
    """Checked ``(bins, logit_min, logit_max)`` of the logit histograms; also checks ``min_cell``."""
    lo, hi = float(logit_range[0]), float(logit_range[1])
    bins = int(hist_bins)
    if not hi > lo or bins < 2:
        raise ValidationInputError("need logit_range[1] > logit_range[0] and hist_bins >= 2")
    if int(min_cell) < 1:
        raise ValidationInputError("min_cell must be >= 1")
    return bins, lo, hi


def logit_bins(p: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
    """Histogram bin of each probability on the logit scale; values outside go to the edge bins."""
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)
    return np.clip(np.floor((z - lo) / ((hi - lo) / bins)), 0, bins - 1).astype(np.int64)


def reported_values(sizes: Mapping[str, int], n: int, min_cell: int) -> set[str]:
    """Values of one group whose cells may be reported (small cells and complementary suppression)."""
    reported = {v for v, size in sizes.items() if size >= min_cell}
    # Complementary suppression: the uncovered remainder must not be a small cell either.
    while reported and 0 < n - sum(sizes[v] for v in reported) < min_cell:
        reported.remove(min(reported, key=lambda v: (sizes[v], v)))
    return reported


def subgroup_cells(
    subgroups: Mapping[str, Sequence[str | None]] | None,
    n: int,
    min_cell: int,
    cell: Callable[[np.ndarray], dict[str, Any]],
) -> tuple[dict[str, Any], list[str]]:
    """The reported subgroup cells ``{"group=value": cell(mask)}`` and the suppressed cell names.

    ``n`` is the number of patients and ``cell`` computes a cell's aggregates from a patient mask.
    """
    cells: dict[str, Any] = {}
    suppressed: list[str] = []
    for group, values in (subgroups or {}).items():
        if not isinstance(group, str) or not group or "=" in group or group in (ALL, HOSPITAL):
            raise ValidationInputError(f"invalid subgroup name {group!r}")
        vals = np.array([_subgroup_value(v) for v in values], dtype=object)
        if vals.size != n:
            raise ValidationInputError(f"subgroup {group!r} has {vals.size} values for {n} patients")
        sizes = {v: int(np.sum(vals == v)) for v in sorted({v for v in vals.tolist() if v is not None})}
        reported = reported_values(sizes, n, min_cell)
        for v in sizes:
            name = f"{group}={v}"
            if v in reported:
                cells[name] = cell(vals == v)
            else:
                suppressed.append(name)
    return cells, suppressed


def sum_ints(cells: Sequence[Mapping[str, Any]], key: str) -> int:
    return sum(int(c[key]) for c in cells)


def sum_int_lists(cells: Sequence[Mapping[str, Any]], key: str, sub: str | None = None) -> list[Any]:
    """Element-wise sum of integer lists (or nested lists, e.g. per class)."""
    rows = [c[key] if sub is None else c[key][sub] for c in cells]
    return np.sum(np.asarray(rows, dtype=np.int64), axis=0).tolist()


def sum_floats(cells: Sequence[Mapping[str, Any]], key: str) -> float:
    return math.fsum(float(c[key]) for c in cells)


def sum_float_lists(cells: Sequence[Mapping[str, Any]], key: str, sub: str) -> list[float]:
    """Element-wise ``math.fsum`` of float lists."""
    return [math.fsum(float(c[key][sub][k]) for c in cells) for k in range(len(cells[0][key][sub]))]


def _labelled(agg: Mapping[str, Any], hospital_id: str) -> dict[str, Any]:
    if not isinstance(hospital_id, str) or not hospital_id or "=" in hospital_id:
        raise ValidationInputError(f"invalid hospital id {hospital_id!r}")
    if agg.get("hospitals"):
        raise ValidationInputError(f"aggregate given for {hospital_id!r} is already merged; pass merged aggregates as a list")
    out = dict(agg)
    out["cells"] = {**agg["cells"], f"{HOSPITAL}={hospital_id}": agg["cells"][ALL]}
    out["suppressed"] = [f"{hospital_id}:{name}" for name in agg.get("suppressed", [])]
    out["hospitals"] = [hospital_id]
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, list | tuple) else value


def merge_parts(
    parts: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    *,
    schema: str,
    same: Sequence[str],
    sum_cells: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]],
    name_expected: bool = False,
) -> dict[str, Any]:
    """The merge of :func:`merge_aggregates` for aggregates of ``schema``, shared with the multi-class one.

    ``same`` names the fields every part must agree on (copied into the result, in this order, after
    ``"schema"``); ``sum_cells`` sums one cell over the parts that reported it.
    """
    if isinstance(parts, Mapping):
        items = [_labelled(agg, hid) for hid, agg in sorted(parts.items())]
    else:
        items = [dict(agg) for agg in parts]
    if not items:
        raise ValidationInputError("nothing to merge")
    first = items[0]
    for agg in items:
        require_schema(agg, schema, name_expected=name_expected)
        for key in same:
            if agg[key] != first[key]:
                raise ValidationInputError(f"aggregates disagree on {key}: {agg[key]!r} vs {first[key]!r}")
    hospitals = [h for agg in items for h in agg.get("hospitals", [])]
    if len(set(hospitals)) != len(hospitals):
        raise ValidationInputError(f"hospital contributes twice: {sorted(hospitals)}")
    names = sorted({name for agg in items for name in agg["cells"]})
    return {
        "schema": schema,
        **{key: _copy(first[key]) for key in same},
        "min_cell": min(int(agg["min_cell"]) for agg in items),
        "cells": {name: sum_cells([agg["cells"][name] for agg in items if name in agg["cells"]]) for name in names},
        "suppressed": sorted({s for agg in items for s in agg.get("suppressed", [])}),
        "hospitals": sorted(hospitals),
    }


def _value_order(group: str, value: str) -> tuple[int, str]:
    if group == "age_band" and value in AGE_BANDS:
        return AGE_BANDS.index(value), value
    return len(AGE_BANDS), value


def report_cells(agg: Mapping[str, Any], metrics: Callable[[Mapping[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """``{"overall", "subgroups": {"hospital": {...}, "<group>": {"<value>": cell}}, "suppressed", "hospitals"}``.

    The part of a report shared with ``training.imaging.validation``: ``metrics`` of each cell,
    groups and values in report order.
    """
    cells = agg["cells"]
    subgroups: dict[str, dict[str, Any]] = {HOSPITAL: {}}
    names = [name for name in cells if name != ALL]
    for name in sorted(names, key=lambda s: (s.split("=", 1)[0], _value_order(*s.split("=", 1)))):
        group, value = name.split("=", 1)
        subgroups.setdefault(group, {})[value] = metrics(cells[name])
    return {
        "overall": metrics(cells[ALL]),
        "subgroups": subgroups,
        "suppressed": list(agg.get("suppressed", [])),
        "hospitals": list(agg.get("hospitals", [])),
    }
