"""Integration fixtures: real Flower engines, a real MLflow store, real processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from experiments.spec import ExperimentSpec
from federation.launcher import LaunchOptions, run_experiment


@pytest.fixture()
def launch(tmp_path: Path, isolated_home: Path) -> Callable[..., dict[str, Any]]:
    """Run a spec on the simulation engine with its own MLflow store and ledgers."""

    def _launch(spec: ExperimentSpec, on_event: Callable[[dict[str, Any]], None] = lambda e: None, **options: Any) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "engine": "simulation",
            "run_dir": tmp_path / "runs" / spec.name,
            "tracking_uri": tracking_uri(tmp_path),
            "ledger_dir": tmp_path / "ledgers",
            "timeout": 600,
        }
        return run_experiment(spec, LaunchOptions(**{**defaults, **options}), on_event)

    return _launch


def tracking_uri(tmp_path: Path) -> str:
    """The test's embedded MLflow store."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def participation(summary: dict[str, Any], round_: int, stage: str = "train") -> dict[str, str]:
    """hospital -> status in one round of a summary."""
    return {h: v["status"] for h, v in summary["participation"][str(round_)][stage].items()}


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(path.read_text())


@dataclass(frozen=True)
class PostgresDatabase:
    """A fresh database on the machine's PostgreSQL: its libpq DSN and SQLAlchemy URL."""

    name: str
    dsn: str
    sqlalchemy_url: str


PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


@pytest.fixture()
def postgres_database() -> Iterator[PostgresDatabase]:
    """A new, empty PostgreSQL database, dropped (with its connections) afterwards."""
    import psycopg2

    name = f"bioverse_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(**PG)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    where = f"{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    try:
        yield PostgresDatabase(name, f"postgresql://{where}", f"postgresql+psycopg2://{where}")
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
