"""The audit trail: every access to patient data, append-only, MAC-chained and anchored outside the database (docs/audit.md)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.orm import Session

from platform_api.audit_archive_store import AUDIT_ARCHIVES, manifest_problem
from platform_api.audit_checkpoints import Checkpoint, audit_key, database_id, note_appended, read_checkpoints
from platform_api.auth import Principal
from platform_api.models import AuditChain, AuditEvent

__all__ = ["CHAIN_LOCK", "GENESIS", "AuditBreak", "AuditCheck", "ChainWalk", "audited", "digest", "event_mac", "lock_chain", "record",
           "verify"]

GENESIS = "0" * 64
_CHAIN_LOCK = 7_262_026  # PostgreSQL advisory lock serialising appends to the chain


#: Serialises appends to the chain within this process (the recorder's batches and the
#: audited routes); across processes the database's write lock does it (:func:`lock_chain`).
CHAIN_LOCK = threading.Lock()
FIELDS = ("at", "actor", "role", "tenant_id", "patient_id", "action", "outcome")


_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _value(value: Any) -> str:
    if value is None:
        return "null"
    return _quote(value) if isinstance(value, str) else json.dumps(value)


def _canonical_of(at: datetime, actor: Any, role: Any, tenant_id: Any, patient_id: Any, action: Any, outcome: Any) -> str:
    """``json.dumps({field: value}, sort_keys=True)`` of the event, ``at`` as naive ISO with
    microseconds, written out by hand (verify's hot loop: five times faster than dumps)."""
    if at is None:  # only after DDL: verify then reports a MAC mismatch
        stamp = ""
    else:
        stamp = (at if at.tzinfo is None else at.replace(tzinfo=None)).isoformat(timespec="microseconds")
    return (f'{{"action": {_value(action)}, "actor": {_value(actor)}, "at": "{stamp}", "outcome": {_value(outcome)}, '
            f'"patient_id": {_value(patient_id)}, "role": {_value(role)}, "tenant_id": {_value(tenant_id)}}}')


def _canonical(fields: Mapping[str, Any]) -> str:
    return _canonical_of(*(fields[k] for k in FIELDS))


def digest(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """Legacy (pre-0004) link: ``sha256(prev_hash + canonical JSON of the event's fields)``."""
    return hashlib.sha256((prev_hash + _canonical(fields)).encode()).hexdigest()


def event_mac(key: bytes, prev_hash: str, fields: Mapping[str, Any]) -> str:
    """The link of every event since 0004: ``HMAC-SHA256(key, prev_hash + canonical JSON)``."""
    return hmac.digest(key, (prev_hash + _canonical(fields)).encode(), "sha256").hex()


def _fields(event: AuditEvent) -> dict[str, Any]:
    return {k: getattr(event, k) for k in FIELDS}


def lock_chain(connection: Connection | Session) -> str:
    """Take the cross-process chain lock and return the newest hash.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: the database's write lock,
    taken by a write that changes nothing, so the head read below cannot go stale before
    this transaction appends (a plain read would not lock, and two processes would chain
    onto the same parent).
    """
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    if bind.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK})
    else:
        connection.execute(text("DELETE FROM audit_chain WHERE 0"))
    return connection.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)) or GENESIS


def record(session: Session, *, actor: str, role: str, tenant_id: str | None, patient_id: str | None,
           action: str, outcome: str) -> AuditEvent:
    """Append one event to the chain (flushed with the caller's transaction; hold CHAIN_LOCK)."""
    key = audit_key()
    prev = lock_chain(session)
    event = AuditEvent(at=datetime.now(UTC).replace(tzinfo=None), actor=actor, role=role, tenant_id=tenant_id,
                       patient_id=patient_id, action=action, outcome=outcome, prev_hash=prev)
    event.hash = event_mac(key, prev, _fields(event))
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class AuditBreak:
    """One thing verify found wrong: the event (or ``None`` for a checkpoint line) and why."""

    event_id: int | None
    reason: str


@dataclass(frozen=True)
class AuditCheck:
    """Result of :func:`verify`: events checked, every break found, and the anchor used."""

    events: int
    breaks: list[AuditBreak] = field(default_factory=list)
    checkpoints: int = 0
    legacy_until: int = 0
    last_id: int = 0

    @property
    def ok(self) -> bool:
        """True when the whole chain holds and agrees with every checkpoint."""
        return not self.breaks

    @property
    def first_bad_id(self) -> int | None:
        """The first broken event's id (``None`` when intact or only a checkpoint is bad)."""
        return next((b.event_id for b in self.breaks if b.event_id is not None), None)

    @property
    def reason(self) -> str:
        """The first break's reason (empty when intact)."""
        return self.breaks[0].reason if self.breaks else ""


class ChainWalk:
    """Verify's walk of the chain in id order, collecting breaks; the archive's segments feed it
    before the live table (platform_api.audit_archive_verify), so counts and links run on."""

    def __init__(self, by_id: dict[int, list[Checkpoint]], legacy_until: int, key: bytes | None) -> None:
        self.breaks: list[AuditBreak] = []
        self.by_id, self.legacy_until, self.key = by_id, legacy_until, key
        self.prev, self.prev_parent, self.count, self.last_id = GENESIS, None, 0, 0
        self.seen: set[int] = set()  # checkpoint lines met
        self.boundary = ""  # set: the next event is the first after this (the archive's end)

    def skip(self, last_id: int, last_hash: str, events: int) -> None:
        """Go on after events that cannot be read (a lost segment, already reported) as if they held."""
        for cp_id, cps in self.by_id.items():
            if self.last_id < cp_id <= last_id:
                self.seen.update(cp.line for cp in cps)
        self.prev, self.prev_parent, self.last_id, self.count = last_hash, None, last_id, self.count + events

    def feed(self, rows: Iterable[Sequence[Any]]) -> None:
        """Check ``(id, prev_hash, hash, *FIELDS)`` rows, the next ones of the chain."""
        breaks, by_id, legacy_until = self.breaks, self.by_id, self.legacy_until
        prev, prev_parent, count, last_id = self.prev, self.prev_parent, self.count, self.last_id
        secret = self.key
        for row in rows:
            event_id, parent, stored = row[0], row[1] or "", row[2] or ""  # NULLs only after DDL: a break, not a crash
            message = (parent + _canonical_of(*row[3:])).encode()
            count += 1
            if parent != prev:
                if self.boundary:
                    why = (f"its prev_hash is not the hash of {self.boundary}: events before it were deleted "
                           "without an archive record")
                elif parent == prev_parent:
                    why = f"shares its parent with event {last_id} (a fork: two writers chained onto one head)"
                else:
                    why = "its prev_hash is not the previous event's hash (an event before it was removed or reordered)"
                breaks.append(AuditBreak(event_id, why))
            self.boundary = ""
            if event_id <= legacy_until:
                expected = hashlib.sha256(message).hexdigest()
            else:
                secret = self.key = secret or audit_key(create=False)
                expected = hmac.digest(secret, message, "sha256").hex()
            if not hmac.compare_digest(expected, stored):
                breaks.append(AuditBreak(event_id, "its content does not match its MAC (altered, or re-hashed without the key)"))
            for cp in by_id.get(event_id, ()):
                self.seen.add(cp.line)
                if cp.head != stored:
                    breaks.append(AuditBreak(event_id, f"differs from the checkpoint of {cp.at} (line {cp.line}): "
                                                       "the event was rewritten"))
                elif cp.events != count:
                    breaks.append(AuditBreak(event_id, f"is event number {count}, the checkpoint of {cp.at} (line {cp.line}) "
                                                       f"counted {cp.events}: events were removed or inserted before it"))
            prev, prev_parent, last_id = stored, parent, event_id
        self.prev, self.prev_parent, self.count, self.last_id = prev, prev_parent, count, last_id


def verify(session: Session, *, checkpoints: Path | None = None, key: bytes | None = None,
           batch: int = 20_000, archived: Callable[[ChainWalk], None] | None = None) -> AuditCheck:
    """Recompute the whole chain and check it against the signed checkpoints; report every break.

    After a break the walk goes on from the event's stored hash, so each altered, removed,
    forked or re-hashed event is named once and later events are still checked.
    ``archived`` feeds the archived events to the walk first (see
    ``platform_api.audit_archive_verify.verify_all``); without it the walk starts after
    the newest archive record (its MAC checked, the segments not read), so the live table
    must continue it.

    Raises:
        experiments.errors.SecretKeyError: keyed events or checkpoints exist but no audit key does.
    """
    bind = session.get_bind()
    db = database_id(bind.url if isinstance(bind, Engine) else bind.engine.url)
    anchors = read_checkpoints(db, path=checkpoints, key=key)
    breaks = [AuditBreak(None, f"checkpoint line {cp.line}: {cp.problem}") for cp in anchors if not cp.valid]
    valid = [cp for cp in anchors if cp.valid]
    legacy_until = session.scalar(select(AuditChain.legacy_until).limit(1)) or 0
    for cp in valid:
        if cp.legacy_until != legacy_until:
            breaks.append(AuditBreak(None, f"checkpoint line {cp.line} ({cp.at}) records legacy events up to id "
                                           f"{cp.legacy_until}, the database says {legacy_until} (cut-over rewritten)"))
    by_id: dict[int, list[Checkpoint]] = {}
    for cp in valid:
        by_id.setdefault(cp.last_id, []).append(cp)
    walk = ChainWalk(by_id, legacy_until, key)
    if archived is not None:
        archived(walk)
    else:
        _after_archive(session, walk, key)
    walk.boundary = f"the last archived event ({walk.last_id})" if walk.count else "the chain's root (64 zeros)"
    table = AuditEvent.__table__
    columns = [table.c.id, table.c.prev_hash, table.c.hash, *(table.c[k] for k in FIELDS)]
    cursor = 0
    while True:
        rows = session.execute(select(*columns).where(table.c.id > cursor).order_by(table.c.id).limit(batch)).all()
        if not rows:
            break
        walk.feed(rows)
        cursor = rows[-1][0]
    breaks += walk.breaks
    last_id, count = walk.last_id, walk.count
    for cp in valid:
        if cp.line in walk.seen:
            continue
        if cp.last_id > last_id:
            breaks.append(AuditBreak(cp.last_id, f"the chain ends at event {last_id} ({count} events) but the checkpoint of "
                                                 f"{cp.at} (line {cp.line}) anchors event {cp.last_id} ({cp.events} events): "
                                                 "the tail was dropped or the table truncated"))
        else:
            breaks.append(AuditBreak(cp.last_id, f"is missing, but the checkpoint of {cp.at} (line {cp.line}) anchors it: "
                                                 "the event was deleted"))
    breaks.sort(key=lambda b: (b.event_id is not None, b.event_id or 0))
    return AuditCheck(count, breaks, len(valid), legacy_until, last_id)


def _after_archive(session: Session, walk: ChainWalk, key: bytes | None) -> None:
    """Start a live-only walk after the newest archive record: its hash, the archived count."""
    row = session.execute(select(AUDIT_ARCHIVES).order_by(AUDIT_ARCHIVES.c.last_id.desc()).limit(1)).first()
    if row is None:
        return
    record = dict(row._mapping)
    if problem := manifest_problem(record, key or audit_key(create=False)):
        walk.breaks.append(AuditBreak(record["first_id"], f"the archive record of events {record['first_id']}-"
                                                          f"{record['last_id']}: its {problem}"))
    archived = session.scalar(select(func.coalesce(func.sum(AUDIT_ARCHIVES.c.events), 0))) or 0
    walk.skip(int(record["last_id"]), str(record["last_hash"]), int(archived))


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
            note_appended(session.get_bind(), 1)
            raise
        with contextlib.nullcontext() if writes else CHAIN_LOCK:
            record(session, actor=caller.key_id, role=caller.role, tenant_id=caller.tenant_id,
                   patient_id=target["patient_id"], action=action, outcome="ok")
            session.commit()
    note_appended(session.get_bind(), 1)
