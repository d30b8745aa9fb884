"""Fused DP-SGD computes exactly Opacus's clipped gradients, and adds calibrated noise."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from training.errors import PrivacyConfigError
from training.tabular.fused_dp import FusedDPSGD
from training.tabular.models import LogisticRiskModel, MLPRiskModel


def _opacus_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> list[torch.Tensor]:
    """Per-sample gradients from Opacus's hooks, clipped as Opacus's DPOptimizer clips them."""
    gsm = GradSampleModule(model, loss_reduction="sum")
    loss = nn.BCEWithLogitsLoss(reduction="sum")(gsm(x).view(-1), y)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    per_sample = [p.grad_sample.reshape(len(x), -1) for p in params]
    norms = torch.stack([g.norm(2, dim=1) for g in per_sample], dim=1).norm(2, dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    sums = [torch.einsum("i,i...->...", factor, p.grad_sample) for p in params]
    gsm._close()
    return sums


@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])
@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_clipped_gradients_match_opacus(kind: str, clip: float) -> None:
    torch.manual_seed(0)
    model = LogisticRiskModel(12) if kind == "logistic" else MLPRiskModel(12, hidden=(16, 8), dropout=0.0)
    x, y = torch.randn(37, 12), (torch.rand(37) > 0.5).float()
    expected = _opacus_clipped_sum(model, x, y, clip)
    for p in model.parameters():
        p.grad = None
    engine = FusedDPSGD(model, noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1.0)
    per_sample = nn.BCEWithLogitsLoss(reduction="none")(model(x), y)
    engine.privatise(per_sample)
    engine.close()
    got = [p.grad for p in model.parameters()]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4)


def test_noise_has_the_dp_sgd_scale_and_empty_batches_are_noise_only() -> None:
    model = LogisticRiskModel(200)
    engine = FusedDPSGD(model, noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=10.0,
                        generator=torch.Generator().manual_seed(1))
    engine.privatise(None)  # an empty Poisson batch
    weight_grad = model.net.weight.grad
    assert weight_grad is not None and weight_grad.shape == (1, 200)
    assert weight_grad.std().item() == pytest.approx(2.0 * 0.5 / 10.0, rel=0.15)


def test_models_with_other_parameters_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    with pytest.raises(PrivacyConfigError, match="Linear layers only"):
        FusedDPSGD(model, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=8)
