"""The Feast repo for real: offline Parquet, SQLite and Redis online stores, push, feast CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from feature_store.errors import FeatureDataError
from feature_store.repo import FeatureRepo

pytestmark = pytest.mark.integration


def _ingested(repo: FeatureRepo, hospital_files: list[Path]) -> dict[str, pd.DataFrame]:
    frames = {}
    for path in hospital_files[:2]:
        frames[path.stem] = pd.read_csv(path)
        assert repo.ingest(frames[path.stem], tenant_id=path.stem) == len(frames[path.stem])
    repo.materialize()
    return frames


def _check_store(repo: FeatureRepo, frames: dict[str, pd.DataFrame]) -> None:
    patients = frames["hospital-01"]["patient_id"].tolist()[:5]
    rows = repo.online_features("hospital-01", patients)
    for row, (_, expected) in zip(rows, frames["hospital-01"].head(5).iterrows(), strict=True):
        assert row["age"] == expected["age"] and row["sex"] == expected["sex"]
        if pd.notna(expected["systolic_bp"]):
            assert row["systolic_bp"] == pytest.approx(expected["systolic_bp"], rel=1e-6)
            assert row["hypertensive"] == float(expected["systolic_bp"] >= 140)
        else:
            assert row["systolic_bp"] is None and row["hypertensive"] is None
    # tenant isolation: hospital-01's patient does not exist for hospital-02
    assert all(v is None for k, v in repo.online_features("hospital-02", patients[:1])[0].items() if k not in ("tenant_id", "patient_id"))
    # a pushed observation is online at once, derived features follow, other values stay
    before = repo.online_features("hospital-01", patients[:1])[0]
    assert repo.push(tenant_id="hospital-01", patient_id=patients[0], values={"systolic_bp": 182.0, "glucose": 180.2}).updated_views == ["labs", "vitals"]
    after = repo.online_features("hospital-01", patients[:1])[0]
    assert after["systolic_bp"] == 182.0 and after["hypertensive"] == 1.0
    assert after["glucose_mmol_l"] == pytest.approx(180.2 / 18.016, rel=1e-5)
    assert after["heart_rate"] == before["heart_rate"] and after["age"] == before["age"]
    offline = pd.read_parquet(repo.data_dir / "vitals.parquet")
    assert len(offline) == len(frames["hospital-01"]) + len(frames["hospital-02"]) + 1  # the push reached offline too
    with pytest.raises(FeatureDataError, match="age: not an observable feature"):
        repo.push(tenant_id="hospital-01", patient_id=patients[0], values={"age": 3})


def test_sqlite_online_store_and_feast_cli(hospital_files: list[Path], tmp_path: Path) -> None:
    repo = FeatureRepo(tmp_path / "repo").init()
    _check_store(repo, _ingested(repo, hospital_files))
    listed = subprocess.run([str(Path(sys.executable).parent / "feast"), "feature-views", "list"], cwd=repo.repo_dir,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for view in ("demographics", "vitals", "labs", "derived"):
        assert view in listed.stdout


def test_redis_online_store(hospital_files: list[Path], tmp_path: Path) -> None:
    project = f"bioverse_test_{uuid.uuid4().hex[:8]}"
    repo = FeatureRepo(tmp_path / "repo").init(online_store="redis", redis_url="127.0.0.1:6379", project=project)
    try:
        _check_store(repo, _ingested(repo, hospital_files))
    finally:
        repo.store.teardown()
