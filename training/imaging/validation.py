"""Federated validation report of a multi-class model (e.g. an image classifier): aggregates, merge, report.

Same protocol and disclosure control as :mod:`training.tabular.validation`
(:func:`training.validation_cells.report_hash` fingerprints both); what leaves a hospital and the
macro-AUROC interval: docs/validation.md ("Statistics").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from training.binned_metrics import auroc_interval, auroc_se, roc_curve
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
    "MULTICLASS_SCHEMA",
    "ROW_SUM_TOLERANCE",
    "TASK",
    "build_multiclass_report",
    "local_multiclass_aggregates",
    "local_multiclass_report",
    "merge_multiclass_aggregates",
]

MULTICLASS_SCHEMA = "bioverse.validation.multiclass/1"
TASK = "multiclass"
#: Each row of predicted probabilities must sum to 1 within this (float32 softmax outputs do).
ROW_SUM_TOLERANCE = 1e-4
_EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- hospital side


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        raise ValidationInputError(f"classes must be a sequence of class names, got the string {classes!r}")
    names = list(classes)
    if len(names) < 2 or not all(isinstance(c, str) and c for c in names):
        raise ValidationInputError(f"classes must be at least two non-empty names, got {names!r}")
    if len(set(names)) != len(names):
        raise ValidationInputError(f"class names must be unique, got {names!r}")
    return names


def _check_inputs(probs: Any, labels: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValidationInputError(f"probs must have shape (N, {k}) for {k} classes, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValidationInputError("probs must be finite and within [0, 1]")
    worst = float(np.max(np.abs(p.sum(axis=1) - 1.0))) if p.size else 0.0
    if worst > ROW_SUM_TOLERANCE:
        raise ValidationInputError(f"each row of probs must sum to 1 (softmax output); worst row is off by {worst:.3g}")
    y_raw = np.asarray(labels).ravel()
    if y_raw.size != p.shape[0]:
        raise ValidationInputError(f"probs and labels differ in length: {p.shape[0]} vs {y_raw.size}")
    if y_raw.size and y_raw.dtype.kind not in "iuf":
        raise ValidationInputError(f"labels must be class indices 0..{k - 1}, got dtype {y_raw.dtype}")
    y = y_raw.astype(float)
    if np.any((y != np.round(y)) | (y < 0) | (y >= k)):
        raise ValidationInputError(f"labels must be class indices 0..{k - 1}")
    return p, y.astype(np.int64)


def _multiclass_cell(mask: np.ndarray, *, y: np.ndarray, pred: np.ndarray, hbin: np.ndarray, onehot: np.ndarray,
                     cbin: np.ndarray, correct: np.ndarray, conf: np.ndarray, brier: np.ndarray, log_loss: np.ndarray,
                     k: int, bins: int) -> dict[str, Any]:
    """The aggregates of the patients in ``mask``: support, confusion, one-vs-rest histograms, sums, calibration bins."""
    ym, pm, hb, oh = y[mask], pred[mask], hbin[mask], onehot[mask]
    cb, cm, cf = cbin[mask], correct[mask], conf[mask]
    return {
        "n": int(ym.size),
        "support": np.bincount(ym, minlength=k).tolist(),
        "confusion": np.bincount(ym * k + pm, minlength=k * k).reshape(k, k).tolist(),
        "hist_pos": [np.bincount(hb[oh[:, j], j], minlength=bins).tolist() for j in range(k)],
        "hist_neg": [np.bincount(hb[~oh[:, j], j], minlength=bins).tolist() for j in range(k)],
        "sum_brier": math.fsum(brier[mask].tolist()),
        "sum_log_loss": math.fsum(log_loss[mask].tolist()),
        "calibration_bins": {
            "n": np.bincount(cb, minlength=CALIBRATION_BINS).tolist(),
            "sum_conf": [math.fsum(cf[cb == b].tolist()) for b in range(CALIBRATION_BINS)],
            "correct": np.bincount(cb[cm], minlength=CALIBRATION_BINS).tolist(),
        },
    }


def local_multiclass_aggregates(
    probs: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    subgroups: Mapping[str, Sequence[str | None]] | None,
    *,
    min_cell: int = DEFAULT_MIN_CELL,
    hist_bins: int = HIST_BINS,
    logit_range: tuple[float, float] = LOGIT_RANGE,
) -> dict[str, Any]:
    """Aggregates one hospital returns for the multi-class validation report (JSON, no patient rows).

    Args:
        probs: Predicted class probabilities, shape ``(N, K)``; rows sum to 1.
        labels: True class indices into ``classes``, shape ``(N,)``.
        classes: The ``K >= 2`` class names, in the model's output order.
        subgroups: Group name -> one value per patient (``None``/NaN = missing). Names
            ``"all"``/``"hospital"`` and names containing ``"="`` are reserved.
        min_cell: Subgroup cells with fewer patients are suppressed (see the module docstring).
        hist_bins: Number of logit-scale histogram bins per class.
        logit_range: Logit range of the histograms; values outside go to the edge bins.

    Raises:
        ValidationInputError: On malformed input.
    """
    names = _check_classes(classes)
    k = len(names)
    p, y = _check_inputs(probs, labels, k)
    bins, lo, hi = histogram_spec(hist_bins, logit_range, min_cell)

    n_all = p.shape[0]
    hbin = logit_bins(p, bins, lo, hi)
    pred = np.argmax(p, axis=1) if n_all else np.zeros(0, dtype=np.int64)
    onehot = np.eye(k, dtype=bool)[y]
    conf = p.max(axis=1) if n_all else np.zeros(0)
    cbin = np.minimum((conf * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    correct = pred == y
    brier = ((p - onehot) ** 2).sum(axis=1)
    log_loss = -np.log(np.clip(p[np.arange(n_all), y], _EPS, 1.0 - _EPS))

    cell = functools.partial(_multiclass_cell, y=y, pred=pred, hbin=hbin, onehot=onehot, cbin=cbin, correct=correct,
                             conf=conf, brier=brier, log_loss=log_loss, k=k, bins=bins)
    cells: dict[str, Any] = {ALL: cell(np.ones(n_all, dtype=bool))}
    reported, suppressed = subgroup_cells(subgroups, n_all, int(min_cell), cell)
    cells.update(reported)

    return {
        "schema": MULTICLASS_SCHEMA,
        "classes": names,
        "histogram": {"bins": bins, "logit_min": lo, "logit_max": hi},
        "calibration_bins": CALIBRATION_BINS,
        "min_cell": int(min_cell),
        "cells": cells,
        "suppressed": sorted(suppressed),
        "hospitals": [],
    }


# --------------------------------------------------------------------------- coordinator side


def _sum_cells(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "n": sum_ints(cells, "n"),
        "support": sum_int_lists(cells, "support"),
        "confusion": sum_int_lists(cells, "confusion"),
        "hist_pos": sum_int_lists(cells, "hist_pos"),
        "hist_neg": sum_int_lists(cells, "hist_neg"),
        "sum_brier": sum_floats(cells, "sum_brier"),
        "sum_log_loss": sum_floats(cells, "sum_log_loss"),
        "calibration_bins": {
            "n": sum_int_lists(cells, "calibration_bins", "n"),
            "sum_conf": sum_float_lists(cells, "calibration_bins", "sum_conf"),
            "correct": sum_int_lists(cells, "calibration_bins", "correct"),
        },
    }


def merge_multiclass_aggregates(
    parts: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Sum multi-class aggregates cell by cell (the contract of ``training.tabular.validation.merge_aggregates``).

    Args:
        parts: Either ``{hospital_id: local_multiclass_aggregates(...)}`` — each hospital's ``"all"``
            cell also becomes the cell ``"hospital=<id>"`` and its suppressed names are prefixed
            ``"<id>:"`` — or a sequence of already merged aggregates (hospital ids must not repeat).

    Returns:
        An aggregate of the same form, ``"hospitals"`` sorted. Counts are exact integers and float
        sums use ``math.fsum`` (correctly rounded), so the result does not depend on the order of
        ``parts``. Merging merged aggregates (e.g. regional ones) gives the same counts; its float
        sums can differ in the last bit, since each part's sums were rounded once already.

    Raises:
        ValidationInputError: On incompatible aggregates (schema, classes, histogram) or repeated hospitals.
    """
    return merge_parts(parts, schema=MULTICLASS_SCHEMA, same=("classes", "histogram", "calibration_bins"),
                  sum_cells=_sum_cells, name_expected=True)


# --------------------------------------------------------------------------- metrics from a cell


def _class_metrics(cell: Mapping[str, Any], j: int, cm: np.ndarray, curve_points: int) -> tuple[dict[str, Any], float | None]:
    """One-vs-rest metrics of class ``j`` and the DeLong standard error of its AUROC."""
    n = int(cell["n"])
    tp = int(cm[j, j])
    support, predicted = int(cm[j].sum()), int(cm[:, j].sum())
    fn, fp = support - tp, predicted - tp
    tn = n - tp - fn - fp
    hp = np.asarray(cell["hist_pos"][j], dtype=float)
    hn = np.asarray(cell["hist_neg"][j], dtype=float)
    auc, se = auroc_se(hp, hn)
    sensitivity, ppv = ratio(tp, support), ratio(tp, predicted)
    return {
        "support": support,
        "prevalence": ratio(support, n),
        "auroc": json_number(auc),
        "auroc_ci95": auroc_interval(auc, se),
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "ppv": ppv,
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "roc": roc_curve(hp, hn, hp.sum(), hn.sum(), curve_points),
    }, se


def _cell_metrics(cell: Mapping[str, Any], classes: list[str], curve_points: int) -> dict[str, Any]:
    n = int(cell["n"])
    cm = np.asarray(cell["confusion"], dtype=np.int64).reshape(len(classes), len(classes))
    per_class: dict[str, Any] = {}
    aucs: list[float] = []
    ses: list[float] = []
    complete = True  # every class with an AUROC has a standard error
    for j, name in enumerate(classes):
        metrics, se = _class_metrics(cell, j, cm, curve_points)
        per_class[name] = metrics
        if metrics["auroc"] is not None:
            aucs.append(metrics["auroc"])
            if se is None:
                complete = False
            else:
                ses.append(se)
    recalls = [m["sensitivity"] for m in per_class.values() if m["sensitivity"] is not None]
    macro = float(np.mean(aucs)) if aucs else None
    macro_se = float(np.mean(ses)) if ses and complete else None  # SE(mean) <= mean SE: conservative

    cb = cell["calibration_bins"]
    curve = [{"mean_confidence": float(sc) / cnt, "accuracy": float(ok) / cnt, "n": int(cnt)}
             for cnt, sc, ok in zip(cb["n"], cb["sum_conf"], cb["correct"]) if cnt > 0]
    ece = math.fsum(abs(float(ok) - float(sc)) for sc, ok in zip(cb["sum_conf"], cb["correct"])) / n if n else None
    return {
        "n": n,
        "accuracy": ratio(int(np.trace(cm)), n),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "auroc": json_number(macro),
        "auroc_ci95": auroc_interval(macro, macro_se),
        "brier": json_number(float(cell["sum_brier"]) / n) if n else None,
        "log_loss": json_number(float(cell["sum_log_loss"]) / n) if n else None,
        "ece": json_number(ece),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "calibration_curve": curve,
    }


def build_multiclass_report(agg: Mapping[str, Any], *, curve_points: int = 200) -> dict[str, Any]:
    """The multi-class validation report from (merged) aggregates.

    Args:
        agg: Output of :func:`merge_multiclass_aggregates` (or :func:`local_multiclass_aggregates`).
        curve_points: At most this many points per ROC curve.

    Returns:
        ``{"task": "multiclass", "classes", "overall", "subgroups": {"hospital": {...},
        "<group>": {"<value>": cell}}, "suppressed", "hospitals"}``; a cell holds ``n``,
        ``accuracy``, ``balanced_accuracy``, ``auroc`` (macro one-vs-rest), ``auroc_ci95``,
        ``brier``, ``log_loss``, ``ece`` (top-label), ``per_class`` ``{name: {support, prevalence,
        auroc, auroc_ci95, sensitivity, specificity, ppv, npv, f1, tp, fp, tn, fn, roc}}``,
        ``confusion`` (rows: true class, columns: predicted) and ``calibration_curve``.

    Raises:
        ValidationInputError: On an unknown schema or ``curve_points < 2``.
    """
    require_schema(agg, MULTICLASS_SCHEMA, name_expected=True)
    if curve_points < 2:
        raise ValidationInputError("curve_points must be >= 2")
    classes = [str(c) for c in agg["classes"]]

    def metrics(cell: Mapping[str, Any]) -> dict[str, Any]:
        return _cell_metrics(cell, classes, int(curve_points))

    return {"task": TASK, "classes": classes, **report_cells(agg, metrics)}


def local_multiclass_report(
    probs: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    subgroups: Mapping[str, Sequence[str | None]] | None,
    *,
    min_cell: int = DEFAULT_MIN_CELL,
    curve_points: int = 200,
) -> dict[str, Any]:
    """Report on one data set (e.g. a validator's own file); its hospital cell is ``"local"``."""
    agg = local_multiclass_aggregates(probs, labels, classes, subgroups, min_cell=min_cell)
    return build_multiclass_report(merge_multiclass_aggregates({"local": agg}), curve_points=curve_points)
