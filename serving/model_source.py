"""The model a registry alias points at, loaded from MLflow and swapped when the alias moves.

The gate holds here too: a version served under any alias but ``candidate`` is loaded only
with a valid approval signed by the review gate (:func:`experiments.gate.approval_problem`)
over the very files downloaded, so an alias moved by hand (plain MLflow client, MLflow UI)
serves nothing new: :class:`UnapprovedVersion` is raised, logged loudly, and a follower keeps
the version it serves."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.gate import APPROVAL_TAG, PLATFORM_SCOPE, approval_problem, artifact_digest, download_version
from experiments.names import CANDIDATE_ALIAS
from serving.errors import ModelNotReadyError, PredictionInputError, UnapprovedVersion
from training.errors import ScoringInputError
from training.tabular.scoring import RiskScorer

if TYPE_CHECKING:
    from training.imaging.scoring import VisionScorer

__all__ = ["AliasFollower", "LoadedModel", "LoadedVisionModel", "RegistryModel", "UnapprovedVersion"]

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

    @property
    def threshold(self) -> float:
        """The version's decision threshold (``decision.json``; 0.5 for older packages):
        ``risk >= threshold`` is a positive decision."""
        return self.scorer.threshold

    @property
    def decision_rule(self) -> str:
        """How the threshold was chosen (``youden``, ``sensitivity``, ``fixed``, ``prior``, ``default``)."""
        return self.scorer.decision.rule

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Risk for each row of raw features (a missing or None value is missing).

        Raises:
            PredictionInputError: an unknown feature or a value of the wrong type.
        """
        try:
            return self.scorer.score_rows(rows)
        except ScoringInputError as err:
            raise PredictionInputError(f"{err} (model {self.name})") from err

    def unknown_categories(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Per categorical feature, how many rows hold a value this version never learned
        (scored as ``other``; see :mod:`training.categories` for how values match)."""
        counts: dict[str, int] = {}
        for row in rows:
            for feature in self.scorer.unknown_in_row(row):
                counts[feature] = counts.get(feature, 0) + 1
        return counts


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
        require_approval: Load only versions the gate approved (default: for every alias but
            ``candidate``); False for tools that evaluate a given version (``registry validate``).
        scope: The approval scope served (``platform``: approved by a validator of no tenant).
    """

    def __init__(self, tracking_uri: str, name: str, alias: str = "production", *,
                 require_approval: bool | None = None, scope: str = PLATFORM_SCOPE) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.require_approval = alias != CANDIDATE_ALIAS if require_approval is None else require_approval
        self.scope = scope
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def current_version(self) -> str:
        """The version the alias points at now.

        Raises:
            ModelNotReadyError: the model or the alias does not exist.
        """
        return self.current_marker()[0]

    def current_marker(self) -> tuple[str, str]:
        """The version the alias points at and its approval tag: a refused version is tried
        again only once its approval changes (a validator approved it after all).

        Raises:
            ModelNotReadyError: the model or the alias does not exist.
        """
        try:
            mv = self.client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException as err:
            raise ModelNotReadyError(f"no version of model {self.name!r} has the alias {self.alias!r}") from err
        return str(mv.version), dict(mv.tags or {}).get(APPROVAL_TAG, "")

    def load(self, version: str) -> LoadedModel:
        """Download one version's artifacts and build its scorer.

        Raises:
            UnapprovedVersion: approval required and the version has no valid one.
            ModelNotReadyError: the version is missing or is not a BioVerse risk model package.
        """
        return self._load(version, vision=False)

    def load_vision(self, version: str) -> LoadedVisionModel:
        """Download one image classifier version and load it on this process's device.

        Raises:
            ModelNotReadyError: the version is missing or is not a BioVerse image classifier.
        """
        return self._load(version, vision=True)

    def check_approval(self, version: str, local: Path) -> None:
        """Raise :class:`UnapprovedVersion` unless the files in ``local`` are the approved version."""
        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException as err:
            raise ModelNotReadyError(f"{self.name} version {version} cannot be served: {err.message}") from err
        problem = approval_problem(dict(mv.tags), self.name, str(version), source=str(mv.source),
                                   digest=artifact_digest(local), scope=self.scope)
        if problem is not None:
            log.error("REFUSED %s@%s -> version %s: %s (production alias without approval; moved outside the "
                      "review gate?)", self.name, self.alias, version, problem)
            raise UnapprovedVersion(f"{self.name}@{self.alias} points at version {version}, which serving refuses: "
                                    f"{problem} (production alias without approval)")

    def check_servable(self, version: str) -> None:
        """Download ``version`` and check its approval (when required) without loading it: a
        start-up check, so that a refusal is one line there rather than in every replica.

        Raises:
            UnapprovedVersion: approval required and the version has no valid one.
            ModelNotReadyError: the version cannot be downloaded.
        """
        if self.require_approval:
            with tempfile.TemporaryDirectory(prefix="bioverse-model-") as tmp:
                self.check_approval(str(version), self._download(version, Path(tmp)))

    def _download(self, version: str, dst: Path) -> Path:
        try:
            return download_version(self.tracking_uri, self.name, str(version), dst)
        except (MlflowException, OSError) as err:
            raise ModelNotReadyError(f"{self.name} version {version} cannot be served: {err}") from err

    def _load(self, version: str, *, vision: bool) -> Any:
        with tempfile.TemporaryDirectory(prefix="bioverse-model-") as tmp:
            local = self._download(version, Path(tmp))
            if self.require_approval:
                self.check_approval(str(version), local)
            try:
                if vision:
                    from training.imaging.scoring import VisionScorer

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
    A failed load keeps the current version serving; so does a version without a valid approval
    (:class:`UnapprovedVersion`, logged once per version at ERROR).
    """

    def __init__(self, source: RegistryModel, *, vision: bool, poll_seconds: float = 5.0) -> None:
        self.source = source
        self.vision = vision
        self.poll_seconds = poll_seconds
        self.model: M = self._load(source.current_version())
        self._stop = threading.Event()
        self._refused: tuple[str, str] | None = None  # (version, its approval tag) serving refused
        threading.Thread(target=self._follow, name="follow-alias", daemon=True).start()

    def _load(self, version: str) -> M:
        return self.source.load_vision(version) if self.vision else self.source.load(version)  # type: ignore[return-value]

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                marker = self.source.current_marker()
                if marker[0] != self.model.version and marker != self._refused:
                    self._refused = marker  # until the load succeeds: logged once, not downloaded every poll
                    self.model = self._load(marker[0])  # the swap: one reference assignment
                    self._refused = None
            except UnapprovedVersion:
                pass  # logged loudly by the source; keep serving the current version
            except Exception:  # noqa: BLE001 - keep serving the current version
                log.exception("could not follow %s@%s", self.source.name, self.source.alias)

    def stop(self) -> None:
        """Stop following (the current version stays loaded)."""
        self._stop.set()
