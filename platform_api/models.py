"""SQLAlchemy models of the platform: tenants, API keys, twins, predictions, alerts, image results and the audit chain."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["ROLES", "Alert", "ApiKey", "AuditChain", "AuditEvent", "Base", "ImagePrediction", "Prediction", "Tenant", "Twin"]

#: Roles a key can carry.
ROLES = ("admin", "data_scientist", "hospital", "app", "clinical_validator")


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every platform table."""


class Tenant(Base):
    """A hospital or organisation; every twin belongs to exactly one."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=_now)


class ApiKey(Base):
    """A caller's credential: a public key id and the SHA-256 of its random secret."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Twin(Base):
    """A patient's digital twin: their identity within a tenant."""

    __tablename__ = "twins"
    __table_args__ = (UniqueConstraint("tenant_id", "patient_id", name="uq_twin_tenant_patient"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class AuditEvent(Base):
    """One access to patient data. Append-only (database triggers refuse UPDATE, DELETE,
    REPLACE and TRUNCATE) and chained: ``hash = HMAC-SHA256(audit key, prev_hash + canonical
    event)`` (plain SHA-256 for legacy events up to :attr:`AuditChain.legacy_until`). No two
    events share a parent: ``prev_hash`` is unique (on a database that already held a fork
    before migration 0004, only among the keyed events)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("uq_audit_events_prev_hash", "prev_hash", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=_now, index=True)
    actor: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditChain(Base):
    """The chain's one metadata row (append-only): events up to ``legacy_until`` were
    written before keyed MACs (migration 0004) and verify as plain SHA-256."""

    __tablename__ = "audit_chain"
    id: Mapped[int] = mapped_column(primary_key=True)
    legacy_until: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class Prediction(Base):
    """A risk prediction for a twin: the model version that made it and the inputs it used."""

    __tablename__ = "predictions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    twin_id: Mapped[str] = mapped_column(ForeignKey("twins.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(32))
    risk: Mapped[float] = mapped_column()
    inputs: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class Alert(Base):
    """A prediction above the alert threshold, to be acknowledged by a clinician or app."""

    __tablename__ = "alerts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id"), unique=True)
    twin_id: Mapped[str] = mapped_column(ForeignKey("twins.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    priority: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(32), default=None)


class ImagePrediction(Base):
    """An image classified for a twin: the label, every class's probability and the model
    version. The image itself is not kept, only its SHA-256 (which image was read)."""

    __tablename__ = "image_predictions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    twin_id: Mapped[str] = mapped_column(ForeignKey("twins.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column()
    probabilities: Mapped[dict] = mapped_column(JSON)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_bytes: Mapped[int] = mapped_column()
    content_type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)
