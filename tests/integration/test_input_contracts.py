"""Input contracts at the edge (issue 10 items 13-15): plausible finite values, aware times,
last write by event time in the online store, and outages that answer 503 and flip /readyz."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from feature_store.definitions import CATEGORIES, RANGES
from feature_store.errors import FeatureStoreUnavailable, FeatureValueError
from feature_store.repo import FeatureRepo
from tests.integration.conftest import clear_platform_caches, register_risk_models

pytestmark = pytest.mark.integration
MODEL = "contract-risk"
T0 = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own on a free port (never the machine's shared one)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--save", "", "--appendonly", "no",
                                         "--daemonize", "no", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture()
def own_redis() -> Iterator[OwnRedis]:
    redis = OwnRedis().start()
    try:
        yield redis
    finally:
        redis.stop()


# ---- the feature store: contracts, event time ----

def _repo(tmp_path: Path, hospital_files: list[Path], **init: Any) -> tuple[FeatureRepo, str]:
    repo = FeatureRepo(tmp_path / "repo").init(**init)
    frame = pd.read_csv(hospital_files[0])
    repo.ingest(frame, tenant_id="t1", observed_at=T0)
    repo.materialize(T0 + timedelta(seconds=1))
    return repo, str(frame["patient_id"][0])


def _check_last_write_by_event_time(repo: FeatureRepo, patient: str) -> None:
    newer = repo.push(tenant_id="t1", patient_id=patient, values={"systolic_bp": 150.0}, observed_at=T0 + timedelta(hours=2))
    assert newer.updated_views == ["vitals"] and newer.not_applied == {}
    older = repo.push(tenant_id="t1", patient_id=patient, values={"systolic_bp": 99.0, "glucose": 120.0},
                      observed_at=T0 + timedelta(hours=1))
    # the backdated vitals do not replace the newer current value; labs (older online row) do
    assert older.updated_views == ["labs"] and older.offline_only_views == ["vitals"]
    assert set(older.not_applied) == {"systolic_bp"} and "newer observation" in older.not_applied["systolic_bp"]
    now = repo.online_features("t1", [patient])[0]
    assert now["systolic_bp"] == 150.0 and now["glucose"] == 120.0
    offline = pd.read_parquet(repo.data_dir / "vitals.parquet")
    mine = offline[offline["patient_id"] == patient].sort_values("event_timestamp")
    assert list(mine["systolic_bp"]) == [pytest.approx(mine["systolic_bp"].iloc[0], nan_ok=True), 99.0, 150.0]  # history kept
    # an aware time in another zone is the same instant: 12:30+02:00 is 10:30Z, newer than 10:00Z
    later = repo.push(tenant_id="t1", patient_id=patient, values={"systolic_bp": 160.0},
                      observed_at=datetime(2026, 1, 10, 12, 30, tzinfo=timezone(timedelta(hours=2))))
    assert later.updated_views == ["vitals"] and later.observed_at == T0 + timedelta(hours=2, minutes=30)
    assert repo.online_features("t1", [patient])[0]["systolic_bp"] == 160.0


def test_backdated_observation_keeps_newer_value_sqlite_online_store(hospital_files: list[Path], tmp_path: Path) -> None:
    repo, patient = _repo(tmp_path, hospital_files)
    _check_last_write_by_event_time(repo, patient)


def test_backdated_observation_keeps_newer_value_redis_online_store(hospital_files: list[Path], tmp_path: Path) -> None:
    repo, patient = _repo(tmp_path, hospital_files, online_store="redis", redis_url="127.0.0.1:6379",
                          project=f"bioverse_test_{uuid.uuid4().hex[:8]}")
    try:
        _check_last_write_by_event_time(repo, patient)
    finally:
        repo.store.teardown()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -500.0, 1e308, "120", True, None])
def test_push_refuses_values_outside_the_contract_and_writes_nothing(hospital_files: list[Path], tmp_path: Path,
                                                                      value: Any) -> None:
    repo, patient = _repo(tmp_path, hospital_files)
    before = repo.online_features("t1", [patient])[0]
    rows = len(pd.read_parquet(repo.data_dir / "vitals.parquet"))
    with pytest.raises(FeatureValueError) as info:
        repo.push(tenant_id="t1", patient_id=patient, values={"heart_rate": 70.0, "systolic_bp": value})
    assert info.value.feature == "systolic_bp"
    assert repo.online_features("t1", [patient])[0] == before
    assert len(pd.read_parquet(repo.data_dir / "vitals.parquet")) == rows


def test_naive_observed_at_is_refused_by_the_store(hospital_files: list[Path], tmp_path: Path) -> None:
    repo, patient = _repo(tmp_path, hospital_files)
    with pytest.raises(Exception, match="observed_at: a time zone is required"):
        repo.push(tenant_id="t1", patient_id=patient, values={"bmi": 25.0}, observed_at=datetime(2026, 1, 10, 9, 0))


def test_ingest_refuses_implausible_values_and_undeclared_categories(hospital_files: list[Path], tmp_path: Path) -> None:
    repo = FeatureRepo(tmp_path / "repo").init()
    frame = pd.read_csv(hospital_files[0]).head(5)
    for column, bad in (("age", 500), ("glucose", float("inf")), ("bmi", -3.0), ("sex", "X"), ("smoking", "sometimes"),
                        ("heart_rate", "fast")):
        broken = frame.copy()
        broken[column] = broken[column].astype(object)
        broken.loc[2, column] = bad
        with pytest.raises(FeatureValueError) as info:
            repo.ingest(broken, tenant_id="t1")
        assert info.value.feature == column and frame["patient_id"][2] in str(info.value)
    assert pd.read_parquet(repo.data_dir / "demographics.parquet").empty  # nothing half-written
    assert repo.ingest(frame, tenant_id="t1") == 5  # missing values stay allowed


def test_ranges_and_categories_travel_with_the_feature_views(tmp_path: Path) -> None:
    repo = FeatureRepo(tmp_path / "repo").init()
    fields = {f.name: f for view in repo.store.list_feature_views() for f in view.features}
    for name, (low, high) in RANGES.items():
        assert float(fields[name].tags["min"]) == low and float(fields[name].tags["max"]) == high
    for name, values in CATEGORIES.items():
        assert fields[name].tags["values"].split(",") == list(values)
    assert RANGES["age"] == (0.0, 130.0)


def test_online_store_down_is_feature_store_unavailable(hospital_files: list[Path], tmp_path: Path, own_redis: OwnRedis) -> None:
    repo, patient = _repo(tmp_path, hospital_files, online_store="redis", redis_url=f"127.0.0.1:{own_redis.port}")
    assert repo.online_features("t1", [patient])[0]["age"] is not None
    own_redis.stop()
    with pytest.raises(FeatureStoreUnavailable):
        repo.online_features("t1", [patient])
    with pytest.raises(FeatureStoreUnavailable):
        repo.push(tenant_id="t1", patient_id=patient, values={"bmi": 25.0})


# ---- the API: observations, predictions, outages ----

class Api:
    """The app with its Feast repo (tenant t1 = hospital-01) and, if asked, a production model."""

    def __init__(self, client: TestClient, key: str, repo: FeatureRepo, patients: list[str]) -> None:
        self.client, self.key, self.repo, self.patients = client, key, repo, patients

    def twin(self, patient: str) -> str:
        made = self.client.post("/v1/twins", json={"patient_id": patient}, headers=_h(self.key))
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = getattr(self.client, method)(path, headers={**_h(self.key), **kwargs.pop("headers", {})}, **kwargs)
        json.loads(answer.text or "null", parse_constant=_no_constant)  # always strict JSON: no NaN/Infinity
        return answer


def _no_constant(token: str) -> None:
    raise AssertionError(f"invalid JSON: {token}")


@pytest.fixture()
def make_api(hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    started: list[TestClient] = []

    def _make(*, database_url: str = "", cache_url: str = "", redis_online: int | None = None, model: bool = True,
              tracking_uri: str = "") -> Api:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        if model:
            register_risk_models(uri, MODEL, hospital_files, versions=1)
        init = {"online_store": "redis", "redis_url": f"127.0.0.1:{redis_online}"} if redis_online else {}
        repo = FeatureRepo(tmp_path / "feature_repo").init(**init)
        frame = pd.read_csv(hospital_files[0])
        repo.ingest(frame, tenant_id="t1", observed_at=T0)
        repo.materialize(T0 + timedelta(seconds=1))
        env = {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_FEATURE_REPO": str(repo.repo_dir),
               "BIOVERSE_API_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'platform.db'}",
               "BIOVERSE_TRACKING_URI": tracking_uri or uri, "BIOVERSE_API_MODEL_NAME": MODEL,
               "BIOVERSE_API_CACHE_URL": cache_url, "BIOVERSE_API_ALERT_THRESHOLD": "0.0"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        clear_platform_caches()
        from platform_api import db
        from platform_api.auth import create_key
        from platform_api.main import create_app

        client = TestClient(create_app())
        client.__enter__()
        started.append(client)
        with db.session_factory()() as session:
            key = create_key(session, role="app", tenant_id="t1")
        return Api(client, key, repo, [str(p) for p in frame["patient_id"][:3]])

    yield _make
    for client in started:
        client.__exit__(None, None, None)
    clear_platform_caches()


BAD_VALUES = {"NaN": b"NaN", "Infinity": b"Infinity", "-Infinity": b"-Infinity", "-500": b"-500", "1e308": b"1e308",
              "1e400": b"1e400", "a string": b'"abc"', "a numeric string": b'"120"', "a boolean": b"true",
              "an object": b'{"v": 120}'}


def test_observations_outside_the_contract_answer_422_naming_the_feature(make_api: Any) -> None:
    api = make_api(model=False)
    twin = api.twin(api.patients[0])
    before = api.call("get", f"/v1/twins/{twin}").json()["features"]
    for label, raw in BAD_VALUES.items():
        body = b'{"values": {"heart_rate": 70, "systolic_bp": ' + raw + b"}}"
        answer = api.call("post", f"/v1/twins/{twin}/observations", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, (label, answer.text)
        assert "systolic_bp" in answer.text, (label, answer.text)
    assert api.call("get", f"/v1/twins/{twin}").json()["features"] == before  # nothing was written
    unknown = api.call("post", f"/v1/twins/{twin}/observations", json={"values": {"age": 3.0}})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "values", "age"]
    for empty in ({}, {"systolic_bp": None}):
        nothing = api.call("post", f"/v1/twins/{twin}/observations", json={"values": empty})
        assert nothing.status_code == 422 and nothing.json()["detail"][0]["loc"][:2] == ["body", "values"]
    partial = api.call("post", f"/v1/twins/{twin}/observations", json={"values": {"bmi": 31.0}})
    assert partial.status_code == 202 and partial.json()["updated_views"] == ["vitals"]
    after = api.call("get", f"/v1/twins/{twin}").json()["features"]
    assert after["bmi"] == 31.0 and after["systolic_bp"] == before["systolic_bp"]


def test_observed_at_naive_refused_aware_normalised_backdated_not_applied(make_api: Any) -> None:
    api = make_api(model=False)
    twin = api.twin(api.patients[0])
    path = f"/v1/twins/{twin}/observations"
    naive = api.call("post", path, json={"values": {"systolic_bp": 150.0}, "observed_at": "2026-01-10T10:00:00"})
    assert naive.status_code == 422 and naive.json()["detail"][0]["loc"] == ["body", "observed_at"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    ahead = api.call("post", path, json={"values": {"systolic_bp": 150.0}, "observed_at": future})
    assert ahead.status_code == 422 and "observed_at" in ahead.text and "future" in ahead.text
    ancient = api.call("post", path, json={"values": {"systolic_bp": 150.0}, "observed_at": "0001-01-01T00:00:00Z"})
    assert ancient.status_code == 422 and "observed_at" in ancient.text
    newer = api.call("post", path, json={"values": {"systolic_bp": 150.0}, "observed_at": "2026-01-10T12:00:00+02:00"})
    assert newer.status_code == 202, newer.text
    assert newer.json() == {"updated_views": ["vitals"], "not_applied": {}, "observed_at": "2026-01-10T10:00:00Z"}
    older = api.call("post", path, json={"values": {"systolic_bp": 99.0, "bmi": 30.5}, "observed_at": "2026-01-10T09:00:00Z"})
    assert older.status_code == 202, older.text
    assert older.json()["updated_views"] == [] and set(older.json()["not_applied"]) == {"systolic_bp", "bmi"}
    features = api.call("get", f"/v1/twins/{twin}").json()["features"]
    assert features["systolic_bp"] == 150.0 and features["hypertensive"] == 1.0


def _store_bad_value(repo: FeatureRepo, patient: str) -> None:
    """A value written before the contracts existed: straight into Feast, around every check."""
    from feast.data_source import PushMode

    current = repo.online_features("t1", [patient])[0]
    row = {"tenant_id": "t1", "patient_id": patient, "event_timestamp": pd.Timestamp.now(tz="UTC"),
           "created": pd.Timestamp.now(tz="UTC"), "systolic_bp": float("inf"), "heart_rate": current["heart_rate"], "bmi": current["bmi"]}
    frame = pd.DataFrame([row]).astype({"systolic_bp": "float32", "heart_rate": "float32", "bmi": "float32"})
    repo.store.push("vitals_push", frame, to=PushMode.ONLINE)


def test_stored_non_finite_feature_answers_409_naming_twin_and_feature_on_postgres(make_api: Any, postgres_database: Any) -> None:
    api = make_api(database_url=postgres_database.sqlalchemy_url)
    bad_twin, good_twin = api.twin(api.patients[0]), api.twin(api.patients[1])
    _store_bad_value(api.repo, api.patients[0])
    for _ in range(2):  # and again: a failed prediction leaves the twin scorable once fixed, nothing stuck
        one = api.call("post", f"/v1/twins/{bad_twin}/predictions")
        assert one.status_code == 409, one.text
        assert bad_twin in one.json()["detail"] and "systolic_bp" in one.json()["detail"]
    batch = api.call("post", "/v1/predictions/batch", json={"twin_ids": [good_twin, bad_twin]})
    assert batch.status_code == 409 and bad_twin in batch.json()["detail"] and "systolic_bp" in batch.json()["detail"]
    read = api.call("get", f"/v1/twins/{bad_twin}")
    assert read.status_code == 200 and read.json()["features"]["systolic_bp"] is None  # valid JSON, never Infinity
    assert api.call("post", f"/v1/twins/{good_twin}/predictions").status_code == 201
    assert api.call("get", f"/v1/twins/{bad_twin}/predictions").json()["total"] == 0  # nothing half-written
    fixed = api.call("post", f"/v1/twins/{bad_twin}/observations", json={"values": {"systolic_bp": 130.0}})
    assert fixed.status_code == 202 and fixed.json()["updated_views"] == ["vitals"]
    assert api.call("post", f"/v1/twins/{bad_twin}/predictions").status_code == 201


def test_cache_down_degrades_to_no_cache_and_readyz_names_it(make_api: Any, own_redis: OwnRedis) -> None:
    from prometheus_client import generate_latest

    api = make_api(cache_url=f"redis://127.0.0.1:{own_redis.port}/0")
    twin, other = api.twin(api.patients[0]), api.twin(api.patients[1])
    assert api.call("get", f"/v1/twins/{twin}").status_code == 200
    assert api.call("post", f"/v1/twins/{twin}/predictions").status_code == 201  # both caches filled
    ready = api.call("get", "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["cache"] == "ok"
    own_redis.stop()  # Redis dies mid-test
    read = api.call("get", f"/v1/twins/{twin}")
    assert read.status_code == 200 and read.json()["latest_prediction"] is not None  # from the database
    observed = api.call("post", f"/v1/twins/{twin}/observations", json={"values": {"systolic_bp": 181.0}})
    assert observed.status_code == 202, observed.text
    assert api.call("get", f"/v1/twins/{twin}").json()["features"]["systolic_bp"] == 181.0
    scored = api.call("post", f"/v1/twins/{twin}/predictions")
    assert scored.status_code == 201 and scored.json()["inputs"]["systolic_bp"] == 181.0
    assert api.call("post", "/v1/predictions/batch", json={"twin_ids": [twin, other]}).status_code == 201
    not_ready = api.call("get", "/readyz")
    assert not_ready.status_code == 503 and "cache" in not_ready.json()["detail"]
    assert not_ready.json()["checks"]["database"] == "ok" and not_ready.json()["checks"]["cache"].startswith("down")
    exposed = generate_latest(api.client.app.state.metrics.registry).decode()
    assert 'bioverse_cache_errors_total{cache="twin-state",operation="get"}' in exposed


def test_feature_store_down_answers_503_and_flips_readyz(make_api: Any, own_redis: OwnRedis) -> None:
    api = make_api(redis_online=own_redis.port)
    twin = api.twin(api.patients[0])
    assert api.call("get", "/readyz").json()["checks"]["feature_store"] == "ok"
    own_redis.stop()
    api.client.app  # noqa: B018 - the twin-state cache (in-process) still holds nothing for this twin
    for method, path, body in (("post", f"/v1/twins/{twin}/observations", {"values": {"bmi": 22.0}}),
                               ("post", f"/v1/twins/{twin}/predictions", None)):
        answer = api.call(method, path, **({"json": body} if body else {}))
        assert answer.status_code == 503, (path, answer.text)
    read = api.call("get", f"/v1/twins/{twin}")
    assert read.status_code == 200 and read.json()["features"] is None and read.json()["features_unavailable"]
    ready = api.call("get", "/readyz")
    assert ready.status_code == 503 and "feature_store" in ready.json()["detail"]


def test_database_down_answers_503_and_flips_readyz(make_api: Any, postgres_database: Any) -> None:
    import psycopg2

    from tests.integration.conftest import PG

    api = make_api(database_url=postgres_database.sqlalchemy_url, model=False)
    twin = api.twin(api.patients[0])
    assert api.call("get", "/readyz").status_code == 200
    admin = psycopg2.connect(**PG)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE {postgres_database.name} WITH (FORCE)")
    admin.close()
    ready = api.call("get", "/readyz")
    assert ready.status_code == 503 and "database" in ready.json()["detail"]
    assert api.call("get", f"/v1/twins/{twin}").status_code in (401, 503)  # the key itself lives in that database
    assert api.call("post", "/v1/twins", json={"patient_id": "p-new"}).status_code in (401, 503)


def test_model_registry_down_answers_503_and_flips_readyz(make_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    api = make_api(model=False, tracking_uri=f"http://127.0.0.1:{_free_port()}")
    twin = api.twin(api.patients[0])
    answer = api.call("post", f"/v1/twins/{twin}/predictions")
    assert answer.status_code == 503, answer.text
    ready = api.call("get", "/readyz")
    assert ready.status_code == 503 and "model" in ready.json()["detail"], ready.text


def test_no_approved_model_is_reported_but_ready(make_api: Any) -> None:
    api = make_api(model=False)
    ready = api.call("get", "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["model"].startswith("none approved") and ready.json()["checks"]["cache"] == "in-process"


def test_cli_ingest_of_an_implausible_value_prints_one_line_and_writes_nothing(
    hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from feature_store import settings
    from platform_api.cli import app

    monkeypatch.setenv("BIOVERSE_FEATURE_REPO", str(tmp_path / "cli_repo"))
    settings.get_settings.cache_clear()
    runner = CliRunner()
    try:
        assert runner.invoke(app, ["features", "init"]).exit_code == 0
        folder = tmp_path / "bad"
        folder.mkdir()
        frame = pd.read_csv(hospital_files[0]).head(20)
        frame.loc[7, "glucose"] = 1e308
        frame.to_csv(folder / "t9.csv", index=False)
        result = runner.invoke(app, ["features", "ingest", str(folder)])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "glucose" in lines[0] and str(frame["patient_id"][7]) in lines[0], result.output
        assert pd.read_parquet(tmp_path / "cli_repo" / "data" / "labs.parquet").empty
    finally:
        settings.get_settings.cache_clear()
