"""Prometheus metrics of the platform API: request latency, predictions, alerts, unknown categories, drift (docs/api.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from experiments.errors import ExperimentError

__all__ = [
    "DRIFT_METRICS",
    "LATENCY_BUCKETS",
    "MONITOR_ERRORS",
    "UNMATCHED",
    "ApiMetrics",
    "DriftCollector",
    "MetricsMiddleware",
    "metrics_response",
    "route_template",
]

#: Seconds; suited to a fast JSON API.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: The ``route`` label of a request that matched no route (404s, redirects of slashes).
UNMATCHED = "<unmatched>"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class ApiMetrics:
    """A registry and the API's instruments."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:  # process_resident_memory_bytes etc. (Linux /proc; read on scrape only)
            ProcessCollector(registry=self.registry)
        self.request_duration = Histogram(
            "bioverse_http_request_duration_seconds",
            "HTTP request latency, from the request reaching the app to the response being sent.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "bioverse_predictions_total",
            "Risk predictions stored, by the model version that made them.",
            ("model_name", "model_version"),
            registry=self.registry,
        )
        self.alerts = Counter(
            "bioverse_alerts_total",
            "Alerts raised, by priority.",
            ("priority",),
            registry=self.registry,
        )
        self.unknown_categories = Counter(
            "bioverse_unknown_category_total",
            "Scored rows whose categorical feature held a value the model never learned (scored as other).",
            ("feature",),
            registry=self.registry,
        )
        # (method, route, status) -> histogram child: skips labels()'s validation and lock
        # on the hot path. Bounded: methods are normalised, routes are templates.
        self._request_children: dict[tuple[str, str, int], Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one HTTP request."""
        key = (method, route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.request_duration.labels(method, route, str(status))
            self._request_children[key] = child
        child.observe(seconds)

    def observe_prediction(self, model_name: str, model_version: str, n: int = 1) -> None:
        """Count ``n`` predictions made by one model version."""
        self.predictions.labels(str(model_name), str(model_version)).inc(n)

    def observe_predictions(self, versions: Iterable[tuple[str, str]]) -> None:
        """Count predictions given as ``(model_name, model_version)`` pairs (a batch)."""
        counts: dict[tuple[str, str], int] = {}
        for key in versions:
            counts[key] = counts.get(key, 0) + 1
        for (name, version), n in counts.items():
            self.observe_prediction(name, version, n)

    def observe_unknown_categories(self, counts: dict[str, int]) -> None:
        """Count rows with an unknown category, per feature (features are the model's: bounded)."""
        for feature, n in counts.items():
            self.unknown_categories.labels(str(feature)).inc(n)

    def observe_alert(self, priority: str) -> None:
        """Count one alert of the given priority."""
        self.alerts.labels(str(priority)).inc()


#: The drift gauges (docs/monitoring.md; Prometheus rules alert on ``bioverse_model_drift_alert == 1``).
DRIFT_METRICS = {
    "bioverse_model_drift_psi": "PSI of one input feature's served window against the validation reference.",
    "bioverse_model_drift_ks": "Binned KS distance of one numeric input feature's served window against the reference.",
    "bioverse_model_prediction_psi": "PSI of the served prediction scores against the validation report's scores.",
    "bioverse_model_drift_window_size": "Recorded predictions in the version's drift window.",
    "bioverse_model_drift_alert": "1 when a PSI of the version (a feature or the prediction) reaches the threshold.",
    "bioverse_model_drift_feature_reference": "1 when the version has a feature reference (0: prediction score only).",
}

_log = logging.getLogger(__name__)
#: What a drift snapshot may raise when the database or the registry fails (logged, not raised at a scrape).
MONITOR_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, ExperimentError, OSError, ValueError, KeyError, TypeError)


class DriftCollector:
    """Drift gauges per model, version (and feature), read from ``snapshot()`` at scrape time.

    ``snapshot`` returns :func:`platform_api.monitoring.drift_report` dicts (the monitor caches
    them); a failing snapshot exports no drift series and logs why, the scrape still answers.
    """

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        """No samples at registration (no database read before the first scrape)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One gauge family per :data:`DRIFT_METRICS` entry."""
        version_labels, feature_labels = ["model_name", "model_version"], ["model_name", "model_version", "feature"]
        families = {name: GaugeMetricFamily(name, doc, labels=feature_labels if name in (
            "bioverse_model_drift_psi", "bioverse_model_drift_ks") else version_labels) for name, doc in DRIFT_METRICS.items()}
        try:
            reports = self.snapshot()
        except MONITOR_ERRORS as err:  # the database or the registry is down: /metrics still answers
            _log.warning("drift metrics not computed: %s", err)
            reports = []
        for r in reports:
            labels = [r["model"], r["version"]]
            families["bioverse_model_drift_window_size"].add_metric(labels, r["window"])
            families["bioverse_model_drift_alert"].add_metric(labels, 1.0 if r["alert"] else 0.0)
            families["bioverse_model_drift_feature_reference"].add_metric(labels, 0.0 if r["features"] is None and
                                                                          r["feature_reference"] != "ok" else 1.0)
            if r["prediction"] is not None and r["prediction"]["psi"] is not None:
                families["bioverse_model_prediction_psi"].add_metric(labels, r["prediction"]["psi"])
            for feature, c in (r["features"] or {}).items():
                if c["psi"] is not None:
                    families["bioverse_model_drift_psi"].add_metric([*labels, feature], c["psi"])
                if c.get("ks") is not None:
                    families["bioverse_model_drift_ks"].add_metric([*labels, feature], c["ks"])
        yield from families.values()


def route_template(scope: Scope) -> str:
    """The template of the route a request matched, or :data:`UNMATCHED`.

    Read after the app ran: FastAPI puts the matched ``APIRoute`` in ``scope["route"]``.
    For routers included into other routers FastAPI (>= 0.13x) keeps the full template
    in its effective route context (``APIRoute.path`` there lacks the outer prefixes),
    which is preferred when present. Plain Starlette routes (``/docs``,
    ``/openapi.json``) set only ``scope["endpoint"]``; they are found among the app's
    top-level routes (rare requests, so the scan is acceptable). Routes of a mounted sub-app are labelled without the mount prefix.
    """
    context = scope.get("fastapi", {}).get("effective_route_context")
    path = getattr(context, "path", None)
    if path:
        return path
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is not None and app is not None:
        for route in getattr(app, "routes", ()):
            if getattr(route, "endpoint", None) is endpoint and route.matches(scope)[0] != Match.NONE:
                path = getattr(route, "path", None)
                if path:
                    return path
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request into ``metrics.request_duration``.

    The status is the one the app sent; 500 if the app raised before sending one.
    Other scope types (lifespan, websocket) pass through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - start
            method = scope["method"]
            self.metrics.observe_request(
                method if method in _METHODS else "OTHER", route_template(scope), status, elapsed
            )


def metrics_response(metrics: ApiMetrics, *, accept: str | None = None) -> Response:
    """The registry in the Prometheus text format (OpenMetrics if ``accept`` asks for it)."""
    if accept:
        encoder, content_type = choose_encoder(accept)
        return Response(encoder(metrics.registry), media_type=content_type)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
