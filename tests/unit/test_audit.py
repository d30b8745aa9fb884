"""The audit log on an embedded SQLite file: legacy cut-over, checkpoint pace, and `bioverse audit`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from platform_api import db as platform_db
from platform_api import settings as platform_settings
from platform_api.audit import GENESIS, audited, digest, verify
from platform_api.audit_checkpoints import write_checkpoint
from platform_api.auth import Principal
from platform_api.cli import app
from platform_api.models import AuditEvent
from platform_api.recorder import Recorder, Unit

runner = CliRunner()


def _clear() -> None:
    from experiments.settings import get_settings as experiment_settings

    for cached in (platform_settings.get_settings, experiment_settings, platform_db.get_engine, platform_db.session_factory):
        cached.cache_clear()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data dir holding the embedded database; the key comes from the environment."""
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BIOVERSE_AUDIT_KEY", "cd" * 32)
    monkeypatch.delenv("BIOVERSE_API_DATABASE_URL", raising=False)
    monkeypatch.delenv("BIOVERSE_API_AUDIT_CHECKPOINTS", raising=False)
    _clear()
    yield tmp_path / "data"
    _clear()


def _url(home: Path) -> str:
    return f"sqlite:///{(home / 'platform.db').resolve()}"


def _engine(home: Path) -> Engine:
    home.mkdir(parents=True, exist_ok=True)
    platform_db.migrate(_url(home))
    return platform_db.get_engine(_url(home))


def _append(engine: Engine, n: int) -> None:
    with Session(engine) as session:
        for _ in range(n):
            with audited(session, Principal("k1", "app", "t1"), "twin.read", "p1"):
                pass


def _legacy_event(prev: str, outcome: str = "ok") -> dict:
    event = {"at": datetime.now(UTC).replace(tzinfo=None), "actor": "k0", "role": "app", "tenant_id": "t1",
             "patient_id": "p1", "action": "twin.read", "outcome": outcome, "prev_hash": prev}
    event["hash"] = digest(prev, event)
    return event


def test_legacy_events_verify_as_sha256_up_to_the_cutover_and_a_legacy_fork_is_named(home: Path) -> None:
    """Events written before migration 0004 (plain SHA-256, one of them a fork as item 5 made
    them) migrate; they verify as legacy, the fork is reported, and keyed events follow."""
    home.mkdir(parents=True)
    url = _url(home)
    config = Config(str(platform_db.ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0003")
    first = _legacy_event(GENESIS)
    second = _legacy_event(first["hash"])
    fork = _legacy_event(first["hash"], outcome="notfound")  # same parent as `second`
    third = _legacy_event(fork["hash"])
    engine = platform_db.get_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(AuditEvent.__table__), [first, second, fork, third])
    platform_db.migrate(url)  # the unique parent cannot cover the legacy fork: it covers what follows
    _append(engine, 3)
    with Session(engine) as session:
        check = verify(session)
    assert check.events == 7 and check.legacy_until == 4
    assert [(b.event_id, b.reason.split(" (")[0]) for b in check.breaks] == [(3, "shares its parent with event 2")]
    with engine.begin() as connection:  # keyed events can no longer fork
        head = connection.scalar(text("SELECT prev_hash FROM audit_events ORDER BY id DESC LIMIT 1"))
        with pytest.raises(Exception, match="append-only|UNIQUE"):
            connection.execute(insert(AuditEvent.__table__), [{**_legacy_event(head), "hash": "f" * 64}])


def test_moving_the_legacy_cutover_is_caught_by_the_checkpoint(home: Path) -> None:
    """A database writer who raises ``legacy_until`` could re-hash everything with plain SHA-256;
    the signed checkpoint recorded the real cut-over."""
    engine = _engine(home)
    _append(engine, 3)
    write_checkpoint(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER audit_chain_no_update"))
        connection.execute(text("UPDATE audit_chain SET legacy_until = 1000"))
    with Session(engine) as session:
        check = verify(session)
    assert not check.ok and "cut-over rewritten" in check.reason


def test_the_recorder_checkpoints_every_n_events_not_every_event(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOVERSE_API_AUDIT_CHECKPOINT_EVENTS", "10")
    _clear()
    engine = _engine(home)
    recorder = Recorder(engine)
    for _ in range(35):  # one transaction each: the worst case for a per-event cost
        recorder.submit(Unit({"actor": "k1", "role": "app", "tenant_id": "t1", "patient_id": "p1",
                              "action": "prediction.create", "outcome": "ok"})).result(timeout=30)
    recorder.close()
    lines = [json.loads(line) for line in (home / "audit" / "checkpoints.jsonl").read_text().splitlines()]
    assert [cp["events"] for cp in lines] == [10, 20, 30, 35]  # three due, one on close
    with Session(engine) as session:
        check = verify(session)
    assert check.ok and check.checkpoints == 4


def test_bioverse_audit_verify_prints_a_summary_and_every_break(home: Path) -> None:
    empty = runner.invoke(app, ["audit", "checkpoint"])
    assert empty.exit_code == 0 and "nothing to checkpoint" in empty.output
    engine = _engine(home)
    _append(engine, 6)
    made = runner.invoke(app, ["audit", "checkpoint"])
    assert made.exit_code == 0 and "checkpoint: 6 events" in made.output, made.output
    intact = runner.invoke(app, ["audit", "verify"])
    assert intact.exit_code == 0 and intact.output.strip() == "audit log intact: 6 events, 1 checkpoint", intact.output
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER audit_no_update"))
        connection.execute(text("UPDATE audit_events SET outcome = 'notfound' WHERE id IN (2, 5)"))
    broken = runner.invoke(app, ["audit", "verify"])
    lines = broken.output.strip().splitlines()
    assert broken.exit_code == 1 and "Traceback" not in broken.output
    assert lines[0] == "error: audit log BROKEN: 2 breaks in 6 events, 1 checkpoint"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["event 2", "event 5"]
    capped = runner.invoke(app, ["audit", "verify", "--max-lines", "1"])
    assert capped.exit_code == 1 and capped.output.strip().splitlines()[-1].strip().startswith("... 1 more")


def test_verify_without_the_key_is_one_clear_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(home)
    _append(engine, 2)
    monkeypatch.delenv("BIOVERSE_AUDIT_KEY")
    result = runner.invoke(app, ["audit", "verify"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: no audit key: set BIOVERSE_AUDIT_KEY")


def test_an_unreadable_checkpoints_file_is_one_clear_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(home)
    _append(engine, 1)
    monkeypatch.setenv("BIOVERSE_API_AUDIT_CHECKPOINTS", str(home))  # a directory
    _clear()
    result = runner.invoke(app, ["audit", "verify"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "cannot read audit checkpoints" in lines[0], result.output


def test_the_canonical_form_is_the_documented_json() -> None:
    """verify's hand-written canonical JSON equals ``json.dumps(..., sort_keys=True)`` (the
    documented form legacy events were hashed with), for awkward values too."""
    from platform_api.audit import FIELDS, _canonical

    values = [None, "x", 'quote " and \\ backslash', "é日本\u2028", "nul\x00", ""]
    for i in range(300):
        fields = {k: values[(i + j) % len(values)] for j, k in enumerate(FIELDS)}
        fields["at"] = datetime(2026, 1, 2, 3, 4, 5, (i * 7919) % 1_000_000, tzinfo=UTC if i % 2 else None)
        documented = {k: fields[k] for k in FIELDS}
        documented["at"] = fields["at"].replace(tzinfo=None).isoformat(timespec="microseconds")
        assert _canonical(fields) == json.dumps(documented, sort_keys=True)


def test_an_idle_recorder_still_checkpoints_the_last_events(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The anchor lags the head by at most ``audit_checkpoint_seconds`` where a recorder runs,
    also when no append follows (the twin routes' events included)."""
    import time

    monkeypatch.setenv("BIOVERSE_API_AUDIT_CHECKPOINT_SECONDS", "0.5")
    _clear()
    engine = _engine(home)
    recorder = Recorder(engine)
    recorder.submit(Unit({"actor": "k1", "role": "app", "tenant_id": "t1", "patient_id": "p1",
                          "action": "prediction.create", "outcome": "ok"})).result(timeout=30)
    _append(engine, 2)  # a twin route's events, not due by count (1000) nor yet by time
    path = home / "audit" / "checkpoints.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not path.exists() or json.loads(path.read_text().splitlines()[-1])["events"] < 3):
        time.sleep(0.1)
    assert json.loads(path.read_text().splitlines()[-1])["events"] == 3  # before close
    recorder.close()
    with Session(engine) as session:
        assert verify(session).ok


def test_a_dropped_audit_table_is_one_clear_line_and_a_failure(home: Path) -> None:
    """Dropping the table (DDL rights) is not "intact": verify and checkpoint say so in one line."""
    engine = _engine(home)
    _append(engine, 2)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE audit_events"))
    for command_line in (["audit", "verify"], ["audit", "checkpoint"]):
        result = runner.invoke(app, command_line)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert lines[0].startswith("error: cannot read the audit log: no such table: audit_events")


def test_key_creation_and_revocation_are_audited_with_the_key_and_nothing_half_written(home: Path) -> None:
    created = runner.invoke(app, ["api", "key", "create", "--role", "clinical_validator", "--name", "Dr Quinn"])
    assert created.exit_code == 0, created.output
    key_id = created.output.strip().split("_")[1]
    assert runner.invoke(app, ["api", "key", "revoke", key_id]).exit_code == 0
    engine = platform_db.get_engine(_url(home))
    with Session(engine) as session:
        events = session.query(AuditEvent).order_by(AuditEvent.id).all()
        assert [(e.action, e.role, e.actor.startswith("os:")) for e in events] == [
            (f"key.create:{key_id}:clinical_validator", "admin", True), (f"key.revoke:{key_id}", "admin", True)]
        assert verify(session).ok
    with engine.begin() as connection:  # an audit log that refuses writes: the key must not be made either
        connection.execute(text("CREATE TRIGGER no_more BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'full'); END"))
    refused = runner.invoke(app, ["api", "key", "create", "--role", "admin", "--name", "Ops"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output, refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM api_keys")) == 1
