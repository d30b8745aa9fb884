"""`bioverse demo` end to end, as a user runs it: training (tabular and imaging), Feast, Ray Serve, the API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

pytestmark = pytest.mark.integration


def test_demo_trains_serves_and_shows_twins(isolated_home: Path) -> None:
    bioverse = str(Path(sys.executable).parent / "bioverse")
    done = subprocess.run([bioverse, "demo", "--hospitals", "3", "--patients", "1800", "--rounds", "2", "--twins", "3"],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Registered cardiac-risk version 1" in out and "Registered chest-xray version 1" in out
    assert "ingested into Feast and materialized" in out and "Ray Serve RiskPredictor" in out
    assert "VisionClassifier for chest-xray@candidate" in out
    rows = re.findall(r"│ (h01-\d+) .*?│ +(0\.\d{3}) │ +(0\.\d{3}) │", out)
    assert len(rows) == 3, out[-2000:]
    for _, api_risk, serve_risk in rows:
        assert 0 < float(api_risk) < 1 and api_risk == serve_risk  # the API and Ray Serve agree
    assert "Traceback" not in done.stderr

    images = re.findall(r"│ (h01-\d+) +│ (\S+\.(?:png|jpg)) +│ (\w+) +│ (\w+) +│ +(\d\.\d\d) │ (\d+) +│", out)
    assert len(images) == 3, out[-2500:]  # one image classified per twin, through the API and Ray Serve
    classes = {"normal", "nodule", "opacity"}
    assert all(true in classes and predicted in classes and version == "1" for _, _, true, predicted, _, version in images)

    from platform_api.audit import verify
    from platform_api.models import ImagePrediction, Prediction

    engine = create_engine(f"sqlite:///{isolated_home / 'platform.db'}")
    with Session(engine) as session:
        stored = session.scalars(select(Prediction)).all()
        assert len(stored) == 3 and {p.model_version for p in stored} == {"1"}
        labelled = session.scalars(select(ImagePrediction)).all()
        assert len(labelled) == 3 and {p.model_name for p in labelled} == {"chest-xray"}
        assert verify(session).ok
    engine.dispose()
