"""Serve's RiskPredictor during a staged rollout: the same routing as the API, counts in the platform database."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from experiments.gate import mark_approved
from federation.processes import free_port
from serving.routing import to_candidate
from tests.integration.conftest import attach_report, register_risk_models

pytestmark = pytest.mark.integration
MODEL = "serve-rollout"


def test_serve_routes_by_twin_id_counts_per_version_and_follows_a_rollback(hospital_files: list[Path], tmp_path: Path) -> None:
    import ray
    from mlflow.tracking import MlflowClient
    from ray import serve
    from sqlalchemy import create_engine

    from experiments.rollout import RolloutRegistry
    from experiments.rollout_rules import RolloutConfig
    from platform_api.db import migrate
    from serving.risk import RiskPredictor
    from serving.rollout_stats import read_stats

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = register_risk_models(uri, MODEL, hospital_files, versions=2)
    client = MlflowClient(uri, registry_uri=uri)
    mark_approved(uri, MODEL, "2", report_sha256=attach_report(client, MODEL, "2", {"auroc": 0.7}, "<p>v2</p>"))
    stats_url = f"sqlite:///{tmp_path / 'platform.db'}"
    migrate(stats_url)
    registry = RolloutRegistry(uri)
    state = registry.start(MODEL, "2", config=RolloutConfig(steps=[50, 100]), actor="test")
    keys = [f"twin-{i}" for i in range(len(rows))]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(RiskPredictor.bind(uri, MODEL, "production", 0.5, stats_url=stats_url), name="risk", route_prefix="/risk")
        url = f"http://127.0.0.1:{port}/risk"
        answer = httpx.post(url, json={"instances": rows, "keys": keys}, timeout=120).json()["predictions"]
        expected = ["2" if to_candidate(state, k) else "1" for k in keys]
        assert [p["model_version"] for p in answer] == expected and set(expected) == {"1", "2"}
        # no keys: production; keys that do not match the instances: the caller's error
        assert {p["model_version"] for p in httpx.post(url, json={"instances": rows}, timeout=60).json()["predictions"]} == {"1"}
        bad = httpx.post(url, json={"instances": rows, "keys": keys[:1]}, timeout=60)
        assert bad.status_code == 422 and bad.json()["detail"].startswith("keys")
        engine = create_engine(stats_url)
        for _ in range(120):  # the replica flushes every second
            counts = read_stats(engine, state.id)
            if counts.get((0, "2")) and counts[(0, "2")].requests >= expected.count("2"):
                break
            time.sleep(0.5)
        assert counts[(0, "2")].requests == expected.count("2") and counts[(0, "1")].requests >= expected.count("1")
        registry.move(registry.active(MODEL), to="rolled_back", reason="test")
        for _ in range(120):  # the replica re-reads the rollout every poll (0.5 s)
            versions = {p["model_version"] for p in httpx.post(url, json={"instances": rows, "keys": keys},
                                                               timeout=60).json()["predictions"]}
            if versions == {"1"}:
                break
            time.sleep(0.5)
        assert versions == {"1"}
    finally:
        serve.shutdown()
        ray.shutdown()
