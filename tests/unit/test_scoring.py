"""The NumPy scorer gives exactly what the torch model and the pandas encoder give."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training.errors import ScoringInputError
from training.tabular.contract import DataContract
from training.tabular.models import build_model
from training.tabular.package import save_package_files
from training.tabular.preprocessing import FeatureEncoder, local_statistics
from training.tabular.scoring import RiskScorer
from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID

CONTRACT = DataContract(PATIENT_ID, LABEL, FEATURES_NUMERIC, FEATURES_CATEGORICAL)


def _messy(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing numbers, missing categories and a category the federation never saw."""
    frame = frame.copy()
    frame.loc[frame.index[::7], FEATURES_NUMERIC[0]] = np.nan
    frame.loc[frame.index[::5], FEATURES_CATEGORICAL[0]] = None
    frame.loc[frame.index[1::9], FEATURES_CATEGORICAL[-1]] = "never-seen"
    return frame


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_scorer_equals_torch_model(hospital_files: list[Path], tmp_path: Path, kind: str) -> None:
    frame = pd.read_csv(hospital_files[0])
    encoder = FeatureEncoder.from_statistics(local_statistics(frame, CONTRACT), CONTRACT)
    torch.manual_seed(0)
    model = build_model(kind, encoder.input_dim).eval()
    save_package_files(tmp_path, model, encoder, kind, {})
    scorer = RiskScorer.from_files(tmp_path)

    test = _messy(frame[list(encoder.numeric + encoder.categorical)])
    expected = model.predict_proba(torch.from_numpy(encoder.encode(test))).numpy()
    np.testing.assert_allclose(scorer.encode_columns(test), encoder.encode(test), atol=0)
    np.testing.assert_allclose(scorer.score_columns(test), expected, atol=1e-6)

    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in test.to_dict(orient="records")]
    np.testing.assert_allclose(scorer.score_rows(rows), expected, atol=1e-6)
    np.testing.assert_allclose([scorer.score_one(r) for r in rows], expected, atol=1e-6)  # the API's one-row path
    partial = [{FEATURES_NUMERIC[1]: 1.0}]  # everything else missing
    partial_frame = pd.DataFrame([{c: partial[0].get(c) for c in scorer.features}])
    np.testing.assert_allclose(scorer.encode_rows(partial), encoder.encode(partial_frame))


def test_scorer_refuses_bad_rows(hospital_files: list[Path], tmp_path: Path) -> None:
    frame = pd.read_csv(hospital_files[0])
    encoder = FeatureEncoder.from_statistics(local_statistics(frame, CONTRACT), CONTRACT)
    save_package_files(tmp_path, build_model("logistic", encoder.input_dim), encoder, "logistic", {})
    scorer = RiskScorer.from_files(tmp_path)
    with pytest.raises(ScoringInputError, match="not a feature"):
        scorer.score_rows([{"shoe_size": 42}])
    with pytest.raises(ScoringInputError, match=f"{FEATURES_NUMERIC[0]}: expected a number"):
        scorer.score_rows([{FEATURES_NUMERIC[0]: "high"}])
    with pytest.raises(ScoringInputError, match=f"{FEATURES_NUMERIC[0]}: expected a number"):
        scorer.score_rows([{FEATURES_NUMERIC[0]: True}])
    with pytest.raises(ScoringInputError, match="column missing"):
        scorer.score_columns({FEATURES_NUMERIC[0]: [1.0]})
    with pytest.raises(ValueError, match="no NumPy scorer"):
        RiskScorer.from_state_dict(encoder, "transformer", {})
