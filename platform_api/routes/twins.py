"""Twins: a patient's identity within a tenant. Every access is audited."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from sqlalchemy.orm import Session

from platform_api import crud
from platform_api.audit import record
from platform_api.auth import Principal
from platform_api.deps import SessionDep, require_roles
from platform_api.errors import PlatformError
from platform_api.schemas import TwinCreate, TwinPage, TwinPublic, TwinUpdate

__all__ = ["router"]

router = APIRouter(prefix="/v1/twins", tags=["twins"])
Reader = Annotated[Principal, Depends(require_roles("app", "hospital", "clinical_validator", "admin"))]
Writer = Annotated[Principal, Depends(require_roles("app", "hospital", "admin"))]


@contextlib.contextmanager
def audited(session: Session, caller: Principal, action: str, patient_id: str | None = None) -> Iterator[dict[str, str | None]]:
    """Record the access with its outcome; the audit event commits with the work, or alone
    (after a rollback) when the work failed."""
    target: dict[str, str | None] = {"patient_id": patient_id}
    try:
        yield target
    except PlatformError as err:
        session.rollback()
        outcome = type(err).__name__.lower()
        record(session, actor=caller.key_id, role=caller.role, tenant_id=caller.tenant_id,
               patient_id=target["patient_id"], action=action, outcome=outcome)
        session.commit()
        raise
    record(session, actor=caller.key_id, role=caller.role, tenant_id=caller.tenant_id,
           patient_id=target["patient_id"], action=action, outcome="ok")
    session.commit()


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TwinPublic)
def create_twin(twin_in: TwinCreate, session: SessionDep, caller: Writer) -> TwinPublic:
    """Create a twin for a patient of the caller's tenant."""
    assert caller.tenant_id is not None
    with audited(session, caller, "twin.create", twin_in.patient_id):
        twin = crud.create_twin(session=session, tenant_id=caller.tenant_id, twin_in=twin_in)
        public = TwinPublic.model_validate(twin)
    return public


@router.get("", response_model=TwinPage)
def list_twins(
    session: SessionDep,
    caller: Reader,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> TwinPage:
    """The caller's tenant's twins, a page at a time."""
    assert caller.tenant_id is not None
    with audited(session, caller, "twin.list"):
        items, total = crud.list_twins(session=session, tenant_id=caller.tenant_id, limit=limit, offset=offset)
        page = TwinPage(items=[TwinPublic.model_validate(t) for t in items], total=total, limit=limit, offset=offset)
    return page


@router.get("/{twin_id}", response_model=TwinPublic)
def read_twin(twin_id: str, session: SessionDep, caller: Reader) -> TwinPublic:
    """One twin of the caller's tenant; any other answers 404."""
    assert caller.tenant_id is not None
    with audited(session, caller, f"twin.read:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        public = TwinPublic.model_validate(twin)
    return public


@router.patch("/{twin_id}", response_model=TwinPublic)
def update_twin(twin_id: str, twin_in: TwinUpdate, session: SessionDep, caller: Writer) -> TwinPublic:
    """Change a twin of the caller's tenant."""
    assert caller.tenant_id is not None
    with audited(session, caller, f"twin.update:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        public = TwinPublic.model_validate(crud.update_twin(session=session, twin=twin, twin_in=twin_in))
    return public
