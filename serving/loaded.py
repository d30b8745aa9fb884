"""A registered model version loaded for scoring: the served kinds, and the one place a package's modality is read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from serving.errors import PredictionInputError
from training.artifacts import ENCODER_FILE, MODEL_FILE
from training.errors import ScoringInputError
from training.tabular.scoring import RiskScorer

if TYPE_CHECKING:
    from training.imaging.scoring import VisionScorer

__all__ = ["SERVED_KINDS", "LoadedModel", "LoadedPackage", "LoadedVisionModel", "ServedModel", "load_package",
           "package_folder", "package_modality"]


@dataclass(frozen=True)
class LoadedPackage:
    """One registered version of any modality: the scorer its modality's ``load_scorer`` built.

    Attributes:
        modality: The ``model.json`` modality a served kind (a subclass) holds; the API and
            the Serve deployments serve one kind each.
    """

    name: str
    version: str
    scorer: Any

    modality: ClassVar[str] = ""


@dataclass(frozen=True)
class LoadedModel(LoadedPackage):
    """One registered risk model version, ready to score raw feature rows.

    Scoring goes through :class:`RiskScorer` (the encoder and weights as NumPy arrays),
    not the MLflow pyfunc wrapper: the same numbers (tested), at a few microseconds per
    row and without importing the training stack into serving processes.
    """

    scorer: RiskScorer

    modality: ClassVar[str] = "tabular"

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
class LoadedVisionModel(LoadedPackage):
    """One registered image classifier version, on the device this process sees."""

    scorer: VisionScorer

    modality: ClassVar[str] = "images"


#: The kinds a version loads as, by its package's modality (any other: :class:`LoadedPackage`).
SERVED_KINDS: tuple[type[LoadedPackage], ...] = (LoadedModel, LoadedVisionModel)
#: What a registered version loads as.
ServedModel = LoadedModel | LoadedVisionModel | LoadedPackage
M = TypeVar("M", LoadedModel, LoadedVisionModel)


def package_folder(local: Path) -> Path:
    """The folder of a downloaded version's own files: where its ``MLmodel`` lists them
    (the pyfunc flavour's artifacts), else ``artifacts/``."""
    import yaml

    meta = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").exists() else {}
    listed = (meta.get("flavors", {}).get("python_function", {}).get("artifacts") or {})
    entry = listed.get(MODEL_FILE) or listed.get(ENCODER_FILE)
    return (local / entry["path"]).parent if entry and entry.get("path") else local / "artifacts"


def package_modality(folder: Path) -> str:
    """What kind of model the package in ``folder`` says it is (``model.json``'s ``modality``;
    ``tabular`` for packages without one)."""
    path = folder / MODEL_FILE
    meta = json.loads(path.read_text()) if path.exists() else {}
    return str(meta.get("modality", "tabular")) if isinstance(meta, dict) else "tabular"


def load_package(name: str, version: str, folder: Path) -> ServedModel:
    """Build the scorer the package in ``folder`` calls for, through its modality's
    ``load_scorer`` (a risk scorer, an image classifier on this process's device, ...).

    Raises:
        OSError, KeyError, ValueError, RuntimeError: the files are not a BioVerse model package
            (an unknown modality is a ``ValueError``).
    """
    from training.modality import get_modality

    modality = package_modality(folder)
    scorer = get_modality(modality).load_scorer(folder)
    kind = next((k for k in SERVED_KINDS if k.modality == modality), LoadedPackage)
    return kind(name, version, scorer)
