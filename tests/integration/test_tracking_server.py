"""At scale: an MLflow tracking server on PostgreSQL with S3 artifacts (a moto S3 server)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from federation.processes import free_port, stop, wait_for_port
from tests.conftest import make_spec
from tests.integration.conftest import PostgresDatabase

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture()
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """A real S3 API (moto's server mode) on loopback."""
    port = free_port()
    process = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=open(tmp_path / "moto.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                               start_new_session=True, env={**os.environ, **S3_KEYS})
    try:
        wait_for_port(port, 60, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture()
def mlflow_server(postgres_database: PostgresDatabase, s3_endpoint: str, tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` with a PostgreSQL backend store, proxying artifacts to S3."""
    boto3.client("s3", endpoint_url=s3_endpoint, **_boto_keys()).create_bucket(Bucket="mlflow")
    port = free_port()
    env = {**os.environ, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres_database.sqlalchemy_url, "--artifacts-destination", "s3://mlflow/artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(tmp_path / "mlflow.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,  # noqa: SIM115
    )
    try:
        wait_for_port(port, 180, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_KEYS["AWS_DEFAULT_REGION"]}


def test_run_tracked_on_postgres_with_artifacts_in_s3(
    mlflow_server: str, postgres_database: PostgresDatabase, s3_endpoint: str, hospital_files: list[Path], launch: Callable[..., dict[str, Any]]
) -> None:
    summary = launch(make_spec(hospital_files, name="at-scale"), tracking_uri=mlflow_server)
    assert summary["model_version"] == "1"
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version("test-cardiac-risk", "1")
    assert version.tags["experiment"] == "at-scale" and float(version.tags["epsilon"]) <= 2.0
    assert [m.step for m in client.get_metric_history(summary["run_id"], "evaluate_auroc")] == [1, 2]
    with psycopg2.connect(postgres_database.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (summary["run_id"],))
        assert cur.fetchone() == ("FINISHED",)
        cur.execute("SELECT count(*) FROM model_versions WHERE name = 'test-cardiac-risk'")
        assert cur.fetchone() == (1,)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint, **_boto_keys())
            .list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith("spec.json") for k in keys)
    assert any(k.endswith("weights.pt") for k in keys)  # the model's files landed in S3
