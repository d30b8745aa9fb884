"""Database operations of the API (twins, predictions, alerts, image results, audit events), each scoped to a tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from platform_api.errors import Conflict, NotFound
from platform_api.models import Alert, AuditEvent, ImagePrediction, Prediction, Twin
from platform_api.schemas import TwinCreate, TwinUpdate

__all__ = [
    "acknowledge_alert",
    "alert_priority",
    "create_twin",
    "get_prediction",
    "get_twin",
    "latest_prediction",
    "list_alerts",
    "list_audit_events",
    "list_image_predictions",
    "list_predictions",
    "list_twins",
    "paginate",
    "twin_patients",
    "update_twin",
]


def paginate(session: Session, query: Select[Any], order_by: tuple[Any, ...], *, limit: int, offset: int) -> tuple[list[Any], int]:
    """One page of ``query`` in ``order_by`` order, and the total number of rows it matches."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.order_by(*order_by).limit(limit).offset(offset)).all()), total


def twin_patients(*, session: Session, tenant_id: str, twin_ids: list[str]) -> dict[str, str]:
    """twin id -> patient id, for those of ``twin_ids`` that are the tenant's."""
    rows = session.execute(select(Twin.id, Twin.patient_id).where(Twin.tenant_id == tenant_id, Twin.id.in_(twin_ids)))
    return dict(rows.tuples().all())


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


def list_twins(*, session: Session, tenant_id: str, limit: int, offset: int, patient_id: str | None = None) -> tuple[list[Twin], int]:
    """A page of a tenant's twins (or the twin of one patient), oldest first, and the total."""
    query = select(Twin).where(Twin.tenant_id == tenant_id)
    if patient_id is not None:
        query = query.where(Twin.patient_id == patient_id)
    return paginate(session, query, (Twin.created_at, Twin.id), limit=limit, offset=offset)


def update_twin(*, session: Session, twin: Twin, twin_in: TwinUpdate) -> Twin:
    """Apply the fields the caller set (not committed)."""
    for key, value in twin_in.model_dump(exclude_unset=True).items():
        setattr(twin, key, value)
    session.flush()
    return twin


def alert_priority(risk: float, threshold: float) -> str | None:
    """``critical`` (>= 0.7), ``high`` (>= 0.5) or ``medium`` at or above the threshold."""
    if risk < threshold:
        return None
    return "critical" if risk >= 0.7 else "high" if risk >= 0.5 else "medium"


def latest_prediction(*, session: Session, twin_id: str) -> Prediction | None:
    """A twin's most recent prediction."""
    return session.scalar(select(Prediction).where(Prediction.twin_id == twin_id)
                          .order_by(Prediction.created_at.desc(), Prediction.id).limit(1))


def get_prediction(*, session: Session, tenant_id: str, prediction_id: str) -> tuple[Prediction, Twin, str | None]:
    """A tenant's prediction, its twin and its alert priority (None without an alert)."""
    row = session.execute(
        select(Prediction, Twin, Alert.priority)
        .join(Twin, Twin.id == Prediction.twin_id)
        .outerjoin(Alert, Alert.prediction_id == Prediction.id)
        .where(Prediction.id == prediction_id, Prediction.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise NotFound(f"no prediction {prediction_id}")
    return row[0], row[1], row[2]


def list_predictions(*, session: Session, twin_id: str, limit: int, offset: int) -> tuple[list[Prediction], int]:
    """A page of a twin's predictions, newest first."""
    query = select(Prediction).where(Prediction.twin_id == twin_id)
    return paginate(session, query, (Prediction.created_at.desc(), Prediction.id), limit=limit, offset=offset)


def list_image_predictions(*, session: Session, twin_id: str, limit: int, offset: int) -> tuple[list[ImagePrediction], int]:
    """A page of a twin's image predictions, newest first."""
    query = select(ImagePrediction).where(ImagePrediction.twin_id == twin_id)
    return paginate(session, query, (ImagePrediction.created_at.desc(), ImagePrediction.id), limit=limit, offset=offset)


def list_alerts(*, session: Session, tenant_id: str, status: str | None, limit: int, offset: int) -> tuple[list[Alert], int]:
    """A page of a tenant's alerts, newest first."""
    query = select(Alert).where(Alert.tenant_id == tenant_id)
    if status:
        query = query.where(Alert.status == status)
    return paginate(session, query, (Alert.created_at.desc(), Alert.id), limit=limit, offset=offset)


def acknowledge_alert(*, session: Session, tenant_id: str, alert_id: str, by: str) -> Alert:
    """Acknowledge a tenant's alert (idempotent; not committed)."""
    alert = session.scalar(select(Alert).where(Alert.id == alert_id, Alert.tenant_id == tenant_id))
    if alert is None:
        raise NotFound(f"no alert {alert_id}")
    if alert.status != "acknowledged":
        alert.status = "acknowledged"
        alert.acknowledged_at = datetime.now(UTC).replace(tzinfo=None)
        alert.acknowledged_by = by
        session.flush()
    return alert


def list_audit_events(*, session: Session, tenant_id: str | None, limit: int, offset: int) -> tuple[list[AuditEvent], int]:
    """Audit events, newest first: the tenant's, or every tenant's for ``tenant_id=None`` (a platform admin)."""
    query = select(AuditEvent)
    if tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    return paginate(session, query, (AuditEvent.id.desc(),), limit=limit, offset=offset)
