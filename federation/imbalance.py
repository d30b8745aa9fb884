"""The coordinator's side of imbalance: class weights from the statistics round's class counts,
and the decision rule chosen on the hospitals' val aggregates (docs/imbalance.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.spec import ExperimentSpec
from training.decision import Decision, choose_threshold, prior_decision, rates_at
from training.imbalance import resolve_class_weights
from training.tabular.validation import merge_aggregates

__all__ = ["choose_decision", "class_names", "decision_section", "federation_class_weights", "served_scale",
           "total_counts"]

log = logging.getLogger(__name__)

def class_names(spec: ExperimentSpec) -> list[str]:
    """The model's classes in output order (the spec's modality says which)."""
    return spec.modality.class_names(spec)


def total_counts(per_hospital: Mapping[str, Sequence[float]]) -> list[float] | None:
    """Federation-wide class counts (summed over the hospitals that sent them), or None."""
    rows = [list(c) for c in per_hospital.values() if c]
    if not rows:
        return None
    return [float(sum(col)) for col in zip(*rows, strict=True)]


def federation_class_weights(spec: ExperimentSpec, per_hospital: Mapping[str, Sequence[float]]) -> list[float] | None:
    """The spec's ``training.class_weights`` as one weight per class, or None (unweighted).

    Raises:
        ValueError: ``balanced`` but no hospital sent class counts.
    """
    return resolve_class_weights(spec.training.class_weights, class_names(spec), total_counts(per_hospital))


def served_scale(spec: ExperimentSpec, per_hospital: Mapping[str, Sequence[float]],
                 class_weights: Sequence[float] | None) -> list[float] | None:
    """A multi-class model's prior correction (known from the statistics round, before
    validation), or None for a binary model (its threshold is chosen on val)."""
    if len(class_names(spec)) <= 2:
        return None
    scale = prior_decision(total_counts(per_hospital), class_weights, "more than two classes").class_scale
    return list(scale) if scale else None


def _binary_histograms(agg: Mapping[str, Any], positive: int | None) -> tuple[list[float], list[float]]:
    cell = agg["cells"]["all"]
    if positive is None:
        return cell["hist_pos"], cell["hist_neg"]
    return cell["hist_pos"][positive], cell["hist_neg"][positive]


def choose_decision(spec: ExperimentSpec, val_parts: Mapping[str, Mapping[str, Any]],
                    counts: Sequence[float] | None, class_weights: Sequence[float] | None) -> Decision:
    """The served decision rule: ``validation.threshold``'s rule on the merged val aggregates
    for a binary model; the prior-corrected argmax without val patients of both classes or
    for more than two classes."""
    rule = spec.validation.threshold
    if len(class_names(spec)) > 2:
        return prior_decision(counts, class_weights, "more than two classes")
    if rule.rule == "fixed":
        return Decision(rule="fixed", threshold=rule.value, source="spec")
    if not val_parts:
        log.warning("no hospital has a val part: the threshold is the training prior, not chosen on data")
        return prior_decision(counts, class_weights, "no val part")
    merged = merge_aggregates(dict(val_parts))
    hp, hn = _binary_histograms(merged, None)
    decision = choose_threshold(hp, hn, merged["histogram"], rule=rule.rule, target=rule.target)
    if decision is None:
        log.warning("the val part lacks patients of one class: the threshold is the training prior")
        return prior_decision(counts, class_weights, "val part without both classes")
    return decision


def decision_section(decision: Decision, test: Mapping[str, Any], *, multiclass: bool,
                     served_confusion: Sequence[Sequence[Sequence[int]]] | None = None) -> dict[str, Any]:
    """The report's ``decision`` section: the rule, where it came from and, for a threshold,
    the confusion counts, sensitivity and specificity on the held-out test aggregates; for
    a prior correction, accuracy and balanced accuracy of the served labels from the
    hospitals' ``served_confusion`` matrices (summed)."""
    section: dict[str, Any] = {"rule": decision.rule, "source": decision.source, "threshold": decision.threshold,
                               "target": decision.target, "val": decision.val or None,
                               "class_scale": list(decision.class_scale) if decision.class_scale else None}
    if decision.threshold is not None:
        hp, hn = _binary_histograms(test, 1 if multiclass else None)
        section["test"] = rates_at(decision, hp, hn, test["histogram"])
    elif served_confusion:
        cm = np.sum(np.asarray(served_confusion, dtype=np.int64), axis=0)
        support = cm.sum(axis=1)
        recall = [cm[k, k] / support[k] for k in range(len(cm)) if support[k]]
        section["test"] = {"n": int(cm.sum()), "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else None,
                           "balanced_accuracy": float(np.mean(recall)) if recall else None, "confusion": cm.tolist()}
    return section

