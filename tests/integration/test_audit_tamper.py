"""The tamper suite (issue 10 items 5-8): every attack on the audit log is prevented or detected,
on SQLite and on the real PostgreSQL, and a failed prediction still leaves its event."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from platform_api.audit import FIELDS, GENESIS, audited, digest, event_mac, verify
from platform_api.audit_checkpoints import write_checkpoint
from platform_api.auth import Principal
from platform_api.db import get_engine, migrate
from platform_api.models import AuditEvent, Tenant, Twin
from platform_api.recorder import Recorder, Unit
from tests.integration.conftest import clear_platform_caches

pytestmark = pytest.mark.integration

KEY_HEX = "ab" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Engine, Path]]:
    """A migrated database with 10 events and a checkpoint of them; the key and the
    checkpoints file live outside it."""
    checkpoints = tmp_path / "outside" / "checkpoints.jsonl"
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BIOVERSE_AUDIT_KEY", KEY_HEX)
    monkeypatch.setenv("BIOVERSE_API_AUDIT_CHECKPOINTS", str(checkpoints))
    clear_platform_caches()
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'platform.db'}"
    else:
        url = request.getfixturevalue("postgres_database").sqlalchemy_url
    migrate(url)
    engine = get_engine(url)
    _append(engine, 10)
    assert write_checkpoint(engine) is not None
    yield url, engine, checkpoints
    engine.dispose()
    clear_platform_caches()


def _append(engine: Engine, n: int, action: str = "twin.read") -> None:
    with Session(engine) as session:
        for _ in range(n):
            with audited(session, Principal("k1", "app", "t1"), action, "p1"):
                pass


def _check(engine: Engine):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return verify(session)


def _raw(engine: Engine, *statements: str) -> None:
    """Run SQL as a database writer would (own connection, committed)."""
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def _refused(engine: Engine, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only"):
        _raw(engine, statement)


def _drop_triggers(engine: Engine) -> None:
    """What a writer with DDL rights does first: the triggers stop only the careless."""
    if engine.dialect.name == "postgresql":
        _raw(engine, "DROP TRIGGER audit_append_only ON audit_events", "DROP TRIGGER audit_no_truncate ON audit_events")
    else:
        _raw(engine, "DROP TRIGGER audit_no_update", "DROP TRIGGER audit_no_delete", "DROP TRIGGER audit_no_overwrite")


def _reasons(check) -> str:  # type: ignore[no-untyped-def]
    return " | ".join(f"{b.event_id}: {b.reason}" for b in check.breaks)


def test_intact_log_verifies_against_its_checkpoint(db: tuple[str, Engine, Path]) -> None:
    _, engine, _ = db
    check = _check(engine)
    assert check.ok and check.events == 10 and check.checkpoints == 1


def test_update_and_delete_are_refused(db: tuple[str, Engine, Path]) -> None:
    _, engine, _ = db
    _refused(engine, "UPDATE audit_events SET outcome = 'forbidden' WHERE id = 3")
    _refused(engine, "DELETE FROM audit_events WHERE id = 10")
    _refused(engine, "UPDATE audit_chain SET legacy_until = 10")
    assert _check(engine).ok


def test_replace_and_upsert_are_refused(db: tuple[str, Engine, Path]) -> None:
    """Item 6: SQLite's INSERT OR REPLACE rewrote a row past the UPDATE/DELETE triggers."""
    _, engine, _ = db
    copy = ("SELECT id, at, actor, role, tenant_id, patient_id, action, 'forbidden', prev_hash, hash "
            "FROM audit_events WHERE id = 3")
    columns = "(id, at, actor, role, tenant_id, patient_id, action, outcome, prev_hash, hash)"
    if engine.dialect.name == "sqlite":
        _refused(engine, f"INSERT OR REPLACE INTO audit_events {columns} {copy}")
        _refused(engine, f"REPLACE INTO audit_events {columns} {copy}")
        _refused(engine, f"INSERT INTO audit_events {columns} {copy} ON CONFLICT(id) DO UPDATE SET outcome = 'forbidden'")
    else:
        _refused(engine, f"INSERT INTO audit_events {columns} {copy} ON CONFLICT (id) DO UPDATE SET outcome = 'forbidden'")
    with Session(engine) as session:
        assert session.get(AuditEvent, 3).outcome == "ok"
    assert _check(engine).ok


def test_truncate_is_refused_and_detected_when_forced(db: tuple[str, Engine, Path]) -> None:
    """Item 6: PostgreSQL TRUNCATE emptied the table and verify said "intact: 0 events"."""
    _, engine, _ = db
    _refused(engine, "TRUNCATE audit_events" if engine.dialect.name == "postgresql" else "DELETE FROM audit_events")
    _drop_triggers(engine)
    _raw(engine, "TRUNCATE audit_events" if engine.dialect.name == "postgresql" else "DELETE FROM audit_events")
    check = _check(engine)
    assert not check.ok and check.events == 0
    assert "tail was dropped or the table truncated" in _reasons(check)


def test_tail_drop_is_detected(db: tuple[str, Engine, Path]) -> None:
    """Item 7: deleting the newest events passed verify (no anchor)."""
    _, engine, _ = db
    _drop_triggers(engine)
    _raw(engine, "DELETE FROM audit_events WHERE id > 7")
    check = _check(engine)
    assert not check.ok and check.events == 7
    assert [b.event_id for b in check.breaks] == [10] and "tail was dropped" in check.reason
    _append(engine, 5)  # new events after the cut do not hide it (SQLite even reuses the ids)
    assert not _check(engine).ok


def test_rehash_with_the_documented_algorithm_is_detected(db: tuple[str, Engine, Path]) -> None:
    """Item 7: rewriting one event and re-hashing the rest passed verify (no key)."""
    _, engine, _ = db
    _drop_triggers(engine)
    table = AuditEvent.__table__
    for algorithm in ("sha256", "guessed-key"):
        with engine.begin() as connection:
            rows = connection.execute(select(table).order_by(table.c.id)).mappings().all()
            prev = GENESIS
            for row in rows:
                fields = {k: row[k] for k in FIELDS}
                if row["id"] == 4:
                    fields["outcome"] = "forbidden"
                new = digest(prev, fields) if algorithm == "sha256" else event_mac(b"guess" * 8, prev, fields)
                connection.execute(table.update().where(table.c.id == row["id"]).values(**fields, prev_hash=prev, hash=new))
                prev = new
        check = _check(engine)
        assert not check.ok, algorithm
        assert sorted({b.event_id for b in check.breaks}) == list(range(1, 11)), _reasons(check)
        assert "re-hashed without the key" in check.reason


def test_altered_and_deleted_rows_are_each_reported_and_verify_goes_on(db: tuple[str, Engine, Path]) -> None:
    """Item 5: verify stopped at the first break, so nothing after it was checked."""
    _, engine, _ = db
    _drop_triggers(engine)
    _raw(engine, "UPDATE audit_events SET patient_id = 'p2' WHERE id = 2", "DELETE FROM audit_events WHERE id = 6",
         "UPDATE audit_events SET action = 'twin.list' WHERE id = 9")
    check = _check(engine)
    assert [(b.event_id, b.reason.split(" ")[1]) for b in check.breaks] == [
        (2, "content"), (7, "prev_hash"), (9, "content"), (10, "event")], _reasons(check)
    assert "counted 10: events were removed" in check.breaks[-1].reason


def test_nulled_columns_are_breaks_and_verify_goes_on(db: tuple[str, Engine, Path]) -> None:
    """A writer with DDL rights who drops NOT NULL and blanks a link gets a break, not a crashed verify."""
    _, engine, _ = db
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite cannot drop NOT NULL without rebuilding the table")
    _drop_triggers(engine)
    _raw(engine, "ALTER TABLE audit_events ALTER COLUMN hash DROP NOT NULL",
         "ALTER TABLE audit_events ALTER COLUMN at DROP NOT NULL",
         "UPDATE audit_events SET hash = NULL WHERE id = 4", "UPDATE audit_events SET at = NULL WHERE id = 8")
    check = _check(engine)
    assert sorted({b.event_id for b in check.breaks}) == [4, 5, 8], _reasons(check)


def test_a_forged_checkpoint_line_is_reported(db: tuple[str, Engine, Path]) -> None:
    """A writer of the file without the key cannot vouch for a shorter (or any other) chain."""
    _, engine, checkpoints = db
    line = json.loads(checkpoints.read_text().splitlines()[-1])
    line.update(events=3, last_id=3, mac="00" * 32)
    with checkpoints.open("a") as out:
        out.write(json.dumps(line) + "\n")
        out.write("not json\n")
    check = _check(engine)
    assert not check.ok and check.checkpoints == 1
    assert [b.reason for b in check.breaks] == ["checkpoint line 2: its MAC does not verify (forged or altered)",
                                                "checkpoint line 3: not a readable checkpoint"]


_WRITER = """
import sys, time
from pathlib import Path
from platform_api.db import get_engine, session_factory
url, mode, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.005)
if mode == "cli":  # a CLI decision: audited() on its own session
    from platform_api.audit import audited
    from platform_api.auth import Principal
    factory = session_factory(url)
    for i in range(n):
        with factory() as session, audited(session, Principal("someone", "cli", None), f"registry.approve m/{i}"):
            pass
else:  # the API's group-committing recorder
    from platform_api.recorder import Recorder, Unit
    recorder = Recorder(get_engine(url))
    for i in range(n):
        recorder.submit(Unit({"actor": "k1", "role": "app", "tenant_id": "t1", "patient_id": "p1",
                              "action": "prediction.create", "outcome": "ok"})).result(timeout=60)
    recorder.close()
"""


def test_two_processes_appending_at_once_keep_one_chain(db: tuple[str, Engine, Path], tmp_path: Path) -> None:
    """Item 5: the CLI deciding while the API served gave two events one parent (a fork)."""
    url, engine, _ = db
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url, mode, "150", str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for mode in ("cli", "api")]
    time.sleep(3.0)  # both imported and waiting
    go.touch()
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-2000:]
    with Session(engine) as session:
        parents = session.execute(select(AuditEvent.prev_hash, func.count()).group_by(AuditEvent.prev_hash)
                                  .having(func.count() > 1)).all()
        roles = dict(session.execute(select(AuditEvent.role, func.count()).group_by(AuditEvent.role)).all())
    assert parents == []
    assert roles == {"app": 10 + 150, "cli": 150}
    check = _check(engine)
    assert check.ok and check.events == 310, _reasons(check)
    assert check.checkpoints >= 2  # the recorder checkpointed on close


def test_a_second_child_of_one_parent_is_refused(db: tuple[str, Engine, Path]) -> None:
    """A fork is structurally impossible: a writer that skips the lock loses on the unique parent."""
    _, engine, _ = db
    with Session(engine) as session:
        third = session.get(AuditEvent, 3)
        fields = {k: getattr(third, k) for k in FIELDS}
    fork = AuditEvent(**{**fields, "outcome": "fork"}, prev_hash=third.prev_hash,
                      hash=event_mac(bytes.fromhex(KEY_HEX), third.prev_hash, {**fields, "outcome": "fork"}))
    with Session(engine) as session, pytest.raises((IntegrityError, DBAPIError)):
        session.add(fork)
        session.commit()


def _twin(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Tenant(id="t1", name="t1"))
        session.add(Twin(id="twin-1", tenant_id="t1", patient_id="p1"))
        session.commit()


def _prediction_unit(inputs: dict[str, float]) -> Unit:
    now = datetime.now(UTC).replace(tzinfo=None)
    row = {"id": str(uuid.uuid4()), "twin_id": "twin-1", "tenant_id": "t1", "model_name": "m", "model_version": "1",
           "risk": 0.5, "inputs": inputs, "created_at": now}
    return Unit({"actor": "k1", "role": "app", "tenant_id": "t1", "patient_id": "p1", "action": "prediction.create:x",
                 "outcome": "ok"}, [row])


def test_a_prediction_the_database_refuses_still_leaves_its_audit_event(db: tuple[str, Engine, Path]) -> None:
    """Item 8: the event rode in the same unit as the failed row and was lost with it.
    PostgreSQL refuses ``Infinity`` in a JSON column (SQLite stores it, so a missing twin fails there)."""
    _, engine, _ = db
    _twin(engine)
    recorder = Recorder(engine)
    bad = _prediction_unit({"age": float("inf")})
    if engine.dialect.name == "sqlite":
        bad.predictions[0]["twin_id"] = "no-such-twin"
    good = _prediction_unit({"age": 60.0})
    futures = [recorder.submit(good), recorder.submit(bad)]
    futures[0].result(timeout=30)
    with pytest.raises((DBAPIError, IntegrityError)) as failed:
        futures[1].result(timeout=30)
    recorder.close()
    with Session(engine) as session:
        outcomes = session.scalars(select(AuditEvent.outcome).where(AuditEvent.action == "prediction.create:x")
                                   .order_by(AuditEvent.id)).all()
    assert sorted(outcomes) == sorted(["ok", type(failed.value).__name__.lower()])
    assert outcomes.count("ok") == 1
    assert _check(engine).ok
