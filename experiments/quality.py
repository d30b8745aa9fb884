"""The quality floor at registration: is a model any better than the trivial one?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["QUALITY_WARNING_TAG", "quality_warning"]

#: Version tag holding the warning (one human-readable line of reasons), when there is one.
QUALITY_WARNING_TAG = "validation.quality_warning"


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _ci_low(value: Any) -> float | None:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return _finite(value[0])
    return None


def _binary_reasons(overall: Mapping[str, Any]) -> list[str]:
    reasons = []
    auroc, low = _finite(overall.get("auroc")), _ci_low(overall.get("auroc_ci95"))
    if auroc is None:
        reasons.append("AUROC not computable (one class only in the validation data)")
    elif low is not None and low <= 0.5:
        reasons.append(f"AUROC {auroc:.3f} whose 95% CI reaches 0.5 (lower bound {low:.3f})")
    slope = _finite(overall.get("calibration_slope"))
    if slope is not None and slope < 0:
        reasons.append(f"negative calibration slope {slope:.2f}")
    cells = [c for c in overall.get("at_thresholds") or [] if isinstance(c, Mapping)]
    one_class = [c for c in cells if (c.get("tp", 0) + c.get("fp", 0)) == 0 or (c.get("tn", 0) + c.get("fn", 0)) == 0]
    if cells and len(one_class) == len(cells):
        which = ", ".join(f"{float(c.get('threshold', 0)):g}" for c in cells)
        reasons.append(f"all predictions in one class at every decision threshold ({which})")
    return reasons


def _multiclass_reasons(overall: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    reasons = []
    k = max(len(classes), 2)
    auroc, low = _finite(overall.get("auroc")), _ci_low(overall.get("auroc_ci95"))
    if auroc is None:
        reasons.append("macro AUROC not computable")
    elif low is not None and low <= 0.5:
        reasons.append(f"macro AUROC {auroc:.3f} whose 95% CI reaches 0.5 (lower bound {low:.3f})")
    confusion = overall.get("confusion") or []
    rows = [[float(v) for v in row] for row in confusion if isinstance(row, Sequence)]
    bacc = _finite(overall.get("balanced_accuracy"))
    if bacc is not None and rows:
        support = [sum(row) for row in rows]
        recalls = [row[i] / s for i, (row, s) in enumerate(zip(rows, support, strict=False)) if s > 0]
        se = math.sqrt(sum(r * (1 - r) / s for r, s in zip(recalls, [s for s in support if s > 0], strict=True))) / max(len(recalls), 1)
        if bacc - 1.96 * se <= 1 / k:
            reasons.append(f"balanced accuracy {bacc:.3f} not above chance ({1 / k:.3f}) at 95%")
    if rows:
        predicted = [sum(row[j] for row in rows if j < len(row)) for j in range(len(rows[0]))]
        used = [classes[j] if j < len(classes) else str(j) for j, count in enumerate(predicted) if count > 0]
        if len(used) == 1:
            reasons.append(f"every image predicted {used[0]}")
    return reasons


def quality_warning(report: Mapping[str, Any]) -> str | None:
    """One line listing why the model is no better than the trivial one, or None.

    Binary risk models: an AUROC whose 95% CI reaches 0.5, a negative calibration slope,
    or all predictions in one class at every decision threshold. Multi-class image
    models: a macro AUROC whose 95% CI reaches 0.5, a balanced accuracy not above chance
    (1/k) at 95%, or one class predicted for everything.
    """
    overall = report.get("overall") or {}
    if report.get("task") == "multiclass":
        reasons = _multiclass_reasons(overall, list(report.get("classes") or []))
    else:
        reasons = _binary_reasons(overall)
    if not reasons:
        return None
    return "no better than the trivial model on the federated validation: " + "; ".join(reasons)
