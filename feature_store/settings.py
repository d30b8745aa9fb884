"""Settings of the feature store (environment variables prefixed ``BIOVERSE_``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["FeatureStoreSettings", "get_settings"]


class FeatureStoreSettings(BaseSettings):
    """Where the Feast repo lives and which online store it uses.

    Attributes:
        data_dir: BioVerse's data directory; the repo defaults to ``data_dir/feature_repo``.
        feature_repo: The Feast repository folder (``feast`` commands run there).
        online_store: ``sqlite`` (embedded) or ``redis``.
        redis_url: Redis ``host:port[,db=N]`` for the Redis online store.
        feast_project: Feast project name (keys in a shared Redis are per project).
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_")

    data_dir: Path = Path.home() / ".bioverse"
    feature_repo: Path | None = None
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    feast_project: str = "bioverse"

    @property
    def repo_dir(self) -> Path:
        """The Feast repository folder."""
        return self.feature_repo or self.data_dir / "feature_repo"


@functools.cache
def get_settings() -> FeatureStoreSettings:
    """The process's settings, read once from the environment."""
    return FeatureStoreSettings()
