"""An image classifier packaged for the registry: its files, the MLflow pyfunc that scores them, signature and example."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Schema

from training.artifacts import MODEL_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE
from training.decision import Decision
from training.imaging.preprocessing import ImagePreprocessor
from training.imaging.vision import VisionModel
from training.packaging import PackagedModel, save_decision

__all__ = ["VisionModelPackage", "package_vision_model", "save_vision_package_files", "vision_example",
           "vision_signature"]


def save_vision_package_files(directory: Path, model: VisionModel, preprocessor: ImagePreprocessor, kind: str,
                              hparams: dict[str, Any], decision: Decision | None = None) -> dict[str, str]:
    """Write the artifacts a :class:`VisionModelPackage` loads (with ``decision.json`` when
    given); returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = save_decision(directory, decision)
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


def vision_signature(preprocessor: ImagePreprocessor) -> ModelSignature:
    """PNG or JPEG bytes in (column ``image``); the predicted label and one probability per class out."""
    outputs = [ColSpec(DataType.string, "label")] + [ColSpec(DataType.double, f"p_{c}") for c in preprocessor.classes]
    return ModelSignature(inputs=Schema([ColSpec(DataType.binary, "image")]), outputs=Schema(outputs))


def vision_example(preprocessor: ImagePreprocessor) -> pd.DataFrame:
    """A made-up input example: a mid-grey PNG of the model's size, never a patient's image."""
    from PIL import Image

    buffer = io.BytesIO()
    mode = "L" if preprocessor.channels == 1 else "RGB"
    Image.new(mode, (preprocessor.size, preprocessor.size), color=128 if mode == "L" else (128, 128, 128)).save(buffer, "PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def package_vision_model(directory: Path, model: VisionModel, preprocessor: ImagePreprocessor, kind: str,
                         hparams: dict[str, Any], decision: Decision | None = None) -> PackagedModel:
    """The image model's package files written into ``directory``, with its pyfunc, signature and example."""
    artifacts = save_vision_package_files(directory, model, preprocessor, kind, hparams, decision=decision)
    return PackagedModel(artifacts, VisionModelPackage(), vision_signature(preprocessor), vision_example(preprocessor))
