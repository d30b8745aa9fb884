"""The OpenAPI document lists every status a route can answer, with the body actually sent (docs/api.md)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["ERROR_SCHEMA", "install_openapi"]

#: The body of every domain error (see :func:`platform_api.errors.install_error_handlers`).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorDetail",
    "type": "object",
    "properties": {"detail": {"type": "string", "title": "Detail", "description": "What went wrong, in one line."}},
    "required": ["detail"],
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorDetail"}

_DESCRIPTIONS = {
    400: "The request body cannot be parsed (not JSON, not UTF-8, a malformed form)",
    401: "No credentials, or ones that match no active key or valid token",
    403: "The key's role (or its lack of a tenant) does not allow this",
    404: "No such object for this caller (another tenant's is answered the same way)",
    409: "Conflicts with the object's current state",
    413: "The request body is over the size limit",
    415: "The upload is not of a type this route takes",
    422: "The request does not satisfy the contract",
    429: "Too many failed credential checks from this address (see Retry-After)",
    503: "A service the request needs does not answer; try again",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds until a request may succeed", "schema": {"type": "integer"}}},
}
#: Statuses FastAPI answers itself on a malformed body (400) or one that fails validation (422).
_FRAMEWORK = frozenset({400, 422})
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _json_error(status: int, schema: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": _DESCRIPTIONS[status], "content": {"application/json": {"schema": schema}}}
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Add the error answers an operation can give to every operation of ``document``."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorDetail"] = ERROR_SCHEMA
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            statuses: set[int] = {422}  # an unknown query parameter (edge.known_query_only), on any operation
            if operation.get("security"):
                statuses |= {401, 403, 429, 503}
            if "{" in path:
                statuses.add(404)
            if "requestBody" in operation:
                statuses |= {400, 413, 422}
            statuses |= {int(code) for code in responses if code.isdigit() and int(code) in _DESCRIPTIONS}
            for status in sorted(statuses):
                given = responses.get(str(status))
                if status in _FRAMEWORK:  # FastAPI's own answer ({"detail": ...}) beside the route's
                    own = (given or {}).get("content", {}).get("application/json", {}).get("schema")
                    if own is None and status == 422 and "HTTPValidationError" in schemas:
                        own = {"$ref": "#/components/schemas/HTTPValidationError"}  # the unknown query parameter
                    schema = {"anyOf": [own, _ERROR_REF]} if own else _ERROR_REF
                    responses[str(status)] = {**(given or {}), **_json_error(status, schema),
                                              "description": (given or {}).get("description") or _DESCRIPTIONS[status]}
                elif given is None:
                    responses[str(status)] = _json_error(status, _ERROR_REF)
                elif "content" not in given:  # the route gave only a description
                    responses[str(status)] = {**_json_error(status, _ERROR_REF), "description": given["description"]}
    return document


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) the document with its errors listed."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes, servers=app.servers or None)
            app.openapi_schema = document_errors(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
