"""The model a registry alias points at, loaded from MLflow and swapped when the alias moves."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import mlflow
import mlflow.artifacts
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from serving.errors import ModelNotReadyError, PredictionInputError
from training.scoring import RiskScorer, ScoringInputError

if TYPE_CHECKING:
    from training.vision_scoring import VisionScorer

__all__ = ["AliasFollower", "LoadedModel", "LoadedVisionModel", "RegistryModel"]

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


@dataclass(frozen=True)
class LoadedVisionModel:
    """One registered image classifier version, on the device this process sees."""

    name: str
    version: str
    scorer: VisionScorer


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
        return self._load(version, vision=False)

    def load_vision(self, version: str) -> LoadedVisionModel:
        """Download one image classifier version and load it on this process's device.

        Raises:
            ModelNotReadyError: the version is missing or is not a BioVerse image classifier.
        """
        return self._load(version, vision=True)

    def _load(self, version: str, *, vision: bool) -> Any:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with tempfile.TemporaryDirectory(prefix="bioverse-model-") as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=tmp))
                if vision:
                    from training.vision_scoring import VisionScorer

                    loaded: Any = LoadedVisionModel(self.name, version, VisionScorer.from_files(local / "artifacts"))
                else:
                    loaded = LoadedModel(self.name, version, RiskScorer.from_files(local / "artifacts"))
            except (MlflowException, OSError, KeyError, ValueError, RuntimeError) as err:
                raise ModelNotReadyError(f"{self.name} version {version} cannot be served: {err}") from err
        log.info("loaded %s version %s", self.name, version)
        return loaded


M = TypeVar("M", LoadedModel, LoadedVisionModel)


class AliasFollower(Generic[M]):
    """Keeps the version a registry alias points at loaded, swapping it when the alias moves.

    A background thread polls the alias; a new version is loaded beside the old one and
    swapped in with one reference assignment, so callers holding the old one finish on it.
    A failed load keeps the current version serving.
    """

    def __init__(self, source: RegistryModel, *, vision: bool, poll_seconds: float = 5.0) -> None:
        self.source = source
        self.vision = vision
        self.poll_seconds = poll_seconds
        self.model: M = self._load(source.current_version())
        self._stop = threading.Event()
        threading.Thread(target=self._follow, name="follow-alias", daemon=True).start()

    def _load(self, version: str) -> M:
        return self.source.load_vision(version) if self.vision else self.source.load(version)  # type: ignore[return-value]

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                version = self.source.current_version()
                if version != self.model.version:
                    self.model = self._load(version)  # the swap: one reference assignment
            except Exception:  # noqa: BLE001 - keep serving the current version
                log.exception("could not follow %s@%s", self.source.name, self.source.alias)

    def stop(self) -> None:
        """Stop following (the current version stays loaded)."""
        self._stop.set()
