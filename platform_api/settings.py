"""Settings of the platform API (environment variables prefixed ``BIOVERSE_API_``)."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ApiSettings", "get_settings"]


class ApiSettings(BaseSettings):
    """Database and limits of the platform API.

    Attributes:
        data_dir: BioVerse's data directory (``BIOVERSE_DATA_DIR``).
        database_url: SQLAlchemy URL; empty means SQLite ``platform.db`` in the data dir.
            PostgreSQL: ``postgresql+psycopg2://user@host/db``.
        max_body_bytes: Larger request bodies answer 413.
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_API_")

    data_dir: Path = Field(default=Path.home() / ".bioverse", validation_alias=AliasChoices("BIOVERSE_DATA_DIR"))
    database_url: str = ""
    max_body_bytes: int = 1_000_000

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite database."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'platform.db').resolve()}"


@functools.cache
def get_settings() -> ApiSettings:
    """The process's settings, read once from the environment."""
    return ApiSettings()
