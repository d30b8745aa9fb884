"""Federated validation report of a binary risk model: hospital aggregates, their merge, the report.

Each hospital returns :func:`local_aggregates` (counts and sums, never a patient row); the coordinator
sums them with :func:`merge_aggregates` and builds the report with :func:`build_report`. What leaves
a hospital, disclosure control and accuracy: docs/validation.md ("Statistics").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from training.binned_metrics import auroc_interval, auroc_se, average_precision, calibration_fit, pr_curve, roc_curve
from training.errors import ValidationInputError
from training.validation_cells import (
    ALL,
    CALIBRATION_BINS,
    DEFAULT_MIN_CELL,
    HIST_BINS,
    LOGIT_RANGE,
    histogram_spec,
    json_number,
    logit_bins,
    merge_parts,
    ratio,
    report_cells,
    require_schema,
    subgroup_cells,
    sum_float_lists,
    sum_floats,
    sum_int_lists,
    sum_ints,
)

__all__ = [
    "DECISION_THRESHOLDS",
    "SCHEMA",
    "build_report",
    "local_aggregates",
    "local_report",
    "merge_aggregates",
]

SCHEMA = "bioverse.validation.aggregates/1"
DECISION_THRESHOLDS: tuple[float, ...] = tuple(round(k / 100, 2) for k in range(1, 100))


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    out = [float(t) for t in thresholds]
    for t in out:
        if not 0.0 < t < 1.0:
            raise ValidationInputError(f"thresholds must lie strictly between 0 and 1, got {t}")
    if len(set(out)) != len(out):
        raise ValidationInputError(f"thresholds must be unique, got {out}")
    return out


def _checked_risk_label(risk: Sequence[float] | np.ndarray, label: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Risks as float64 in [0, 1] and labels as int64 0/1, of equal length."""
    p = np.asarray(risk, dtype=float).ravel()
    y_raw = np.asarray(label).ravel()
    if p.shape != y_raw.shape:
        raise ValidationInputError(f"risk and label differ in length: {p.size} vs {y_raw.size}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValidationInputError("risk must be finite and within [0, 1]")
    y = y_raw.astype(float)
    if not np.all((y == 0) | (y == 1)):
        raise ValidationInputError("label must be 0/1")
    return p, y.astype(np.int64)


def _binary_cell(mask: np.ndarray, *, p: np.ndarray, y: np.ndarray, hbin: np.ndarray, cbin: np.ndarray, above: np.ndarray,
                 bins: int) -> dict[str, Any]:
    """The aggregates of the patients in ``mask``: counts, histograms, exact sums, confusion and calibration bins."""
    pm, ym = p[mask], y[mask]
    pos = ym == 1
    hb, cb, ab = hbin[mask], cbin[mask], above[mask]
    tp = ab[pos].sum(axis=0)
    fp = ab[~pos].sum(axis=0)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return {
        "n": int(pm.size),
        "positives": n_pos,
        "hist_pos": np.bincount(hb[pos], minlength=bins).tolist(),
        "hist_neg": np.bincount(hb[~pos], minlength=bins).tolist(),
        "sum_p": math.fsum(pm.tolist()),
        "sum_p2": math.fsum((pm * pm).tolist()),
        "sum_py": math.fsum(pm[pos].tolist()),
        "sum_y": n_pos,
        "confusion": {
            "tp": [int(v) for v in tp], "fp": [int(v) for v in fp],
            "tn": [int(n_neg - v) for v in fp], "fn": [int(n_pos - v) for v in tp],
        },
        "calibration_bins": {
            "n": np.bincount(cb, minlength=CALIBRATION_BINS).tolist(),
            "sum_p": [math.fsum(pm[cb == k].tolist()) for k in range(CALIBRATION_BINS)],
            "sum_y": np.bincount(cb[pos], minlength=CALIBRATION_BINS).tolist(),
        },
    }


def local_aggregates(
    risk: Sequence[float] | np.ndarray,
    label: Sequence[int] | np.ndarray,
    subgroups: Mapping[str, Sequence[str | None]] | None,
    thresholds: Sequence[float],
    *,
    min_cell: int = DEFAULT_MIN_CELL,
    hist_bins: int = HIST_BINS,
    logit_range: tuple[float, float] = LOGIT_RANGE,
) -> dict[str, Any]:
    """Aggregates one hospital returns for the validation report (JSON-serialisable, no patient rows).

    Args:
        risk: Predicted risks in [0, 1].
        label: Observed outcomes (0/1).
        subgroups: Group name -> one value per patient (``None``/NaN = missing: the patient is in no
            cell of that group). Names ``"all"``/``"hospital"`` and names containing ``"="`` are reserved.
        thresholds: Declared decision thresholds in (0, 1); confusion counts are exact at these.
        min_cell: Subgroup cells with fewer patients are suppressed (see the module docstring).
        hist_bins: Number of logit-scale histogram bins.
        logit_range: Logit range of the histogram; values outside go to the edge bins.

    Raises:
        ValidationInputError: On malformed input.
    """
    p, y = _checked_risk_label(risk, label)
    ths = _check_thresholds(thresholds)
    bins, lo, hi = histogram_spec(hist_bins, logit_range, min_cell)

    hbin = logit_bins(p, bins, lo, hi)
    cbin = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    above = p[:, None] >= np.asarray(ths, dtype=float)[None, :] if ths else np.zeros((p.size, 0), bool)

    cell = functools.partial(_binary_cell, p=p, y=y, hbin=hbin, cbin=cbin, above=above, bins=bins)
    cells: dict[str, Any] = {ALL: cell(np.ones(p.size, dtype=bool))}
    reported, suppressed = subgroup_cells(subgroups, p.size, min_cell, cell)
    cells.update(reported)

    return {
        "schema": SCHEMA,
        "histogram": {"bins": bins, "logit_min": lo, "logit_max": hi},
        "calibration_bins": CALIBRATION_BINS,
        "thresholds": ths,
        "min_cell": int(min_cell),
        "cells": cells,
        "suppressed": sorted(suppressed),
        "hospitals": [],
    }


def _sum_cells(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "n": sum_ints(cells, "n"),
        "positives": sum_ints(cells, "positives"),
        "hist_pos": sum_int_lists(cells, "hist_pos"),
        "hist_neg": sum_int_lists(cells, "hist_neg"),
        "sum_p": sum_floats(cells, "sum_p"),
        "sum_p2": sum_floats(cells, "sum_p2"),
        "sum_py": sum_floats(cells, "sum_py"),
        "sum_y": sum_ints(cells, "sum_y"),
        "confusion": {k: sum_int_lists(cells, "confusion", k) for k in ("tp", "fp", "tn", "fn")},
        "calibration_bins": {
            "n": sum_int_lists(cells, "calibration_bins", "n"),
            "sum_p": sum_float_lists(cells, "calibration_bins", "sum_p"),
            "sum_y": sum_int_lists(cells, "calibration_bins", "sum_y"),
        },
    }


def merge_aggregates(parts: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum aggregates cell by cell.

    Args:
        parts: Either ``{hospital_id: local_aggregates(...)}`` — each hospital's ``"all"`` cell also
            becomes the cell ``"hospital=<id>"`` and its suppressed names are prefixed ``"<id>:"`` — or
            a sequence of already merged aggregates (e.g. regional merges; hospital ids must not repeat).

    Returns:
        An aggregate of the same form; ``"hospitals"`` lists the contributors (sorted). A cell is the sum
        over the parts that reported it (suppressed cells are absent from their hospital's share).
        Counts are exact integers and float sums use ``math.fsum``, so the result does not depend on
        the order of ``parts``.

    Raises:
        ValidationInputError: On incompatible aggregates (schema, histogram, thresholds) or repeated hospitals.
    """
    return merge_parts(parts, schema=SCHEMA, same=("histogram", "calibration_bins", "thresholds"), sum_cells=_sum_cells)


def _net_benefit(tp: float, fp: float, n: int, t: float) -> float | None:
    return tp / n - fp / n * t / (1.0 - t) if n else None


def _treat_all(prevalence: float | None, t: float) -> float | None:
    return prevalence - (1.0 - prevalence) * t / (1.0 - t) if prevalence is not None else None


def _threshold_rows(conf: Mapping[str, Sequence[int]], thresholds: list[float], columns: list[int], n: int,
                    prevalence: float | None) -> list[dict[str, Any]]:
    """Exact confusion counts, rates and net benefit at each requested (declared) threshold."""
    rows = []
    for t, j in zip(thresholds, columns):
        tp, fp, tn, fn = (int(conf[key][j]) for key in ("tp", "fp", "tn", "fn"))
        rows.append({
            "threshold": t, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
            "net_benefit": _net_benefit(tp, fp, n, t), "net_benefit_treat_all": _treat_all(prevalence, t),
        })
    return rows


def _decision_curve(hp: np.ndarray, hn: np.ndarray, centres: np.ndarray, n: int,
                    prevalence: float | None) -> dict[str, list[float | None]]:
    """Net benefit over 0.01..0.99 from the histogram: a bin counts as "treat" when its centre is >= logit(t)."""
    dts = np.asarray(DECISION_THRESHOLDS)
    cut = np.searchsorted(centres, np.log(dts / (1.0 - dts)), side="left")
    tp_above = np.concatenate([np.cumsum(hp[::-1])[::-1], [0.0]])
    fp_above = np.concatenate([np.cumsum(hn[::-1])[::-1], [0.0]])
    return {
        "threshold": [float(t) for t in dts],
        "model": [json_number(_net_benefit(tp_above[c], fp_above[c], n, t)) for c, t in zip(cut, dts)],
        "treat_all": [json_number(_treat_all(prevalence, t)) for t in dts],
        "treat_none": [0.0 for _ in dts],
    }


def _calibration(cell: Mapping[str, Any], n: int) -> tuple[list[dict[str, Any]], float | None, float | None]:
    """The exact calibration curve, ECE and Brier score of a cell."""
    cb = cell["calibration_bins"]
    curve = [{"mean_predicted": float(sp) / cnt, "observed": float(sy) / cnt, "n": int(cnt)}
             for cnt, sp, sy in zip(cb["n"], cb["sum_p"], cb["sum_y"]) if cnt > 0]
    ece = math.fsum(abs(float(sy) - float(sp)) for sp, sy in zip(cb["sum_p"], cb["sum_y"])) / n if n else None
    brier = max(0.0, (float(cell["sum_p2"]) - 2.0 * float(cell["sum_py"]) + float(cell["sum_y"])) / n) if n else None
    return curve, ece, brier


def _cell_metrics(cell: Mapping[str, Any], columns: list[int], thresholds: list[float],
                  centres: np.ndarray, curve_points: int) -> dict[str, Any]:
    n, n_pos = int(cell["n"]), int(cell["positives"])
    n_neg = n - n_pos
    hp = np.asarray(cell["hist_pos"], dtype=float)
    hn = np.asarray(cell["hist_neg"], dtype=float)
    prevalence = ratio(n_pos, n)
    auroc, se = auroc_se(hp, hn)
    intercept, slope = calibration_fit(hp, hn, centres)
    curve, ece, brier = _calibration(cell, n)
    return {
        "n": n,
        "positives": n_pos,
        "prevalence": prevalence,
        "auroc": json_number(auroc),
        "auroc_ci95": auroc_interval(auroc, se),
        "auprc": json_number(average_precision(hp, hn)),
        "brier": json_number(brier),
        "ece": json_number(ece),
        "calibration_intercept": json_number(intercept),
        "calibration_slope": json_number(slope),
        "calibration_curve": curve,
        "at_thresholds": _threshold_rows(cell["confusion"], thresholds, columns, n, prevalence),
        "decision_curve": _decision_curve(hp, hn, centres, n, prevalence),
        "roc": roc_curve(hp, hn, n_pos, n_neg, curve_points),
        "pr": pr_curve(hp, hn, n_pos, n_neg, curve_points),
    }


def build_report(agg: Mapping[str, Any], *, thresholds: Sequence[float] | None = None,
                 curve_points: int = 200) -> dict[str, Any]:
    """The validation report from (merged) aggregates.

    Args:
        agg: Output of :func:`merge_aggregates` (or :func:`local_aggregates`).
        thresholds: Thresholds for the ``at_thresholds`` rows; each must be one the hospitals declared
            (those rows are exact). ``None``: all declared thresholds.
        curve_points: At most this many points per ROC and PR curve.

    Returns:
        ``{"thresholds", "overall", "subgroups": {"hospital": {...}, "<group>": {"<value>": cell}},
        "suppressed", "hospitals"}``; see the module docstring for accuracy.

    Raises:
        ValidationInputError: On an unknown schema, an undeclared threshold or ``curve_points < 2``.
    """
    require_schema(agg, SCHEMA)
    if curve_points < 2:
        raise ValidationInputError("curve_points must be >= 2")
    declared = [float(t) for t in agg["thresholds"]]
    wanted = declared if thresholds is None else _check_thresholds(thresholds)
    missing = [t for t in wanted if t not in declared]
    if missing:
        raise ValidationInputError(f"thresholds {missing} were not declared to the hospitals (declared: {declared})")
    columns = [declared.index(t) for t in wanted]
    spec = agg["histogram"]
    bins, lo, hi = int(spec["bins"]), float(spec["logit_min"]), float(spec["logit_max"])
    centres = lo + (np.arange(bins) + 0.5) * ((hi - lo) / bins)

    def metrics(cell: Mapping[str, Any]) -> dict[str, Any]:
        return _cell_metrics(cell, columns, wanted, centres, int(curve_points))

    return {"thresholds": wanted, **report_cells(agg, metrics)}


def local_report(
    risk: Sequence[float] | np.ndarray,
    label: Sequence[int] | np.ndarray,
    subgroups: Mapping[str, Sequence[str | None]] | None,
    thresholds: Sequence[float],
    *,
    min_cell: int = DEFAULT_MIN_CELL,
    curve_points: int = 200,
) -> dict[str, Any]:
    """Report on one data set (e.g. a validator's own file); its hospital cell is ``"local"``."""
    agg = local_aggregates(risk, label, subgroups, thresholds, min_cell=min_cell)
    return build_report(merge_aggregates({"local": agg}), thresholds=thresholds, curve_points=curve_points)

