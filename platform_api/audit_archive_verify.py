"""Verify the archived segments and the live audit table as one chain (docs/audit.md, "Retention and archive")."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from platform_api.audit import AuditBreak, AuditCheck, ChainWalk, verify
from platform_api.audit_archive import decode_segment, manifest_name
from platform_api.audit_archive_store import AUDIT_ARCHIVES, MANIFEST_FIELDS, ArchiveStore, AuditArchiveError, manifest_problem
from platform_api.audit_checkpoints import audit_key
from platform_api.models import AuditEvent

__all__ = ["ArchiveCheck", "verify_all"]

_SEGMENT = re.compile(r"segment-(\d{12})-(\d{12})\.jsonl\.gz")


@dataclass(frozen=True)
class ArchiveCheck(AuditCheck):
    """:class:`AuditCheck` of archive and live table together; ``archived`` events are in segments."""

    archived: int = 0
    segments: int = 0


def verify_all(session: Session, store: ArchiveStore, *, checkpoints: Path | None = None,
               key: bytes | None = None) -> ArchiveCheck:
    """Check every archive record's segment and manifest, then the live table, as one chain.

    Names each fault: a record whose segment or manifest is gone, an altered segment
    (checksum), a forged manifest or record (MAC), a gap between records, a segment with
    no record, rows deleted from the live table without a record (the first live event's
    parent is not the last archived hash); checkpoints of archived events are checked
    against the segments. After a lost segment the walk goes on from its record's hash.
    """
    records = [dict(r._mapping) for r in session.execute(select(AUDIT_ARCHIVES).order_by(AUDIT_ARCHIVES.c.first_id))]
    tally = {"archived": 0}

    def feed(walk: ChainWalk) -> None:
        secret = key or audit_key(create=False)
        for record in records:
            tally["archived"] += _check_segment(walk, store, record, secret)
        walk.breaks.extend(_unrecorded(session, store, records))

    check = verify(session, checkpoints=checkpoints, key=key, archived=feed if records or store.names() else None)
    return ArchiveCheck(check.events, check.breaks, check.checkpoints, check.legacy_until, check.last_id,
                        archived=tally["archived"], segments=len(records))


def _check_segment(walk: ChainWalk, store: ArchiveStore, record: dict[str, Any], key: bytes) -> int:
    """Walk one record's segment; return how many events it held (0 when it could not be read)."""
    name, first, last = record["segment"], record["first_id"], record["last_id"]
    where = f"archive segment {name} (events {first}-{last})"
    breaks = walk.breaks
    if problem := manifest_problem(record, key):
        breaks.append(AuditBreak(first, f"{where}: its archive record's {problem}"))
    if record["first_prev_hash"] != walk.prev or first <= walk.last_id:
        gap = (f"events {walk.last_id + 1}-{first - 1} are in no segment" if first > walk.last_id + 1
               else "it does not continue the previous segment")
        breaks.append(AuditBreak(first, f"{where}: a gap in the archive: {gap} (a segment and its record were removed)"))
        walk.skip(max(first - 1, walk.last_id), record["first_prev_hash"], max(first - walk.last_id - 1, 0))
    data, raw = store.get(name), store.get(manifest_name(name))
    if data is None:
        breaks.append(AuditBreak(first, f"{where}: the segment is gone from the archive (its record remains)"))
        walk.skip(last, record["last_hash"], record["events"])
        return 0
    if raw is None:
        breaks.append(AuditBreak(first, f"{where}: its manifest is gone from the archive"))
    else:
        manifest = _json(raw)
        if problem := manifest_problem(manifest, key):
            breaks.append(AuditBreak(first, f"{where}: its manifest's {problem}"))
        elif any(manifest[k] != record[k] for k in MANIFEST_FIELDS):
            breaks.append(AuditBreak(first, f"{where}: its manifest differs from its archive record"))
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        breaks.append(AuditBreak(first, f"{where}: the segment was altered (its sha256 differs from the signed one)"))
    try:
        rows = decode_segment(data)
    except AuditArchiveError as err:
        breaks.append(AuditBreak(first, f"{where}: {err}"))
        walk.skip(last, record["last_hash"], record["events"])
        return 0
    if not rows or rows[0][0] != first or rows[-1][0] != last or len(rows) != record["events"]:
        breaks.append(AuditBreak(first, f"{where}: holds {len(rows)} events, its record says {record['events']} "
                                        "(events removed from or added to the segment)"))
    walk.feed(rows)
    if walk.last_id != last or walk.prev != record["last_hash"]:
        walk.prev, walk.last_id = record["last_hash"], last
    return len(rows)


def _unrecorded(session: Session, store: ArchiveStore, records: list[dict[str, Any]]) -> list[AuditBreak]:
    """Segments in the store without a record, unless an interrupted run left them (their events still live)."""
    recorded = {r["segment"] for r in records}
    found = []
    for name in store.names():
        match = _SEGMENT.fullmatch(name)
        if match is None or name in recorded:
            continue
        first = int(match.group(1))
        if session.scalar(select(AuditEvent.id).where(AuditEvent.id == first)) is not None:
            continue  # written, never committed: the next `bioverse audit archive` reuses it
        found.append(AuditBreak(first, f"archive segment {name}: it has no archive record and its events are not "
                                       "in the live table (the record was removed)"))
    return found


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
