"""The review workflow over HTTP: who may read, decide, promote and roll back; every
decision audited; the gate's refusals as clear 4xx answers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from tests.integration.conftest import clear_platform_caches, register_risk_models

pytestmark = pytest.mark.integration
MODEL = "review-risk"


def _canonical(report: dict[str, Any]) -> bytes:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@pytest.fixture()
def api(hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, versions=2)
    client = MlflowClient(uri, registry_uri=uri)
    client.delete_registered_model_alias(MODEL, "production")  # only a validator's promotion sets it
    hashes = {}
    for version in ("1", "2"):  # what the coordinator stores with a version
        run_id = client.get_model_version(MODEL, version).run_id
        report = {"overall": {"n": 400, "auroc": 0.8 + int(version) / 100}, "thresholds": [0.2]}
        client.log_text(run_id, _canonical(report).decode(), "validation/report.json")
        client.log_text(run_id, f"<html><body>report of version {version}</body></html>", "validation/report.html")
        hashes[version] = hashlib.sha256(_canonical(report)).hexdigest()
        client.set_model_version_tag(MODEL, version, "validation.status", "complete")
        client.set_model_version_tag(MODEL, version, "validation.report_sha256", hashes[version])
    for key, value in {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_TRACKING_URI": uri,
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{tmp_path / 'platform.db'}"}.items():
        monkeypatch.setenv(key, value)
    clear_platform_caches()
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.main import create_app
    from platform_api.routes import registry

    registry._registry.cache_clear()
    with TestClient(create_app()) as http:
        with db.session_factory()() as session:
            keys = {"validator": create_key(session, role="clinical_validator", tenant_id="t1"),
                    "other_validator": create_key(session, role="clinical_validator", tenant_id="t1"),
                    "ds": create_key(session, role="data_scientist", tenant_id="t1"),
                    "app": create_key(session, role="app", tenant_id="t1"),
                    "admin": create_key(session, role="admin", tenant_id=None)}
        yield {"http": http, "keys": keys, "hashes": hashes, "client": client, "db": db}
    clear_platform_caches()


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_review_promote_and_rollback_over_http(api: dict[str, Any]) -> None:
    http, keys, hashes, client = api["http"], api["keys"], api["hashes"], api["client"]
    base = f"/v1/registry/models/{MODEL}"
    assert http.get(f"{base}/versions", headers=_h(keys["app"])).status_code == 403  # apps see no registry
    listed = http.get(f"{base}/versions", headers=_h(keys["ds"])).json()
    assert [v["version"] for v in listed] == ["2", "1"] and {v["review_status"] for v in listed} == {"pending"}
    assert http.get(f"{base}/versions/1/report", headers=_h(keys["ds"])).json()["overall"]["n"] == 400
    page = http.get(f"{base}/versions/1/report.html", headers=_h(keys["ds"]))
    assert page.status_code == 200 and "report of version 1" in page.text
    assert http.get("/v1/registry/models/nope/versions", headers=_h(keys["ds"])).status_code == 404

    rationale = {"rationale": "Discrimination and calibration acceptable in every subgroup."}
    approve = f"{base}/versions/1/approve"
    assert http.post(approve, json={**rationale, "report_sha256": hashes["1"]}, headers=_h(keys["ds"])).status_code == 403
    stale = http.post(approve, json={**rationale, "report_sha256": hashes["2"]}, headers=_h(keys["validator"]))
    assert stale.status_code == 409  # the validator read another report than the version's
    short = http.post(approve, json={"rationale": "ok", "report_sha256": hashes["1"]}, headers=_h(keys["validator"]))
    assert short.status_code == 422
    assert http.post(f"{base}/versions/1/promote", headers=_h(keys["validator"])).status_code == 409  # not approved yet
    done = http.post(approve, json={**rationale, "report_sha256": hashes["1"]}, headers=_h(keys["validator"]))
    assert done.status_code == 200 and done.json()["outcome"] == "approved", done.text
    again = http.post(approve, json={**rationale, "report_sha256": hashes["1"]}, headers=_h(keys["other_validator"]))
    assert again.status_code == 409  # decided already
    promoted = http.post(f"{base}/versions/1/promote", headers=_h(keys["validator"]))
    assert promoted.status_code == 200, promoted.text
    assert str(client.get_model_version_by_alias(MODEL, "production").version) == "1"

    # version 2 was launched by the validator: they cannot approve it, a colleague can
    validator_id = keys["validator"].split("_")[1]
    client.set_model_version_tag(MODEL, "2", "launched_by", validator_id)
    own = http.post(f"{base}/versions/2/approve", json={**rationale, "report_sha256": hashes["2"]}, headers=_h(keys["validator"]))
    assert own.status_code == 403
    assert http.post(f"{base}/versions/2/approve", json={**rationale, "report_sha256": hashes["2"]},
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
    assert (f"registry.approve {MODEL}/1", "reportstale") in events
    assert (f"registry.approve {MODEL}/1", "ok") in events and (f"registry.approve {MODEL}/2", "selfapproval") in events
    assert any(action.startswith("registry.rollback") and outcome == "ok" for action, outcome in events)
