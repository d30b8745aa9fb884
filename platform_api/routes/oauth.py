"""OAuth2 client credentials (RFC 6749 §4.4): an API key's id and secret buy a short-lived bearer token."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Form, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from platform_api.auth import issue_access_token
from platform_api.db import DatabaseUrl, session_factory
from platform_api.deps import RateLimitsDep, client_address
from platform_api.errors import NotAuthenticated

__all__ = ["router"]

router = APIRouter(tags=["auth"])


class OAuthError(BaseModel):
    """An OAuth2 error answer (RFC 6749 §5.2)."""

    error: str
    error_description: str


class TokenResponse(BaseModel):
    """An access token (RFC 6749 §5.1)."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int


def _oauth_error(status: int, error: str, description: str, retry_after: int = 0) -> JSONResponse:
    headers = {"WWW-Authenticate": "Basic", "Cache-Control": "no-store"} if status == 401 else {"Cache-Control": "no-store"}
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=headers)


def _basic(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        client_id, _, secret = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return client_id, secret


def _issue(url: str, client_id: str, secret: str) -> tuple[str, int]:
    with session_factory(url)() as session:
        return issue_access_token(session, client_id, secret)


_ERRORS = {
    400: {"model": OAuthError, "description": "unsupported_grant_type: a grant other than client_credentials"},
    401: {"model": OAuthError, "description": "invalid_client: no client credentials, an unknown client, a revoked "
                                               "key or a wrong secret"},
    429: {"model": OAuthError, "description": "too_many_requests: over the rate limit of the source address or "
                                               "client id (see Retry-After)",
          "headers": {"Retry-After": {"description": "Seconds until a request may succeed", "schema": {"type": "integer"}}}},
    503: {"description": "The database does not answer"},  # the error table's {"detail"} (platform_api.openapi)
}


@router.post("/v1/oauth/token", response_model=TokenResponse, responses=_ERRORS)  # type: ignore[arg-type]
async def token(
    request: Request,
    url: DatabaseUrl,
    limits: RateLimitsDep,
    grant_type: Annotated[str, Form(min_length=1, max_length=64, json_schema_extra={"enum": ["client_credentials"]})],
    client_id: Annotated[str | None, Form(max_length=64)] = None,
    client_secret: Annotated[str | None, Form(max_length=256)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> JSONResponse:
    """Client credentials grant: the key id is the client id, the key's secret the client
    secret (in the form, or HTTP Basic). Answers a bearer token valid for 15 minutes."""
    basic = _basic(authorization)
    if basic is not None:
        client_id, client_secret = basic
    wait = limits.token_request(client_address(request), client_id) if limits is not None else 0
    if wait:
        return _oauth_error(429, "too_many_requests", f"too many token requests; retry in {wait} s", wait)
    if grant_type != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
    if not client_id or not client_secret:  # RFC 6749 §5.2: no client authentication included is invalid_client
        return _oauth_error(401, "invalid_client", "client_id and client_secret are required (form or HTTP Basic)")
    try:
        access_token, lifetime = await run_in_threadpool(_issue, url, client_id, client_secret)
    except NotAuthenticated:
        return _oauth_error(401, "invalid_client", "unknown client, revoked key or wrong secret")
    body = TokenResponse(access_token=access_token, expires_in=lifetime)
    return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
