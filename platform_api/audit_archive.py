"""Audit retention: events older than the retention age move to signed, checksummed segments (docs/audit.md)."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text

from platform_api.audit import FIELDS, GENESIS, ChainWalk
from platform_api.audit_archive_store import (
    AUDIT_ARCHIVES,
    MANIFEST_FIELDS,
    ArchiveStore,
    AuditArchiveError,
    retention_settings,
    sign_manifest,
)
from platform_api.audit_checkpoints import audit_key
from platform_api.models import AuditChain, AuditEvent

__all__ = ["ArchiveRun", "Archiver", "Segment", "cutoff", "decode_segment", "encode_segment", "manifest_name",
           "segment_name"]

_ARCHIVE_LOCK = 7_262_027  # PostgreSQL advisory lock (session): one archive run at a time
_COMMIT_LOCK = 7_262_028  # PostgreSQL advisory lock (transaction): one segment's commit at a time
_COLUMNS = ("id", "prev_hash", "hash", *FIELDS)


def segment_name(first_id: int, last_id: int) -> str:
    """``segment-<first id>-<last id>.jsonl.gz`` (ids zero-padded: names sort in chain order)."""
    return f"segment-{first_id:012d}-{last_id:012d}.jsonl.gz"


def manifest_name(segment: str) -> str:
    """The manifest beside ``segment``: ``segment-<first>-<last>.manifest.json``."""
    return segment.removesuffix(".jsonl.gz") + ".manifest.json"


def _stamp(at: datetime) -> str:
    return (at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)).isoformat(timespec="microseconds")


def encode_segment(rows: Sequence[Sequence[Any]]) -> tuple[bytes, dict[str, Any]]:
    """Gzip the rows ``(id, prev_hash, hash, *FIELDS)`` as JSON lines; return the bytes and the unsigned manifest.

    The bytes depend only on the rows (no time or name in the gzip header), so a rerun
    rewrites a segment identically.
    """
    lines = []
    for row in rows:
        event = dict(zip(_COLUMNS, row, strict=True))
        event["at"] = _stamp(event["at"])
        lines.append(json.dumps(event, sort_keys=True, separators=(",", ":")))
    data = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)
    first, last = rows[0], rows[-1]
    manifest = {"first_id": int(first[0]), "last_id": int(last[0]), "events": len(rows), "first_prev_hash": first[1],
                "last_hash": last[2], "first_at": _stamp(first[3]), "last_at": _stamp(last[3]),
                "segment": segment_name(int(first[0]), int(last[0])), "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data)}
    return data, manifest


def decode_segment(data: bytes) -> list[tuple[Any, ...]]:
    """The rows ``(id, prev_hash, hash, *FIELDS)`` of a segment, ``at`` as a naive datetime.

    Raises:
        AuditArchiveError: not gzip, or a line that is not an event.
    """
    try:
        lines = gzip.decompress(data).decode().splitlines()
        rows = []
        for line in lines:
            event = json.loads(line)
            event["at"] = datetime.fromisoformat(event["at"])
            rows.append(tuple(event[k] for k in _COLUMNS))
        return rows
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise AuditArchiveError(f"not a readable segment ({err})") from err


def cutoff(*, older_than_days: float | None = None, before: datetime | None = None) -> datetime:
    """The naive UTC time before which events are archived (default: the retention age ago)."""
    if before is not None:
        return before if before.tzinfo is None else before.astimezone(UTC).replace(tzinfo=None)
    days = retention_settings().audit_retention_days if older_than_days is None else older_than_days
    return datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)


@dataclass(frozen=True)
class Segment:
    """One segment written and read back: its signed manifest."""

    manifest: dict[str, Any]

    @property
    def events(self) -> int:
        """How many events it holds."""
        return int(self.manifest["events"])


@dataclass
class ArchiveRun:
    """What one :meth:`Archiver.run` did."""

    segments: list[Segment] = field(default_factory=list)
    seconds: float = 0.0
    upto: int = 0  # the newest id the run could archive, fixed when it started (before the head then)
    longest_commit: float = 0.0  # seconds of the longest segment transaction (SQLite: appenders wait that long)

    @property
    def events(self) -> int:
        """Events archived (and removed from the live table)."""
        return sum(s.events for s in self.segments)

    @property
    def bytes(self) -> int:
        """Compressed bytes written."""
        return sum(int(s.manifest["bytes"]) for s in self.segments)


class Archiver:
    """Moves the oldest events of one database to a store, one segment (and one transaction) at a time.

    Each segment is written, read back and verified (checksum, chain links and MACs) before
    its ``audit_archives`` record is inserted and its rows are deleted, in one transaction. The newest event (the chain's head) always stays live.
    """

    def __init__(self, engine: Engine, store: ArchiveStore, *, key: bytes | None = None,
                 segment_events: int | None = None) -> None:
        self.engine, self.store = engine, store
        self.key = key or audit_key()
        self.segment_events = segment_events or retention_settings().audit_archive_segment_events

    def run(self, before: datetime) -> ArchiveRun:
        """Archive every event older than ``before`` (naive UTC) but the head; waits for another archiver."""
        started = time.perf_counter()
        done = ArchiveRun()
        with self._run_lock():
            done.upto = upto = self._upto(before)
            while (segment := self.write_segment(upto)) is not None:
                began = time.perf_counter()
                self.commit(segment)
                done.longest_commit = max(done.longest_commit, time.perf_counter() - began)
                done.segments.append(segment)
        done.seconds = time.perf_counter() - started
        return done

    def _upto(self, before: datetime) -> int:
        """The newest id to archive: before the first event at or after ``before``, and before the head."""
        events = AuditEvent.__table__
        with self.engine.connect() as connection:
            head = connection.scalar(select(func.max(events.c.id))) or 0
            young = connection.scalar(select(func.min(events.c.id)).where(events.c.at >= before))
        return min(head - 1, (young or head + 1) - 1)

    def _boundary(self, connection: Connection) -> tuple[int, str]:
        row = connection.execute(select(AUDIT_ARCHIVES.c.last_id, AUDIT_ARCHIVES.c.last_hash)
                                 .order_by(AUDIT_ARCHIVES.c.last_id.desc()).limit(1)).first()
        return (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)

    def write_segment(self, upto: int) -> Segment | None:
        """Write (or reuse) the next segment of events up to ``upto`` and verify it; ``None`` when none is due.

        A segment an interrupted run left behind (written, never recorded) that starts at
        the next event is reused; other unrecorded ones starting there are removed.

        Raises:
            AuditArchiveError: the live table does not continue the archive, or the store
                returned other bytes than were written.
        """
        events = AuditEvent.__table__
        with self.engine.connect() as connection:
            boundary, last_hash = self._boundary(connection)
            legacy_until = connection.scalar(select(AuditChain.legacy_until).limit(1)) or 0
            rows = connection.execute(select(*(events.c[k] for k in _COLUMNS))
                                      .where(events.c.id > boundary, events.c.id <= upto)
                                      .order_by(events.c.id).limit(self.segment_events)).all()
        if not rows:
            return None
        if rows[0][1] != last_hash:
            raise AuditArchiveError(f"event {rows[0][0]} does not continue the archive (its prev_hash is not the hash of "
                                    f"event {boundary}): run `bioverse audit verify`; nothing archived")
        pending = self._pending(int(rows[0][0]))
        if pending is not None and pending <= int(rows[-1][0]):
            rows = [r for r in rows if r[0] <= pending]
        data, manifest = encode_segment(rows)
        signed = sign_manifest(manifest, self.key)
        self.store.put(manifest["segment"], data)
        self.store.put(manifest_name(manifest["segment"]), json.dumps(signed, sort_keys=True).encode())
        self._read_back(signed, rows, legacy_until)
        return Segment(signed)

    def _pending(self, first_id: int) -> int | None:
        """The last id of an unrecorded segment starting at ``first_id`` (a run stopped before its commit)."""
        prefix = f"segment-{first_id:012d}-"
        ends = sorted(int(n[len(prefix):len(prefix) + 12]) for n in self.store.names()
                      if n.startswith(prefix) and n.endswith(".jsonl.gz"))
        return ends[0] if ends else None

    def _read_back(self, manifest: dict[str, Any], rows: Sequence[Sequence[Any]], legacy_until: int) -> None:
        name = manifest["segment"]
        data, stored = self.store.get(name), self.store.get(manifest_name(name))
        if data is None or stored is None or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise AuditArchiveError(f"{self.store}: {name} did not read back as written; nothing archived")
        if json.loads(stored) != manifest:
            raise AuditArchiveError(f"{self.store}: the manifest of {name} did not read back as written; nothing archived")
        decoded = decode_segment(data)  # the sha256 matched: these are the bytes encoded from ``rows``
        if len(decoded) != len(rows) or decoded[0][0] != rows[0][0] or decoded[-1][0] != rows[-1][0]:
            raise AuditArchiveError(f"{self.store}: {name} does not hold the events it was written from; nothing archived")
        walk = ChainWalk({}, legacy_until, self.key)
        walk.prev = manifest["first_prev_hash"]
        walk.feed(decoded)
        if walk.breaks:
            first = walk.breaks[0]
            raise AuditArchiveError(f"event {first.event_id} {first.reason}: run `bioverse audit verify`; nothing archived")

    def commit(self, segment: Segment) -> bool:
        """Record the segment and delete its events, in one transaction; ``False`` when already recorded.

        Raises:
            AuditArchiveError: the live rows are no longer the ones the segment holds.
        """
        m = segment.manifest
        events = AuditEvent.__table__
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _COMMIT_LOCK})
            else:
                connection.execute(text("DELETE FROM audit_archives WHERE 0"))  # the write lock, before reading
            boundary, last_hash = self._boundary(connection)
            if boundary >= m["last_id"]:
                return False
            live = connection.execute(select(func.count(), func.min(events.c.id)).where(events.c.id <= m["last_id"])).first()
            ends = dict(connection.execute(select(events.c.id, events.c.hash)
                                           .where(events.c.id.in_([m["first_id"], m["last_id"]]))).all())
            first_parent = connection.scalar(select(events.c.prev_hash).where(events.c.id == m["first_id"]))
            if (live is None or live[0] != m["events"] or live[1] != m["first_id"] or ends.get(m["last_id"]) != m["last_hash"]
                    or first_parent != m["first_prev_hash"] or last_hash != m["first_prev_hash"]):
                raise AuditArchiveError(f"{m['segment']}: the live events changed since it was written; nothing archived")
            connection.execute(insert(AUDIT_ARCHIVES).values(**{k: m[k] for k in MANIFEST_FIELDS}, mac=m["mac"],
                                                             archived_at=datetime.now(UTC).replace(tzinfo=None)))
            connection.execute(events.delete().where(events.c.id <= m["last_id"]))
        return True

    @contextlib.contextmanager
    def _run_lock(self) -> Iterator[None]:
        """One archiver per database: PostgreSQL's session advisory lock, or a lock file beside the SQLite file."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ARCHIVE_LOCK})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ARCHIVE_LOCK})
                    connection.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        fd = os.open(Path(database).resolve().with_name(Path(database).name + ".archive-lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

