"""Alerts raised by high-risk predictions: list and acknowledge."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from platform_api import crud
from platform_api.audit import audited
from platform_api.deps import LimitQuery, OffsetQuery, PatientReader, SessionDep
from platform_api.schemas import AlertPage, AlertPublic

__all__ = ["router"]

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


@router.get("", response_model=AlertPage)
def list_alerts(
    session: SessionDep,
    caller: PatientReader,
    status: Literal["open", "acknowledged"] | None = None,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> AlertPage:
    """The caller's tenant's alerts, newest first."""
    with audited(session, caller, "alert.list"):
        items, total = crud.list_alerts(session=session, tenant_id=caller.tenant_id, status=status, limit=limit, offset=offset)
        page = AlertPage(items=[AlertPublic.model_validate(a) for a in items], total=total, limit=limit, offset=offset)
    return page


@router.post("/{alert_id}/acknowledge", response_model=AlertPublic)
def acknowledge(alert_id: str, session: SessionDep, caller: PatientReader) -> AlertPublic:
    """Acknowledge an alert of the caller's tenant."""
    with audited(session, caller, f"alert.ack:{alert_id[:40]}", writes=True):
        alert = AlertPublic.model_validate(crud.acknowledge_alert(session=session, tenant_id=caller.tenant_id,
                                                                   alert_id=alert_id, by=caller.key_id))
    return alert
