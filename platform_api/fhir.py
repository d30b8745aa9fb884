"""A stored prediction as a FHIR R4 ``RiskAssessment`` (mapping and codes: docs/fhir.md)."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from experiments.terminology import SNOMED, UCUM, FeatureCoding, ModelTerminology

__all__ = [
    "ASSESSMENT_CODE",
    "FHIR_VERSION",
    "MODEL_SYSTEM",
    "PREDICTION_SYSTEM",
    "RISK_PROBABILITY_SYSTEM",
    "patient_identifier_system",
    "qualitative_risk_code",
    "risk_assessment",
]

#: The FHIR release the resources follow (R4B, wire-compatible with R4 for RiskAssessment).
FHIR_VERSION = "4.3.0"
PREDICTION_SYSTEM = "urn:bioverse:prediction"
MODEL_SYSTEM = "urn:bioverse:model"
DATA_ABSENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
#: SNOMED CT 225338004 |Risk assessment (procedure)|: what every BioVerse assessment is.
ASSESSMENT_CODE = {"system": SNOMED, "code": "225338004", "display": "Risk assessment"}
RISK_PROBABILITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"

_RISK_PROBABILITY_DISPLAY = {
    "negligible": "Negligible likelihood",
    "low": "Low likelihood",
    "moderate": "Moderate likelihood",
    "high": "High likelihood",
    "certain": "Certain",
}
#: Alert priority (``crud.alert_priority``) -> risk-probability code; ``None``: no alert.
_PRIORITY_TO_RISK = {None: "low", "none": "low", "medium": "moderate", "high": "high", "critical": "high"}

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def patient_identifier_system(tenant_id: str) -> str:
    """The identifier system of a tenant's patient ids (the tenant id percent-encoded)."""
    return f"urn:bioverse:tenant:{quote(str(tenant_id), safe='')}:patient"


def qualitative_risk_code(alert_priority: str | None) -> str:
    """The risk-probability code of an alert priority; ``ValueError`` for an unknown one."""
    key = alert_priority.lower() if isinstance(alert_priority, str) else alert_priority
    try:
        return _PRIORITY_TO_RISK[key]
    except KeyError:
        raise ValueError(f"unknown alert priority {alert_priority!r}") from None


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _instant(value: datetime) -> str:
    """A UTC time as FHIR JSON writes it (``2025-03-04T05:06:07.890000Z``)."""
    return value.isoformat().replace("+00:00", "Z")


def _absent(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": DATA_ABSENT_SYSTEM, "code": code, "display": display}]}


def _format_value(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _inputs_text(inputs: Mapping[str, Any] | None) -> str:
    if not inputs:
        return "inputs: (none)"
    return "inputs: " + ", ".join(f"{name}={_format_value(value)}" for name, value in inputs.items())


def _observation(index: int, feature: str, value: Any, coding: FeatureCoding | None, subject: dict[str, Any]) -> dict[str, Any]:
    """One input as a contained Observation (status final, coded where the terminology knows it)."""
    code: dict[str, Any] = {"text": feature}
    if coding is not None:
        code["coding"] = [coding.fhir()]
    obs: dict[str, Any] = {"resourceType": "Observation", "id": f"obs-{index}", "status": "final", "code": code,
                           "subject": subject}
    if value is None:
        obs["dataAbsentReason"] = _absent("unknown", "Unknown")
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        obs["dataAbsentReason"] = _absent("not-a-number", "Not a Number (NaN)")
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        quantity: dict[str, Any] = {"value": int(value) if isinstance(value, numbers.Integral) else float(value)}
        if coding is not None and coding.unit:
            quantity.update(unit=coding.unit, system=UCUM, code=coding.unit)
        obs["valueQuantity"] = quantity
    else:
        text = str(value)
        concept: dict[str, Any] = {"text": text}
        value_code = coding.values.get(text) if coding is not None else None
        if value_code is not None:
            concept["coding"] = [value_code.fhir()]
        obs["valueCodeableConcept"] = concept
    return obs


def _stored_threshold(prediction: Any) -> float | None:
    """The threshold the prediction was decided at, where the stored prediction keeps one."""
    value = getattr(prediction, "threshold", None)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 < float(value) < 1.0:
        return float(value)
    return None


def _prediction(risk: float, occurrence: datetime, terminology: ModelTerminology, alert_priority: str | None,
                model: str, stored_threshold: float | None) -> dict[str, Any]:
    outcome: dict[str, Any] = {"text": terminology.outcome_text}
    if terminology.outcome is not None:
        outcome["coding"] = [terminology.outcome.fhir()]
    out: dict[str, Any] = {"outcome": outcome, "probabilityDecimal": risk}
    threshold = stored_threshold if stored_threshold is not None else terminology.decision_threshold
    if threshold is not None:
        risk_code = "high" if risk >= threshold else "low"
        rule = f" (chosen by {terminology.decision_rule})" if terminology.decision_rule else ""
        out["rationale"] = (f"decision threshold {threshold:g} of {model}{rule}: a risk at or above it is high, "
                            "below it low")
    else:
        risk_code = qualitative_risk_code(alert_priority)
    out["qualitativeRisk"] = {"coding": [{"system": RISK_PROBABILITY_SYSTEM, "code": risk_code,
                                          "display": _RISK_PROBABILITY_DISPLAY[risk_code]}]}
    if terminology.horizon_days is not None:
        out["whenPeriod"] = {"start": _instant(occurrence),
                             "end": _instant(occurrence + timedelta(days=terminology.horizon_days))}
    return out


def risk_assessment(
    prediction: Any,
    twin: Any,
    *,
    base_url: str | None = None,
    alert_priority: str | None = None,
    terminology: ModelTerminology | None = None,
) -> dict[str, Any]:
    """The prediction as a validated FHIR R4 ``RiskAssessment``, as a JSON-ready dict.

    ``prediction`` needs ``id``, ``tenant_id``, ``risk``, ``model_name``, ``model_version``,
    ``inputs`` and ``created_at``; ``twin`` needs ``tenant_id`` and ``patient_id``.
    The qualitative risk is high/low at the decision threshold (``prediction.threshold``
    where the stored prediction keeps the one it was decided at, else the version's), and
    without one follows ``alert_priority`` (else ``prediction.alert_priority``).
    ``base_url``: the FHIR base URL where the tenant's ``Patient`` resources live. ``terminology``: the model
    version's codes (:func:`experiments.terminology.version_terminology`); default: the
    built-in feature codes, a text-only outcome, no horizon, no threshold.
    Raises ``ValueError`` when the prediction does not belong to the twin, for a risk
    outside [0, 1] or for an unknown alert priority, and ``pydantic.ValidationError``
    when the result is not valid FHIR (e.g. a prediction id that is not a FHIR id).
    """
    from fhir.resources.R4B.riskassessment import RiskAssessment  # heavy: import on first use

    if getattr(prediction, "twin_id", twin.id) != twin.id or prediction.tenant_id != twin.tenant_id:
        raise ValueError("the prediction does not belong to this twin")
    if alert_priority is None:
        alert_priority = getattr(prediction, "alert_priority", None)
    qualitative_risk_code(alert_priority)  # an unknown priority is refused even when a threshold decides
    risk = float(prediction.risk)
    if not 0.0 <= risk <= 1.0:  # also refuses NaN
        raise ValueError(f"risk {prediction.risk!r} is not a probability in [0, 1]")
    terminology = terminology or ModelTerminology()

    patient_id = str(twin.patient_id)
    subject: dict[str, Any] = {
        "type": "Patient",
        "identifier": {"system": patient_identifier_system(twin.tenant_id), "value": patient_id},
    }
    if _FHIR_ID.fullmatch(patient_id):
        reference = f"Patient/{patient_id}"
        subject["reference"] = f"{base_url.rstrip('/')}/{reference}" if base_url else reference

    model = f"{prediction.model_name}/{prediction.model_version}"
    display = f"{prediction.model_name} version {prediction.model_version}"
    occurrence = _utc(prediction.created_at)
    inputs = list((prediction.inputs or {}).items())
    observations = [_observation(i, feature, value, terminology.features.get(feature), subject)
                    for i, (feature, value) in enumerate(inputs, start=1)]
    device = {
        "resourceType": "Device",
        "id": "model",
        "identifier": [{"system": MODEL_SYSTEM, "value": model}],
        "deviceName": [{"name": str(prediction.model_name), "type": "model-name"}],
        "version": [{"value": str(prediction.model_version)}],
    }
    data: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": str(prediction.id),
        "contained": [device, *observations],
        "identifier": [{"system": PREDICTION_SYSTEM, "value": str(prediction.id)}],
        "status": "final",
        "code": {"coding": [ASSESSMENT_CODE], "text": "Risk assessment"},
        "subject": subject,
        "occurrenceDateTime": _instant(occurrence),
        "performer": {"reference": "#model", "type": "Device", "display": display},
        "method": {"coding": [{"system": MODEL_SYSTEM, "code": model, "display": display}], "text": model},
        "prediction": [_prediction(risk, occurrence, terminology, alert_priority, model, _stored_threshold(prediction))],
        "note": [{"text": _inputs_text(prediction.inputs)}],
    }
    if observations:
        data["basis"] = [{"reference": f"#{obs['id']}", "type": "Observation", "display": feature}
                         for obs, (feature, _) in zip(observations, inputs, strict=True)]
    # validates every element, contained resources included; the dict built here is already the
    # JSON (tested equal to fhir.resources' own dump, which would cost twice the validation)
    RiskAssessment.model_validate(data)
    return data
