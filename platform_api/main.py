"""The platform API application (FastAPI)."""

from __future__ import annotations

import gc
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from platform_api import review_monitoring, review_ui
from platform_api.cache import CacheErrorCollector
from platform_api.db import migrate
from platform_api.edge import AllowMiddleware, install_docs, known_query_only, metrics_access
from platform_api.errors import BodyTooLarge, install_error_handlers
from platform_api.metrics import ApiMetrics, DriftCollector, MetricsMiddleware, metrics_response
from platform_api.monitoring import get_monitor
from platform_api.openapi import install_openapi
from platform_api.ops_metrics import OpsChecks, OpsCollector
from platform_api.ratelimit import RateLimits
from platform_api.readiness import check_readiness
from platform_api.rollout_controller import start_controller
from platform_api.routes import admin, alerts, images, monitoring, oauth, predictions, registry, rollouts, twins
from platform_api.services import close_recorders
from platform_api.settings import get_settings

__all__ = ["BodyLimitMiddleware", "create_app"]


#: Image uploads (``POST /v1/twins/{id}/images``) have their own, larger limit.
_UPLOAD_PATH = re.compile(r"^/v1/twins/[^/]+/images$")
_MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers around the file


class BodyLimitMiddleware:
    """413 for a declared body over the limit, and for a streamed one once it passes it
    (pure ASGI: no per-request task or body copy, unlike ``@app.middleware``). The limit is
    ``max_bytes``, or ``max_image_bytes`` (plus the form's overhead) for image uploads."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_image_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_image_bytes = max_image_bytes

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if self.max_image_bytes is not None and _UPLOAD_PATH.match(scope.get("path", "")):
            return self.max_image_bytes + _MULTIPART_OVERHEAD, f"image upload over {self.max_image_bytes} bytes"
        return self.max_bytes, f"request body over {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, detail = self._limit(scope)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await self._refuse(scope, receive, send, detail)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(413, detail)
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await self._refuse(scope, receive, send, detail)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        response = JSONResponse({"detail": detail}, status_code=413)
        await response(scope, receive, send)


#: The body of /readyz, ready or not (``{"status": ..., "checks": {dependency: state}}``).
_READINESS = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string"}, "detail": {"type": "string"},
    "checks": {"type": "object", "additionalProperties": {"type": "string"}}}}


def create_app(*, migrate_on_start: bool = True) -> FastAPI:
    """Build the app; migrates the database to the newest schema on start-up."""
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate_on_start:
            migrate(settings.resolved_database_url())
        # The imports (Feast, MLflow, torch, pandas) leave millions of long-lived objects;
        # a full collection walking them stalls every request in flight for 100+ ms. Move
        # them out of the collector's sight (as services that care about tail latency do).
        gc.freeze()
        controller = start_controller(settings.resolved_tracking_uri(), settings.resolved_database_url(),
                                      settings.model_name, settings.rollout_controller_seconds)
        ops_checks.start()  # audit verification and budget figures for /metrics (docs/monitoring.md)
        yield
        ops_checks.stop()
        if controller is not None:
            controller.stop()
        close_recorders()  # commit what is queued before the process goes

    app = FastAPI(title="BioVerse platform API", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  dependencies=[Depends(known_query_only)])  # an unknown query parameter is a 422, not ignored
    install_error_handlers(app)
    install_openapi(app)  # every status a route can answer, with the body sent
    install_docs(app)  # /docs and /redoc from local assets

    api_metrics = ApiMetrics()
    api_metrics.registry.register(CacheErrorCollector())  # bioverse_cache_errors_total
    api_metrics.registry.register(DriftCollector(lambda: get_monitor().snapshot()))  # drift gauges (docs/monitoring.md)
    ops_checks = OpsChecks(audit_seconds=settings.audit_verify_seconds, privacy_seconds=settings.privacy_refresh_seconds,
                           tracking_uri=settings.resolved_tracking_uri() if settings.privacy_refresh_seconds > 0 else "")
    api_metrics.registry.register(OpsCollector(ops_checks))  # bioverse_audit_verify_*, bioverse_privacy_*
    app.state.metrics = api_metrics  # what deps.get_metrics hands the routes
    shared = settings.cache_url if settings.cache_url.startswith(("redis", "unix")) else None
    app.state.rate_limits = RateLimits(  # shared through Redis by the API processes of one platform database
        per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst, redis_url=shared,
        prefix="bioverse:ratelimit:" + hashlib.sha256(settings.resolved_database_url().encode()).hexdigest()[:12]
        if shared else "bioverse:ratelimit")
    app.add_middleware(AllowMiddleware)  # OPTIONS 204 and 405, both with Allow
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, max_image_bytes=settings.max_image_bytes)
    app.add_middleware(MetricsMiddleware, metrics=api_metrics)  # outermost: times every answer, 413s too

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "A dependency does not answer (named in checks)",
                                                       "content": {"application/json": {"schema": _READINESS}}}})
    def readyz() -> JSONResponse:
        """Every configured dependency answers: database, cache, feature store, model
        registry (503 naming those that do not; see docs/api-contracts.md)."""
        ready, body = check_readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], include_in_schema=False, dependencies=[Depends(metrics_access)])
    def metrics(request: Request) -> Response:
        """Prometheus metrics: request latency by route, predictions by model version, alerts
        (for the metrics token or a platform admin's key)."""
        return metrics_response(api_metrics, accept=request.headers.get("accept"))

    app.include_router(oauth.router)
    app.include_router(twins.router)
    app.include_router(predictions.router)
    app.include_router(images.router)
    app.include_router(alerts.router)
    app.include_router(admin.router)
    app.include_router(registry.router)
    app.include_router(rollouts.router)
    app.include_router(monitoring.router)
    app.include_router(review_monitoring.router)
    app.include_router(review_ui.router)
    return app
