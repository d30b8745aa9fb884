"""Database operations on twins; every one is scoped to a tenant."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from platform_api.errors import Conflict, NotFound
from platform_api.models import Twin
from platform_api.schemas import TwinCreate, TwinUpdate

__all__ = ["create_twin", "get_twin", "list_twins", "update_twin"]


def create_twin(*, session: Session, tenant_id: str, twin_in: TwinCreate) -> Twin:
    """Add a twin to a tenant (not committed)."""
    twin = Twin(tenant_id=tenant_id, **twin_in.model_dump())
    session.add(twin)
    try:
        session.flush()
    except IntegrityError as err:
        session.rollback()
        raise Conflict(f"patient {twin_in.patient_id} already has a twin in this tenant") from err
    return twin


def get_twin(*, session: Session, tenant_id: str, twin_id: str) -> Twin:
    """A tenant's twin; another tenant's twin is not found, exactly like a missing one."""
    twin = session.scalar(select(Twin).where(Twin.id == twin_id, Twin.tenant_id == tenant_id))
    if twin is None:
        raise NotFound(f"no twin {twin_id}")
    return twin


def list_twins(*, session: Session, tenant_id: str, limit: int, offset: int) -> tuple[list[Twin], int]:
    """A page of a tenant's twins, oldest first, and the tenant's total."""
    query = select(Twin).where(Twin.tenant_id == tenant_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(Twin.created_at, Twin.id).limit(limit).offset(offset)).all()
    return list(items), total


def update_twin(*, session: Session, twin: Twin, twin_in: TwinUpdate) -> Twin:
    """Apply the fields the caller set (not committed)."""
    for key, value in twin_in.model_dump(exclude_unset=True).items():
        setattr(twin, key, value)
    session.flush()
    return twin
