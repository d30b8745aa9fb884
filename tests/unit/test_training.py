"""Models, federated preprocessing, DP-SGD accounting and local training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from training.dp_loop import sample_rate, steps_per_epoch
from training.errors import PrivacyConfigError
from training.metrics import risk_metrics
from training.privacy import DPConfig, epsilon_after, noise_for_budget
from training.tabular.contract import DataContract
from training.tabular.data import HospitalDataModule, TabularDataset
from training.tabular.local import evaluate_model, train_locally
from training.tabular.models import LogisticRiskModel, MLPRiskModel, build_model
from training.tabular.preprocessing import MIN_CATEGORY_COUNT, FeatureEncoder, local_statistics, merge_statistics
from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID

CONTRACT = DataContract(PATIENT_ID, LABEL, FEATURES_NUMERIC, FEATURES_CATEGORICAL)


def _separable(n: int = 2000, d: int = 8, seed: int = 0) -> TabularDataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return TabularDataset(x, y)


def test_models_give_one_logit_per_patient() -> None:
    x = torch.randn(5, 7)
    assert build_model("logistic", 7)(x).shape == (5,)
    mlp = build_model("mlp", 7, hidden=[16, 8], dropout=0.0)
    assert isinstance(mlp, MLPRiskModel) and mlp(x).shape == (5,)
    assert torch.all((mlp.predict_proba(x) > 0) & (mlp.predict_proba(x) < 1))
    with pytest.raises(ValueError, match="unknown model kind 'cnn'"):
        build_model("cnn", 7)


def test_a_model_must_say_how_its_logits_become_probabilities() -> None:
    from training.classifier import ClassifierModule

    class NoProbabilities(ClassifierModule):
        """Forgets :meth:`ClassifierModule.probabilities`."""

    with pytest.raises(TypeError, match="abstract"):
        NoProbabilities()


def test_merged_statistics_equal_pooled_statistics(hospitals_dir: Path) -> None:
    frames = [pd.read_csv(p) for p in sorted(hospitals_dir.glob("hospital-*.csv"))]
    merged = merge_statistics([local_statistics(f, CONTRACT) for f in frames])
    pooled = local_statistics(pd.concat(frames), CONTRACT)
    assert merged["n"] == pooled["n"]
    for column in FEATURES_NUMERIC:
        assert merged["numeric"][column]["sum"] == pytest.approx(pooled["numeric"][column]["sum"])
    assert merged["categorical"] == pooled["categorical"]
    encoder = FeatureEncoder.from_statistics(merged, CONTRACT)
    pooled_age = pd.concat(frames)["age"]
    assert encoder.means[0] == pytest.approx(pooled_age.mean())
    assert encoder.stds[0] == pytest.approx(pooled_age.std(ddof=0))


def test_encoder_handles_missing_unseen_and_rare_values() -> None:
    contract = DataContract("id", "y", ("a",), ("c",))
    stats = {"n": 20, "numeric": {"a": {"count": 4, "sum": 8.0, "sumsq": 20.0}},
             "categorical": {"c": {"x": 10, "rare": MIN_CATEGORY_COUNT - 1}}}
    encoder = FeatureEncoder.from_statistics(stats, contract)
    assert encoder.vocabulary == (("x",),)
    frame = pd.DataFrame({"a": [2.0, None, 4.0], "c": ["x", None, "rare"]})
    matrix = encoder.encode(frame)
    assert matrix.shape == (3, encoder.input_dim) == (3, len(encoder.feature_names))
    names = encoder.feature_names
    assert matrix[1, names.index("a")] == 0 and matrix[1, names.index("a__missing")] == 1
    assert matrix[0, names.index("c=x")] == 1 and matrix[1, names.index("c__missing")] == 1
    assert matrix[2, names.index("c__other")] == 1
    assert FeatureEncoder.from_json(encoder.to_json()) == encoder


def test_noise_is_calibrated_to_the_target_epsilon() -> None:
    q, steps = 0.05, 200
    noise = noise_for_budget(target_epsilon=2.0, delta=1e-5, sample_rate=q, steps=steps)
    spent = epsilon_after(noise_multiplier=noise, sample_rate=q, steps=steps, delta=1e-5)
    assert 1.9 < spent <= 2.0 + 0.02
    assert epsilon_after(noise_multiplier=noise, sample_rate=q, steps=steps // 2, delta=1e-5) < spent
    assert epsilon_after(noise_multiplier=noise, sample_rate=q, steps=0, delta=1e-5) == 0.0


def test_dp_config_rejects_impossible_settings() -> None:
    with pytest.raises(PrivacyConfigError, match="exactly one"):
        DPConfig(target_epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(PrivacyConfigError, match="grad_sample_mode"):
        DPConfig(grad_sample_mode="ew")
    assert DPConfig(enabled=False, target_epsilon=None).enabled is False


@pytest.mark.parametrize("mode", ["fused", "hooks", "ghost", "functorch"])
def test_dp_training_learns_and_takes_poisson_steps(mode: str) -> None:
    torch.manual_seed(0)
    data = _separable()
    model = LogisticRiskModel(8, lr=0.1)
    before = evaluate_model(model, data)["log_loss"]
    result = train_locally(model, data, epochs=3, batch_size=100, dp=DPConfig(grad_sample_mode=mode), noise_multiplier=0.8)
    assert result.steps == 3 * steps_per_epoch(len(data), 100) == 60
    after = evaluate_model(model, data)
    assert after["log_loss"] < before and after["auroc"] > 0.85
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_clipping_bounds_each_patient_influence() -> None:
    """With no noise and a tiny clipping bound, one step moves weights at most lr * C (SGD)."""
    data = _separable(n=200)
    model = LogisticRiskModel(8, lr=1.0, optimizer="sgd")
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    dp = DPConfig(target_epsilon=None, noise_multiplier=1e-9, max_grad_norm=0.01)
    train_locally(model, data, epochs=1, batch_size=200, dp=dp, noise_multiplier=1e-9)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
    # 1 step at q=1 (momentum 0.9 adds at most a geometric factor over 1 step: none)
    assert moved.norm() <= 0.01 * 1.0 + 1e-6


def test_fedprox_pull_keeps_weights_closer_to_the_global_model() -> None:
    data = _separable()
    free, pulled = LogisticRiskModel(8, lr=0.05), LogisticRiskModel(8, lr=0.05)
    pulled.load_state_dict(free.state_dict())
    start = torch.cat([p.detach().flatten().clone() for p in free.parameters()])
    train_locally(free, data, epochs=2, batch_size=50, dp=None, seed=3)
    train_locally(pulled, data, epochs=2, batch_size=50, dp=None, proximal_mu=5.0, seed=3)
    dist = lambda m: (torch.cat([p.detach().flatten() for p in m.parameters()]) - start).norm()  # noqa: E731
    assert dist(pulled) < dist(free)


def test_datamodule_trains_with_lightning(hospitals_dir: Path) -> None:
    dm = HospitalDataModule(hospitals_dir / "hospital-01.csv", CONTRACT, batch_size=64, seed=1)
    stats = dm.statistics()
    dm.encoder = FeatureEncoder.from_statistics(stats, CONTRACT)
    assert len(dm.split.train) + len(dm.split.test) == stats["n"] + len(dm.split.test)
    model = MLPRiskModel(dm.encoder.input_dim)
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (64, dm.encoder.input_dim)


def test_risk_metrics_match_definitions() -> None:
    y = np.array([0, 0, 1, 1])
    m = risk_metrics(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["auroc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((np.array([0.1, 0.4, 0.35, 0.8]) - y) ** 2))
    assert math.isnan(risk_metrics(np.array([1, 1]), np.array([0.2, 0.9]))["auroc"])
    assert sample_rate(1000, 64) == 0.064 and steps_per_epoch(1000, 64) == 15


def test_poisson_batches_include_each_row_independently_with_probability_q() -> None:
    from training.dp_loop import poisson_batches

    rng = np.random.default_rng(0)
    n, q, steps = 500, 0.04, 4000
    batches = poisson_batches(n, q, steps, rng)
    counts = np.zeros(n)
    sizes = []
    for idx in batches:
        assert torch.all(idx[1:] > idx[:-1]) and (len(idx) == 0 or (idx[0] >= 0 and idx[-1] < n))
        counts[idx.numpy()] += 1
        sizes.append(len(idx))
    assert counts.mean() / steps == pytest.approx(q, rel=0.02)  # each row's inclusion rate
    assert np.std(counts / steps) < 0.01  # ... the same for every row, first and last included
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.1)  # binomial batch sizes
    assert all(len(b) == 10 for b in poisson_batches(10, 1.0, 3, rng))


def test_integer_order_accounting_agrees_with_opacus_default_accountant() -> None:
    from opacus.accountants import RDPAccountant

    for noise, q, steps in [(0.8, 0.01, 1000), (1.2, 0.04, 250), (3.0, 0.2, 50)]:
        reference = RDPAccountant()
        reference.history = [(noise, q, steps)]
        ours = epsilon_after(noise_multiplier=noise, sample_rate=q, steps=steps, delta=1e-5)
        assert ours >= reference.get_epsilon(1e-5) - 1e-9  # never optimistic
        assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=0.02)
