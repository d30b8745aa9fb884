"""The platform API on SQLite and on the real PostgreSQL: auth, roles, tenant isolation, audit chain."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.integration.conftest import clear_platform_caches

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'platform.db'}"
        return
    database = request.getfixturevalue("postgres_database")
    yield database.sqlalchemy_url
    from platform_api.db import get_engine

    get_engine(database.sqlalchemy_url).dispose()


@pytest.fixture()
def api(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict]:
    """The app on that database, and keys for several tenants and roles."""
    monkeypatch.setenv("BIOVERSE_API_DATABASE_URL", database_url)
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path))
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.main import create_app

    clear_platform_caches()
    with TestClient(create_app()) as client:  # start-up runs the Alembic migration
        with db.session_factory()() as session:
            keys = {
                "app1": create_key(session, role="app", tenant_id="t1"),
                "hosp2": create_key(session, role="hospital", tenant_id="t2"),
                "ds1": create_key(session, role="data_scientist", tenant_id="t1"),
                "admin1": create_key(session, role="admin", tenant_id="t1"),
                "root": create_key(session, role="admin", tenant_id=None),
            }
        yield {"client": client, "keys": keys, "session": db.session_factory()}
    clear_platform_caches()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_credentials_roles_and_validation(api: dict) -> None:
    client, keys = api["client"], api["keys"]
    assert client.get("/v1/twins").status_code == 401
    assert client.get("/v1/twins", headers=_auth("bv_nope_nope")).status_code == 401
    assert client.get("/v1/twins", headers=_auth("garbage")).json()["detail"].startswith("malformed credentials")
    assert client.get("/v1/twins", headers=_auth("bv_x")).json()["detail"] == "malformed API key"
    assert client.get("/v1/twins", headers=_auth(keys["ds1"])).status_code == 403  # data scientists see no patients
    assert client.get("/v1/twins", headers=_auth(keys["root"])).status_code == 403  # no tenant, no patients
    bad = client.post("/v1/twins", json={"patient_id": "has space"}, headers=_auth(keys["app1"]))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "patient_id"]
    extra = client.post("/v1/twins", json={"patient_id": "p1", "ssn": "x"}, headers=_auth(keys["app1"]))
    assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "ssn"]
    big = client.post("/v1/twins", content=b"{" + b" " * 2_000_000 + b"}", headers={**_auth(keys["app1"]), "content-type": "application/json"})
    assert big.status_code == 413
    assert client.get("/healthz").json() == {"status": "ok"} and client.get("/readyz").json()["status"] == "ready"


def test_oauth2_client_credentials_tokens_act_as_their_key(api: dict) -> None:
    client, keys = api["client"], api["keys"]
    _, key_id, secret = keys["app1"].split("_", 2)
    form = {"grant_type": "client_credentials", "client_id": key_id, "client_secret": secret}
    issued = client.post("/v1/oauth/token", data=form)
    assert issued.status_code == 200 and issued.json()["token_type"] == "bearer" and issued.json()["expires_in"] == 900
    token = issued.json()["access_token"]
    created = client.post("/v1/twins", json={"patient_id": "oauth-p1"}, headers=_auth(token))
    assert created.status_code == 201
    assert client.get(f"/v1/twins/{created.json()['id']}", headers=_auth(keys["app1"])).status_code == 200  # same tenant
    basic = client.post("/v1/oauth/token", data={"grant_type": "client_credentials"}, auth=(key_id, secret))
    assert basic.status_code == 200

    assert client.post("/v1/oauth/token", data={**form, "client_secret": "wrong"}).json()["error"] == "invalid_client"
    assert client.post("/v1/oauth/token", data={**form, "grant_type": "password"}).json()["error"] == "unsupported_grant_type"
    assert client.post("/v1/oauth/token", data={"client_id": key_id}).status_code == 422  # grant_type missing
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert client.get("/v1/twins", headers=_auth(tampered)).json()["detail"] == "invalid access token"

    from platform_api import auth, db
    with db.session_factory()() as session:
        assert auth.revoke(session, key_id)
    assert client.get("/v1/twins", headers=_auth(token)).status_code == 401  # revoking the key ends its tokens
    assert client.post("/v1/oauth/token", data=form).status_code == 401


def test_twins_are_tenant_scoped(api: dict) -> None:
    client, keys = api["client"], api["keys"]
    created = client.post("/v1/twins", json={"patient_id": "p-001", "display_name": "A"}, headers=_auth(keys["app1"]))
    assert created.status_code == 201, created.text
    twin = created.json()
    assert twin["tenant_id"] == "t1"
    assert client.post("/v1/twins", json={"patient_id": "p-001"}, headers=_auth(keys["app1"])).status_code == 409
    # the same patient id in another tenant is another twin
    assert client.post("/v1/twins", json={"patient_id": "p-001"}, headers=_auth(keys["hosp2"])).status_code == 201
    own = client.get(f"/v1/twins/{twin['id']}", headers=_auth(keys["app1"]))
    assert own.status_code == 200 and own.json()["display_name"] == "A"
    found = client.get("/v1/twins", params={"patient_id": "p-001"}, headers=_auth(keys["app1"])).json()
    assert found["total"] == 1 and found["items"][0]["id"] == twin["id"]  # by patient id, own tenant only
    for method in ("get", "patch"):
        foreign = getattr(client, method)(f"/v1/twins/{twin['id']}", headers=_auth(keys["hosp2"]),
                                          **({"json": {"display_name": "x"}} if method == "patch" else {}))
        missing = getattr(client, method)(f"/v1/twins/{uuid.uuid4()}", headers=_auth(keys["hosp2"]),
                                          **({"json": {"display_name": "x"}} if method == "patch" else {}))
        assert foreign.status_code == missing.status_code == 404  # foreign looks exactly like missing
        assert foreign.json()["detail"].startswith("no twin")
    patched = client.patch(f"/v1/twins/{twin['id']}", json={"display_name": "B"}, headers=_auth(keys["app1"]))
    assert patched.json()["display_name"] == "B"
    for i in range(2, 7):
        client.post("/v1/twins", json={"patient_id": f"p-00{i}"}, headers=_auth(keys["app1"]))
    page = client.get("/v1/twins", params={"limit": 2, "offset": 2}, headers=_auth(keys["app1"])).json()
    assert page["total"] == 6 and len(page["items"]) == 2 and page["items"][0]["patient_id"] == "p-003"
    assert {t["tenant_id"] for t in client.get("/v1/twins", headers=_auth(keys["hosp2"])).json()["items"]} == {"t2"}
    assert client.get("/v1/twins", params={"limit": 0}, headers=_auth(keys["app1"])).status_code == 422


def test_every_access_is_audited_in_a_verifiable_append_only_chain(api: dict) -> None:
    from sqlalchemy.exc import DBAPIError

    from platform_api.audit import verify

    client, keys = api["client"], api["keys"]
    twin = client.post("/v1/twins", json={"patient_id": "p-9"}, headers=_auth(keys["app1"])).json()
    client.get(f"/v1/twins/{twin['id']}", headers=_auth(keys["app1"]))
    client.get(f"/v1/twins/{twin['id']}", headers=_auth(keys["hosp2"]))  # foreign: recorded as not found
    events = client.get("/v1/admin/audit", headers=_auth(keys["root"])).json()
    assert events["total"] == 3
    newest = events["items"][0]
    assert newest["tenant_id"] == "t2" and newest["outcome"] == "notfound" and newest["role"] == "hospital"
    read = events["items"][1]
    assert read["patient_id"] == "p-9" and read["action"].startswith("twin.read") and read["outcome"] == "ok"
    tenant_view = client.get("/v1/admin/audit", headers=_auth(keys["admin1"])).json()
    assert {e["tenant_id"] for e in tenant_view["items"]} == {"t1"} and tenant_view["total"] == 2
    assert client.get("/v1/admin/audit", headers=_auth(keys["app1"])).status_code == 403
    with api["session"]() as session:
        assert verify(session).ok and verify(session).events == 3
        with pytest.raises(DBAPIError, match="append-only"):
            session.execute(text("UPDATE audit_events SET outcome = 'ok' WHERE outcome = 'notfound'"))
        session.rollback()
        with pytest.raises(DBAPIError, match="append-only"):
            session.execute(text("DELETE FROM audit_events"))
        session.rollback()


def test_twin_reads_without_a_feature_store_but_cannot_be_scored(api: dict) -> None:
    client, keys = api["client"], api["keys"]
    twin = client.post("/v1/twins", json={"patient_id": "p-1"}, headers=_auth(keys["app1"])).json()
    state = client.get(f"/v1/twins/{twin['id']}", headers=_auth(keys["app1"])).json()
    assert state["features"] is None and "bioverse features init" in state["features_unavailable"]
    scored = client.post(f"/v1/twins/{twin['id']}/predictions", headers=_auth(keys["app1"]))
    assert scored.status_code == 503 and "feature store is not set up" in scored.json()["detail"]


class _FakeVision:
    """Stands in for the VisionClassifier deployment (through ``app.dependency_overrides``)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    async def classify(self, image: bytes, content_type: str) -> dict[str, object]:
        self.seen.append((len(image), content_type))
        return {"model_name": "chest-xray", "model_version": "3", "label": "normal", "probability": 0.9,
                "probabilities": {"normal": 0.9, "pneumonia": 0.1}}


def test_an_overridden_vision_service_classifies_an_upload_audited_and_stored(api: dict) -> None:
    from platform_api.deps import get_vision_client
    from platform_api.vision import IMAGE_SIGNATURES

    client, keys = api["client"], api["keys"]
    vision = _FakeVision()
    client.app.dependency_overrides[get_vision_client] = lambda: vision
    try:
        twin = client.post("/v1/twins", json={"patient_id": "p-img"}, headers=_auth(keys["app1"])).json()
        png = IMAGE_SIGNATURES["image/png"] + b"\0" * 64
        answer = client.post(f"/v1/twins/{twin['id']}/images", files={"image": ("s.png", png, "image/png")},
                             headers=_auth(keys["app1"]))
        assert answer.status_code == 201, answer.text
        assert answer.json()["label"] == "normal" and answer.json()["model_version"] == "3"
        assert vision.seen == [(len(png), "image/png")]
        other = client.post(f"/v1/twins/{twin['id']}/images", files={"image": ("s.png", png, "image/png")},
                            headers=_auth(keys["hosp2"]))
        assert other.status_code == 404 and len(vision.seen) == 1  # another tenant's twin never reaches the service
    finally:
        client.app.dependency_overrides.clear()
    history = client.get(f"/v1/twins/{twin['id']}/images", headers=_auth(keys["app1"])).json()
    assert history["total"] == 1 and history["items"][0]["probabilities"] == {"normal": 0.9, "pneumonia": 0.1}
    with api["session"]() as session:
        outcomes = session.execute(text("SELECT outcome FROM audit_events WHERE action LIKE 'image_prediction.create:%'"))
        assert sorted(outcomes.scalars()) == ["notfound", "ok"]
