"""The demo's flow on the production profile: PostgreSQL, Redis and a real S3 server, nothing in the data dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import psycopg2
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from federation.launcher import LaunchOptions, run_experiment
from tests.conftest import make_spec
from tests.integration.conftest import clear_platform_caches, sign_approved
from tests.integration.production_stores import BUCKET, ProductionStores, production_stores

pytestmark = pytest.mark.integration
REDIS_DB = 11  # this module's own Redis database
MODEL = "prod-cardiac-risk"
EMBEDDED_FILES = ("platform.db", "mlflow.db", "mlartifacts", "registry.db", "online.db")


def _clear_settings() -> None:
    from experiments.settings import get_settings
    from feature_store.profile import get_profile
    from platform_api import db

    clear_platform_caches()
    get_profile.cache_clear()
    get_settings.cache_clear()
    db.get_engine.cache_clear()


@pytest.fixture()
def production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProductionStores]:
    """The production profile on three new PostgreSQL databases, Redis db 11 and a moto S3 server."""
    with production_stores(REDIS_DB) as stores:
        for key in ("BIOVERSE_API_DATABASE_URL", "BIOVERSE_TRACKING_URI", "BIOVERSE_API_CACHE_URL", "BIOVERSE_ONLINE_STORE",
                    "BIOVERSE_REDIS_URL", "BIOVERSE_FEATURE_REPO", "BIOVERSE_CONFIG", "MLFLOW_S3_ENDPOINT_URL"):
            monkeypatch.delenv(key, raising=False)
        for key, value in {**stores.env, "BIOVERSE_DATA_DIR": str(tmp_path / "home"), "FLWR_HOME": str(tmp_path / "home" / "flwr")}.items():
            monkeypatch.setenv(key, value)
        _clear_settings()
        try:
            yield stores
        finally:
            _clear_settings()


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query)
        rows = cur.fetchall()
    conn.close()
    return rows


def _doctor() -> tuple[int, str]:
    from platform_api.cli import app

    done = CliRunner().invoke(app, ["doctor", "--json"])
    return done.exit_code, done.output


def test_demo_flow_lands_every_artifact_in_the_server_stores(production: ProductionStores, hospital_files: list[Path],
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from experiments.settings import get_settings

    home = tmp_path / "home"
    # train a small federated run (Flower simulation) and register its model: MLflow on PostgreSQL, artifacts on S3
    uri = get_settings().resolved_tracking_uri()
    assert uri.startswith("postgresql+psycopg2://")
    spec = make_spec(hospital_files, name="prod-profile", registered_model=MODEL)
    summary = run_experiment(spec, LaunchOptions(engine="simulation", run_dir=home / "runs", tracking_uri=uri,
                                                 ledger_dir=home / "ledgers", timeout=600), lambda e: None)
    assert summary["model_version"] == "1"
    sign_approved(uri, MODEL, "1")  # approved through the gate, as fixtures do
    from mlflow.tracking import MlflowClient

    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(MODEL, "production", "1")

    # features into Feast: SQL registry on PostgreSQL, online store on Redis
    from feature_store.configured import configured_repo

    repo = configured_repo(init=True)
    frame = pd.read_csv(hospital_files[0])
    repo.ingest(frame, tenant_id="t1")
    repo.materialize()

    # the API predicts a twin: platform database on PostgreSQL, caches on Redis
    monkeypatch.setenv("BIOVERSE_API_MODEL_NAME", MODEL)
    _clear_settings()
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.main import create_app

    try:
        with TestClient(create_app()) as client:
            with db.session_factory()() as session:
                headers = {"Authorization": f"Bearer {create_key(session, role='app', tenant_id='t1')}"}
            twin = client.post("/v1/twins", json={"patient_id": frame.iloc[0]["patient_id"]}, headers=headers).json()
            assert client.get(f"/v1/twins/{twin['id']}", headers=headers).json()["features"]["age"] == frame.iloc[0]["age"]
            made = client.post(f"/v1/twins/{twin['id']}/predictions", headers=headers)
            assert made.status_code == 201, made.text
            assert made.json()["model_version"] == "1" and 0 < made.json()["risk"] < 1
    finally:
        db.get_engine.cache_clear()

    # every artifact is in its server store ...
    assert _rows(production.dsn["platform"], "SELECT count(*) FROM predictions") == [(1,)]
    assert _rows(production.dsn["platform"], "SELECT count(*) FROM twins") == [(1,)]
    assert _rows(production.dsn["mlflow"], f"SELECT count(*) FROM model_versions WHERE name = '{MODEL}'") == [(1,)]
    assert _rows(production.dsn["mlflow"], f"SELECT status FROM runs WHERE run_uuid = '{summary['run_id']}'") == [("FINISHED",)]
    assert _rows(production.dsn["feast"], "SELECT count(*) FROM feature_views")[0][0] >= 3
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=production.s3_endpoint, region_name="us-east-1")
            .list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert all(k.startswith("mlflow/") for k in keys) and any(k.endswith("weights.pt") for k in keys), keys
    assert production.redis.keys("bioverse:twin-state:*") and production.redis.keys("bioverse:prediction:*")
    assert production.redis.dbsize() > len(production.redis.keys("bioverse:*"))  # Feast's online rows too
    # ... and none under the data dir
    assert [p for p in home.rglob("*") if p.name in EMBEDDED_FILES] == []

    # bioverse doctor: green on the profile; red with one line per failed check once S3 is gone
    code, output = _doctor()
    report = json.loads(output)
    assert code == 0 and report["profile"] == "production", output
    assert {c["service"]: c["status"] for c in report["checks"]} == dict.fromkeys(
        ["platform database", "MLflow backend", "MLflow artifacts", "Feast registry", "Feast online store", "API caches",
         "data dir free space"], "ok"), output
    production.s3.stop()
    production.s3._server.server_close()  # stop() leaves the socket listening
    code, output = _doctor()
    failed = [line for line in output.splitlines() if line.startswith("failed: ")]
    assert code == 1 and len(failed) == 1 and failed[0].startswith(f"failed: MLflow artifacts (s3://{BUCKET}/mlflow): "), output
