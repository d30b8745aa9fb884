"""Audit retention (issue 15): old events move to signed segments, the chain runs on across them,
verify checks archive and live table together and names every fault; on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from platform_api.audit import audited, event_mac, lock_chain, verify
from platform_api.audit_archive import Archiver, decode_segment, encode_segment, manifest_name
from platform_api.audit_archive_store import AUDIT_ARCHIVES, LocalStore, open_store, retention_settings
from platform_api.audit_archive_verify import verify_all
from platform_api.audit_checkpoints import write_checkpoint
from platform_api.auth import Principal
from platform_api.cli import app
from platform_api.crud import list_audit_events
from platform_api.db import get_engine, migrate
from platform_api.models import AuditEvent
from platform_api.ops_metrics import audit_result
from tests.integration.conftest import clear_platform_caches

pytestmark = pytest.mark.integration

KEY_HEX = "ab" * 32
runner = CliRunner()
OLD = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=3000)  # older than the default 7 years


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A migrated database holding 30 events from 3000 days ago and 5 from now, checkpointed
    after event 20 (an event the archive will hold) and after all."""
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BIOVERSE_AUDIT_KEY", KEY_HEX)
    monkeypatch.setenv("BIOVERSE_API_AUDIT_CHECKPOINTS", str(tmp_path / "outside" / "checkpoints.jsonl"))
    monkeypatch.delenv("BIOVERSE_API_AUDIT_ARCHIVE", raising=False)
    monkeypatch.delenv("BIOVERSE_API_AUDIT_RETENTION_DAYS", raising=False)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'platform.db'}"
    else:
        url = request.getfixturevalue("postgres_database").sqlalchemy_url
    monkeypatch.setenv("BIOVERSE_API_DATABASE_URL", url)
    clear_platform_caches()
    retention_settings.cache_clear()
    migrate(url)
    engine = get_engine(url)
    _append_at(engine, [OLD + timedelta(seconds=i) for i in range(20)])
    assert write_checkpoint(engine) is not None
    _append_at(engine, [OLD + timedelta(seconds=20 + i) for i in range(10)])
    _append_now(engine, 5)
    assert write_checkpoint(engine) is not None
    yield engine
    engine.dispose()
    clear_platform_caches()
    retention_settings.cache_clear()


def _append_at(engine: Engine, stamps: list[datetime]) -> None:
    """Events with chosen times, chained and MACed as ``record`` does (the log as years of use left it)."""
    with Session(engine) as session:
        prev = lock_chain(session)
        for at in stamps:
            fields = {"at": at, "actor": "k1", "role": "app", "tenant_id": "t1", "patient_id": "p1",
                      "action": "twin.read", "outcome": "ok"}
            digest = event_mac(bytes.fromhex(KEY_HEX), prev, fields)
            session.add(AuditEvent(**fields, prev_hash=prev, hash=digest))
            session.flush()
            prev = digest
        session.commit()


def _append_now(engine: Engine, n: int) -> None:
    with Session(engine) as session:
        for _ in range(n):
            with audited(session, Principal("k1", "app", "t1"), "twin.read", "p1"):
                pass


def _store(engine: Engine) -> LocalStore:
    return open_store()  # type: ignore[return-value]  # the default: <data dir>/audit/archive


def _check(engine: Engine, store: LocalStore | None = None):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return verify_all(session, store or _store(engine))


def _reasons(check) -> str:  # type: ignore[no-untyped-def]
    return " | ".join(f"{b.event_id}: {b.reason}" for b in check.breaks)


def _raw(engine: Engine, *statements: str) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def _live(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(connection.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))


def test_archive_keeps_one_chain_and_verify_checks_segments_and_live_table(db: Engine) -> None:
    archived = runner.invoke(app, ["audit", "archive", "--segment-events", "12"])
    assert archived.exit_code == 0, archived.output
    assert "archived 30 events (ids 1-30) in 3 segments" in archived.output
    store = _store(db)
    assert store.root.parent.name == "audit" and len(store.names()) == 6  # 3 segments + 3 manifests
    assert _live(db) == list(range(31, 36))
    manifest = json.loads(store.get("segment-000000000025-000000000030.manifest.json") or b"")
    with Session(db) as session:  # the chain runs on: never re-rooted
        first_live = session.get(AuditEvent, 31)
        assert first_live is not None and first_live.prev_hash == manifest["last_hash"]
        assert list_audit_events(session=session, tenant_id="t1", limit=50, offset=0)[1] == 5  # the API lists live rows
    check = _check(db)
    assert check.ok, _reasons(check)
    assert (check.events, check.archived, check.segments, check.checkpoints) == (35, 30, 3, 2)
    with Session(db) as session:  # live-only (the metrics' check): starts after the newest archive record
        live_only = verify(session)
    assert live_only.ok and live_only.events == 35, _reasons(live_only)
    anchor = write_checkpoint(db)
    assert anchor is not None and anchor.events == 35  # archived events counted
    _append_now(db, 2)
    intact = runner.invoke(app, ["audit", "verify"])
    assert intact.exit_code == 0, intact.output
    assert "audit log intact: 37 events (30 of them in 3 archive segments), 3 checkpoints" in intact.output
    again = runner.invoke(app, ["audit", "archive"])
    assert again.exit_code == 0 and "nothing to archive" in again.output
    everything = runner.invoke(app, ["audit", "archive", "--older-than", "0"])
    assert everything.exit_code == 0 and "archived 6 events (ids 31-36)" in everything.output
    assert _live(db) == [37]  # the head stays
    assert _check(db).ok


def test_the_triggers_let_only_archived_rows_go_oldest_first(db: Engine) -> None:
    with pytest.raises(DBAPIError, match="append-only"):
        _raw(db, "DELETE FROM audit_events WHERE id = 1")
    Archiver(db, _store(db), segment_events=100).run(OLD + timedelta(seconds=10))
    assert _live(db)[0] == 11
    for statement in ("UPDATE audit_archives SET events = 1", "DELETE FROM audit_archives",
                      "INSERT INTO audit_archives (first_id, last_id, events, first_prev_hash, last_hash, first_at, last_at, "
                      "segment, sha256, bytes, archived_at, mac) VALUES (5, 20, 1, '', '', '', '', 's', '', 0, "
                      "'2020-01-01', '')"):
        with pytest.raises(DBAPIError, match="append-only"):
            _raw(db, statement)
    # a forged boundary (SQL write rights, no key): the trigger obeys it oldest first, verify names it
    _raw(db, "INSERT INTO audit_archives (first_id, last_id, events, first_prev_hash, last_hash, first_at, last_at, "
             "segment, sha256, bytes, archived_at, mac) VALUES (11, 15, 5, 'x', 'y', '', '', 'forged.jsonl.gz', '', 0, "
             "'2020-01-01', 'nope')")
    with pytest.raises(DBAPIError, match="append-only"):
        _raw(db, "DELETE FROM audit_events WHERE id = 13")  # not oldest first
    _raw(db, "DELETE FROM audit_events WHERE id <= 15")
    reasons = _reasons(_check(db))
    assert "its archive record's its MAC does not verify" in reasons and "the segment is gone" in reasons


def test_verify_names_each_fault_in_archive_and_live_table(db: Engine) -> None:
    store = _store(db)
    Archiver(db, store, segment_events=6).run(OLD + timedelta(days=1))
    names = sorted(n for n in store.names() if n.endswith(".jsonl.gz"))
    assert len(names) == 5
    with db.connect() as connection:
        row31 = connection.execute(select(*(AuditEvent.__table__.c[k] for k in
                                            ("id", "prev_hash", "hash", "at", "actor", "role", "tenant_id", "patient_id",
                                             "action", "outcome"))).where(AuditEvent.id == 31)).one()
    postgres = db.dialect.name == "postgresql"
    _raw(db, "DROP TRIGGER audit_archives_append_only ON audit_archives" if postgres else "DROP TRIGGER audit_archives_no_delete",
         "DROP TRIGGER audit_append_only ON audit_events" if postgres else "DROP TRIGGER audit_no_delete")
    # segment 1 and its record removed: a gap
    _raw(db, "DELETE FROM audit_archives WHERE first_id = 1")
    store.delete(names[0])
    store.delete(manifest_name(names[0]))
    store.delete(names[1])  # segment 2's file deleted, its record remains
    rows = decode_segment(store.get(names[2]) or b"")  # segment 3 (13-18): an event altered in place
    rows[2] = (*rows[2][:9], "forbidden")
    store.put(names[2], encode_segment(rows)[0])
    forged = json.loads(store.get(manifest_name(names[3])) or b"")  # segment 4: its manifest forged
    forged["events"] = 5
    store.put(manifest_name(names[3]), json.dumps(forged).encode())
    _raw(db, "DELETE FROM audit_events WHERE id = 31")  # a live row deleted without an archive record
    store.put("segment-000000000031-000000000031.jsonl.gz", encode_segment([tuple(row31)])[0])  # a stray segment
    with Session(db) as session:  # live-only: the deleted live row is still caught
        assert "32: its prev_hash is not the hash of the last archived event (30)" in _reasons(verify(session))
    check = _check(db)
    reasons = _reasons(check)
    assert not check.ok
    expected = {
        "gap": "a gap in the archive: events 1-6 are in no segment",
        "gone": f"archive segment {names[1]} (events 7-12): the segment is gone from the archive",
        "altered": f"archive segment {names[2]} (events 13-18): the segment was altered",
        "altered event": "15: its content does not match its MAC",
        "forged manifest": f"archive segment {names[3]} (events 19-24): its manifest's its MAC does not verify",
        "live rows deleted": "32: its prev_hash is not the hash of the last archived event (30): events before it were "
                             "deleted without an archive record",
        "no record": "segment-000000000031-000000000031.jsonl.gz: it has no archive record",
        "live row counted": "35: is event number 34, the checkpoint",  # the deleted live row, seen by the checkpoint too
    }
    for fault, text_ in expected.items():
        assert text_ in reasons, f"{fault} not named: {reasons}"
    assert len(check.breaks) == len(expected), reasons
    metrics_check = audit_result()  # what /metrics' audit gauges report: the same walk, segments included
    assert (metrics_check.ok, metrics_check.breaks) == (False, len(expected))
    broken = runner.invoke(app, ["audit", "verify", "--max-lines", "0"])
    assert broken.exit_code == 1 and f"  archive: archive segment {names[1]}" in broken.output


def test_a_run_stopped_between_writing_and_deleting_reruns_onto_the_same_segment(db: Engine, tmp_path: Path) -> None:
    store = _store(db)
    upto = 30
    segment = Archiver(db, store, segment_events=10).write_segment(upto)  # then the process dies: no commit
    assert segment is not None and segment.manifest["last_id"] == 10
    written = store.get(segment.manifest["segment"])
    assert _live(db)[0] == 1 and _check(db).ok  # an unrecorded segment whose events are live is no fault
    run = Archiver(db, store, segment_events=25).run(OLD + timedelta(days=1))  # rerun, other segment size
    assert [s.manifest["last_id"] for s in run.segments] == [10, 30]  # the left-over segment reused
    assert store.get(segment.manifest["segment"]) == written
    assert _check(db).ok
    # a store that refuses the write (a file where the folder should be): nothing deleted, one line
    (tmp_path / "blocked").write_text("")
    _append_at(db, [OLD + timedelta(days=2)])
    before = _live(db)
    refused = runner.invoke(app, ["audit", "archive", "--before", "2100-01-01", "--to", str(tmp_path / "blocked" / "archive")])
    assert refused.exit_code == 1 and "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1
    assert _live(db) == before


def test_two_archivers_at_once_archive_each_event_once(db: Engine) -> None:
    store = _store(db)
    runs, errors = [], []

    def archive() -> None:
        try:
            runs.append(Archiver(db, store, segment_events=4).run(OLD + timedelta(days=1)))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=archive) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and sum(r.events for r in runs) == 30
    with db.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(AUDIT_ARCHIVES)) == 8
    assert _check(db).ok


def test_archiving_while_the_api_appends_leaves_the_head_and_new_events_live(db: Engine) -> None:
    _append_at(db, [OLD + timedelta(days=1, seconds=i) for i in range(200)])
    stop = threading.Event()
    appended: list[int] = []

    def append() -> None:
        while not stop.is_set():
            _append_now(db, 1)
            appended.append(1)

    appender = threading.Thread(target=append)
    appender.start()
    try:
        while not appended:
            time.sleep(0.01)
        run = Archiver(db, _store(db), segment_events=20).run(datetime(2100, 1, 1))  # everything before the head
    finally:
        stop.set()
        appender.join(30)
    live = _live(db)
    assert run.segments[-1].manifest["last_id"] == run.upto and live[0] == run.upto + 1  # the head at the start stays
    assert live[-1] > run.upto + 1  # events appended during the run: live, not archived
    check = _check(db)
    assert check.ok, _reasons(check)
    assert check.events == 235 + len(appended)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # one S3 case: the store does not depend on the database
def test_an_s3_archive_verifies_and_a_lost_object_is_named(db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket="audit")
        archived = runner.invoke(app, ["audit", "archive", "--to", "s3://audit/prod", "--segment-events", "15"])
        assert archived.exit_code == 0 and "2 segments" in archived.output and "s3://audit/prod/" in archived.output
        intact = runner.invoke(app, ["audit", "verify", "--archive", "s3://audit/prod"])
        assert intact.exit_code == 0, intact.output
        assert "(30 of them in 2 archive segments)" in intact.output
        boto3.client("s3").delete_object(Bucket="audit", Key="prod/segment-000000000016-000000000030.jsonl.gz")
        broken = runner.invoke(app, ["audit", "verify", "--archive", "s3://audit/prod"])
        assert broken.exit_code == 1 and "the segment is gone from the archive" in broken.output
        assert gzip.decompress(boto3.client("s3").get_object(Bucket="audit", Key="prod/segment-000000000001-000000000015"
                                                             ".jsonl.gz")["Body"].read()).count(b"\n") == 15
    finally:
        server.stop()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the kill does not depend on the database
def test_an_archiver_killed_mid_run_leaves_a_log_that_verifies_and_a_rerun_finishes(db: Engine) -> None:
    _append_at(db, [OLD + timedelta(days=1, seconds=i) for i in range(10_000)])
    store = _store(db)
    process = subprocess.Popen([str(Path(sys.executable).parent / "bioverse"), "audit", "archive", "--segment-events", "100",
                                "--before", "2100-01-01"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while len(store.names()) < 10 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, f"the archiver finished before it could be killed: {process.communicate()[0]!r} {store.names()[:4]}"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(10)
    archived = len(store.names()) // 2
    assert 5 <= archived < 100
    check = _check(db)
    assert check.ok, _reasons(check)  # whatever step it died in: a segment never recorded keeps its events live
    run = Archiver(db, store, segment_events=100).run(datetime(2100, 1, 1))
    assert _live(db) == [10_035] and run.upto == 10_034  # the head stays
    check = _check(db)
    assert check.ok and check.events == 10_035 and check.archived == 10_034, _reasons(check)
