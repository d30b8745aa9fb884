"""Signed checkpoints of the audit chain's head, kept in a file outside the database (docs/audit.md)."""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url

from experiments.keys import key_path, mac, secret_key, verify_mac
from platform_api.audit_archive_store import AUDIT_ARCHIVES
from platform_api.models import AuditChain, AuditEvent
from platform_api.settings import get_settings

__all__ = ["Checkpoint", "audit_key", "checkpoint_path", "database_id", "note_appended", "read_checkpoints",
           "write_checkpoint"]

log = logging.getLogger(__name__)

_keys: dict[tuple[str, str, bool], bytes] = {}


def audit_key(*, create: bool = True) -> bytes:
    """The ``audit`` key (``BIOVERSE_AUDIT_KEY`` or ``<data dir>/keys/audit.key``), read once per process.

    Raises:
        experiments.errors.SecretKeyError: no usable key (and ``create`` is false, or the file is bad).
    """
    path = key_path("audit")  # the data dir of experiments' settings, as every other key
    ident = (os.environ.get("BIOVERSE_AUDIT_KEY", ""), str(path), create)
    key = _keys.get(ident)
    if key is None:
        key = _keys[ident] = secret_key("audit", create=create)
    return key


def checkpoint_path() -> Path:
    """The checkpoints file: ``BIOVERSE_API_AUDIT_CHECKPOINTS`` or ``<data dir>/audit/checkpoints.jsonl``."""
    settings = get_settings()
    if settings.audit_checkpoints is not None and str(settings.audit_checkpoints) not in ("", "."):  # "" reads as "."
        return settings.audit_checkpoints
    return settings.data_dir / "audit" / "checkpoints.jsonl"


@functools.lru_cache(maxsize=256)
def database_id(url: Any) -> str:
    """Which database a checkpoint is about: backend, host, port and name (no driver, user or password)."""
    url = make_url(str(url)) if not hasattr(url, "get_backend_name") else url
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"sqlite:{Path(url.database).resolve() if url.database else ':memory:'}"
    port = url.port or {"postgresql": 5432, "mysql": 3306}.get(backend, "")
    return f"{backend}://{url.host or 'localhost'}:{port}/{url.database or ''}"


@dataclass(frozen=True)
class Checkpoint:
    """One signed line of the checkpoints file."""

    line: int
    db: str
    events: int
    last_id: int
    head: str
    legacy_until: int
    at: str
    valid: bool
    problem: str = ""


_FIELDS = ("db", "events", "last_id", "head", "legacy_until", "at")


def _message(record: dict[str, Any]) -> str:
    return "checkpoint:" + json.dumps({k: record[k] for k in _FIELDS}, sort_keys=True, separators=(",", ":"))


def write_checkpoint(bind: Engine | Connection, *, path: Path | None = None, key: bytes | None = None,
                     after: Checkpoint | None = None) -> Checkpoint | None:
    """Append a signed checkpoint of the chain's current head; ``None`` when the chain is empty.

    The head, the count and the legacy cut-over are read in one statement, so they agree.
    ``after`` is this process's previous checkpoint: when its event is still there with its
    hash, only the events since are counted (appends commit in id order under the chain
    lock, so the count up to an id never changes), which keeps the checkpoint of a long
    chain to milliseconds; otherwise every event is counted.
    """
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return write_checkpoint(connection, path=path, key=key, after=after)
    events = AuditEvent.__table__
    head = events.alias("head")
    since = after.last_id if after is not None else 0
    counted = (select(func.count()).select_from(events)
               .where(events.c.id > since, events.c.id <= head.c.id).scalar_subquery())
    anchored = select(events.c.hash).where(events.c.id == since).scalar_subquery()
    legacy = select(AuditChain.legacy_until).limit(1).scalar_subquery()
    archived = select(func.coalesce(func.sum(AUDIT_ARCHIVES.c.events), 0)).scalar_subquery()  # moved out of the table
    query = select(head.c.id, head.c.hash, counted, legacy, anchored, archived).order_by(head.c.id.desc()).limit(1)
    row = bind.execute(query).first()
    if row is not None and after is not None and (row[4] != after.head or row[0] < after.last_id):
        return write_checkpoint(bind, path=path, key=key)  # the chain changed under us: count it all
    if row is None:
        return None
    record = {"db": database_id(bind.engine.url), "events": (after.events if after else int(row[5])) + int(row[2]),
              "last_id": int(row[0]), "head": row[1], "legacy_until": int(row[3] or 0), "at": datetime.now(UTC).isoformat(timespec="seconds")}
    record["mac"] = mac(key or audit_key(), _message(record))
    target = path or checkpoint_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return Checkpoint(0, record["db"], record["events"], record["last_id"], record["head"], record["legacy_until"],
                      record["at"], True)


def read_checkpoints(db: str, *, path: Path | None = None, key: bytes | None = None) -> list[Checkpoint]:
    """The checkpoints of database ``db`` (see :func:`database_id`), each with its MAC checked.

    A line that is not JSON, lacks a field, or whose MAC does not verify comes back with
    ``valid`` false and the problem named; lines about other databases are skipped.
    """
    target = path or checkpoint_path()
    try:
        text = target.read_text()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise OSError(f"{target}: cannot read audit checkpoints ({err.strerror})") from err
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("db") != db:
            continue
        try:
            cp = Checkpoint(number, db, int(record["events"]), int(record["last_id"]), str(record["head"]),
                            int(record["legacy_until"]), str(record["at"]), True)
        except (KeyError, TypeError, ValueError):
            found.append(Checkpoint(number, db, 0, 0, "", 0, "", False, "not a readable checkpoint"))
            continue
        if not verify_mac(key or audit_key(create=False), _message(record), str(record.get("mac", ""))):
            cp = Checkpoint(number, db, cp.events, cp.last_id, cp.head, cp.legacy_until, cp.at, False,
                            "its MAC does not verify (forged or altered)")
        found.append(cp)
    return found


class _Pace:
    """When this process last checkpointed a database, and how many events it appended since."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending = 0
        self.last = time.monotonic()
        self.anchor: Checkpoint | None = None  # this process's previous checkpoint


_paces: dict[str, _Pace] = {}
_paces_lock = threading.Lock()


def note_appended(engine: Engine | Connection, events: int, *, force: bool = False) -> None:
    """Count ``events`` just committed; write a checkpoint when one is due (or ``force``).

    Due: ``audit_checkpoint_events`` events since this process's last checkpoint, or
    ``audit_checkpoint_seconds`` after it (the recorder's thread also calls this when idle,
    so an event waits at most that long for its anchor where a recorder runs). Cheap on the
    hot path (a counter and a clock); a failure to checkpoint is logged, never raised: the
    events are committed, and the next checkpoint covers them.
    """
    engine = engine if isinstance(engine, Engine) else engine.engine
    ident = database_id(engine.url)
    pace = _paces.get(ident)
    if pace is None:
        with _paces_lock:
            pace = _paces.setdefault(ident, _Pace())
    settings = get_settings()
    with pace.lock:
        pace.pending += events
        waited = time.monotonic() - pace.last
        due = force and pace.pending > 0 or pace.pending >= settings.audit_checkpoint_events or (
            pace.pending > 0 and waited >= settings.audit_checkpoint_seconds)
        if not due:
            return
        pace.pending, pace.last = 0, time.monotonic()
        try:
            written = write_checkpoint(engine, after=pace.anchor)
        except Exception as err:  # noqa: BLE001 - the events are safe; the next checkpoint covers them
            log.warning("audit checkpoint not written: %s", err)
            return
        if written is not None:
            pace.anchor = written
