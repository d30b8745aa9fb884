"""Registration's packaged model through the modality: files named in training/artifacts.py, read back by load_scorer."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch

from training.artifacts import ARRAYS_FILE, DECISION_FILE, ENCODER_FILE, MODEL_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE
from training.decision import Decision
from training.imaging.preprocessing import ImagePreprocessor
from training.imaging.vision import SmallCNN
from training.modality import get_modality
from training.tabular.models import build_model
from training.tabular.preprocessing import FeatureEncoder


def test_a_risk_model_is_packaged_and_scored_back_by_the_tabular_modality(tmp_path: Path) -> None:
    modality = get_modality("tabular")
    encoder = FeatureEncoder(("a",), (), (0.0,), (1.0,), ())
    torch.manual_seed(0)
    package = modality.package_model(tmp_path, build_model("logistic", encoder.input_dim), encoder, "logistic", {},
                                     Decision(rule="fixed", threshold=0.3))
    assert set(package.artifacts) == {ENCODER_FILE, WEIGHTS_FILE, ARRAYS_FILE, MODEL_FILE, DECISION_FILE}
    assert isinstance(package.python_model, mlflow.pyfunc.PythonModel)
    assert list(package.example.columns) == ["a"] and [c.name for c in package.signature.inputs] == ["a"]
    assert "modality" not in json.loads((tmp_path / MODEL_FILE).read_text())  # a risk package, as before
    scorer = modality.load_scorer(tmp_path)
    assert scorer.threshold == 0.3 and scorer.score_columns(package.example).shape == (2,)


def test_an_image_model_is_packaged_and_scored_back_by_the_imaging_modality(tmp_path: Path) -> None:
    modality = get_modality("images")
    pre = ImagePreprocessor(size=8, channels=1, mean=(0.5,), std=(0.25,), classes=("normal", "finding"))
    torch.manual_seed(0)
    package = modality.package_model(tmp_path, SmallCNN(1, 2, width=4), pre, "cnn", {"width": 4})
    assert set(package.artifacts) == {PREPROCESSOR_FILE, WEIGHTS_FILE, MODEL_FILE}
    assert json.loads((tmp_path / MODEL_FILE).read_text())["modality"] == "images"
    assert [c.name for c in package.signature.outputs] == ["label", "p_normal", "p_finding"]
    scorer = modality.load_scorer(tmp_path)
    probs = scorer.predict(np.zeros((3, 1, 8, 8), dtype=np.uint8))
    assert scorer.classes == ("normal", "finding") and probs.shape == (3, 2)
