"""A risk model packaged for the registry: its files, the MLflow pyfunc that scores them, signature and example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Schema

from training.artifacts import ARRAYS_FILE, DECISION_FILE, ENCODER_FILE, MODEL_FILE, WEIGHTS_FILE
from training.decision import Decision
from training.packaging import PackagedModel, save_decision
from training.tabular.models import RiskModel, build_model
from training.tabular.preprocessing import FeatureEncoder

__all__ = ["RiskModelPackage", "example_input", "model_signature", "package_risk_model", "save_package_files"]


def save_package_files(directory: Path, model: RiskModel, encoder: FeatureEncoder, kind: str, hparams: dict[str, Any],
                       decision: Decision | None = None) -> dict[str, str]:
    """Write the artifacts a :class:`RiskModelPackage` loads (with ``decision.json``, the
    served threshold, when given); returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = save_decision(directory, decision)
    (directory / ENCODER_FILE).write_text(encoder.to_json())
    (directory / MODEL_FILE).write_text(json.dumps({"kind": kind, "input_dim": encoder.input_dim, "hparams": hparams}))
    state = model.state_dict()
    torch.save(state, directory / WEIGHTS_FILE)
    np.savez(directory / ARRAYS_FILE, **{k: v.detach().cpu().numpy() for k, v in state.items()})
    return {name: str(directory / name) for name in (ENCODER_FILE, WEIGHTS_FILE, ARRAYS_FILE, MODEL_FILE, *extra)}


class RiskModelPackage(mlflow.pyfunc.PythonModel):
    """Raw patient features in (a DataFrame of the contract's feature columns), risk out.

    The encoder built by the federation travels with the weights, so a caller never
    re-implements standardisation or one-hot encoding.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the encoder and weights from the model's artifacts."""
        artifacts = context.artifacts
        self.encoder = FeatureEncoder.from_json(Path(artifacts[ENCODER_FILE]).read_text())
        meta = json.loads(Path(artifacts[MODEL_FILE]).read_text())
        self.model = build_model(meta["kind"], meta["input_dim"], **meta["hparams"])
        self.model.load_state_dict(torch.load(artifacts[WEIGHTS_FILE], weights_only=True))
        self.model.eval()
        path = artifacts.get(DECISION_FILE)
        self.decision = Decision.from_json(Path(path).read_text()) if path else Decision.default()

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Risk of the outcome for each row, and the decision at the package's threshold."""
        x = torch.from_numpy(self.encoder.encode(model_input))
        risk = self.model.predict_proba(x).numpy().astype(float)
        return pd.DataFrame({"risk": risk, "decision": self.decision.decide(risk)})


def example_input(encoder: FeatureEncoder, rows: int = 2) -> pd.DataFrame:
    """A made-up input example built from federation statistics, never a real patient."""
    data: dict[str, list[Any]] = {}
    for column, mean, std in zip(encoder.numeric, encoder.means, encoder.stds, strict=True):
        data[column] = [round(mean + k * std / 2, 2) for k in range(rows)]
    for column, values in zip(encoder.categorical, encoder.vocabulary, strict=True):
        data[column] = [values[k % len(values)] if values else None for k in range(rows)]
    return pd.DataFrame(data)


def model_signature(encoder: FeatureEncoder) -> ModelSignature:
    """Raw features in (numeric as double, categorical as string, all optional: missing
    values are part of the data contract), one ``risk`` probability and the ``decision`` at
    the version's threshold out."""
    inputs = [ColSpec(DataType.double, c, required=False) for c in encoder.numeric]
    inputs += [ColSpec(DataType.string, c, required=False) for c in encoder.categorical]
    return ModelSignature(inputs=Schema(inputs),
                          outputs=Schema([ColSpec(DataType.double, "risk"), ColSpec(DataType.boolean, "decision")]))


def package_risk_model(directory: Path, model: RiskModel, encoder: FeatureEncoder, kind: str, hparams: dict[str, Any],
                       decision: Decision | None = None) -> PackagedModel:
    """The risk model's package files written into ``directory``, with its pyfunc, signature and example."""
    artifacts = save_package_files(directory, model, encoder, kind, hparams, decision=decision)
    return PackagedModel(artifacts, RiskModelPackage(), model_signature(encoder), example_input(encoder))
