"""Settings of the feature store (environment variables prefixed ``BIOVERSE_``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_store.profile import get_profile

__all__ = ["FeatureStoreSettings", "get_settings"]


class FeatureStoreSettings(BaseSettings):
    """Where the Feast repo lives and which online store it uses.

    Attributes:
        data_dir: BioVerse's data directory; the repo defaults to ``data_dir/feature_repo``.
        feature_repo: The Feast repository folder (``feast`` commands run there).
        online_store: ``sqlite`` (embedded) or ``redis``.
        redis_url: Redis ``host:port[,db=N]`` for the Redis online store.
        feast_project: Feast project name (keys in a shared Redis are per project).
        feast_registry: SQLAlchemy URL of a SQL registry (``postgresql+psycopg2://...``);
            empty means the file ``data/registry.db`` in the repo.

    The production profile (feature_store/profile.py) fills in the online store (Redis)
    and the registry (PostgreSQL) where these variables are not set.
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_")

    data_dir: Path = Path.home() / ".bioverse"
    feature_repo: Path | None = None
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    feast_project: str = "bioverse"
    feast_registry: str = ""

    @model_validator(mode="after")
    def _from_profile(self) -> FeatureStoreSettings:
        profile = get_profile()
        if profile.production:
            if "online_store" not in self.model_fields_set:
                self.online_store = "redis"
                if "redis_url" not in self.model_fields_set:
                    self.redis_url = profile.feast_redis() or self.redis_url
            self.feast_registry = self.feast_registry or profile.feast_registry_url() or ""
        return self

    @property
    def repo_dir(self) -> Path:
        """The Feast repository folder."""
        return self.feature_repo or self.data_dir / "feature_repo"


@functools.cache
def get_settings() -> FeatureStoreSettings:
    """The process's settings, read once from the environment."""
    return FeatureStoreSettings()
