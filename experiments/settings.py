"""Settings of the experiments layer (environment variables prefixed ``BIOVERSE_``)."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ExperimentSettings", "get_settings"]


class ExperimentSettings(BaseSettings):
    """Where BioVerse keeps its embedded state, and which MLflow to track to.

    Attributes:
        data_dir: The one data directory of the embedded defaults (MLflow store,
            synthetic hospitals, ledgers of simulated hospitals, run logs).
        tracking_uri: MLflow tracking URI; empty means SQLite in ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_")

    data_dir: Path = Path.home() / ".bioverse"
    tracking_uri: str = ""

    def resolved_tracking_uri(self) -> str:
        """The configured URI, or the embedded SQLite store."""
        if self.tracking_uri:
            return self.tracking_uri
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


@functools.cache
def get_settings() -> ExperimentSettings:
    """The process's settings, read once from the environment."""
    return ExperimentSettings()
