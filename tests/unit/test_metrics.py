"""Prometheus metrics: the ASGI middleware's route labels and the /metrics text."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from platform_api.metrics import LATENCY_BUCKETS, UNMATCHED, ApiMetrics, MetricsMiddleware, metrics_response

DURATION = "bioverse_http_request_duration_seconds"


def make_app(metrics: ApiMetrics) -> FastAPI:
    app = FastAPI()
    twins = APIRouter(prefix="/v1/twins")

    @twins.get("/{twin_id}/predictions")
    def history(twin_id: str) -> dict[str, str]:
        return {"twin": twin_id}

    @twins.post("/{twin_id}/predictions", status_code=201)
    def predict(twin_id: str) -> dict[str, str]:
        return {"twin": twin_id}

    @twins.get("/{twin_id}/n/{n}")
    def number(twin_id: str, n: int) -> dict[str, int]:
        return {"n": n}

    @twins.get("/{twin_id}/boom")
    def boom(twin_id: str) -> None:
        raise RuntimeError("boom")

    inner = APIRouter(prefix="/alerts")

    @inner.get("/{alert_id}")
    def alert(alert_id: str) -> dict[str, str]:
        return {"alert": alert_id}

    outer = APIRouter(prefix="/v1")
    outer.include_router(inner)

    app.include_router(twins)
    app.include_router(outer)
    app.include_router(inner, prefix="/v2")

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        return metrics_response(metrics, accept=request.headers.get("accept"))

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


@pytest.fixture
def metrics() -> ApiMetrics:
    return ApiMetrics()


@pytest.fixture
def client(metrics: ApiMetrics) -> Iterator[TestClient]:
    with TestClient(make_app(metrics), raise_server_exceptions=False) as c:
        yield c


def count(metrics: ApiMetrics, method: str, route: str, status: str) -> float | None:
    return metrics.registry.get_sample_value(f"{DURATION}_count", {"method": method, "route": route, "status": status})


def routes(metrics: ApiMetrics) -> set[str]:
    return {
        s.labels["route"]
        for fam in metrics.registry.collect()
        if fam.name == DURATION
        for s in fam.samples
        if s.name == f"{DURATION}_count"
    }


def test_template_route_and_status(client: TestClient, metrics: ApiMetrics) -> None:
    assert client.get("/v1/twins/abc/predictions").status_code == 200
    assert client.post("/v1/twins/abc/predictions").status_code == 201
    assert count(metrics, "GET", "/v1/twins/{twin_id}/predictions", "200") == 1
    assert count(metrics, "POST", "/v1/twins/{twin_id}/predictions", "201") == 1
    total = metrics.registry.get_sample_value(
        f"{DURATION}_sum", {"method": "GET", "route": "/v1/twins/{twin_id}/predictions", "status": "200"}
    )
    assert total is not None and 0 < total < 5


def test_different_ids_share_one_route_label(client: TestClient, metrics: ApiMetrics) -> None:
    for twin_id in ("a1", "b2", "c3"):
        client.get(f"/v1/twins/{twin_id}/predictions")
    assert routes(metrics) == {"/v1/twins/{twin_id}/predictions"}
    assert count(metrics, "GET", "/v1/twins/{twin_id}/predictions", "200") == 3


def test_unknown_path_is_unmatched(client: TestClient, metrics: ApiMetrics) -> None:
    assert client.get("/nope/123").status_code == 404
    assert client.get("/nope/456").status_code == 404
    assert count(metrics, "GET", UNMATCHED, "404") == 2
    assert routes(metrics) == {UNMATCHED}


def test_validation_error_and_wrong_method_keep_the_template(client: TestClient, metrics: ApiMetrics) -> None:
    assert client.get("/v1/twins/a/n/not-a-number").status_code == 422
    assert client.delete("/v1/twins/a/predictions").status_code == 405
    assert count(metrics, "GET", "/v1/twins/{twin_id}/n/{n}", "422") == 1
    assert count(metrics, "DELETE", "/v1/twins/{twin_id}/predictions", "405") == 1


def test_unhandled_exception_counts_as_500(client: TestClient, metrics: ApiMetrics) -> None:
    assert client.get("/v1/twins/a/boom").status_code == 500
    assert count(metrics, "GET", "/v1/twins/{twin_id}/boom", "500") == 1


def test_nested_routers_get_the_full_template(client: TestClient, metrics: ApiMetrics) -> None:
    assert client.get("/v1/alerts/x1").status_code == 200
    assert client.get("/v2/alerts/x2").status_code == 200
    assert count(metrics, "GET", "/v1/alerts/{alert_id}", "200") == 1
    assert count(metrics, "GET", "/v2/alerts/{alert_id}", "200") == 1


def test_plain_starlette_routes_are_labelled(client: TestClient, metrics: ApiMetrics) -> None:
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert count(metrics, "GET", "/openapi.json", "200") == 1
    assert count(metrics, "GET", "/docs", "200") == 1


def test_unusual_methods_are_bounded(client: TestClient, metrics: ApiMetrics) -> None:
    client.request("FROBNICATE", "/v1/twins/a/predictions")
    client.request("X-RANDOM-1", "/nope")
    methods = {
        s.labels["method"] for fam in metrics.registry.collect() if fam.name == DURATION for s in fam.samples
    }
    assert methods == {"OTHER"}


def test_buckets(metrics: ApiMetrics, client: TestClient) -> None:
    client.get("/v1/twins/a/predictions")
    fam = next(f for f in metrics.registry.collect() if f.name == DURATION)
    bounds = [s.labels["le"] for s in fam.samples if s.name == f"{DURATION}_bucket"]
    assert bounds == [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]


def test_metrics_text_parses_and_has_the_counters(client: TestClient, metrics: ApiMetrics) -> None:
    client.get("/v1/twins/a/predictions")
    metrics.observe_prediction("cardiac-risk", "3")
    metrics.observe_prediction("cardiac-risk", "3", n=4)
    metrics.observe_predictions([("cardiac-risk", "4"), ("cardiac-risk", "4")])
    metrics.observe_alert("critical")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    predictions = {
        (s.labels["model_name"], s.labels["model_version"]): s.value
        for s in families["bioverse_predictions"].samples
        if s.name == "bioverse_predictions_total"
    }
    assert predictions == {("cardiac-risk", "3"): 5.0, ("cardiac-risk", "4"): 2.0}
    alerts = [s for s in families["bioverse_alerts"].samples if s.name == "bioverse_alerts_total"]
    assert [(s.labels["priority"], s.value) for s in alerts] == [("critical", 1.0)]
    counts = [
        s
        for s in families[DURATION].samples
        if s.name == f"{DURATION}_count" and s.labels["route"] == "/v1/twins/{twin_id}/predictions"
    ]
    assert [(s.labels["method"], s.labels["status"], s.value) for s in counts] == [("GET", "200", 1.0)]


def test_openmetrics_when_asked(client: TestClient, metrics: ApiMetrics) -> None:
    metrics.observe_prediction("m", "1")
    response = client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_two_apps_in_one_process_do_not_collide() -> None:
    m1, m2 = ApiMetrics(), ApiMetrics()
    with TestClient(make_app(m1)) as c1, TestClient(make_app(m2)):
        c1.get("/v1/twins/a/predictions")
    m1.observe_prediction("m", "1")
    assert count(m1, "GET", "/v1/twins/{twin_id}/predictions", "200") == 1
    assert count(m2, "GET", "/v1/twins/{twin_id}/predictions", "200") is None
    assert m2.registry.get_sample_value("bioverse_predictions_total", {"model_name": "m", "model_version": "1"}) is None


def test_importing_feast_leaves_metrics_in_process() -> None:
    """Feast's import sets PROMETHEUS_MULTIPROC_DIR; ours must not end up in its mmap files."""
    import os

    from prometheus_client import values

    import feature_store.definitions  # noqa: F401 - imports feast

    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ and "PROMETHEUS_MULTIPROCESS_DIR" not in os.environ
    assert values.ValueClass is values.MutexValue
