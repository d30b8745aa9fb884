"""The model a registry alias points at, loaded from MLflow and swapped when the alias moves."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from serving.errors import ModelNotReadyError, PredictionInputError
from training.scoring import RiskScorer, ScoringInputError

__all__ = ["LoadedModel", "RegistryModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, ready to score raw feature rows.

    Scoring goes through :class:`RiskScorer` (the encoder and weights as NumPy arrays),
    not the MLflow pyfunc wrapper: the same numbers (tested), at a few microseconds per
    row and without importing the training stack into serving processes.
    """

    name: str
    version: str
    scorer: RiskScorer

    @property
    def features(self) -> tuple[str, ...]:
        """The input columns the model takes (numeric first)."""
        return self.scorer.features

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Risk for each row of raw features (a missing or None value is missing).

        Raises:
            PredictionInputError: an unknown feature or a value of the wrong type.
        """
        try:
            return self.scorer.score_rows(rows)
        except ScoringInputError as err:
            raise PredictionInputError(f"{err} (model {self.name})") from err


class RegistryModel:
    """Follows ``models:/<name>@<alias>`` in the MLflow registry.

    Args:
        tracking_uri: MLflow tracking/registry URI.
        name: Registered model name.
        alias: The alias to serve (``production`` once a validator approves a version).
    """

    def __init__(self, tracking_uri: str, name: str, alias: str = "production") -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def current_version(self) -> str:
        """The version the alias points at now.

        Raises:
            ModelNotReadyError: the model or the alias does not exist.
        """
        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as err:
            raise ModelNotReadyError(f"no version of model {self.name!r} has the alias {self.alias!r}") from err

    def load(self, version: str) -> LoadedModel:
        """Download one version's artifacts and build its scorer.

        Raises:
            ModelNotReadyError: the version is missing or is not a BioVerse risk model package.
        """
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with tempfile.TemporaryDirectory(prefix="bioverse-model-") as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=tmp))
                scorer = RiskScorer.from_files(local / "artifacts")
            except (MlflowException, OSError, KeyError, ValueError) as err:
                raise ModelNotReadyError(f"{self.name} version {version} cannot be served: {err}") from err
        log.info("loaded %s version %s", self.name, version)
        return LoadedModel(self.name, version, scorer)
