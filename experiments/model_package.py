"""The registered model as one MLflow pyfunc: a risk model with its feature encoder, or an
image classifier with its preprocessor (size, channels, normalisation, classes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from training.decision import DECISION_FILE, Decision
from training.imaging.preprocessing import ImagePreprocessor
from training.tabular.models import RiskModel, build_model
from training.tabular.preprocessing import FeatureEncoder
from training.imaging.vision import VisionModel

__all__ = ["RiskModelPackage", "VisionModelPackage", "save_package_files", "save_vision_package_files"]

ENCODER_FILE = "encoder.json"
PREPROCESSOR_FILE = "preprocessor.json"
WEIGHTS_FILE = "weights.pt"
ARRAYS_FILE = "weights.npz"  # the same weights as NumPy arrays: scoring needs no PyTorch
MODEL_FILE = "model.json"


def _save_decision(directory: Path, decision: Decision | None) -> list[str]:
    if decision is None:
        return []
    (directory / DECISION_FILE).write_text(decision.to_json())
    return [DECISION_FILE]


def save_package_files(directory: Path, model: RiskModel, encoder: FeatureEncoder, kind: str, hparams: dict[str, Any],
                       decision: Decision | None = None) -> dict[str, str]:
    """Write the artifacts a :class:`RiskModelPackage` loads (with ``decision.json``, the
    served threshold, when given); returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = _save_decision(directory, decision)
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

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Risk of the outcome for each row, and the decision at the package's threshold."""
        x = torch.from_numpy(self.encoder.encode(model_input))
        risk = self.model.predict_proba(x).numpy().astype(float)
        return pd.DataFrame({"risk": risk, "decision": self.decision.decide(risk)})


def save_vision_package_files(directory: Path, model: VisionModel, preprocessor: ImagePreprocessor, kind: str,
                              hparams: dict[str, Any], decision: Decision | None = None) -> dict[str, str]:
    """Write the artifacts a :class:`VisionModelPackage` loads (with ``decision.json`` when
    given); returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = _save_decision(directory, decision)
    (directory / PREPROCESSOR_FILE).write_text(preprocessor.to_json())
    meta = {"modality": "images", "kind": kind, "in_channels": preprocessor.channels,
            "num_classes": preprocessor.num_classes, "hparams": hparams}
    (directory / MODEL_FILE).write_text(json.dumps(meta))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, directory / WEIGHTS_FILE)
    return {name: str(directory / name) for name in (PREPROCESSOR_FILE, WEIGHTS_FILE, MODEL_FILE, *extra)}


class VisionModelPackage(mlflow.pyfunc.PythonModel):
    """Images in (a DataFrame with an ``image`` column of PNG or JPEG bytes), one column
    of probability per class and the predicted ``label`` out.

    The preprocessor the federation agreed on (size, channels, normalisation, class
    names) travels with the weights, as the encoder does for risk models.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the preprocessor and the network from the model's artifacts."""
        from training.imaging.scoring import VisionScorer

        self.scorer = VisionScorer.from_files(Path(context.artifacts[MODEL_FILE]).parent)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Class probabilities and the decided class (the package's decision rule) for each image."""
        images = [bytes(b) for b in model_input["image"]]
        probs = self.scorer.predict_bytes(images)
        classes = self.scorer.classes
        frame = pd.DataFrame({f"p_{c}": probs[:, k].astype(float) for k, c in enumerate(classes)})
        frame.insert(0, "label", [classes[int(k)] for k in self.scorer.decision.labels(probs)])
        return frame
