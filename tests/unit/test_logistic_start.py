"""A logistic model starts from zero (issue 11 item 7): small sites taking a few steps per
round reach the pooled model's ranking instead of a random start's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from training.tabular.contract import DataContract, load_hospital_table
from training.tabular.data import TabularDataset
from training.tabular.local import train_locally
from training.tabular.models import build_model
from training.tabular.preprocessing import FeatureEncoder, local_statistics, merge_statistics
from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID, synthesize_hospitals

CONTRACT = DataContract(PATIENT_ID, LABEL, FEATURES_NUMERIC, FEATURES_CATEGORICAL)


def test_a_logistic_model_starts_at_risk_one_half_for_everyone() -> None:
    model = build_model("logistic", 7)
    assert torch.count_nonzero(model.net.weight) == 0 and float(model.net.bias) == 0.0
    assert torch.allclose(model.predict_proba(torch.randn(5, 7)), torch.full((5,), 0.5))


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [h.path for h in synthesize_hospitals(n_hospitals=4, n_patients=720, seed=12, out_dir=tmp_path_factory.mktemp("s"))]


@pytest.mark.parametrize("torch_seed", [0, 1, 2, 3])
def test_five_fedavg_rounds_on_small_sites_come_close_to_the_pooled_model(sites: list[Path], torch_seed: int) -> None:
    """Four sites of ~110 training patients, 5 rounds of 1 local epoch (2 Adam steps): the
    spec's defaults. From a random start this scored up to 0.08 AUROC below pooled, by luck of the draw."""
    torch.manual_seed(torch_seed)
    frames = [load_hospital_table(path, CONTRACT) for path in sites]
    train = [f.iloc[: int(len(f) * 0.8)] for f in frames]
    test = pd.concat([f.iloc[int(len(f) * 0.8):] for f in frames])
    encoder = FeatureEncoder.from_statistics(merge_statistics([local_statistics(t, CONTRACT) for t in train]), CONTRACT)
    data = [TabularDataset(encoder.encode(t), t[LABEL].to_numpy()) for t in train]
    global_model = build_model("logistic", encoder.input_dim, lr=0.01)
    for server_round in range(5):
        states, weights = [], []
        for i, d in enumerate(data):
            local = build_model("logistic", encoder.input_dim, lr=0.01)
            local.load_state_dict(global_model.state_dict())
            train_locally(local, d, epochs=1, batch_size=64, dp=None, seed=server_round * 10 + i)
            states.append(local.state_dict())
            weights.append(len(d))
        global_model.load_state_dict({k: sum(s[k] * w for s, w in zip(states, weights)) / sum(weights) for k in states[0]})
    y = test[LABEL].to_numpy(int)
    federated = roc_auc_score(y, global_model.predict_proba(torch.from_numpy(encoder.encode(test))).numpy())
    pooled_rows = pd.concat(train)
    pooled = LogisticRegression(max_iter=2000).fit(encoder.encode(pooled_rows), pooled_rows[LABEL].to_numpy(int))
    reference = roc_auc_score(y, pooled.predict_proba(encoder.encode(test))[:, 1])
    assert federated > reference - 0.02, (federated, reference)
    assert np.isfinite(federated)
