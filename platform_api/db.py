"""Database engine, sessions and migrations (Alembic) for the platform API."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from alembic import command
from alembic.config import Config
from fastapi import Depends
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from platform_api.settings import get_settings

__all__ = ["DatabaseUrl", "database_url", "get_engine", "get_session", "migrate", "session_factory"]

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (``alembic upgrade head``)."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


@functools.cache
def get_engine(url: str | None = None) -> Engine:
    """One engine per URL; SQLite in WAL mode with foreign keys on."""
    url = url or get_settings().resolved_database_url()
    if url.startswith("sqlite"):
        # enough pooled connections for the thread pool: an overflow connection is opened and
        # closed per use, and each open runs the pragmas below
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=20, max_overflow=20)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10)


@functools.cache
def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """Sessions bound to :func:`get_engine`."""
    return sessionmaker(get_engine(url), expire_on_commit=False)


async def database_url() -> str:
    """FastAPI dependency: the URL of the platform database (the one place to override it)."""
    return get_settings().resolved_database_url()


DatabaseUrl = Annotated[str, Depends(database_url)]


def get_session(url: DatabaseUrl) -> Iterator[Session]:
    """FastAPI dependency: one session per request."""
    with session_factory(url)() as session:
        yield session
