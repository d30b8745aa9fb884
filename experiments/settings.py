"""Settings of the experiments layer (environment variables prefixed ``BIOVERSE_``)."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_store.profile import get_profile

__all__ = ["ExperimentSettings", "get_settings"]


class ExperimentSettings(BaseSettings):
    """Where BioVerse keeps its embedded state, and which MLflow to track to.

    Attributes:
        data_dir: The one data directory of the embedded defaults (MLflow store,
            synthetic hospitals, ledgers of simulated hospitals, run logs).
        tracking_uri: MLflow tracking URI; empty means the profile's (production: PostgreSQL),
            else SQLite in ``data_dir``.
        artifact_root: Where new experiments keep artifacts when the store is not SQLite
            (``s3://bucket/prefix``); empty means the profile's (production: S3), else MLflow's default.
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_")

    data_dir: Path = Path.home() / ".bioverse"
    tracking_uri: str = ""
    artifact_root: str = ""

    def resolved_tracking_uri(self) -> str:
        """The configured URI, else the production profile's PostgreSQL, else the embedded SQLite store."""
        uri = self.tracking_uri or get_profile().mlflow_tracking_uri()
        if uri:
            return uri
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


    def resolved_artifact_root(self) -> str | None:
        """The configured artifact root, else the production profile's S3 root, else None."""
        return self.artifact_root or get_profile().mlflow_artifact_root()


@functools.cache
def get_settings() -> ExperimentSettings:
    """The process's settings, read once from the environment."""
    return ExperimentSettings()
