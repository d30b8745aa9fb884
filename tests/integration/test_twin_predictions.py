"""Twins with live features and predictions: Feast online store, the production model in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from feature_store.repo import FeatureRepo
from tests.integration.conftest import clear_platform_caches, register_risk_models

pytestmark = pytest.mark.integration
MODEL = "twin-risk"
FHIR_SECTION = {"outcome": {"system": "http://snomed.info/sct", "code": "22298006", "display": "Myocardial infarction"},
                "horizon_days": 365}


@pytest.fixture()
def platform(hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """API + Feast repo (tenant t1 = hospital-01's patients) + a production model."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, spec_overrides={"fhir": FHIR_SECTION})
    repo = FeatureRepo(tmp_path / "feature_repo").init()
    repo.ingest(pd.read_csv(hospital_files[0]), tenant_id="t1")
    repo.materialize()
    for key, value in {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_FEATURE_REPO": str(repo.repo_dir),
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{tmp_path / 'platform.db'}", "BIOVERSE_TRACKING_URI": uri,
                       "BIOVERSE_API_MODEL_NAME": MODEL, "BIOVERSE_API_ALERT_THRESHOLD": "0.0"}.items():
        monkeypatch.setenv(key, value)
    clear_platform_caches()
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.main import create_app

    with TestClient(create_app()) as client:
        with db.session_factory()() as session:
            keys = {"t1": create_key(session, role="app", tenant_id="t1"),
                    "t2": create_key(session, role="hospital", tenant_id="t2"),
                    "root": create_key(session, role="admin", tenant_id=None)}
        yield {"client": client, "keys": keys, "frame": pd.read_csv(hospital_files[0]), "monkeypatch": monkeypatch}
    clear_platform_caches()


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_twin_features_prediction_observation_and_alerts(platform: dict) -> None:
    client, keys, frame = platform["client"], platform["keys"], platform["frame"]
    patient = frame.iloc[0]
    twin = client.post("/v1/twins", json={"patient_id": patient["patient_id"]}, headers=_h(keys["t1"])).json()

    state = client.get(f"/v1/twins/{twin['id']}", headers=_h(keys["t1"])).json()
    assert state["features"]["age"] == patient["age"] and state["features"]["sex"] == patient["sex"]
    assert state["latest_prediction"] is None

    made = client.post(f"/v1/twins/{twin['id']}/predictions", headers=_h(keys["t1"]))
    assert made.status_code == 201, made.text
    prediction = made.json()
    assert 0 < prediction["risk"] < 1 and prediction["model_name"] == MODEL and prediction["model_version"] == "1"
    assert prediction["inputs"]["age"] == patient["age"] and set(prediction["inputs"]) >= {"systolic_bp", "smoking"}
    assert prediction["alert_priority"] in ("medium", "high", "critical")  # threshold 0 in this test
    # a package without decision.json (registered as before decision thresholds) decides at 0.5
    assert prediction["threshold"] == 0.5 and prediction["decision"] is (prediction["risk"] >= 0.5)
    assert client.get(f"/v1/twins/{twin['id']}", headers=_h(keys["t1"])).json()["latest_prediction"]["id"] == prediction["id"]
    stored = client.get(f"/v1/predictions/{prediction['id']}", headers=_h(keys["t1"])).json()
    assert stored["risk"] == prediction["risk"] and stored["inputs"] == prediction["inputs"]
    assert stored["alert_priority"] == prediction["alert_priority"]

    fhir = client.get(f"/v1/predictions/{prediction['id']}/fhir", headers=_h(keys["t1"]))
    assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
    resource = fhir.json()
    assert resource["resourceType"] == "RiskAssessment" and resource["id"] == prediction["id"]
    assert resource["prediction"][0]["probabilityDecimal"] == pytest.approx(prediction["risk"])
    assert resource["subject"]["identifier"]["value"] == patient["patient_id"]
    assert resource["method"]["coding"][0]["code"] == f"{MODEL}/1"
    # codes from the version's logged spec (registry -> run -> spec.json), inputs as coded Observations
    assert resource["code"]["coding"][0]["code"] == "225338004"
    assert resource["prediction"][0]["outcome"]["coding"][0]["code"] == "22298006"
    assert resource["prediction"][0]["whenPeriod"]["end"][:4] == str(int(resource["occurrenceDateTime"][:4]) + 1)
    observations = {r["id"]: r for r in resource["contained"] if r["resourceType"] == "Observation"}
    basis = {b["display"]: observations[b["reference"][1:]] for b in resource["basis"]}
    assert set(basis) == set(prediction["inputs"])
    assert basis["systolic_bp"]["code"]["coding"][0] == {"system": "http://loinc.org", "code": "8480-6",
                                                        "display": "Systolic blood pressure"}
    assert basis["systolic_bp"]["valueQuantity"]["value"] == pytest.approx(prediction["inputs"]["systolic_bp"])
    assert "rationale" not in resource["prediction"][0]  # no decision threshold on this version
    for path in (f"/v1/predictions/{prediction['id']}", f"/v1/predictions/{prediction['id']}/fhir"):
        assert client.get(path, headers=_h(keys["t2"])).status_code == 404  # another tenant's

    metrics = client.get("/metrics", headers=_h(keys["root"])).text  # a platform admin's key (or the metrics token)
    assert f'bioverse_predictions_total{{model_name="{MODEL}",model_version="1"}} 1.0' in metrics
    assert 'route="/v1/twins/{twin_id}/predictions"' in metrics and twin["id"] not in metrics

    observed = client.post(f"/v1/twins/{twin['id']}/observations", json={"values": {"systolic_bp": 191.0}}, headers=_h(keys["t1"]))
    assert observed.status_code == 202 and observed.json()["updated_views"] == ["vitals"] and observed.json()["not_applied"] == {}
    fresh = client.get(f"/v1/twins/{twin['id']}", headers=_h(keys["t1"])).json()["features"]
    assert fresh["systolic_bp"] == 191.0 and fresh["hypertensive"] == 1.0  # the 60 s cache was invalidated
    again = client.post(f"/v1/twins/{twin['id']}/predictions", headers=_h(keys["t1"])).json()
    assert again["inputs"]["systolic_bp"] == 191.0
    history = client.get(f"/v1/twins/{twin['id']}/predictions", headers=_h(keys["t1"])).json()
    assert history["total"] == 2 and history["items"][0]["id"] == again["id"]

    alerts = client.get("/v1/alerts", params={"status": "open"}, headers=_h(keys["t1"])).json()
    assert alerts["total"] == 2
    alert_id = alerts["items"][0]["id"]
    assert client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=_h(keys["t2"])).status_code == 404
    acked = client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=_h(keys["t1"])).json()
    assert acked["status"] == "acknowledged" and acked["acknowledged_by"]
    assert client.get("/v1/alerts", params={"status": "open"}, headers=_h(keys["t1"])).json()["total"] == 1

    # another tenant can neither score, read, observe nor list this twin's predictions
    for method, path, body in (("post", "predictions", None), ("get", "predictions", None), ("post", "observations", {"values": {"bmi": 20.0}})):
        answer = getattr(client, method)(f"/v1/twins/{twin['id']}/{path}", headers=_h(keys["t2"]), **({"json": body} if body else {}))
        assert answer.status_code == 404
    bad = client.post(f"/v1/twins/{twin['id']}/observations", json={"values": {"age": 3.0}}, headers=_h(keys["t1"]))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "values", "age"]


def test_batch_scoring_is_all_or_nothing(platform: dict) -> None:
    client, keys, frame = platform["client"], platform["keys"], platform["frame"]
    ids = [client.post("/v1/twins", json={"patient_id": p}, headers=_h(keys["t1"])).json()["id"] for p in frame["patient_id"][:3]]
    scored = client.post("/v1/predictions/batch", json={"twin_ids": ids}, headers=_h(keys["t1"]))
    assert scored.status_code == 201 and [p["twin_id"] for p in scored.json()] == ids
    assert len({p["model_version"] for p in scored.json()}) == 1
    failed = client.post("/v1/predictions/batch", json={"twin_ids": [*ids, "nope"]}, headers=_h(keys["t1"]))
    assert failed.status_code == 404 and failed.json()["detail"] == "no twin nope"
    for twin_id in ids:  # the failed batch stored nothing
        assert client.get(f"/v1/twins/{twin_id}/predictions", headers=_h(keys["t1"])).json()["total"] == 1
    assert client.post("/v1/predictions/batch", json={"twin_ids": []}, headers=_h(keys["t1"])).status_code == 422


def test_no_production_model_answers_503(platform: dict) -> None:
    client, keys, frame = platform["client"], platform["keys"], platform["frame"]
    from platform_api import services, settings

    platform["monkeypatch"].setenv("BIOVERSE_API_MODEL_NAME", "never-approved")
    settings.get_settings.cache_clear()
    services.get_models.cache_clear()
    twin = client.post("/v1/twins", json={"patient_id": frame["patient_id"][0]}, headers=_h(keys["t1"])).json()
    answer = client.post(f"/v1/twins/{twin['id']}/predictions", headers=_h(keys["t1"]))
    assert answer.status_code == 503 and "has the alias 'production'" in answer.json()["detail"]
