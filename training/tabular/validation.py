"""Federated clinical validation report of a model version (TRIPOD+AI; Van Calster et al. on calibration).

The report is computed without moving patient data. Each hospital scores its own held-out data and
returns :func:`local_aggregates` only; the coordinator sums them with :func:`merge_aggregates` and
builds the report with :func:`build_report`. A validator can do the same on one file with
:func:`local_report`; :func:`report_hash` fingerprints the exact report a validator saw.

What leaves a hospital (per cell: ``"all"`` and each subgroup value ``"group=value"``)
    * ``n`` and ``positives``;
    * two histograms of the predicted risk on the logit scale, one for patients with the event and
      one without: *counts per bin only*, never a patient's score or identifier. Default 2,400 bins of
      width 0.01 over logit in [-12, 12] (risk 6e-6 .. 1 - 6e-6); values outside are clamped into the
      edge bins;
    * exact sufficient sums ``sum_p``, ``sum_p2``, ``sum_py``, ``sum_y`` (Brier score is exact);
    * exact confusion counts ``tp, fp, tn, fn`` at each declared threshold (``risk >= t`` is positive);
    * exact calibration bins: for 10 equal-width risk bins ``[0, .1), ..., [.9, 1]`` the count, the sum
      of predicted risks and the number of events (ECE and the calibration curve are exact).

Disclosure control
    A subgroup cell with fewer than ``min_cell`` patients (default 10) is not reported; its name is
    listed under ``"suppressed"``. Because a group's cells partition the ``"all"`` cell (up to patients
    whose value is missing), a single small cell could be recovered by subtraction, so suppression is
    complementary: while the patients of a group not covered by reported cells number between 1 and
    ``min_cell - 1``, the smallest reported cell of that group is suppressed too. The ``"all"`` cell
    is always reported. Residual risk, by design of the requested content: a histogram bin, a
    calibration bin or a threshold row can still hold a single patient, so a reported cell reveals
    statements such as "one patient of this cell had a predicted risk in [a, b) and had the event".
    These are statements about model outputs, not patient records; coarser histograms
    (``hist_bins``) reduce them, and counts could be noised before release if a stronger guarantee is
    needed (not done here: the report must match the pooled computation).

Accuracy (ranking metrics and calibration fits come from the histograms)
    * AUROC counts a positive/negative pair in the same bin as one half. Hence
      ``|AUROC_binned - AUROC_exact| <= 0.5 * sum_b P_b N_b / (P N)``; with 0.01-wide logit bins this
      bound is about 1e-3 on realistic risk models and the observed error is ~1e-5 to 1e-4
      (tests require 0.002).
    * AUPRC is average precision with each bin treated as one tied score (scikit-learn's convention
      for ties); observed error up to ~1e-3 in subgroups of a few hundred (tests require 0.005).
    * Calibration intercept/slope are fitted on bin-centre logits weighted by counts (within-bin
      logit error <= 0.005); observed error ~1e-4 (tests require 0.02).
    * Brier score, ECE, calibration curve, confusion counts and net benefit at the declared thresholds
      are exact (up to floating-point summation). The decision curve over 0.01..0.99 and the ROC/PR
      curves for plotting are binned.

AUROC confidence interval
    DeLong et al. (1988) variance computed from the binned data (the structural components of a
    positive/negative depend only on its bin), 95% Wald interval on the AUROC scale clipped to [0, 1].
    Unlike Hanley & McNeil it does not assume a score distribution. ``None`` when a class has
    fewer than two patients.

Undefined values (no events, division by zero, non-existent maximum-likelihood fit) are ``None``,
never NaN: aggregates and reports are plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "AGE_BANDS",
    "CALIBRATION_BINS",
    "DECISION_THRESHOLDS",
    "DEFAULT_MIN_CELL",
    "HIST_BINS",
    "LOGIT_RANGE",
    "SCHEMA",
    "age_band",
    "build_report",
    "local_aggregates",
    "local_report",
    "merge_aggregates",
    "report_hash",
]

SCHEMA = "bioverse.validation.aggregates/1"
HIST_BINS = 2400
LOGIT_RANGE: tuple[float, float] = (-12.0, 12.0)
CALIBRATION_BINS = 10
DEFAULT_MIN_CELL = 10
AGE_BANDS: tuple[str, ...] = ("<50", "50-59", "60-69", "70-79", ">=80")
DECISION_THRESHOLDS: tuple[float, ...] = tuple(round(k / 100, 2) for k in range(1, 100))
ALL = "all"
HOSPITAL = "hospital"
_Z975 = 1.959963984540054


# --------------------------------------------------------------------------- helpers


def _expit(x: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-free and accurate in both tails."""
    x = np.asarray(x, dtype=float)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


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


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    out = [float(t) for t in thresholds]
    for t in out:
        if not 0.0 < t < 1.0:
            raise ValueError(f"thresholds must lie strictly between 0 and 1, got {t}")
    if len(set(out)) != len(out):
        raise ValueError(f"thresholds must be unique, got {out}")
    return out


def _subgroup_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value)
    return text if text else None


def _require_schema(agg: Mapping[str, Any], schema: str, *, name_expected: bool = False) -> None:
    if agg.get("schema") != schema:
        expected = f" (expected {schema!r})" if name_expected else ""
        raise ValueError(f"unsupported aggregate schema {agg.get('schema')!r}{expected}")


# --------------------------------------------------------------------------- hospital side
# (the helpers up to local_aggregates are shared with training.imaging.validation)


def _histogram_spec(hist_bins: int, logit_range: tuple[float, float], min_cell: int) -> tuple[int, float, float]:
    """Checked ``(bins, logit_min, logit_max)`` of the logit histograms; also checks ``min_cell``."""
    lo, hi = float(logit_range[0]), float(logit_range[1])
    bins = int(hist_bins)
    if not hi > lo or bins < 2:
        raise ValueError("need logit_range[1] > logit_range[0] and hist_bins >= 2")
    if int(min_cell) < 1:
        raise ValueError("min_cell must be >= 1")
    return bins, lo, hi


def _logit_bins(p: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
    """Histogram bin of each probability on the logit scale; values outside go to the edge bins."""
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)
    return np.clip(np.floor((z - lo) / ((hi - lo) / bins)), 0, bins - 1).astype(np.int64)


def _reported_values(sizes: Mapping[str, int], n: int, min_cell: int) -> set[str]:
    """Values of one group whose cells may be reported (small cells and complementary suppression)."""
    reported = {v for v, size in sizes.items() if size >= min_cell}
    # Complementary suppression: the uncovered remainder must not be a small cell either.
    while reported and 0 < n - sum(sizes[v] for v in reported) < min_cell:
        reported.remove(min(reported, key=lambda v: (sizes[v], v)))
    return reported


def _subgroup_cells(
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
            raise ValueError(f"invalid subgroup name {group!r}")
        vals = np.array([_subgroup_value(v) for v in values], dtype=object)
        if vals.size != n:
            raise ValueError(f"subgroup {group!r} has {vals.size} values for {n} patients")
        sizes = {v: int(np.sum(vals == v)) for v in sorted({v for v in vals.tolist() if v is not None})}
        reported = _reported_values(sizes, n, min_cell)
        for v in sizes:
            name = f"{group}={v}"
            if v in reported:
                cells[name] = cell(vals == v)
            else:
                suppressed.append(name)
    return cells, suppressed


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
        ValueError: On malformed input.
    """
    p = np.asarray(risk, dtype=float).ravel()
    y_raw = np.asarray(label).ravel()
    if p.shape != y_raw.shape:
        raise ValueError(f"risk and label differ in length: {p.size} vs {y_raw.size}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("risk must be finite and within [0, 1]")
    y = y_raw.astype(float)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("label must be 0/1")
    y = y.astype(np.int64)
    ths = _check_thresholds(thresholds)
    bins, lo, hi = _histogram_spec(hist_bins, logit_range, min_cell)

    hbin = _logit_bins(p, bins, lo, hi)
    cbin = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    above = p[:, None] >= np.asarray(ths, dtype=float)[None, :] if ths else np.zeros((p.size, 0), bool)

    def cell(mask: np.ndarray) -> dict[str, Any]:
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

    cells: dict[str, Any] = {ALL: cell(np.ones(p.size, dtype=bool))}
    reported, suppressed = _subgroup_cells(subgroups, p.size, min_cell, cell)
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


# --------------------------------------------------------------------------- coordinator side


# Sums over cells of ``cells[i][key]`` (or ``cells[i][key][sub]``), shared with
# training.imaging.validation: exact integers, ``math.fsum`` for floats.


def _count(cells: Sequence[Mapping[str, Any]], key: str) -> int:
    return sum(int(c[key]) for c in cells)


def _counts(cells: Sequence[Mapping[str, Any]], key: str, sub: str | None = None) -> list[Any]:
    """Element-wise sum of integer lists (or nested lists, e.g. per class)."""
    rows = [c[key] if sub is None else c[key][sub] for c in cells]
    return np.sum(np.asarray(rows, dtype=np.int64), axis=0).tolist()


def _fsum(cells: Sequence[Mapping[str, Any]], key: str) -> float:
    return math.fsum(float(c[key]) for c in cells)


def _fsums(cells: Sequence[Mapping[str, Any]], key: str, sub: str) -> list[float]:
    """Element-wise ``math.fsum`` of float lists."""
    return [math.fsum(float(c[key][sub][k]) for c in cells) for k in range(len(cells[0][key][sub]))]


def _sum_cells(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "n": _count(cells, "n"),
        "positives": _count(cells, "positives"),
        "hist_pos": _counts(cells, "hist_pos"),
        "hist_neg": _counts(cells, "hist_neg"),
        "sum_p": _fsum(cells, "sum_p"),
        "sum_p2": _fsum(cells, "sum_p2"),
        "sum_py": _fsum(cells, "sum_py"),
        "sum_y": _count(cells, "sum_y"),
        "confusion": {k: _counts(cells, "confusion", k) for k in ("tp", "fp", "tn", "fn")},
        "calibration_bins": {
            "n": _counts(cells, "calibration_bins", "n"),
            "sum_p": _fsums(cells, "calibration_bins", "sum_p"),
            "sum_y": _counts(cells, "calibration_bins", "sum_y"),
        },
    }


def _labelled(agg: Mapping[str, Any], hospital_id: str) -> dict[str, Any]:
    if not isinstance(hospital_id, str) or not hospital_id or "=" in hospital_id:
        raise ValueError(f"invalid hospital id {hospital_id!r}")
    if agg.get("hospitals"):
        raise ValueError(f"aggregate given for {hospital_id!r} is already merged; pass merged aggregates as a list")
    out = dict(agg)
    out["cells"] = {**agg["cells"], f"{HOSPITAL}={hospital_id}": agg["cells"][ALL]}
    out["suppressed"] = [f"{hospital_id}:{name}" for name in agg.get("suppressed", [])]
    out["hospitals"] = [hospital_id]
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, list | tuple) else value


def _merge(
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
        raise ValueError("nothing to merge")
    first = items[0]
    for agg in items:
        _require_schema(agg, schema, name_expected=name_expected)
        for key in same:
            if agg[key] != first[key]:
                raise ValueError(f"aggregates disagree on {key}: {agg[key]!r} vs {first[key]!r}")
    hospitals = [h for agg in items for h in agg.get("hospitals", [])]
    if len(set(hospitals)) != len(hospitals):
        raise ValueError(f"hospital contributes twice: {sorted(hospitals)}")
    names = sorted({name for agg in items for name in agg["cells"]})
    return {
        "schema": schema,
        **{key: _copy(first[key]) for key in same},
        "min_cell": min(int(agg["min_cell"]) for agg in items),
        "cells": {name: sum_cells([agg["cells"][name] for agg in items if name in agg["cells"]]) for name in names},
        "suppressed": sorted({s for agg in items for s in agg.get("suppressed", [])}),
        "hospitals": sorted(hospitals),
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
        ValueError: On incompatible aggregates (schema, histogram, thresholds) or repeated hospitals.
    """
    return _merge(parts, schema=SCHEMA, same=("histogram", "calibration_bins", "thresholds"), sum_cells=_sum_cells)


# --------------------------------------------------------------------------- metrics from a cell


def _auroc_se(hp: np.ndarray, hn: np.ndarray) -> tuple[float | None, float | None]:
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


def _interval(auc: float | None, se: float | None) -> list[float] | None:
    """95% Wald interval on the AUROC scale, clipped to [0, 1]; ``None`` without a standard error."""
    if auc is None or se is None:
        return None
    return [max(0.0, auc - _Z975 * se), min(1.0, auc + _Z975 * se)]


def _roc_curve(hp: np.ndarray, hn: np.ndarray, n_pos: float, n_neg: float, curve_points: int) -> dict[str, list[float]]:
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


def _average_precision(hp: np.ndarray, hn: np.ndarray) -> float | None:
    n_pos = hp.sum()
    if n_pos == 0:
        return None
    hp_r, hn_r = hp[::-1], hn[::-1]
    tp, fp = np.cumsum(hp_r), np.cumsum(hn_r)
    hit = hp_r > 0
    return float((hp_r[hit] * tp[hit] / (tp[hit] + fp[hit])).sum() / n_pos)


def _calibration_fit(hp: np.ndarray, hn: np.ndarray, centres: np.ndarray) -> tuple[float | None, float | None]:
    """Calibration-in-the-large (intercept with logit offset) and slope of y ~ a + b logit(p), by count."""
    m = hp + hn
    keep = m > 0
    x, k, m = centres[keep], hp[keep], m[keep]
    n_pos, n = k.sum(), m.sum()
    if n_pos == 0 or n_pos == n:
        return None, None
    lo, hi = -60.0, 60.0  # sum(m * _expit(a + x)) increases in a: bisect for the root
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float((m * _expit(mid + x)).sum()) < n_pos else (lo, mid)
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
        mu = _expit(design @ beta)
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


def _cell_metrics(cell: Mapping[str, Any], columns: list[int], thresholds: list[float],
                  centres: np.ndarray, curve_points: int) -> dict[str, Any]:
    n, n_pos = int(cell["n"]), int(cell["positives"])
    n_neg = n - n_pos
    hp = np.asarray(cell["hist_pos"], dtype=float)
    hn = np.asarray(cell["hist_neg"], dtype=float)
    prevalence = _ratio(n_pos, n)
    auroc, se = _auroc_se(hp, hn)
    intercept, slope = _calibration_fit(hp, hn, centres)

    cb = cell["calibration_bins"]
    curve = [{"mean_predicted": float(sp) / cnt, "observed": float(sy) / cnt, "n": int(cnt)}
             for cnt, sp, sy in zip(cb["n"], cb["sum_p"], cb["sum_y"]) if cnt > 0]
    ece = math.fsum(abs(float(sy) - float(sp)) for sp, sy in zip(cb["sum_p"], cb["sum_y"])) / n if n else None
    brier = max(0.0, (float(cell["sum_p2"]) - 2.0 * float(cell["sum_py"]) + float(cell["sum_y"])) / n) if n else None

    def net_benefit(tp: float, fp: float, t: float) -> float | None:
        return tp / n - fp / n * t / (1.0 - t) if n else None

    def treat_all(t: float) -> float | None:
        return prevalence - (1.0 - prevalence) * t / (1.0 - t) if prevalence is not None else None

    conf = cell["confusion"]
    rows = []
    for t, j in zip(thresholds, columns):
        tp, fp, tn, fn = (int(conf[key][j]) for key in ("tp", "fp", "tn", "fn"))
        rows.append({
            "threshold": t, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
            "net_benefit": net_benefit(tp, fp, t), "net_benefit_treat_all": treat_all(t),
        })

    # Decision curve from the histogram: a bin counts as "treat" when its centre is >= logit(t).
    dts = np.asarray(DECISION_THRESHOLDS)
    cut = np.searchsorted(centres, np.log(dts / (1.0 - dts)), side="left")
    tp_above = np.concatenate([np.cumsum(hp[::-1])[::-1], [0.0]])
    fp_above = np.concatenate([np.cumsum(hn[::-1])[::-1], [0.0]])
    decision = {
        "threshold": [float(t) for t in dts],
        "model": [_num(net_benefit(tp_above[c], fp_above[c], t)) for c, t in zip(cut, dts)],
        "treat_all": [_num(treat_all(t)) for t in dts],
        "treat_none": [0.0 for _ in dts],
    }

    pr: dict[str, list[float]] = {"recall": [], "precision": []}
    if n_pos > 0 and n_neg > 0:
        tp_c, fp_c = _descending(hp, hn)
        recall = np.concatenate([[0.0], tp_c / n_pos])
        precision = np.concatenate([[1.0], tp_c / (tp_c + fp_c)])
        keep = _downsample(recall.size, curve_points)
        pr = {"recall": [float(v) for v in recall[keep]], "precision": [float(v) for v in precision[keep]]}

    return {
        "n": n,
        "positives": n_pos,
        "prevalence": prevalence,
        "auroc": _num(auroc),
        "auroc_ci95": _interval(auroc, se),
        "auprc": _num(_average_precision(hp, hn)),
        "brier": _num(brier),
        "ece": _num(ece),
        "calibration_intercept": _num(intercept),
        "calibration_slope": _num(slope),
        "calibration_curve": curve,
        "at_thresholds": rows,
        "decision_curve": decision,
        "roc": _roc_curve(hp, hn, n_pos, n_neg, curve_points),
        "pr": pr,
    }


def _value_order(group: str, value: str) -> tuple[int, str]:
    if group == "age_band" and value in AGE_BANDS:
        return AGE_BANDS.index(value), value
    return len(AGE_BANDS), value


def _report_cells(agg: Mapping[str, Any], metrics: Callable[[Mapping[str, Any]], dict[str, Any]]) -> dict[str, Any]:
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
        ValueError: On an unknown schema, an undeclared threshold or ``curve_points < 2``.
    """
    _require_schema(agg, SCHEMA)
    if curve_points < 2:
        raise ValueError("curve_points must be >= 2")
    declared = [float(t) for t in agg["thresholds"]]
    wanted = declared if thresholds is None else _check_thresholds(thresholds)
    missing = [t for t in wanted if t not in declared]
    if missing:
        raise ValueError(f"thresholds {missing} were not declared to the hospitals (declared: {declared})")
    columns = [declared.index(t) for t in wanted]
    spec = agg["histogram"]
    bins, lo, hi = int(spec["bins"]), float(spec["logit_min"]), float(spec["logit_max"])
    centres = lo + (np.arange(bins) + 0.5) * ((hi - lo) / bins)

    def metrics(cell: Mapping[str, Any]) -> dict[str, Any]:
        return _cell_metrics(cell, columns, wanted, centres, int(curve_points))

    return {"thresholds": wanted, **_report_cells(agg, metrics)}


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
