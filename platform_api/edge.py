"""The API's edge: offline API docs, ``Allow`` on OPTIONS and 405, unknown query parameters, who may scrape ``/metrics``."""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Annotated

import fastapi_offline
from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from platform_api.db import DatabaseUrl
from platform_api.deps import bearer_scheme, identify_caller
from platform_api.errors import Forbidden
from platform_api.settings import get_settings

__all__ = ["ASSETS_URL", "AllowMiddleware", "install_docs", "known_query_only", "metrics_access"]

#: Where the Swagger UI and ReDoc assets are served from.
ASSETS_URL = "/docs-assets"
_HTTP_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"})
_ASSETS = Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` from local assets (create the app with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # the default validator badge calls swagger.io
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False)


class AllowMiddleware:
    """A 405 gets the full ``Allow`` of its path; OPTIONS on a path answers 204 with it.

    Only requests the router refused with 405 pay for this (the answer is rewritten when
    its status is seen): the methods are those the OpenAPI document lists for the path
    (those the refusing route named for routes outside the document), plus OPTIONS itself.
    HEAD is not listed where it is not served (FastAPI's routes answer GET only).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._paths: list[tuple[re.Pattern[str], frozenset[str]]] | None = None

    def _documented(self, app: FastAPI, path: str) -> set[str]:
        if self._paths is None:
            self._paths = [(re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"),
                            frozenset(m.upper() for m in item if m.upper() in _HTTP_METHODS))
                           for template, item in app.openapi().get("paths", {}).items()]
        # The most specific template wins: /v1/predictions/batch is not /v1/predictions/{prediction_id}.
        matches = [(pattern.pattern.count("[^/]+"), methods) for pattern, methods in self._paths if pattern.match(path)]
        fewest = min((n for n, _ in matches), default=0)
        return {m for n, methods in matches if n == fewest for m in methods}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = False

        async def rewrite(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 405:
                refused = True
                named = next((v.decode() for k, v in message.get("headers", []) if k.lower() == b"allow"), "")
                allowed = (self._documented(scope["app"], scope["path"])  # undocumented routes: what the router named
                           or {m.strip() for m in named.split(",") if m.strip()})
                allow = ", ".join(sorted(allowed | {"OPTIONS"}))
                if scope["method"] == "OPTIONS":
                    response: Response = Response(status_code=204, headers={"Allow": allow})
                else:
                    response = JSONResponse({"detail": f"method {scope['method']} not allowed here; allowed: {allow}"},
                                            status_code=405, headers={"Allow": allow})
                await response(scope, receive, send)
            elif not refused:
                await send(message)

        await self.app(scope, receive, rewrite)


async def metrics_access(request: Request, url: DatabaseUrl,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> None:
    """Admit the configured metrics token, else a platform admin's key (401, 403 or 429 otherwise)."""
    expected = get_settings().metrics_token
    if expected and credentials and hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        return
    caller = await identify_caller(request, url, credentials)
    if caller.role != "admin" or caller.tenant_id is not None:
        raise Forbidden("metrics cover every tenant: scrape with the metrics token or a platform admin's key")


_QUERY_NAMES: dict[int, frozenset[str]] = {}  # id(route) -> the query parameters it declares (routes live as long as the app)


def _query_names(route: object) -> frozenset[str]:
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        dependant = getattr(route, "dependant", None)
        names = frozenset(p.alias for p in get_flat_dependant(dependant).query_params) if dependant else frozenset()
        _QUERY_NAMES[id(route)] = names
    return names


async def known_query_only(request: Request) -> None:
    """App-wide dependency: 422 for a query parameter the matched route does not declare."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    known = _query_names(route)
    for name, value in request.query_params.multi_items():
        if name not in known:
            takes = ", ".join(sorted(known)) or "none"
            raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name), "input": value,
                                           "msg": f"Extra inputs are not permitted (query parameters here: {takes})"}])
