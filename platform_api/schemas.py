"""Request and response schemas of the platform API, named by role."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AuditEventPublic", "AuditPage", "TwinCreate", "TwinPage", "TwinPublic", "TwinUpdate"]

PatientId = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class TwinBase(BaseModel):
    """Fields a caller may set on a twin."""

    model_config = ConfigDict(extra="forbid")
    display_name: str | None = Field(default=None, max_length=200)


class TwinCreate(TwinBase):
    """A new twin: the patient's id within the caller's tenant."""

    patient_id: str = PatientId


class TwinUpdate(TwinBase):
    """Changes to a twin."""


class TwinPublic(BaseModel):
    """A twin as the API returns it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    tenant_id: str
    patient_id: str
    display_name: str | None
    created_at: datetime
    updated_at: datetime


class TwinPage(BaseModel):
    """One page of twins."""

    items: list[TwinPublic]
    total: int
    limit: int
    offset: int


class AuditEventPublic(BaseModel):
    """One audit event."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    actor: str
    role: str
    tenant_id: str | None
    patient_id: str | None
    action: str
    outcome: str
    hash: str


class AuditPage(BaseModel):
    """One page of the audit trail, newest first."""

    items: list[AuditEventPublic]
    total: int
    limit: int
    offset: int
