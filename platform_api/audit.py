"""The audit trail: every access to patient data, append-only and hash-chained."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from platform_api.auth import Principal
from platform_api.models import AuditEvent

__all__ = ["GENESIS", "AuditCheck", "audited", "record", "verify"]

GENESIS = "0" * 64
_CHAIN_LOCK = 7_262_026  # PostgreSQL advisory lock serialising appends to the chain


def _digest(prev_hash: str, event: AuditEvent) -> str:
    fields = {
        "at": event.at.replace(tzinfo=None).isoformat(timespec="microseconds"),
        "actor": event.actor, "role": event.role, "tenant_id": event.tenant_id,
        "patient_id": event.patient_id, "action": event.action, "outcome": event.outcome,
    }
    return hashlib.sha256((prev_hash + json.dumps(fields, sort_keys=True)).encode()).hexdigest()


def record(session: Session, *, actor: str, role: str, tenant_id: str | None, patient_id: str | None,
           action: str, outcome: str) -> AuditEvent:
    """Append one event to the chain (flushed with the caller's transaction)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK})
    prev = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)) or GENESIS
    event = AuditEvent(at=datetime.now(timezone.utc).replace(tzinfo=None), actor=actor, role=role, tenant_id=tenant_id,
                       patient_id=patient_id, action=action, outcome=outcome, prev_hash=prev)
    event.hash = _digest(prev, event)
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class AuditCheck:
    """Result of :func:`verify`: events checked, and the first broken one if any."""

    events: int
    first_bad_id: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the whole chain holds."""
        return self.first_bad_id is None


def verify(session: Session, batch: int = 10_000) -> AuditCheck:
    """Recompute the chain from the first event; report the first link that breaks."""
    prev, count, last_id = GENESIS, 0, 0
    while True:
        events = session.scalars(select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)).all()
        if not events:
            return AuditCheck(count, None)
        for event in events:
            if event.prev_hash != prev:
                return AuditCheck(count, event.id, "its prev_hash does not match the previous event (an event was removed or reordered)")
            if _digest(prev, event) != event.hash:
                return AuditCheck(count, event.id, "its content does not match its hash (the event was altered)")
            prev, count, last_id = event.hash, count + 1, event.id


@contextlib.contextmanager
def audited(session: Session, caller: Principal, action: str, patient_id: str | None = None) -> Iterator[dict[str, str | None]]:
    """Record an access with its outcome.

    The audit event commits with the work, or alone after a rollback when the work failed
    (its outcome is then the error's name: ``notfound``, ``modelnotreadyerror``...). Set
    ``target["patient_id"]`` inside the block once the patient is known.
    """
    target: dict[str, str | None] = {"patient_id": patient_id}
    try:
        yield target
    except Exception as err:
        session.rollback()
        record(session, actor=caller.key_id, role=caller.role, tenant_id=caller.tenant_id,
               patient_id=target["patient_id"], action=action, outcome=type(err).__name__.lower())
        session.commit()
        raise
    record(session, actor=caller.key_id, role=caller.role, tenant_id=caller.tenant_id,
           patient_id=target["patient_id"], action=action, outcome="ok")
    session.commit()
