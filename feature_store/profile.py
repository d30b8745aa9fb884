"""The store profile: ``embedded`` (SQLite and files in the data dir) or ``production`` (every store on its server).

It lives in the lowest layer that reads it; ``experiments`` and ``platform_api`` read it from here.
See docs/operations.md.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from feature_store.errors import ProfileError

__all__ = ["CONFIG_ENV", "StoreProfile", "feast_connection_string", "get_profile", "redact"]

#: The variable naming the optional TOML config file (its keys are the field names).
CONFIG_ENV = "BIOVERSE_CONFIG"
#: What a production profile must name, and the variable that names it.
_REQUIRED = {"postgres_url": "BIOVERSE_PRODUCTION_POSTGRES_URL", "redis_url": "BIOVERSE_PRODUCTION_REDIS_URL",
             "artifact_root": "BIOVERSE_PRODUCTION_ARTIFACT_ROOT"}


class StoreProfile(BaseSettings):
    """Which stores BioVerse uses; a store's own variable (``BIOVERSE_API_DATABASE_URL``,
    ``BIOVERSE_TRACKING_URI``, ``BIOVERSE_ONLINE_STORE``, ...) beats what the profile fills in.

    Attributes:
        profile: ``embedded`` (``BIOVERSE_PROFILE``; the default) or ``production``.
        postgres_url: The PostgreSQL server, ``postgresql://user:password@host:5432``; each store
            gets its own database on it (a database name in the URL is replaced).
        platform_database, mlflow_database, feast_database: Those databases' names.
        redis_url: ``redis://[:password@]host:6379/db``: the API's caches and Feast's online store.
        artifact_root: ``s3://bucket/prefix`` where MLflow keeps artifacts (the S3 endpoint and
            credentials come from boto3's usual variables: ``AWS_ENDPOINT_URL_S3``,
            ``AWS_ACCESS_KEY_ID``, ...; ``MLFLOW_S3_ENDPOINT_URL`` also works for MLflow).
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_PRODUCTION_", populate_by_name=True, extra="forbid")

    profile: Literal["embedded", "production"] = Field(default="embedded", validation_alias=AliasChoices("BIOVERSE_PROFILE", "profile"))
    postgres_url: str = ""
    platform_database: str = "bioverse"
    mlflow_database: str = "bioverse_mlflow"
    feast_database: str = "bioverse_feast"
    redis_url: str = ""
    artifact_root: str = ""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the TOML file ``BIOVERSE_CONFIG`` names."""
        config = os.environ.get(CONFIG_ENV, "")
        if not config:
            return init_settings, env_settings
        if not Path(config).is_file():
            raise ProfileError(f"{CONFIG_ENV}={config}: no such file")
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=Path(config))

    @property
    def production(self) -> bool:
        """Whether every store is on its server."""
        return self.profile == "production"

    def check(self) -> StoreProfile:
        """Refuse a half-configured production profile (never a silent fallback to SQLite).

        Raises:
            ProfileError: naming the first missing or malformed setting.
        """
        if not self.production:
            return self
        where = f" (or {{key}} in {os.environ[CONFIG_ENV]})" if os.environ.get(CONFIG_ENV) else ""
        for key, variable in _REQUIRED.items():
            if not getattr(self, key):
                raise ProfileError(f"the production profile needs {variable}{where.format(key=key)}")
        if urlsplit(self.postgres_url).scheme.split("+")[0] not in ("postgresql", "postgres"):
            raise ProfileError(f"{_REQUIRED['postgres_url']}: must be a postgresql:// URL")
        if urlsplit(self.redis_url).scheme not in ("redis", "rediss"):
            raise ProfileError(f"{_REQUIRED['redis_url']}: must be a redis:// or rediss:// URL")
        if not self.artifact_root.startswith("s3://") or len(self.artifact_root) <= len("s3://"):
            raise ProfileError(f"{_REQUIRED['artifact_root']}: must be an s3://bucket[/prefix] URI")
        return self

    def database_url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on the profile's PostgreSQL server."""
        parts = urlsplit(self.postgres_url)
        return urlunsplit(("postgresql+psycopg2", parts.netloc, f"/{database}", parts.query, ""))

    def platform_database_url(self) -> str | None:
        """The platform database, or None outside production."""
        return self.database_url(self.platform_database) if self.production else None

    def mlflow_tracking_uri(self) -> str | None:
        """MLflow's backend store, or None outside production."""
        return self.database_url(self.mlflow_database) if self.production else None

    def feast_registry_url(self) -> str | None:
        """Feast's SQL registry, or None outside production."""
        return self.database_url(self.feast_database) if self.production else None

    def cache_url(self) -> str | None:
        """The API caches' Redis, or None outside production."""
        return self.redis_url if self.production else None

    def mlflow_artifact_root(self) -> str | None:
        """Where new MLflow experiments keep artifacts, or None outside production."""
        return self.artifact_root.rstrip("/") if self.production else None

    def feast_redis(self) -> str | None:
        """The Redis URL as Feast's connection string (``host:port,db=N[,password=..][,ssl=true]``)."""
        return feast_connection_string(self.redis_url) if self.production else None


def feast_connection_string(redis_url: str) -> str:
    """``redis://:pw@host:port/3`` as Feast writes it: ``host:port,db=3,password=pw``."""
    parts = urlsplit(redis_url)
    fields: list[str] = [f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"]
    database = parts.path.strip("/")
    if database:
        fields.append(f"db={int(database)}")
    if parts.password:
        fields.append(f"password={parts.password}")
    if parts.scheme == "rediss":
        fields.append("ssl=true")
    return ",".join(fields)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@functools.cache
def get_profile() -> StoreProfile:
    """The process's profile, read once (environment, then ``BIOVERSE_CONFIG``) and checked.

    Raises:
        ProfileError: the production profile is missing a setting.
    """
    from pydantic import ValidationError

    try:
        profile = StoreProfile()
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "profile"
        if first["type"] == "extra_forbidden":
            raise ProfileError(f"{os.environ.get(CONFIG_ENV)}: unknown key {key!r}") from None
        variable = key if key.isupper() else "BIOVERSE_PROFILE" if key == "profile" else f"BIOVERSE_PRODUCTION_{key.upper()}"
        raise ProfileError(f"{variable}: {first['msg']}") from None
    return profile.check()

