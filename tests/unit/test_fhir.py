"""A stored prediction as a FHIR R4 RiskAssessment (platform_api.fhir)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from platform_api.fhir import (
    MODEL_SYSTEM,
    PREDICTION_SYSTEM,
    RISK_PROBABILITY_SYSTEM,
    patient_identifier_system,
    qualitative_risk_code,
    risk_assessment,
)

fhir_r4b = pytest.importorskip("fhir.resources.R4B.riskassessment")
RiskAssessment = fhir_r4b.RiskAssessment


@dataclass
class Twin:
    id: str = "6f1c2a4e-8d0b-4c55-9a0e-2b6f1f0c9d11"
    tenant_id: str = "st-mary"
    patient_id: str = "p-0042"


@dataclass
class Prediction:
    id: str = "0b8e6a52-3c41-4f3e-b7b1-5f0d6d1f7a90"
    twin_id: str = "6f1c2a4e-8d0b-4c55-9a0e-2b6f1f0c9d11"
    tenant_id: str = "st-mary"
    risk: float = 0.7312
    model_name: str = "cardiac-risk"
    model_version: str = "3"
    inputs: dict[str, Any] | None = field(
        default_factory=lambda: {"age": 63, "sex": "F", "systolic_bp": 141.5, "glucose": None}
    )
    created_at: datetime = datetime(2025, 3, 4, 5, 6, 7, 890000)  # naive UTC, as SQLite returns it


def _qualitative(resource: dict[str, Any]) -> str:
    (coding,) = resource["prediction"][0]["qualitativeRisk"]["coding"]
    assert coding["system"] == RISK_PROBABILITY_SYSTEM
    return coding["code"]


def test_fields_mapped() -> None:
    pred, twin = Prediction(), Twin()
    res = risk_assessment(pred, twin, alert_priority="critical")
    assert res["resourceType"] == "RiskAssessment"
    assert res["id"] == pred.id
    assert res["status"] == "final"
    assert res["identifier"] == [{"system": PREDICTION_SYSTEM, "value": pred.id}]
    assert res["subject"] == {
        "reference": "Patient/p-0042",
        "type": "Patient",
        "identifier": {"system": "urn:bioverse:tenant:st-mary:patient", "value": "p-0042"},
    }
    (method,) = res["method"]["coding"]
    assert method["system"] == MODEL_SYSTEM and method["code"] == "cardiac-risk/3"
    (p0,) = res["prediction"]
    assert p0["probabilityDecimal"] == pytest.approx(pred.risk)
    assert p0["outcome"]["text"] == "Cardiac event"
    assert "sct" not in json.dumps(p0["outcome"])  # no SNOMED CT code is claimed
    assert _qualitative(res) == "high"
    assert res["note"] == [{"text": "inputs: age=63, sex=F, systolic_bp=141.5, glucose=missing"}]
    json.dumps(res)  # JSON-ready


def test_round_trips_through_fhir_resources() -> None:
    res = risk_assessment(Prediction(), Twin(), alert_priority="medium")
    parsed = RiskAssessment.model_validate(res)
    assert parsed.model_dump(mode="json") == res
    assert RiskAssessment.model_validate_json(json.dumps(res)).id == res["id"]
    assert float(parsed.prediction[0].probabilityDecimal) == pytest.approx(0.7312)


def test_occurrence_is_timezone_aware_utc() -> None:
    res = risk_assessment(Prediction(), Twin())
    assert res["occurrenceDateTime"] == "2025-03-04T05:06:07.890000Z"
    parsed = RiskAssessment.model_validate(res).occurrenceDateTime
    assert parsed.utcoffset() == timedelta(0)
    # an aware value in another zone is converted to UTC
    cet = timezone(timedelta(hours=1))
    res = risk_assessment(Prediction(created_at=datetime(2025, 3, 4, 6, 6, 7, tzinfo=cet)), Twin())
    assert RiskAssessment.model_validate(res).occurrenceDateTime == datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


@pytest.mark.parametrize("risk", [0.0, 1.0, 0.123456789012345])
def test_probability_equals_risk(risk: float) -> None:
    res = risk_assessment(Prediction(risk=risk), Twin())
    assert res["prediction"][0]["probabilityDecimal"] == risk


@pytest.mark.parametrize("risk", [-0.1, 1.5, float("nan")])
def test_risk_outside_unit_interval_refused(risk: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        risk_assessment(Prediction(risk=risk), Twin())


@pytest.mark.parametrize("inputs", [None, {}])
def test_missing_inputs(inputs: dict[str, Any] | None) -> None:
    res = risk_assessment(Prediction(inputs=inputs), Twin())
    assert res["note"] == [{"text": "inputs: (none)"}]
    RiskAssessment.model_validate(res)


def test_all_none_inputs() -> None:
    res = risk_assessment(Prediction(inputs={"age": None, "sex": None}), Twin())
    assert res["note"][0]["text"] == "inputs: age=missing, sex=missing"


@pytest.mark.parametrize(
    ("priority", "code"),
    [(None, "low"), ("none", "low"), ("medium", "moderate"), ("high", "high"), ("critical", "high"), ("CRITICAL", "high")],
)
def test_qualitative_risk(priority: str | None, code: str) -> None:
    assert _qualitative(risk_assessment(Prediction(), Twin(), alert_priority=priority)) == code
    assert qualitative_risk_code(priority) == code


def test_no_alert_priority_is_low() -> None:
    assert _qualitative(risk_assessment(Prediction(), Twin())) == "low"


def test_priority_read_from_prediction_attribute() -> None:
    @dataclass
    class WithPriority(Prediction):
        alert_priority: str | None = "critical"

    assert _qualitative(risk_assessment(WithPriority(), Twin())) == "high"


def test_unknown_priority_refused() -> None:
    with pytest.raises(ValueError, match="alert priority"):
        risk_assessment(Prediction(), Twin(), alert_priority="urgent")


def test_base_url_makes_absolute_reference() -> None:
    res = risk_assessment(Prediction(), Twin(), base_url="https://ehr.example.org/fhir/")
    assert res["subject"]["reference"] == "https://ehr.example.org/fhir/Patient/p-0042"


def test_patient_id_that_is_no_fhir_id_uses_identifier_only() -> None:
    res = risk_assessment(Prediction(), Twin(patient_id="MRN 12/34"))
    assert "reference" not in res["subject"]
    assert res["subject"]["identifier"]["value"] == "MRN 12/34"
    RiskAssessment.model_validate(res)


def test_tenant_id_is_encoded_in_identifier_system() -> None:
    assert patient_identifier_system("St Mary's") == "urn:bioverse:tenant:St%20Mary%27s:patient"
    res = risk_assessment(Prediction(tenant_id="St Mary's"), Twin(tenant_id="St Mary's"))
    RiskAssessment.model_validate(res)


def test_prediction_of_another_twin_refused() -> None:
    with pytest.raises(ValueError, match="belong"):
        risk_assessment(Prediction(twin_id="other"), Twin())
    with pytest.raises(ValueError, match="belong"):
        risk_assessment(Prediction(tenant_id="other"), Twin())


def test_invalid_fhir_id_fails_validation() -> None:
    with pytest.raises(ValidationError):
        risk_assessment(Prediction(id="not a fhir id!"), Twin())


def test_importing_module_does_not_import_fhir_resources() -> None:
    code = "import sys, platform_api.fhir; print(any(m.startswith('fhir.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
