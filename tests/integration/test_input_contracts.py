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
from datetime import datetime, timedelta, timezone
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
T0 = datetime(2026, 1, 10, 8, 0, tzinfo=timezone.utc)


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
