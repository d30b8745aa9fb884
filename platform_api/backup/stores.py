"""Consistent copies of the stores: SQLite through the online backup API, PostgreSQL through
``pg_dump`` of one exported snapshot; folders as tar files (docs/backup.md)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from platform_api.backup.errors import BackupError

__all__ = ["COUNTED", "database_kind", "dump_database", "empty_postgres", "libpq_dsn", "pack_folder", "restore_database", "sqlite_path", "unpack"]

#: Tables whose rows are counted into the manifest (and checked after a restore).
COUNTED = ("tenants", "api_keys", "twins", "predictions", "alerts", "image_predictions", "audit_events", "audit_chain")


def database_kind(url: str) -> str:
    """``sqlite`` or ``postgresql`` (anything else is refused)."""
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"{backend}: only SQLite and PostgreSQL stores can be backed up")
    return backend


def sqlite_path(url: str) -> Path:
    """The file of a SQLite URL."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{url}: an in-memory database cannot be backed up")
    return Path(database)


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the ``postgresql://`` DSN pg_dump and psycopg2 take."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise BackupError(f"{what} failed ({command[0]} exit {done.returncode}): {tail}")


def _counts(execute: Callable[[str], Any], tables: tuple[str, ...]) -> tuple[dict[str, int], dict[str, Any]]:
    counts = {}
    for table in tables:
        try:
            counts[table] = int(execute(f"SELECT count(*) FROM {table}")[0][0])
        except Exception:  # noqa: BLE001 - a table this schema does not have
            continue
    head: dict[str, Any] = {}
    if "audit_events" in counts:
        rows = execute("SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1")
        if rows:
            head = {"last_id": int(rows[0][0]), "hash": rows[0][1], "events": counts["audit_events"]}
    return counts, head


def dump_database(url: str, target_stem: Path, *, count: tuple[str, ...] = ()) -> tuple[Path, dict[str, int], dict[str, Any]]:
    """Copy the database at ``url`` consistently; returns the file, row counts and audit head of that copy.

    SQLite: the online backup API (pages copied while writers go on; the copy is one
    transaction's view). PostgreSQL: a REPEATABLE READ transaction exports its snapshot,
    counts rows in it, and ``pg_dump --snapshot`` dumps exactly that view (custom format).
    """
    if database_kind(url) == "sqlite":
        source, target = sqlite_path(url), target_stem.with_suffix(".db")
        if not source.exists():
            raise BackupError(f"{source}: no such database")
        with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
            src.backup(dst, pages=0)
            counts, head = _counts(lambda q: dst.execute(q).fetchall(), count)
        return target, counts, head
    import psycopg2

    target, dsn = target_stem.with_suffix(".pgdump"), libpq_dsn(url)
    connection = psycopg2.connect(dsn)
    try:
        connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with connection.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]

            def execute(query: str) -> Any:
                cur.execute("SAVEPOINT c")
                try:
                    cur.execute(query)
                    return cur.fetchall()
                except Exception:
                    cur.execute("ROLLBACK TO SAVEPOINT c")
                    raise

            counts, head = _counts(execute, count)
            _run(["pg_dump", "--format=custom", "--compress=1", f"--snapshot={snapshot}", "--no-owner",
                  f"--file={target}", f"--dbname={dsn}"], "pg_dump")
        connection.rollback()
    finally:
        connection.close()
    return target, counts, head


def restore_database(dump: Path, url: str) -> None:
    """Load a copy made by :func:`dump_database` into the (empty) database at ``url``, all or nothing."""
    if database_kind(url) == "sqlite":
        target = sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dump, target)  # a rename on one file system, a copy across (the database on its own volume)
        return
    _run(["pg_restore", "--single-transaction", "--exit-on-error", "--no-owner", f"--dbname={libpq_dsn(url)}", str(dump)],
         "pg_restore")


def empty_postgres(url: str) -> None:
    """Drop everything in the public schema of the database at ``url`` (a failed or forced restore)."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(libpq_dsn(url))) as connection:
        connection.autocommit = True
        with connection.cursor() as cur:
            cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


def pack_folder(folder: Path, target: Path, *, skip: Callable[[Path], bool] = lambda p: False,
                extra: dict[str, Path] | None = None) -> int:
    """Tar ``folder``'s files (not ``skip``ped) plus ``extra`` (name -> file) into ``target``; returns files packed."""
    packed = 0
    with tarfile.open(target, "w") as tar:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not skip(path):
                    tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
                    packed += 1
        for name, path in (extra or {}).items():
            if path.is_file():
                tar.add(path, arcname=name, recursive=False)
                packed += 1
    return packed


def unpack(archive: Path, folder: Path) -> list[str]:
    """Extract a tar made by :func:`pack_folder` into ``folder`` (plain files only); returns the names."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
        return tar.getnames()
