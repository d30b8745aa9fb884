"""Typed FastAPI dependencies: the database session and the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from platform_api.auth import Principal, authenticate, authenticate_cached
from platform_api.db import DatabaseUrl, get_session, session_factory
from platform_api.errors import Forbidden

__all__ = ["CallerDep", "LimitQuery", "OffsetQuery", "PatientReader", "PatientWriter", "SessionDep", "require_roles"]

SessionDep = Annotated[Session, Depends(get_session)]
_bearer = HTTPBearer(auto_error=False, description="An API key `bv_<id>_<secret>`, or an access token from `POST /v1/oauth/token`")


def _authenticate(url: str, token: str | None) -> Principal:
    with session_factory(url)() as session:
        return authenticate(session, token)


async def _caller(url: DatabaseUrl, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The caller: from the principal cache on the event loop, else from the database in a thread."""
    token = credentials.credentials if credentials else None
    cached = authenticate_cached(token)
    if cached is not None:
        return cached
    return await run_in_threadpool(_authenticate, url, token)


CallerDep = Annotated[Principal, Depends(_caller)]


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
