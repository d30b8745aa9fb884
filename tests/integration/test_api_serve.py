"""The API's risk scoring through Ray Serve (``BIOVERSE_API_RISK_SCORING=serve``) against in process, for real:
a local Ray + Serve risk application, the Feast online store, the platform API; Serve stopped answers 503."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from feature_store.repo import FeatureRepo
from federation.processes import free_port
from tests.integration.conftest import clear_platform_caches, register_risk_models

pytestmark = pytest.mark.integration
MODEL = "api-serve-risk"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> dict[str, Any]:
    """A registered risk model (production on version 1) and a Feast repo with tenant t1's patients."""
    root = tmp_path_factory.mktemp("api-serve")
    hospitals = sorted(hospitals_dir.glob("hospital-*.csv"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospitals, versions=1)
    repo = FeatureRepo(root / "feature_repo").init()
    frame = pd.read_csv(hospitals[0])
    repo.ingest(frame, tenant_id="t1")
    repo.materialize()
    return {"uri": uri, "repo": repo.repo_dir, "patients": list(frame["patient_id"].head(8))}


@pytest.fixture(scope="module")
def serve_risk(registry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray and Serve in this process, the risk application on a free loopback port."""
    import ray
    from ray import serve

    from serving.app import build_risk_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_risk_app({"tracking_uri": registry["uri"], "model_name": MODEL, "poll_seconds": 1}),
              name="risk", route_prefix="/risk")
    yield {"port": port, "url": f"http://127.0.0.1:{port}/risk"}
    serve.shutdown()
    ray.shutdown()


@pytest.fixture()
def api(registry: dict[str, Any], serve_risk: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The platform API (SQLite) over the registry and repo, in process first; ``switch`` moves it to Serve."""
    for key, value in {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_FEATURE_REPO": str(registry["repo"]),
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{tmp_path / 'platform.db'}",
                       "BIOVERSE_TRACKING_URI": registry["uri"], "BIOVERSE_API_MODEL_NAME": MODEL,
                       "BIOVERSE_API_RISK_SERVE_URL": serve_risk["url"]}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BIOVERSE_API_RISK_SCORING", raising=False)
    clear_platform_caches()
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.main import create_app
    from platform_api.settings import get_settings

    def switch(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(f"BIOVERSE_API_{key.upper()}", value)
        get_settings.cache_clear()

    with TestClient(create_app()) as client:
        with db.session_factory()() as session:
            key = create_key(session, role="app", tenant_id="t1")
        headers = {"Authorization": f"Bearer {key}"}
        twins = [client.post("/v1/twins", json={"patient_id": p}, headers=headers).json()["id"]
                 for p in registry["patients"]]
        yield {"client": client, "headers": headers, "twins": twins, "switch": switch}
    clear_platform_caches()


def _stored(client: TestClient, headers: dict[str, str], twin: str) -> int:
    answer = client.get(f"/v1/twins/{twin}/predictions", headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def test_serve_switch_answers_the_in_process_risks_and_records_the_version(api: dict[str, Any]) -> None:
    from platform_api.settings import get_settings

    client, headers, twins = api["client"], api["headers"], api["twins"]
    assert get_settings().risk_scoring == "in-process"  # the small-clinic default
    local = client.post("/v1/predictions/batch", json={"twin_ids": twins}, headers=headers)
    assert local.status_code == 201, local.text

    api["switch"](risk_scoring="serve")
    served = client.post("/v1/predictions/batch", json={"twin_ids": twins}, headers=headers)
    assert served.status_code == 201, served.text
    one = client.post(f"/v1/twins/{twins[0]}/predictions", headers=headers)
    assert one.status_code == 201, one.text
    by_twin = {p["twin_id"]: p for p in local.json()}
    for p in [*served.json(), one.json()]:
        mine = by_twin[p["twin_id"]]
        assert p["risk"] == pytest.approx(mine["risk"], abs=1e-9)
        assert (p["model_name"], p["model_version"]) == (MODEL, "1")
        assert p["threshold"] == mine["threshold"] and p["decision"] is mine["decision"]
        assert p["inputs"] == mine["inputs"]
    stored = client.get(f"/v1/predictions/{one.json()['id']}", headers=headers).json()
    assert stored["model_version"] == "1" and stored["risk"] == one.json()["risk"]
    assert _stored(client, headers, twins[0]) == 3  # in process, through Serve (batch), through Serve (one)


def test_serve_down_or_app_gone_is_503_with_nothing_recorded(api: dict[str, Any], serve_risk: dict[str, Any]) -> None:
    from ray import serve

    client, headers, twins = api["client"], api["headers"], api["twins"]
    api["switch"](risk_scoring="serve", risk_serve_timeout_seconds="0.0001")
    slow = client.post(f"/v1/twins/{twins[1]}/predictions", headers=headers)
    assert slow.status_code == 503 and "did not answer within 0.0001 s" in slow.json()["detail"], slow.text

    api["switch"](risk_serve_timeout_seconds="30", risk_serve_url=f"http://127.0.0.1:{serve_risk['port']}/nothing-here")
    gone = client.post("/v1/predictions/batch", json={"twin_ids": twins[:3]}, headers=headers)
    assert gone.status_code == 503 and "no risk application" in gone.json()["detail"], gone.text

    api["switch"](risk_serve_url=serve_risk["url"])
    assert client.post(f"/v1/twins/{twins[1]}/predictions", headers=headers).status_code == 201
    serve.shutdown()  # the module's last test: Serve stopped under the API
    down = client.post("/v1/predictions/batch", json={"twin_ids": twins[:3]}, headers=headers)
    assert down.status_code == 503 and "does not answer" in down.json()["detail"], down.text
    assert "bioverse serve up" in down.json()["detail"]
    assert [_stored(client, headers, t) for t in twins[:3]] == [0, 1, 0]  # only the one answered prediction

    api["switch"](risk_scoring="in-process")  # the switch back: scoring goes on without Serve
    assert client.post(f"/v1/twins/{twins[2]}/predictions", headers=headers).status_code == 201
