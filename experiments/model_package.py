"""The registered model: a risk model and its feature encoder as one MLflow pyfunc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from training.models import RiskModel, build_model
from training.preprocessing import FeatureEncoder

__all__ = ["RiskModelPackage", "save_package_files"]

ENCODER_FILE = "encoder.json"
WEIGHTS_FILE = "weights.pt"
ARRAYS_FILE = "weights.npz"  # the same weights as NumPy arrays: scoring needs no PyTorch
MODEL_FILE = "model.json"


def save_package_files(directory: Path, model: RiskModel, encoder: FeatureEncoder, kind: str, hparams: dict[str, Any]) -> dict[str, str]:
    """Write the artifacts a :class:`RiskModelPackage` loads; returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ENCODER_FILE).write_text(encoder.to_json())
    (directory / MODEL_FILE).write_text(json.dumps({"kind": kind, "input_dim": encoder.input_dim, "hparams": hparams}))
    state = model.state_dict()
    torch.save(state, directory / WEIGHTS_FILE)
    np.savez(directory / ARRAYS_FILE, **{k: v.detach().cpu().numpy() for k, v in state.items()})
    return {name: str(directory / name) for name in (ENCODER_FILE, WEIGHTS_FILE, ARRAYS_FILE, MODEL_FILE)}


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

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Risk of the outcome for each row."""
        x = torch.from_numpy(self.encoder.encode(model_input))
        return pd.DataFrame({"risk": self.model.predict_proba(x).numpy().astype(float)})
