"""Per-version live statistics of a rollout, buffered in each scoring process and summed in the platform database."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import UTC, datetime

from sqlalchemy import JSON, Column, DateTime, Engine, Integer, MetaData, String, Table, create_engine, select

from experiments.rollout_rules import VersionStats

__all__ = ["ROLLOUT_STATS", "StatsBuffer", "read_stats"]

log = logging.getLogger(__name__)

_metadata = MetaData()
#: One flushed slice of one process's counts (the platform's migration 0005 creates it).
ROLLOUT_STATS = Table(
    "rollout_stats", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(32), index=True, nullable=False),
    Column("step", Integer, nullable=False),
    Column("version", String(20), nullable=False),
    Column("source", String(100), nullable=False),
    Column("at", DateTime, nullable=False),
    Column("requests", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("latency", JSON, nullable=False),
    Column("risks", JSON, nullable=False),
)

Key = tuple[str, int, str]  # rollout id, step, version


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    return create_engine(url, pool_pre_ping=True, pool_size=2)


class StatsBuffer:
    """Counts of one process (an API process, a Serve replica), flushed to the platform
    database every ``flush_seconds`` by a daemon thread; a failed flush keeps its counts for the next.

    Args:
        url: The platform database (SQLAlchemy URL) or an engine on it.
        flush_seconds: How often the thread flushes (0: no thread; call :meth:`flush`).
    """

    def __init__(self, url: str | Engine, *, flush_seconds: float = 1.0) -> None:
        self.engine = _engine(url) if isinstance(url, str) else url
        self.source = f"{socket.gethostname()}:{os.getpid()}"[:100]
        self._pending: dict[Key, VersionStats] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        if flush_seconds > 0:
            threading.Thread(target=self._loop, args=(flush_seconds,), name="rollout-stats", daemon=True).start()

    def observe(self, key: Key, seconds: float, risks: list[float] | None, failed: int = 1) -> None:
        """Count one scoring call of the version in ``key`` (``risks`` None: a call of ``failed`` rows failed)."""
        with self._lock:
            stats = self._pending.get(key)
            if stats is None:
                stats = self._pending[key] = VersionStats()
            stats.observe(seconds, risks, failed)

    def flush(self) -> int:
        """Write what is buffered; returns the rows written (0 when the database refused: kept for later)."""
        with self._flush_lock:
            with self._lock:
                taken, self._pending = self._pending, {}
            if not taken:
                return 0
            now = datetime.now(UTC).replace(tzinfo=None)
            rows = [{"rollout_id": k[0], "step": k[1], "version": k[2], "source": self.source, "at": now,
                     "requests": s.requests, "errors": s.errors, "latency": s.latency, "risks": s.risks}
                    for k, s in taken.items()]
            try:
                with self.engine.begin() as connection:
                    connection.execute(ROLLOUT_STATS.insert(), rows)
            except Exception:  # noqa: BLE001 - the counts are kept; scoring must not fail over them
                log.warning("could not flush rollout statistics; kept for the next flush", exc_info=True)
                with self._lock:
                    for key, stats in taken.items():
                        self._pending[key] = stats.merge(self._pending.get(key, VersionStats()))
                return 0
            return len(rows)

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.flush()

    def close(self) -> None:
        """Stop the thread and flush what is left."""
        self._stop.set()
        self.flush()


def read_stats(engine: Engine, rollout_id: str) -> dict[tuple[int, str], VersionStats]:
    """Every process's flushed counts of a rollout, summed per (step, version)."""
    out: dict[tuple[int, str], VersionStats] = {}
    query = select(ROLLOUT_STATS.c.step, ROLLOUT_STATS.c.version, ROLLOUT_STATS.c.requests, ROLLOUT_STATS.c.errors,
                   ROLLOUT_STATS.c.latency, ROLLOUT_STATS.c.risks).where(ROLLOUT_STATS.c.rollout_id == rollout_id)
    with engine.connect() as connection:
        for step, version, requests, errors, latency, risks in connection.execute(query):
            part = VersionStats(int(requests), int(errors), _ints(latency), _ints(risks))
            key = (int(step), str(version))
            out[key] = out[key].merge(part) if key in out else part
    return out


def _ints(value: object) -> list[int]:
    return [int(x) for x in (json.loads(value) if isinstance(value, str) else value)]  # type: ignore[union-attr]
