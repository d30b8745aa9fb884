"""Administration: the audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from platform_api import crud
from platform_api.auth import Principal
from platform_api.deps import SessionDep, require_roles
from platform_api.schemas import AuditEventPublic, AuditPage

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"])
Admin = Annotated[Principal, Depends(require_roles("admin"))]


@router.get("/audit", response_model=AuditPage)
def list_audit(
    session: SessionDep,
    caller: Admin,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> AuditPage:
    """Audit events, newest first: a tenant's admin sees its tenant's, the platform admin all."""
    items, total = crud.list_audit_events(session=session, tenant_id=caller.tenant_id, limit=limit, offset=offset)
    return AuditPage(items=[AuditEventPublic.model_validate(e) for e in items], total=total, limit=limit, offset=offset)
