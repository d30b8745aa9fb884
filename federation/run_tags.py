"""The tags a registered version carries: its run, and its federated validation report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.spec import ExperimentSpec
from training.decision import Decision
from training.report_render import report_sha256

__all__ = ["validation_tags", "version_tags"]

_REPORTED = ("auroc", "calibration_slope", "calibration_intercept", "brier", "ece", "accuracy", "balanced_accuracy")
_DECISION_RATES = ("sensitivity", "specificity", "balanced_accuracy")


def validation_tags(report: Mapping[str, Any], hospitals: list[str], decision: Decision) -> dict[str, str]:
    """The ``validation.*`` tags that pin the report (its SHA-256) and quote its headline numbers."""
    overall = report["overall"]
    tags = {"validation.status": "complete", "validation.report_sha256": report_sha256(dict(report)),
            "validation.hospitals": ",".join(sorted(hospitals)), "validation.n": str(overall["n"])}
    for key in _REPORTED:
        if overall.get(key) is not None:
            tags[f"validation.{key}"] = f"{overall[key]:.4f}"
    tags.update(decision.tags())
    for key, value in (report["decision"].get("test") or {}).items():
        if key in _DECISION_RATES and value is not None:
            tags[f"validation.decision_{key}"] = f"{value:.4f}"
    return tags


def version_tags(spec: ExperimentSpec, run_id: str, epsilon: Mapping[str, float], fingerprints: Mapping[str, str],
                 datasets: Mapping[str, str]) -> dict[str, str]:
    """The run's tags on the version: experiment, strategy, privacy, hospitals, their schemas and datasets."""
    tags = {
        "experiment": spec.name,
        "run_id": run_id,
        "rounds": str(spec.training.rounds),
        "strategy": spec.strategy.name,
        "secure_aggregation": str(spec.strategy.secure_aggregation).lower(),
        "model_kind": spec.model.kind,
        "modality": spec.data.modality,
        "dp": str(spec.privacy.enabled).lower(),
        "epsilon": f"{max(epsilon.values()):.4f}" if epsilon else "inf",
        "delta": str(spec.privacy.target_delta) if spec.privacy.enabled else "0",
        "hospitals": ",".join(sorted(fingerprints)),
        "review_status": "pending",
    }
    tags.update({f"schema.{h}": fp for h, fp in sorted(fingerprints.items())})
    tags.update({f"dataset.{h}": d for h, d in sorted(datasets.items())})
    return tags
