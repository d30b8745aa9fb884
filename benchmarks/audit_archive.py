"""Audit retention at scale: archiving 1,000,000 events (rows/s, segment bytes against the table's),
and verifying archive + live table, against a baseline in the same run: verifying the same events
live (the chain before archiving, no archive).

Usage: python benchmarks/audit_archive.py [--events 1000000] [--segment-events 50000] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _results import machine, table, write_section

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
KEY_HEX = "cd" * 32


def fill(engine, events: int) -> None:  # type: ignore[no-untyped-def]
    """``events`` chained, MACed events from 8 years ago (one a second), inserted in batches."""
    from sqlalchemy import insert

    from platform_api.audit import GENESIS, event_mac
    from platform_api.models import AuditEvent

    key = bytes.fromhex(KEY_HEX)
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=8 * 365)
    prev, batch = GENESIS, []
    with engine.begin() as connection:
        for i in range(events):
            at = start + timedelta(seconds=i)
            fields = {"at": at, "actor": f"k{i % 50}", "role": "clinician", "tenant_id": f"t{i % 7}",
                      "patient_id": f"patient-{i % 5000}", "action": "twin.read", "outcome": "ok"}
            digest = event_mac(key, prev, fields)
            batch.append({**fields, "prev_hash": prev, "hash": digest})
            prev = digest
            if len(batch) == 50_000:
                connection.execute(insert(AuditEvent), batch)
                batch = []
        if batch:
            connection.execute(insert(AuditEvent), batch)


def table_bytes(engine) -> int:  # type: ignore[no-untyped-def]
    """The audit table with its indexes: the SQLite file, or PostgreSQL's total relation size."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            return int(connection.exec_driver_sql("SELECT pg_total_relation_size('audit_events')").scalar() or 0)
    return Path(engine.url.database).stat().st_size


def measure(url: str, events: int, segment_events: int, work: Path) -> tuple[list[str], dict[str, float]]:
    from sqlalchemy.orm import Session

    from platform_api.audit import verify
    from platform_api.audit_archive import Archiver
    from platform_api.audit_archive_store import LocalStore
    from platform_api.audit_archive_verify import verify_all
    from platform_api.db import get_engine, migrate

    migrate(url)
    engine = get_engine(url)
    started = time.perf_counter()
    fill(engine, events)
    filled = time.perf_counter() - started
    size = table_bytes(engine)
    started = time.perf_counter()
    with Session(engine) as session:
        live = verify(session)
    live_s = time.perf_counter() - started
    assert live.ok and live.events == events, live.breaks[:3]
    store = LocalStore(work / "archive")
    run = Archiver(engine, store, segment_events=segment_events).run(datetime(2100, 1, 1))
    started = time.perf_counter()
    with Session(engine) as session:
        both = verify_all(session, store)
    both_s = time.perf_counter() - started
    assert both.ok and both.events == events and both.archived == events - 1, both.breaks[:3]
    engine.dispose()
    numbers = {"fill": filled, "live": live_s, "archive": run.seconds, "both": both_s, "bytes": run.bytes, "table": size}
    return [engine.dialect.name, f"{events:,}", f"{filled:.0f} s", f"{live_s:.1f} s ({events / live_s:,.0f}/s)",
            f"{run.seconds:.1f} s ({run.events / run.seconds:,.0f}/s)", f"{len(run.segments)}",
            f"{run.longest_commit * 1000:.0f} ms",
            f"{run.bytes / 1e6:.1f} MB / {size / 1e6:.1f} MB ({run.bytes / size:.2f}x)",
            f"{both_s:.1f} s ({events / both_s:,.0f}/s)", f"{both_s / live_s:.2f}x"], numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--segment-events", type=int, default=50_000)
    parser.add_argument("--postgres", action="store_true", help="also measure on the local PostgreSQL")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-archive-"))
    os.environ.update({"BIOVERSE_DATA_DIR": str(work / "data"), "BIOVERSE_AUDIT_KEY": KEY_HEX,
                       "BIOVERSE_API_AUDIT_CHECKPOINTS": str(work / "checkpoints.jsonl")})
    rows = [measure(f"sqlite:///{work / 'platform.db'}", args.events, args.segment_events, work / "sqlite")[0]]
    if args.postgres:
        import psycopg2

        name = f"bench_{uuid.uuid4().hex[:10]}"
        admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="test")
        admin.autocommit = True
        admin.cursor().execute(f"CREATE DATABASE {name}")
        try:
            rows.append(measure(f"{PG}/{name}", args.events, args.segment_events, work / "postgres")[0])
        finally:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.close()
    headers = ["database", "events", "fill (setup)", "baseline: verify live only", "archive (rows/s)", "segments",
               "longest segment transaction", "segments / table+indexes", "verify archive + live", "verify ratio"]
    print(table(headers, rows))
    write_section("audit_archive", f"""## Audit retention: archiving {args.events:,} events

`python benchmarks/audit_archive.py --events {args.events} --segment-events {args.segment_events}{' --postgres' if args.postgres else ''}`
({machine()}; the machine was shared with other agents' builds and tests while this ran, so
absolute times are noisy; the ratio is measured in the same run.) Archive: every event but the
head, `--segment-events {args.segment_events:,}` (one segment = one write + read-back + verify + one
transaction; on SQLite appenders wait for the longest one). Baseline: `bioverse audit verify`'s walk of the same events in the live table
before archiving; "verify archive + live" reads every segment (gunzip, sha256, manifest MAC)
and re-walks each event's MAC.

{table(headers, rows)}
""")
    print(f"work dir: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
