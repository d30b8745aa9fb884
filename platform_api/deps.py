"""Typed FastAPI dependencies: the database session and the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from platform_api.auth import Principal, authenticate, authenticate_cached
from platform_api.db import DatabaseUrl, get_session, session_factory
from platform_api.errors import Forbidden, NotAuthenticated, TooManyRequests

__all__ = ["CallerDep", "LimitQuery", "OffsetQuery", "PatientReader", "PatientWriter", "SessionDep", "bearer_scheme",
           "client_address", "identify_caller", "require_roles"]

SessionDep = Annotated[Session, Depends(get_session)]
_bearer = HTTPBearer(auto_error=False, description="An API key `bv_<id>_<secret>`, or an access token from `POST /v1/oauth/token`")


def _authenticate(url: str, token: str | None) -> Principal:
    with session_factory(url)() as session:
        return authenticate(session, token)


def client_address(request: Request) -> str:
    """The address the request came from, as the server sees it (the key of rate limits)."""
    return request.client.host if request.client else "unknown"


async def _caller(request: Request, url: DatabaseUrl,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The caller: from the principal cache on the event loop, else from the database in a
    thread, unless the address is over its limit of failed checks (429)."""
    token = credentials.credentials if credentials else None
    limits = getattr(request.app.state, "rate_limits", None)
    address = client_address(request)
    try:
        cached = authenticate_cached(token)
        if cached is not None:
            return cached
        if limits is not None and (wait := limits.auth_blocked(address)):
            raise TooManyRequests(f"too many failed credential checks from this address; retry in {wait} s", wait)
        return await run_in_threadpool(_authenticate, url, token)
    except NotAuthenticated:
        if limits is not None and token:  # no credentials at all guess nothing: not counted
            limits.auth_failed(address)
        raise


CallerDep = Annotated[Principal, Depends(_caller)]
#: Public names of the bearer scheme and the key check, for routes that admit other credentials too (``/metrics``).
bearer_scheme = _bearer
identify_caller = _caller


def require_roles(*roles: str, tenant: bool = True) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting only ``roles`` (and, if ``tenant``, only tenant-bound keys)."""

    async def check(caller: CallerDep) -> Principal:
        if caller.role not in roles:
            raise Forbidden(f"role {caller.role} may not do this (allowed: {', '.join(roles)})")
        if tenant and caller.tenant_id is None:
            raise Forbidden("this key belongs to no tenant; patient data is reached through a tenant's key")
        return caller

    return check


#: Callers who may read a tenant's patient data, and those who may change it. Clinical
#: validators see models and their reports, never patient twins (least privilege).
PatientReader = Annotated[Principal, Depends(require_roles("app", "hospital", "admin"))]
PatientWriter = Annotated[Principal, Depends(require_roles("app", "hospital", "admin"))]

#: Paging parameters shared by the list routes.
LimitQuery = Annotated[int, Query(ge=1, le=200)]
OffsetQuery = Annotated[int, Query(ge=0, le=10_000_000)]
