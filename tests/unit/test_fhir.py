"""A stored prediction as a FHIR R4 RiskAssessment (platform_api.fhir)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from experiments.errors import SpecError
from experiments.spec import parse_spec
from experiments.terminology import (
    LOINC,
    SNOMED,
    UCUM,
    ModelTerminology,
    code_problem,
    terminology_from_spec,
    version_terminology,
)
from platform_api.fhir import (
    ASSESSMENT_CODE,
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
    assert p0["outcome"] == {"text": "the model's outcome"}  # no code is claimed without one in the spec
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
    assert RiskAssessment.model_validate(res).occurrenceDateTime == datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


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


SPEC = {"data": {"label": "cardiac_event"},
        "fhir": {"outcome": {"system": SNOMED, "code": "49601007", "display": "Disorder of cardiovascular system"},
                 "horizon_days": 365,
                 "features": {"glucose": {"system": LOINC, "code": "2339-0", "display": "Glucose [Mass/volume] in Blood",
                                          "unit": "mg/dL"}}}}


def _contained(res: dict[str, Any], reference: str) -> dict[str, Any]:
    assert reference.startswith("#")
    (found,) = [r for r in res["contained"] if r["id"] == reference[1:]]
    return found


def test_assessment_code_and_performer_device() -> None:
    res = risk_assessment(Prediction(), Twin())
    assert res["code"]["coding"] == [ASSESSMENT_CODE] and ASSESSMENT_CODE["code"] == "225338004"
    assert ASSESSMENT_CODE["system"] == "http://snomed.info/sct"
    device = _contained(res, res["performer"]["reference"])
    assert device["resourceType"] == "Device"
    assert device["deviceName"] == [{"name": "cardiac-risk", "type": "model-name"}]
    assert device["version"] == [{"value": "3"}]


def test_basis_references_contained_observations_with_loinc_codes() -> None:
    pred = Prediction(inputs={"age": 63, "sex": "F", "systolic_bp": 141.5, "glucose": None, "troponin": 0.02,
                              "smoking": "former"})
    res = risk_assessment(pred, Twin())
    assert [b["display"] for b in res["basis"]] == list(pred.inputs)
    obs = {b["display"]: _contained(res, b["reference"]) for b in res["basis"]}
    assert all(o["resourceType"] == "Observation" and o["status"] == "final" for o in obs.values())
    assert all(o["subject"] == res["subject"] for o in obs.values())
    sbp = obs["systolic_bp"]
    assert sbp["code"]["coding"] == [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]
    assert sbp["valueQuantity"] == {"value": 141.5, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}
    assert obs["age"]["code"]["coding"][0]["code"] == "30525-0" and obs["age"]["valueQuantity"]["code"] == "a"
    assert obs["sex"]["valueCodeableConcept"] == {
        "coding": [{"system": "http://hl7.org/fhir/administrative-gender", "code": "female", "display": "Female"}],
        "text": "F"}
    assert obs["smoking"]["valueCodeableConcept"]["coding"][0] == {"system": SNOMED, "code": "8517006",
                                                                    "display": "Ex-smoker"}
    assert obs["glucose"]["dataAbsentReason"]["coding"][0]["code"] == "unknown" and "valueQuantity" not in obs["glucose"]
    # a feature without a code is text only, its number without a unit: no code is made up
    assert obs["troponin"]["code"] == {"text": "troponin"} and obs["troponin"]["valueQuantity"] == {"value": 0.02}
    parsed = RiskAssessment.model_validate(res)
    assert [type(r).__name__ for r in parsed.contained] == ["Device"] + ["Observation"] * 6


def test_no_inputs_no_basis() -> None:
    res = risk_assessment(Prediction(inputs=None), Twin())
    assert "basis" not in res and [r["resourceType"] for r in res["contained"]] == ["Device"]


def test_outcome_code_and_prediction_window_from_the_spec() -> None:
    terminology = terminology_from_spec(SPEC)
    res = risk_assessment(Prediction(), Twin(), terminology=terminology)
    (p0,) = res["prediction"]
    assert p0["outcome"] == {"coding": [{"system": SNOMED, "code": "49601007", "display": "Disorder of cardiovascular system"}],
                             "text": "Disorder of cardiovascular system"}
    assert p0["whenPeriod"] == {"start": "2025-03-04T05:06:07.890000Z", "end": "2026-03-04T05:06:07.890000Z"}
    glucose = next(_contained(res, b["reference"]) for b in res["basis"] if b["display"] == "glucose")
    assert glucose["code"]["coding"][0]["code"] == "2339-0"  # the spec's code overrides the built-in one
    RiskAssessment.model_validate(res)


def test_outcome_without_code_is_the_label_in_words() -> None:
    terminology = terminology_from_spec({"data": {"label": "cardiac_event"}})
    res = risk_assessment(Prediction(), Twin(), terminology=terminology)
    assert res["prediction"][0]["outcome"] == {"text": "cardiac event"} and "whenPeriod" not in res["prediction"][0]


@pytest.mark.parametrize(("threshold", "expected"), [(0.8, "low"), (0.5, "high"), (0.7312, "high")])
def test_decision_threshold_decides_qualitative_risk(threshold: float, expected: str) -> None:
    terminology = terminology_from_spec(SPEC, {"decision_threshold": str(threshold), "decision_rule": "youden"})
    res = risk_assessment(Prediction(), Twin(), alert_priority="critical", terminology=terminology)
    assert _qualitative(res) == expected
    assert res["prediction"][0]["rationale"].startswith(f"decision threshold {threshold:g} of cardiac-risk/3 (chosen by youden)")


@pytest.mark.parametrize("tag", ["", "nan", "1.5", "0", "high"])
def test_unusable_threshold_tag_is_ignored(tag: str) -> None:
    terminology = terminology_from_spec(SPEC, {"decision_threshold": tag})
    assert terminology.decision_threshold is None
    res = risk_assessment(Prediction(), Twin(), alert_priority="critical", terminology=terminology)
    assert _qualitative(res) == "high" and "rationale" not in res["prediction"][0]


@pytest.mark.parametrize(
    ("system", "code", "problem"),
    [(LOINC, "8480-6", None), (LOINC, "2093-3", None), (LOINC, "8480-5", "check digit"), (LOINC, "8480", "not a LOINC"),
     (SNOMED, "225338004", None), (SNOMED, "77176002", None), (SNOMED, "225338005", "check digit"),
     (SNOMED, "12ab", "not a SNOMED"), ("urn:local:codes", "a b", None), ("urn:local:codes", " a", "not a FHIR code")],
)
def test_code_check_digits(system: str, code: str, problem: str | None) -> None:
    found = code_problem(system, code)
    assert found is None if problem is None else problem in found


def test_every_built_in_code_passes_its_check_digit() -> None:
    for coding in ModelTerminology().features.values():
        assert code_problem(coding.system, coding.code) is None
        for value in coding.values.values():
            assert code_problem(value.system, value.code) is None


def test_mistyped_outcome_code_in_logged_spec_is_named() -> None:
    bad = {"fhir": {"outcome": {"system": SNOMED, "code": "49601008"}}}
    with pytest.raises(ValueError, match=r"^fhir\.outcome: .*check digit"):
        terminology_from_spec(bad)


def _spec(**fhir: Any) -> dict[str, Any]:
    return {"name": "t", "data": {"label": "y", "numeric": ["age"], "categorical": ["sex"],
                                  "ranges": {"age": [0, 120]}, "hospitals": [{"id": "h1"}, {"id": "h2"}]},
            "fhir": fhir}


def test_spec_fhir_section_parsed_and_checked() -> None:
    spec = parse_spec(_spec(outcome=SPEC["fhir"]["outcome"], horizon_days=30,
                            features={"sex": {"system": LOINC, "code": "46098-0", "values": {"F": {"system": SNOMED,
                                                                                                     "code": "248152002"}}}}))
    assert spec.fhir.horizon_days == 30 and spec.fhir.features["sex"].values["F"].code == "248152002"
    for fhir, match in [({"features": {"bmi": {"system": LOINC, "code": "39156-5"}}}, "fhir.features: bmi is not a declared"),
                        ({"features": {"age": {"system": LOINC, "code": "30525-0", "values": {"x": {"system": LOINC, "code": "8480-6"}}}}},
                         "fhir.features.age.values: age is numeric"),
                        ({"outcome": {"system": "snomed", "code": "49601007"}}, "fhir.outcome.system: 'snomed' is not an absolute URI"),
                        ({"outcome": {"system": SNOMED, "code": "49601008"}}, "fhir.outcome: '49601008' fails the SNOMED CT check"),
                        ({"horizon_days": 0}, "fhir.horizon_days")]:
        with pytest.raises(SpecError, match=match.replace(".", r"\.").replace("(", r"\(")):
            parse_spec(_spec(**fhir))


@dataclass
class _Version:
    run_id: str | None = "run-1"
    tags: dict[str, str] = field(default_factory=lambda: {"decision_threshold": "0.25", "decision_rule": "youden"})


@dataclass
class _Artifact:
    path: str


class _Client:
    """The few MlflowClient calls version_terminology makes, over a logged spec."""

    def __init__(self, spec: dict[str, Any] | None, version: _Version | None = None) -> None:
        self.spec, self.version = spec, version or _Version()

    def get_model_version(self, name: str, version: str) -> _Version:
        return self.version

    def list_artifacts(self, run_id: str) -> list[_Artifact]:
        return [_Artifact("spec.json")] if self.spec is not None else [_Artifact("model")]

    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        target = f"{dst}/{path}"
        with open(target, "w") as fh:
            json.dump(self.spec, fh)
        return target


def test_version_terminology_reads_the_runs_spec_and_tags() -> None:
    terminology = version_terminology(_Client(SPEC), "cardiac-risk", "3")
    assert terminology.outcome is not None and terminology.outcome.code == "49601007"
    assert terminology.horizon_days == 365 and terminology.decision_threshold == 0.25
    assert terminology.decision_rule == "youden" and terminology.features["glucose"].code == "2339-0"
    fallback = version_terminology(_Client(None, _Version(run_id=None, tags={})), "cardiac-risk", "3")
    assert fallback == ModelTerminology()


def test_terminology_service_reads_each_version_once_and_maps_registry_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    from experiments.errors import TrackingError
    from platform_api import services

    calls: list[tuple[str, str]] = []
    answers: dict[str, Any] = {"1": terminology_from_spec(SPEC),
                               "2": MlflowException("gone", RESOURCE_DOES_NOT_EXIST),
                               "3": MlflowException("down", TEMPORARILY_UNAVAILABLE),
                               "4": ValueError("fhir.outcome: bad")}

    def lookup(client: Any, name: str, version: str) -> ModelTerminology:
        calls.append((name, version))
        answer = answers[version]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(services, "version_terminology", lookup)
    service = services.TerminologyService("unused", client=object())
    assert service.of("m", "1").horizon_days == 365 and service.of("m", "1").horizon_days == 365
    assert calls == [("m", "1")]  # a registered version never changes: read once
    assert service.of("m", "2") == ModelTerminology()  # deleted version: defaults
    assert service.of("m", "4") == ModelTerminology()  # unusable logged section: defaults
    with pytest.raises(TrackingError, match="did not answer"):
        service.of("m", "3")
    answers["3"] = terminology_from_spec({})
    assert service.of("m", "3") == ModelTerminology()  # a failure is not cached


@pytest.mark.parametrize("created", [datetime(2025, 3, 4, 5, 6, 7), datetime(2025, 3, 4, 5, 6, 7, 5)])
def test_answer_equals_fhir_resources_own_json(created: datetime) -> None:
    import numpy as np

    pred = Prediction(created_at=created, inputs={"age": np.int64(63), "bmi": np.float32(27.5), "sex": "M",
                                                  "glucose": float("nan"), "smoking": None})
    res = risk_assessment(pred, Twin(), terminology=terminology_from_spec(SPEC, {"decision_threshold": "0.5"}))
    assert RiskAssessment.model_validate(res).model_dump(mode="json") == res
    assert json.loads(json.dumps(res)) == res
    obs = {b["display"]: _contained(res, b["reference"]) for b in res["basis"]}
    assert obs["age"]["valueQuantity"]["value"] == 63 and obs["bmi"]["valueQuantity"]["value"] == 27.5
    assert obs["glucose"]["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"


def test_threshold_stored_with_the_prediction_wins_over_the_versions() -> None:
    @dataclass
    class Decided(Prediction):
        threshold: float | None = 0.75

    terminology = terminology_from_spec(SPEC, {"decision_threshold": "0.5"})
    res = risk_assessment(Decided(), Twin(), terminology=terminology)
    assert _qualitative(res) == "low" and res["prediction"][0]["rationale"].startswith("decision threshold 0.75 ")
    res = risk_assessment(Decided(threshold=None), Twin(), terminology=terminology)
    assert _qualitative(res) == "high" and res["prediction"][0]["rationale"].startswith("decision threshold 0.5 ")
