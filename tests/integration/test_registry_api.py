"""The review workflow over HTTP: who may read, decide, promote and roll back; every
decision audited; the gate's refusals as clear 4xx answers; the gate holds when the alias is
moved outside BioVerse (issue 10 items 1, 3, 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from tests.integration.conftest import attach_report, clear_platform_caches, register_risk_models, review_api

pytestmark = pytest.mark.integration
MODEL = "review-risk"


@pytest.fixture()
def api(hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, versions=2, production=False)
    client = MlflowClient(uri, registry_uri=uri)
    hashes = {version: attach_report(client, MODEL, version, {"overall": {"n": 400, "auroc": 0.8 + int(version) / 100},
                                                              "thresholds": [0.2]},
                                     f"<html><body>report of version {version}</body></html>")
              for version in ("1", "2")}
    client.set_model_version_tag(MODEL, "2", "validation.quality_warning", "calibration slope -1.99: worse than trivial")
    people = {"validator": ("clinical_validator", None, "Dr Quinn"), "other_validator": ("clinical_validator", None, "Dr Who"),
              "tenant_validator": ("clinical_validator", "t1", "Dr Tenant"),
              "dana_validator": ("clinical_validator", None, "DANA SCIENTIST"),
              "ds": ("data_scientist", "t1", "Dana Scientist"), "app": ("app", "t1", "ward app"), "admin": ("admin", None, "Ops")}
    with review_api(tmp_path, monkeypatch, uri, MODEL, people) as (http, keys):
        for version in ("1", "2"):  # Dana launched both, authenticated with her key
            client.set_model_version_tag(MODEL, version, "launched_by", f"key:{_id(keys['ds'])}/Dana Scientist")
        from platform_api import db

        yield {"http": http, "keys": keys, "hashes": hashes, "client": client, "db": db, "uri": uri}


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _id(token: str) -> str:
    return token.split("_")[1]


def _receipt(http: TestClient, key: str, version: str, html: bool = False) -> str:
    answer = http.get(f"/v1/registry/models/{MODEL}/versions/{version}/report{'.html' if html else ''}", headers=_h(key))
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Report-Receipt"]


RATIONALE = {"rationale": "Discrimination and calibration acceptable in every subgroup."}


def test_review_promote_and_rollback_over_http(api: dict[str, Any]) -> None:
    http, keys, client = api["http"], api["keys"], api["client"]
    base = f"/v1/registry/models/{MODEL}"
    assert http.get(f"{base}/versions", headers=_h(keys["app"])).status_code == 403  # apps see no registry
    listed = http.get(f"{base}/versions", headers=_h(keys["ds"])).json()
    assert [v["version"] for v in listed] == ["2", "1"] and {v["review_status"] for v in listed} == {"pending"}
    assert http.get(f"{base}/versions/1/report", headers=_h(keys["ds"])).json()["overall"]["n"] == 400
    page = http.get(f"{base}/versions/1/report.html", headers=_h(keys["ds"]))
    assert page.status_code == 200 and "report of version 1" in page.text and page.headers["X-Report-Receipt"]
    assert http.get("/v1/registry/models/nope/versions", headers=_h(keys["ds"])).status_code == 404

    approve = f"{base}/versions/1/approve"
    receipt = _receipt(http, keys["validator"], "1")
    assert http.post(approve, json={**RATIONALE, "report_receipt": _receipt(http, keys["ds"], "1")},
                     headers=_h(keys["ds"])).status_code == 403
    stale = http.post(f"{base}/versions/2/approve", json={**RATIONALE, "report_receipt": receipt}, headers=_h(keys["validator"]))
    assert stale.status_code == 403  # a receipt of version 1's report does not approve version 2
    short = http.post(approve, json={"rationale": "ok", "report_receipt": receipt}, headers=_h(keys["validator"]))
    assert short.status_code == 422
    assert http.post(f"{base}/versions/1/promote", headers=_h(keys["validator"])).status_code == 409  # not approved yet
    done = http.post(approve, json={**RATIONALE, "report_receipt": receipt}, headers=_h(keys["validator"]))
    assert done.status_code == 200 and done.json()["outcome"] == "approved", done.text
    assert done.json()["actor"] == f"Dr Quinn (key {_id(keys['validator'])})"  # decisions show the person
    again = http.post(approve, json={**RATIONALE, "report_receipt": _receipt(http, keys["other_validator"], "1")},
                      headers=_h(keys["other_validator"]))
    assert again.status_code == 409  # decided already
    promoted = http.post(f"{base}/versions/1/promote", headers=_h(keys["validator"]))
    assert promoted.status_code == 200, promoted.text
    assert str(client.get_model_version_by_alias(MODEL, "production").version) == "1"
    shown = http.get(f"{base}/versions/1", headers=_h(keys["ds"])).json()
    assert shown["decided_by"] == f"Dr Quinn (key {_id(keys['validator'])})" and shown["gate_warning"] is None

    assert http.post(f"{base}/versions/2/approve", json={**RATIONALE, "report_receipt": _receipt(http, keys["other_validator"], "2", html=True)},
                     headers=_h(keys["other_validator"])).status_code == 200
    assert http.post(f"{base}/versions/2/promote", headers=_h(keys["other_validator"])).status_code == 200
    assert str(client.get_model_version_by_alias(MODEL, "production").version) == "2"

    assert http.post(f"{base}/rollback", json={}, headers=_h(keys["validator"])).status_code == 403  # admins only
    rolled = http.post(f"{base}/rollback", json={}, headers=_h(keys["admin"]))
    assert rolled.status_code == 200 and rolled.json()["version"] == "1", rolled.text
    assert str(client.get_model_version_by_alias(MODEL, "production").version) == "1"

    from platform_api.audit import verify
    from platform_api.models import AuditEvent

    with api["db"].session_factory()() as session:
        events = [(e.action, e.outcome) for e in session.query(AuditEvent).order_by(AuditEvent.id)]
        assert verify(session).ok
    assert (f"registry.approve {MODEL}/2", "reportnotread") in events
    assert (f"registry.approve {MODEL}/1", "ok") in events and (f"registry.approve {MODEL}/2", "ok") in events
    assert any(action.startswith("registry.rollback") and outcome == "ok" for action, outcome in events)


def test_independence_compares_people_over_http(api: dict[str, Any]) -> None:
    """Issue 10 item 1: any validator key used to approve any version (OS login vs key id)."""
    http, keys = api["http"], api["keys"]
    approve = f"/v1/registry/models/{MODEL}/versions/1/approve"
    own = http.post(approve, json={**RATIONALE, "report_receipt": _receipt(http, keys["dana_validator"], "1")},
                    headers=_h(keys["dana_validator"]))
    assert own.status_code == 403 and "independent clinical validator" in own.json()["detail"], own.text
    tenant = http.post(approve, json={**RATIONALE, "report_receipt": _receipt(http, keys["tenant_validator"], "1")},
                       headers=_h(keys["tenant_validator"]))
    assert tenant.status_code == 403 and "platform-wide model" in tenant.json()["detail"], tenant.text
    api["client"].set_model_version_tag(MODEL, "1", "launched_by", "os:dana")  # an unauthenticated launch
    unknown = http.post(approve, json={**RATIONALE, "report_receipt": _receipt(http, keys["validator"], "1")},
                        headers=_h(keys["validator"]))
    assert unknown.status_code == 409 and "cannot be compared" in unknown.json()["detail"], unknown.text
    assert api["client"].get_model_version(MODEL, "1").tags.get("review_status", "pending") == "pending"


def test_the_version_json_hands_out_no_hash_and_approval_needs_a_receipt(api: dict[str, Any]) -> None:
    """Issue 10 item 3: the hash copied from the version JSON (or anywhere) approves nothing."""
    http, keys, hashes = api["http"], api["keys"], api["hashes"]
    base = f"/v1/registry/models/{MODEL}"
    shown = http.get(f"{base}/versions/1", headers=_h(keys["validator"])).json()
    assert hashes["1"] not in json.dumps(shown) and "report_sha256" not in shown
    listed = http.get(f"{base}/versions", headers=_h(keys["validator"])).json()
    assert hashes["1"] not in json.dumps(listed)
    assert listed[0]["quality_warning"] == "calibration slope -1.99: worse than trivial" and listed[1]["quality_warning"] is None
    approve = f"{base}/versions/1/approve"
    for body in ({**RATIONALE, "report_sha256": hashes["1"]}, RATIONALE,
                 {**RATIONALE, "report_receipt": f"{hashes['1']}.9999999999.{'0' * 64}"},
                 {**RATIONALE, "report_receipt": _receipt(http, keys["other_validator"], "1")}):
        answer = http.post(approve, json=body, headers=_h(keys["validator"]))
        assert answer.status_code in (403, 422) and answer.status_code != 200, answer.text
    assert http.post(approve, json={**RATIONALE, "report_receipt": _receipt(http, keys["other_validator"], "1")},
                     headers=_h(keys["validator"])).json()["detail"].startswith("the report receipt was not issued to you")
    assert api["client"].get_model_version(MODEL, "1").tags.get("review_status", "pending") == "pending"
    document = http.get("/openapi.json").json()
    for route in ("report", "report.html"):  # the receipt is part of the documented contract
        assert "X-Report-Receipt" in document["paths"][f"/v1/registry/models/{{name}}/versions/{{version}}/{route}"]["get"][
            "responses"]["200"]["headers"]
    review = document["components"]["schemas"]["ReviewCreate"]
    assert review["required"] == ["rationale", "report_receipt"] and "report_sha256" not in review["properties"]


def test_validators_see_models_not_patient_twins(api: dict[str, Any]) -> None:
    """Issue 10 item 4 (roles): a validator key listed its tenant's twins."""
    http, keys = api["http"], api["keys"]
    assert http.get("/v1/twins", headers=_h(keys["tenant_validator"])).status_code == 403
    assert http.get("/v1/twins/any-id", headers=_h(keys["tenant_validator"])).status_code == 403
    assert http.get("/v1/twins", headers=_h(keys["app"])).status_code == 200


def test_an_alias_moved_by_hand_serves_nothing_new_and_is_audited(api: dict[str, Any]) -> None:
    """Issue 10 item 4: `production` set with the plain MLflow client on a pending version."""
    http, keys, client = api["http"], api["keys"], api["client"]
    base = f"/v1/registry/models/{MODEL}"
    assert http.post(f"{base}/versions/1/approve", json={**RATIONALE, "report_receipt": _receipt(http, keys["validator"], "1")},
                     headers=_h(keys["validator"])).status_code == 200
    assert http.post(f"{base}/versions/1/promote", headers=_h(keys["validator"])).status_code == 200
    from platform_api import services

    models = services.get_models()
    models.poll_seconds = 0.0
    assert models.current().version == "1"

    client.set_registered_model_alias(MODEL, "production", "2")  # the MLflow UI's pencil, or a script
    assert models.current().version == "1"  # serving keeps the approved version
    listed = {v["version"]: v for v in http.get(f"{base}/versions", headers=_h(keys["ds"])).json()}
    assert listed["2"]["gate_warning"].startswith("production alias without approval") and "production" in listed["2"]["aliases"]
    assert listed["2"]["review_status"] == "pending" and listed["1"]["gate_warning"] is None

    # a forged approval: status and the approval tag copied from version 1 (the key is outside MLflow)
    for key in ("review_status", "review.report_sha256", "review.approval", "review.decided_by"):
        client.set_model_version_tag(MODEL, "2", key, client.get_model_version(MODEL, "1").tags[key])
    models.refused.clear()
    assert models.current().version == "1"
    assert http.get(f"{base}/versions/2", headers=_h(keys["ds"])).json()["gate_warning"].startswith(
        "production alias without approval")

    from platform_api.models import AuditEvent

    with api["db"].session_factory()() as session:
        refused = [(e.actor, e.role, e.outcome) for e in session.query(AuditEvent).order_by(AuditEvent.id)
                   if e.action == f"registry.serve-refused {MODEL}/2"]
    assert refused and refused[0] == ("gate", "system", "unapprovedversion")


def test_an_unusable_gate_key_or_a_registry_down_is_503_not_500(api: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    http, keys = api["http"], api["keys"]
    url = f"/v1/registry/models/{MODEL}/versions/1/report"
    monkeypatch.setenv("BIOVERSE_GATE_KEY", "too-short")  # the receipt is signed with the gate key
    answer = http.get(url, headers=_h(keys["validator"]))
    assert answer.status_code == 503, answer.text
    assert "signing key" in answer.json()["detail"] and "too-short" not in answer.text
    monkeypatch.delenv("BIOVERSE_GATE_KEY")
    from platform_api.deps import registry_at

    monkeypatch.setenv("BIOVERSE_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    clear_platform_caches()
    registry_at.cache_clear()
    answer = http.get(f"/v1/registry/models/{MODEL}/versions", headers=_h(keys["validator"]))
    assert answer.status_code == 503, answer.text
