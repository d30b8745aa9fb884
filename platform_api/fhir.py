"""A stored prediction as a FHIR R4 ``RiskAssessment``.

The resource is built and validated with ``fhir.resources`` (8.x). Its default
package is FHIR R5, so the model comes from the ``fhir.resources.R4B`` sub-package:
R4B (4.3.0) changed nothing in ``RiskAssessment`` or the data types it uses, so the
JSON is valid R4 (4.0.1) as well.

``fhir.resources`` costs about 0.2 s and some MB to import, so it is imported inside
:func:`risk_assessment`, on the first call, never when the API starts.

Mapping (``prediction`` -> ``RiskAssessment``):

* ``id`` = prediction id; ``identifier`` = ``urn:bioverse:prediction`` | prediction id.
* ``status`` = ``final`` (a stored prediction never changes).
* ``subject`` = the patient: always a logical reference (``identifier`` with system
  ``urn:bioverse:tenant:<tenant id>:patient`` and the hospital's patient id as value,
  which is what the hospital can resolve), plus a literal ``reference``
  ``Patient/<patient id>`` (absolute under ``base_url`` when given) where the patient id
  is a valid FHIR id. BioVerse serves no ``Patient`` resources itself.
* ``occurrenceDateTime`` = ``created_at``, in UTC (a naive value is taken as UTC).
* ``method`` = the model: ``urn:bioverse:model`` | ``<model name>/<model version>``.
* ``prediction[0]``: ``outcome`` = cardiac event (local code system
  ``urn:bioverse:outcome``, no SNOMED CT code is claimed), ``probabilityDecimal`` = risk,
  ``qualitativeRisk`` = the alert priority mapped onto
  ``http://terminology.hl7.org/CodeSystem/risk-probability`` (critical/high -> high,
  medium -> moderate, no alert -> low).
* The inputs the model used are not FHIR resources, so they cannot go into ``basis``
  (a list of references); they go into one ``note`` annotation:
  ``inputs: age=63, sex=F, glucose=missing`` (in the stored order; ``None`` is
  written ``missing``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

__all__ = [
    "FHIR_VERSION",
    "MODEL_SYSTEM",
    "OUTCOME_SYSTEM",
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
OUTCOME_SYSTEM = "urn:bioverse:outcome"
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
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


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


def risk_assessment(
    prediction: Any,
    twin: Any,
    *,
    base_url: str | None = None,
    alert_priority: str | None = None,
) -> dict[str, Any]:
    """The prediction as a validated FHIR R4 ``RiskAssessment``, as a JSON-ready dict.

    ``prediction`` needs ``id``, ``tenant_id``, ``risk``, ``model_name``, ``model_version``,
    ``inputs`` and ``created_at``; ``twin`` needs ``tenant_id`` and ``patient_id``.
    ``alert_priority`` (else ``prediction.alert_priority`` if it has one) gives the
    qualitative risk. ``base_url``: the FHIR base URL where the tenant's ``Patient``
    resources live; the subject's literal reference is made absolute under it.
    Raises ``ValueError`` when the prediction does not belong to the twin, for a risk
    outside [0, 1] or for an unknown alert priority, and ``pydantic.ValidationError``
    when the result is not valid FHIR (e.g. a prediction id that is not a FHIR id).
    """
    from fhir.resources.R4B.riskassessment import RiskAssessment  # heavy: import on first use

    if getattr(prediction, "twin_id", twin.id) != twin.id or prediction.tenant_id != twin.tenant_id:
        raise ValueError("the prediction does not belong to this twin")
    if alert_priority is None:
        alert_priority = getattr(prediction, "alert_priority", None)
    risk_code = qualitative_risk_code(alert_priority)
    risk = float(prediction.risk)
    if not 0.0 <= risk <= 1.0:  # also refuses NaN
        raise ValueError(f"risk {prediction.risk!r} is not a probability in [0, 1]")

    patient_id = str(twin.patient_id)
    subject: dict[str, Any] = {
        "type": "Patient",
        "identifier": {"system": patient_identifier_system(twin.tenant_id), "value": patient_id},
    }
    if _FHIR_ID.fullmatch(patient_id):
        reference = f"Patient/{patient_id}"
        subject["reference"] = f"{base_url.rstrip('/')}/{reference}" if base_url else reference

    model = f"{prediction.model_name}/{prediction.model_version}"
    data: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": str(prediction.id),
        "identifier": [{"system": PREDICTION_SYSTEM, "value": str(prediction.id)}],
        "status": "final",
        "subject": subject,
        "occurrenceDateTime": _utc(prediction.created_at),
        "method": {
            "coding": [
                {
                    "system": MODEL_SYSTEM,
                    "code": model,
                    "display": f"{prediction.model_name} version {prediction.model_version}",
                }
            ],
            "text": model,
        },
        "prediction": [
            {
                "outcome": {
                    "coding": [{"system": OUTCOME_SYSTEM, "code": "cardiac_event", "display": "Cardiac event"}],
                    "text": "Cardiac event",
                },
                "probabilityDecimal": risk,
                "qualitativeRisk": {
                    "coding": [
                        {
                            "system": RISK_PROBABILITY_SYSTEM,
                            "code": risk_code,
                            "display": _RISK_PROBABILITY_DISPLAY[risk_code],
                        }
                    ]
                },
            }
        ],
        "note": [{"text": _inputs_text(prediction.inputs)}],
    }
    resource = RiskAssessment.model_validate(data)  # validates every element
    return resource.model_dump(mode="json")
