"""The platform API application (FastAPI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from platform_api.db import get_engine, migrate
from platform_api.errors import install_error_handlers
from platform_api.routes import admin, alerts, predictions, twins
from platform_api.settings import get_settings

__all__ = ["create_app"]


def create_app(*, migrate_on_start: bool = True) -> FastAPI:
    """Build the app; migrates the database to the newest schema on start-up."""
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate_on_start:
            migrate(settings.resolved_database_url())
        yield

    app = FastAPI(title="BioVerse platform API", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return JSONResponse({"detail": f"request body over {settings.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> JSONResponse:
        """The database answers."""
        try:
            with get_engine().connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as err:  # noqa: BLE001 - any failure means not ready
            return JSONResponse({"status": "not ready", "detail": type(err).__name__}, status_code=503)
        return JSONResponse({"status": "ready"})

    app.include_router(twins.router)
    app.include_router(predictions.router)
    app.include_router(alerts.router)
    app.include_router(admin.router)
    return app
