"""The model a registry alias points at, loaded from MLflow and swapped when the alias moves."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from serving.errors import ModelNotReadyError, PredictionInputError

__all__ = ["LoadedModel", "RegistryModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, ready to score raw feature rows."""

    name: str
    version: str
    model: Any  # mlflow.pyfunc.PyFuncModel
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def features(self) -> tuple[str, ...]:
        """The input columns the model's signature names."""
        return self.numeric + self.categorical

    def frame(self, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """Rows of raw features as the signature's typed frame (missing -> NaN / None)."""
        for row in rows:
            unknown = set(row) - set(self.features)
            if unknown:
                raise PredictionInputError(f"{sorted(unknown)[0]}: not a feature of {self.name} (expects {', '.join(self.features)})")
        data: dict[str, Any] = {}
        for column in self.numeric:
            values = []
            for row in rows:
                value = row.get(column)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise PredictionInputError(f"{column}: expected a number, got {value!r}")
                values.append(math.nan if value is None else float(value))
            data[column] = np.asarray(values, dtype=np.float64)
        for column in self.categorical:
            data[column] = pd.Series([None if row.get(column) is None else str(row[column]) for row in rows], dtype=object)
        return pd.DataFrame(data)

    def predict(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Risk for each row."""
        return self.model.predict(self.frame(rows))["risk"].to_numpy(dtype=float)


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
        """Load one version (its pyfunc and its input signature)."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{self.name}/{version}")
        schema = model.metadata.get_input_schema()
        numeric = tuple(c.name for c in schema.inputs if c.type.name in ("double", "float", "long", "integer"))
        categorical = tuple(c.name for c in schema.inputs if c.name not in numeric)
        log.info("loaded %s version %s", self.name, version)
        return LoadedModel(self.name, version, model, numeric, categorical)
