"""The audit trail: every access to patient data, append-only and hash-chained."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from platform_api.auth import Principal
from platform_api.models import AuditEvent

__all__ = ["CHAIN_LOCK", "GENESIS", "AuditCheck", "audited", "digest", "lock_chain", "record", "verify"]

GENESIS = "0" * 64
_CHAIN_LOCK = 7_262_026  # PostgreSQL advisory lock serialising appends to the chain


#: Serialises appends to the chain within this process (the recorder's batches and the
#: audited routes); across processes PostgreSQL's advisory lock does it.
CHAIN_LOCK = threading.Lock()
FIELDS = ("at", "actor", "role", "tenant_id", "patient_id", "action", "outcome")


def digest(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + canonical JSON of the event's fields)``."""
    canonical = {k: fields[k] for k in FIELDS}
    canonical["at"] = fields["at"].replace(tzinfo=None).isoformat(timespec="microseconds")
    return hashlib.sha256((prev_hash + json.dumps(canonical, sort_keys=True)).encode()).hexdigest()


def _fields(event: AuditEvent) -> dict[str, Any]:
    return {k: getattr(event, k) for k in FIELDS}


def lock_chain(connection: Connection | Session) -> str:
    """Take the cross-process chain lock (PostgreSQL) and return the newest hash."""
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    if bind.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK})
    return connection.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)) or GENESIS


def record(session: Session, *, actor: str, role: str, tenant_id: str | None, patient_id: str | None,
           action: str, outcome: str) -> AuditEvent:
    """Append one event to the chain (flushed with the caller's transaction; hold CHAIN_LOCK)."""
    prev = lock_chain(session)
    event = AuditEvent(at=datetime.now(timezone.utc).replace(tzinfo=None), actor=actor, role=role, tenant_id=tenant_id,
                       patient_id=patient_id, action=action, outcome=outcome, prev_hash=prev)
    event.hash = digest(prev, _fields(event))
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
            if digest(prev, _fields(event)) != event.hash:
                return AuditCheck(count, event.id, "its content does not match its hash (the event was altered)")
            prev, count, last_id = event.hash, count + 1, event.id


@contextlib.contextmanager
def audited(session: Session, caller: Principal, action: str, patient_id: str | None = None, *,
            writes: bool = False) -> Iterator[dict[str, str | None]]:
    """Record an access with its outcome.

    The audit event commits with the work, or alone after a rollback when the work failed
    (its outcome is then the error's name: ``notfound``, ``modelnotreadyerror``...). Set
    ``target["patient_id"]`` inside the block once the patient is known. A block that
    ``writes`` holds the chain lock throughout (SQLite has one writer: a transaction that
    wrote must not wait for the lock while the recorder waits for the database).
    """
    target: dict[str, str | None] = {"patient_id": patient_id}
    with CHAIN_LOCK if writes else contextlib.nullcontext():
        try:
            yield target
        except Exception as err:
            session.rollback()
            with contextlib.nullcontext() if writes else CHAIN_LOCK:
                record(session, actor=caller.key_id, role=caller.role, tenant_id=caller.tenant_id,
                       patient_id=target["patient_id"], action=action, outcome=type(err).__name__.lower())
                session.commit()
            raise
        with contextlib.nullcontext() if writes else CHAIN_LOCK:
            record(session, actor=caller.key_id, role=caller.role, tenant_id=caller.tenant_id,
                   patient_id=target["patient_id"], action=action, outcome="ok")
            session.commit()
