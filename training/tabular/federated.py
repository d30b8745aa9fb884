"""The coordinator's tabular work: the federation's encoder, the vocabulary review, the validation report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.categories import vocabulary_findings
from training.modality import StatisticsReview
from training.tabular.preprocessing import MIN_CATEGORY_COUNT, FeatureEncoder, merge_statistics
from training.tabular.reference import FEATURES_KEY, monitoring_section
from training.tabular.validation import build_report, merge_aggregates

__all__ = ["federated_encoder", "validation_report", "vocabulary_review"]


def federated_encoder(spec: Any, stats: list[Mapping[str, Any]]) -> FeatureEncoder:
    """The feature encoder fitted on the merged statistics (DP: the declared ranges bound them)."""
    data = spec.data
    ranges = {c: (float(r[0]), float(r[1])) for c, r in data.ranges.items()} if spec.privacy.enabled else None
    return FeatureEncoder.from_statistics(merge_statistics([dict(s) for s in stats]), data.contract, ranges)


def vocabulary_review(spec: Any, stats: Mapping[str, Mapping[str, Any]]) -> StatisticsReview:
    """Per hospital, the categorical values no other hospital reported and those outside the
    declared lists; the run is refused when ``data.unknown_categories`` is ``refuse``. Values
    with fewer than MIN_CATEGORY_COUNT patients are counted, never named (nor do they refuse)."""
    data = spec.data
    contract = data.contract
    categorical = {h: s.get("categorical", {}) for h, s in stats.items()}
    findings = vocabulary_findings(categorical, {c: contract.declared(c) for c in contract.categorical},
                                   min_count=MIN_CATEGORY_COUNT)
    artifact = {"policy": data.unknown_categories, "min_count": MIN_CATEGORY_COUNT,
                "declared": {c: list(v) for c, v in contract.categories},
                "hospitals": {h: {c: sorted(v for v, n in values.items() if n >= MIN_CATEGORY_COUNT)
                                  for c, values in cols.items()} for h, cols in sorted(categorical.items())},
                "findings": [f.to_dict() for f in findings]}
    refused = [f for f in findings if f.site_only or f.undeclared]
    refusal = None
    if data.unknown_categories == "refuse" and refused:
        refusal = ("categorical values not shared by the federation (data.unknown_categories: refuse): "
                   + " | ".join(f.describe() for f in refused))
    return StatisticsReview(event="vocabulary", artifact_name="vocabulary.json", artifact=artifact,
                            warnings=[f.describe() for f in findings], policy=data.unknown_categories, refusal=refusal)


def validation_report(spec: Any, parts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The merged binary validation aggregates and the report at the spec's thresholds (``modality``: tabular).

    The report's ``monitoring`` section (score bins, and the feature counts hospitals sent under
    ``FEATURES_KEY``, popped here before the merge) is the served versions' drift reference; being
    in report.json, the report's SHA-256 pins it too (docs/monitoring.md)."""
    features = [p.pop(FEATURES_KEY) for p in parts.values() if FEATURES_KEY in p]  # type: ignore[attr-defined]
    merged = merge_aggregates(parts)
    report = {**build_report(merged, thresholds=spec.validation.thresholds), "modality": "tabular",
              "monitoring": monitoring_section(merged, features)}
    return merged, report
