"""Ray Serve RiskPredictor: production alias, batching, HTTP, bad input, alias moves under load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from federation.processes import free_port
from serving.errors import ModelNotReadyError
from serving.model_source import RegistryModel
from tests.integration.conftest import register_risk_models, sign_approved

pytestmark = pytest.mark.integration
MODEL = "serving-risk"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> dict[str, Any]:
    """Two registered versions of a risk model, production on version 1."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('serving') / 'mlflow.db'}"
    rows = register_risk_models(uri, MODEL, sorted(hospitals_dir.glob("hospital-*.csv")))
    return {"uri": uri, "rows": rows}


@pytest.fixture(scope="module")
def serve_port() -> Iterator[int]:
    """Ray and Serve started in this process, HTTP on a free loopback port."""
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


def test_registry_model_without_alias_is_not_ready(registry: dict[str, Any]) -> None:
    with pytest.raises(ModelNotReadyError, match="no version of model 'serving-risk' has the alias 'staging'"):
        RegistryModel(registry["uri"], MODEL, "staging").current_version()


def test_serves_the_production_version_batched_over_http(registry: dict[str, Any], serve_port: int) -> None:
    from ray import serve

    from serving.app import build_risk_app

    handle = serve.run(build_risk_app({"tracking_uri": registry["uri"], "model_name": MODEL, "poll_seconds": 0.5}),
                       name="risk", route_prefix="/risk")
    one = handle.predict.remote(registry["rows"][0]).result()
    assert one["model_version"] == "1" and one["model_name"] == MODEL and 0 < one["risk"] < 1
    assert one["threshold"] == 0.5 and one["decision"] is (one["risk"] >= 0.5)  # no decision.json: 0.5

    response = httpx.post(f"http://127.0.0.1:{serve_port}/risk", json={"instances": registry["rows"]}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    loaded = RegistryModel(registry["uri"], MODEL).load("1")
    reference = loaded.predict(registry["rows"])
    assert [p["risk"] for p in predictions] == pytest.approx(list(reference))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")  # the registered MLflow package agrees
    frame = pd.DataFrame([{c: row.get(c) for c in loaded.features} for row in registry["rows"]])
    frame = frame.astype(dict.fromkeys(loaded.scorer.encoder.numeric, float))
    scored = pyfunc.predict(frame)
    assert list(scored["risk"]) == pytest.approx(list(reference), abs=1e-6)
    assert list(scored["decision"]) == [r >= 0.5 for r in scored["risk"]]

    bad = [({"rows": []}, "body must be"), ({"instances": [{"age": "old"}]}, "instances[0]: age: expected a number"),
           ({"instances": [registry["rows"][0], {"shoe_size": 43}]}, "instances[1]: shoe_size: not a feature")]
    for body, message in bad:
        answer = httpx.post(f"http://127.0.0.1:{serve_port}/risk", json=body, timeout=30)
        assert answer.status_code == 422 and message in answer.json()["detail"], answer.text


def test_alias_move_switches_versions_without_dropping_requests(registry: dict[str, Any], serve_port: int) -> None:
    from ray import serve

    handle = serve.get_app_handle("risk")
    seen: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                seen.append(handle.predict.remote(registry["rows"][1]).result()["model_version"])
            except BaseException as err:  # noqa: BLE001 - counted below
                failures.append(err)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    sign_approved(registry["uri"], MODEL, "2")  # serving follows only approved versions (the review gate)
    MlflowClient(registry["uri"], registry_uri=registry["uri"]).set_registered_model_alias(MODEL, "production", "2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not seen or seen[-1] != "2"):
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join()
    assert not failures
    assert seen[0] == "1" and seen[-1] == "2"
    switched = seen.index("2")
    assert set(seen[switched + 8 :]) <= {"2"}  # once switched (allowing in-flight batches), stays switched
