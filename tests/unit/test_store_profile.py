"""The store profile: one switch fills every store's setting; explicit variables win; half a profile is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feature_store.errors import ProfileError
from feature_store.profile import feast_connection_string, get_profile, redact

PRODUCTION = {"BIOVERSE_PROFILE": "production", "BIOVERSE_PRODUCTION_POSTGRES_URL": "postgresql://bio:s3cret@db.local:5433/ignored",
              "BIOVERSE_PRODUCTION_REDIS_URL": "redis://:pw@cache.local:6380/4", "BIOVERSE_PRODUCTION_ARTIFACT_ROOT": "s3://mlflow/artifacts"}
VARIABLES = [*PRODUCTION, "BIOVERSE_CONFIG", "BIOVERSE_API_DATABASE_URL", "BIOVERSE_API_CACHE_URL", "BIOVERSE_TRACKING_URI",
             "BIOVERSE_ONLINE_STORE", "BIOVERSE_REDIS_URL", "BIOVERSE_FEAST_REGISTRY", "BIOVERSE_ARTIFACT_ROOT",
             "BIOVERSE_API_TRACKING_URI"]


def _clear() -> None:
    from experiments import settings as experiments
    from feature_store import settings as features
    from platform_api import settings as api

    for cached in (get_profile, api.get_settings, experiments.get_settings, features.get_settings):
        cached.cache_clear()


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path))
    _clear()
    yield monkeypatch
    _clear()


def _settings() -> tuple:
    from experiments.settings import get_settings as experiments
    from feature_store.settings import get_settings as features
    from platform_api.settings import get_settings as api

    _clear()
    return api(), experiments(), features()


def test_embedded_profile_keeps_everything_in_the_data_dir(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    api, experiments, features = _settings()
    assert api.resolved_database_url() == f"sqlite:///{tmp_path / 'platform.db'}" and api.cache_url == ""
    assert api.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert experiments.resolved_artifact_root() is None
    assert (features.online_store, features.feast_registry) == ("sqlite", "")


def test_production_profile_puts_every_store_on_its_server(env: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    api, experiments, features = _settings()
    assert api.resolved_database_url() == "postgresql+psycopg2://bio:s3cret@db.local:5433/bioverse"
    assert api.resolved_tracking_uri() == "postgresql+psycopg2://bio:s3cret@db.local:5433/bioverse_mlflow"
    assert api.cache_url == "redis://:pw@cache.local:6380/4"
    assert experiments.resolved_artifact_root() == "s3://mlflow/artifacts"
    assert features.online_store == "redis" and features.redis_url == "cache.local:6380,db=4,password=pw"
    assert features.feast_registry == "postgresql+psycopg2://bio:s3cret@db.local:5433/bioverse_feast"

    from experiments.tracking import embedded_artifact_location

    assert embedded_artifact_location(api.resolved_tracking_uri()) == "s3://mlflow/artifacts"
    assert embedded_artifact_location("http://mlflow:5000") is None  # a tracking server decides itself


def test_a_stores_own_variable_beats_the_profile(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {**PRODUCTION, "BIOVERSE_API_DATABASE_URL": "sqlite:///x.db", "BIOVERSE_TRACKING_URI": "http://mlflow:5000",
                        "BIOVERSE_ONLINE_STORE": "sqlite", "BIOVERSE_API_CACHE_URL": "redis://other:6379/1",
                        "BIOVERSE_FEAST_REGISTRY": "postgresql+psycopg2://x@y/z"}.items():
        env.setenv(name, value)
    api, _, features = _settings()
    assert api.resolved_database_url() == "sqlite:///x.db" and api.resolved_tracking_uri() == "http://mlflow:5000"
    assert api.cache_url == "redis://other:6379/1"
    assert features.online_store == "sqlite" and features.feast_registry == "postgresql+psycopg2://x@y/z"


@pytest.mark.parametrize("missing", ["BIOVERSE_PRODUCTION_POSTGRES_URL", "BIOVERSE_PRODUCTION_REDIS_URL",
                                     "BIOVERSE_PRODUCTION_ARTIFACT_ROOT"])
def test_a_half_configured_production_profile_is_refused(env: pytest.MonkeyPatch, missing: str) -> None:
    for name, value in PRODUCTION.items():
        if name != missing:
            env.setenv(name, value)
    with pytest.raises(ProfileError, match=f"^the production profile needs {missing}$"):
        _settings()


@pytest.mark.parametrize(("name", "value", "says"), [
    ("BIOVERSE_PRODUCTION_POSTGRES_URL", "mysql://x@y", "must be a postgresql:// URL"),
    ("BIOVERSE_PRODUCTION_REDIS_URL", "cache:6379", "must be a redis:// or rediss:// URL"),
    ("BIOVERSE_PRODUCTION_ARTIFACT_ROOT", "/var/mlflow", "must be an s3://bucket"),
])
def test_a_malformed_address_is_refused_by_name(env: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    for key, good in PRODUCTION.items():
        env.setenv(key, good)
    env.setenv(name, value)
    with pytest.raises(ProfileError, match=f"^{name}: {says}"):
        get_profile()


def test_an_unknown_profile_or_key_is_one_line(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("BIOVERSE_PROFILE", "prod")
    with pytest.raises(ProfileError, match="^BIOVERSE_PROFILE: Input should be 'embedded' or 'production'$"):
        get_profile()
    env.delenv("BIOVERSE_PROFILE")
    config = tmp_path / "bioverse.toml"
    config.write_text('profile = "production"\npostgres = "postgresql://db"\n')
    env.setenv("BIOVERSE_CONFIG", str(config))
    with pytest.raises(ProfileError, match=f"^{config}: unknown key 'postgres'$"):
        get_profile()


def test_the_config_file_switches_and_the_environment_beats_it(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "bioverse.toml"
    config.write_text('profile = "production"\npostgres_url = "postgresql://bio@db"\nredis_url = "redis://cache/2"\n'
                      'platform_database = "clinic"\n')
    env.setenv("BIOVERSE_CONFIG", str(config))
    with pytest.raises(ProfileError, match=f"needs BIOVERSE_PRODUCTION_ARTIFACT_ROOT \\(or artifact_root in {config}\\)"):
        _settings()
    env.setenv("BIOVERSE_PRODUCTION_ARTIFACT_ROOT", "s3://b")
    env.setenv("BIOVERSE_PRODUCTION_REDIS_URL", "redis://env-cache/3")
    api, _, _ = _settings()
    assert api.resolved_database_url() == "postgresql+psycopg2://bio@db/clinic" and api.cache_url == "redis://env-cache/3"
    env.setenv("BIOVERSE_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ProfileError, match="absent.toml: no such file"):
        _settings()


def test_feast_connection_strings_and_redaction() -> None:
    assert feast_connection_string("redis://127.0.0.1:6379") == "127.0.0.1:6379"
    assert feast_connection_string("rediss://:p@h:1/12") == "h:1,db=12,password=p,ssl=true"
    assert redact("postgresql://bio:s3cret@db:5432/x") == "postgresql://bio:***@db:5432/x"
    assert redact("redis://:pw@cache/1") == "redis://:***@cache/1" and redact("sqlite:///a.db") == "sqlite:///a.db"


def test_doctor_on_the_embedded_profile(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from platform_api.cli import app

    done = CliRunner().invoke(app, ["doctor", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["profile"] == "embedded" and report["ok"] is True
    assert [c["service"] for c in report["checks"]] == ["platform database", "MLflow backend", "MLflow artifacts", "Feast registry",
                                                       "Feast online store", "API caches", "data dir free space"]
    assert {c["status"] for c in report["checks"]} <= {"ok", "warn"}
    refused = CliRunner().invoke(app, ["doctor", "--min-free-gb", "1000000"])
    assert refused.exit_code == 1 and "7 checks: 1 failed" in refused.output
    failed = [line for line in refused.output.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith(f"failed: data dir free space ({tmp_path}): ")
    assert failed[0].endswith("GiB asked for")


def test_doctor_refuses_half_a_profile_in_one_line(env: pytest.MonkeyPatch) -> None:
    from platform_api.cli import app

    env.setenv("BIOVERSE_PROFILE", "production")
    done = CliRunner().invoke(app, ["doctor"])
    assert done.exit_code == 1
    assert done.output.strip().splitlines() == ["error: the production profile needs BIOVERSE_PRODUCTION_POSTGRES_URL"]
