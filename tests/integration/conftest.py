"""Integration fixtures: real Flower engines, a real MLflow store, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from experiments.spec import ExperimentSpec
from federation.launcher import LaunchOptions, run_experiment

# The review gate's key (experiments.keys): one per test session, in the environment, because
# fixtures register models under one data dir and serve them under another.
os.environ.setdefault("BIOVERSE_GATE_KEY", secrets.token_hex(32))

#: The installed CLI, run as a user runs it from a shell.
BIOVERSE = str(Path(sys.executable).parent / "bioverse")


def cli_env(root: Path) -> dict[str, str]:
    """The environment of a CLI process whose data dir and Flower home are under ``root``."""
    return {**os.environ, "BIOVERSE_DATA_DIR": str(root / "home"), "FLWR_HOME": str(root / "home" / "flwr")}


def run_experiment_cli(spec: dict[str, Any], root: Path, *, name: str = "spec",
                       timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], str, dict[str, str]]:
    """Write ``spec`` to ``root/<name>.yaml`` and run ``bioverse experiment run`` on it (Flower
    simulation) against a SQLite MLflow store under ``root``.

    Returns the finished process (the caller asserts on its exit status), the store's URI and
    the environment, for the CLI calls that follow.
    """
    (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    uri, env = f"sqlite:///{root / 'mlflow.db'}", cli_env(root)
    done = subprocess.run([BIOVERSE, "experiment", "run", str(root / f"{name}.yaml"), "--tracking-uri", uri],
                          capture_output=True, text=True, env=env, timeout=timeout)
    return done, uri, env


def sign_approved(uri: str, name: str, version: str) -> None:
    """Mark a version approved as the review gate does (fixtures whose subject is serving, not review)."""
    from experiments.gate import mark_approved

    mark_approved(uri, name, version)


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


def register_risk_models(uri: str, name: str, hospital_paths: list[Path], versions: int = 2, *,
                         production: bool = True, spec_overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Register ``versions`` logistic risk models (trained on the first hospital, as the
    federation would register them) and, with ``production``, approve version 1 (signed as
    the review gate does) and point ``production`` at it; without, every version is pending.

    ``spec_overrides`` replace sections of the spec the runs log (e.g. ``fhir``).
    Returns raw feature rows of the second hospital, to score.
    """
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from experiments.tracking import RunTracker, embedded_artifact_location
    from tests.conftest import make_spec
    from training.tabular.data import HospitalDataModule
    from training.tabular.hospital import model_hparams
    from training.tabular.local import train_locally
    from training.tabular.models import build_model
    from training.tabular.preprocessing import FeatureEncoder

    spec = make_spec(hospital_paths, registered_model=name, **(spec_overrides or {}))
    dm = HospitalDataModule(hospital_paths[0], spec.data.contract, seed=1)
    dm.encoder = FeatureEncoder.from_statistics(dm.statistics(), spec.data.contract)
    for seed in range(1, versions + 1):
        tracker = RunTracker(uri, embedded_artifact_location(uri))
        tracker.start(spec)
        model = build_model("logistic", dm.encoder.input_dim, **model_hparams(spec))
        train_locally(model, dm.dataset("train"), epochs=seed * 2, batch_size=64, dp=None, seed=seed)
        tracker.register(model=model, encoder=dm.encoder, kind="logistic", hparams=model_hparams(spec), model_name=name, tags={})
        tracker.end()
    if production:
        sign_approved(uri, name, "1")  # production only ever points at an approved version
        MlflowClient(uri, registry_uri=uri).set_registered_model_alias(name, "production", "1")
    rows = pd.read_csv(hospital_paths[1]).head(20)
    return [{k: (None if pd.isna(v) else v) for k, v in r.items() if k in spec.data.contract.features}
            for r in rows.to_dict("records")]


def clear_platform_caches() -> None:
    """Forget every process-wide cached setting, engine and service of the API."""
    from feature_store import settings as feature_settings
    from platform_api import db, services, settings

    services.reset()
    for cached in (settings.get_settings, feature_settings.get_settings, db.get_engine, db.session_factory):
        cached.cache_clear()


def attach_report(client: Any, name: str, version: str, report: dict[str, Any], html: str) -> str:
    """Store a validation report (JSON and HTML) with a version and tag it complete, as the
    coordinator does at registration; returns the report's sha256."""
    import hashlib

    body = json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False)
    run_id = client.get_model_version(name, version).run_id
    client.log_text(run_id, body, "validation/report.json")
    client.log_text(run_id, html, "validation/report.html")
    sha = hashlib.sha256(body.encode()).hexdigest()
    client.set_model_version_tag(name, version, "validation.status", "complete")
    client.set_model_version_tag(name, version, "validation.report_sha256", sha)
    return sha


@contextlib.contextmanager
def review_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str, model: str,
               people: dict[str, tuple[str, str | None, str]]) -> Iterator[tuple[Any, dict[str, str]]]:
    """The platform API (in process, SQLite under ``tmp_path``) reviewing ``model`` in the MLflow
    store at ``uri``, with one key per ``people`` entry: ``{label: (role, tenant, person)}``."""
    from fastapi.testclient import TestClient

    for key, value in {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_TRACKING_URI": uri, "BIOVERSE_API_MODEL_NAME": model,
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{tmp_path / 'platform.db'}"}.items():
        monkeypatch.setenv(key, value)
    clear_platform_caches()
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.deps import registry_at
    from platform_api.main import create_app

    registry_at.cache_clear()
    try:
        with TestClient(create_app()) as http:
            with db.session_factory()() as session:
                keys = {label: create_key(session, role=role, tenant_id=tenant, name=person)
                        for label, (role, tenant, person) in people.items()}
            yield http, keys
    finally:
        clear_platform_caches()


@contextlib.contextmanager
def vision_platform(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, max_image_bytes: int) -> Iterator[dict[str, Any]]:
    """The platform API (SQLite) sending image uploads to the VisionClassifier at ``url``: a
    client, keys of tenants t1 (``app``) and t2 (``other``), t1's headers and one twin of t1."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("BIOVERSE_API_DATABASE_URL", f"sqlite:///{tmp_path / 'platform.db'}")
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOVERSE_API_VISION_URL", url)
    monkeypatch.setenv("BIOVERSE_API_MAX_IMAGE_BYTES", str(max_image_bytes))
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.main import create_app

    clear_platform_caches()
    with TestClient(create_app()) as client:
        with db.session_factory()() as session:
            keys = {"app": create_key(session, role="app", tenant_id="t1"),
                    "other": create_key(session, role="app", tenant_id="t2")}
        headers = {"Authorization": f"Bearer {keys['app']}"}
        twin = client.post("/v1/twins", json={"patient_id": "p-001"}, headers=headers).json()
        yield {"client": client, "keys": keys, "headers": headers, "twin": twin}
    clear_platform_caches()
