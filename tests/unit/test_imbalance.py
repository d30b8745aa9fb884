"""Class weights: resolved from counts, applied per sample in every training path (before
DP-SGD's clipping), shifting an imbalanced model away from the majority class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from training.imaging.local import train_vision_locally
from training.imaging.vision import SmallCNN
from training.imbalance import WeightedBCE, WeightedCrossEntropy, balanced_weights, resolve_class_weights
from training.privacy import DPConfig
from training.tabular.data import TabularDataset
from training.tabular.fused_dp import FusedDPSGD
from training.tabular.local import train_locally
from training.tabular.models import LogisticRiskModel


def test_balanced_weights_equalise_the_classes_and_average_one() -> None:
    w = balanced_weights([900, 100])
    assert w == pytest.approx([1000 / 1800, 1000 / 200])
    assert 900 * w[0] == pytest.approx(100 * w[1])
    assert (900 * w[0] + 100 * w[1]) / 1000 == pytest.approx(1.0)
    assert balanced_weights([50, -3.0])[1] == pytest.approx(51 / 2)  # noised-away class floored at 1


def test_resolve_class_weights() -> None:
    assert resolve_class_weights("none", ["0", "1"], [9, 1]) is None
    assert resolve_class_weights("balanced", ["0", "1"], [90, 10]) == pytest.approx([100 / 180, 100 / 20])
    assert resolve_class_weights({"b": 4.0}, ["a", "b", "c"], None) == [1.0, 4.0, 1.0]
    with pytest.raises(ValueError, match="class counts"):
        resolve_class_weights("balanced", ["0", "1"], None)
    with pytest.raises(ValueError, match="z is not a class"):
        resolve_class_weights({"z": 2.0}, ["a", "b"], None)


def test_weighted_losses_average_over_the_batch_size_not_the_weights() -> None:
    logits, y = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    plain = nn.BCEWithLogitsLoss(reduction="none")(logits, y)
    got = WeightedBCE([1.0, 5.0])(logits, y)
    assert got.item() == pytest.approx(((plain * torch.tensor([5.0, 1.0, 5.0])).sum() / 3).item())
    assert torch.allclose(WeightedBCE([1.0, 5.0], reduction="none")(logits, y), plain * torch.tensor([5.0, 1.0, 5.0]))
    assert WeightedBCE(None)(logits, y).item() == pytest.approx(plain.mean().item())
    z, t = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    ce = nn.CrossEntropyLoss(reduction="none")(z, t)
    assert WeightedCrossEntropy([1.0, 2.0, 3.0])(z, t).item() == pytest.approx((ce * torch.tensor([1.0, 3, 2, 3])).mean().item())


@pytest.mark.parametrize("clip", [0.01, 100.0])
def test_fused_dp_weights_each_patient_before_clipping(clip: float) -> None:
    """The clipped sum equals Opacus's per-sample gradients of the weighted loss, each clipped:
    a heavy patient's gradient is still bounded by the clipping norm (the DP guarantee)."""
    torch.manual_seed(0)
    model = LogisticRiskModel(6)
    x, y = torch.randn(20, 6), (torch.arange(20) % 5 == 0).float()
    weights = [1.0, 9.0]
    gsm = GradSampleModule(model, loss_reduction="sum")
    per = nn.BCEWithLogitsLoss(reduction="none")(gsm(x).view(-1), y) * torch.tensor(weights)[y.long()]
    per.sum().backward()
    grads = [p.grad_sample.reshape(len(x), -1) for p in model.parameters()]
    norms = torch.cat(grads, dim=1).norm(dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    expected = [torch.einsum("i,i...->...", factor, p.grad_sample) for p in model.parameters()]
    gsm._close()
    if clip < 1:
        assert torch.all(norms * factor <= clip * (1 + 1e-4))  # every patient bounded, weight 9 or not
    for p in model.parameters():
        p.grad = None
    engine = FusedDPSGD(model, noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1.0)
    engine.privatise(WeightedBCE(weights, reduction="none")(model(x), y))
    engine.close()
    for got, want in zip([p.grad for p in model.parameters()], expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def _imbalanced(n: int = 1200, seed: int = 0) -> TabularDataset:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(np.float32)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 0] += 1.0 * y  # a weak signal: unweighted, the model predicts the majority class
    return TabularDataset(x, y)


@pytest.mark.parametrize("mode", ["plain", "fused", "hooks"])
def test_every_tabular_path_applies_the_class_weights(mode: str) -> None:
    data = _imbalanced()
    dp = None if mode == "plain" else DPConfig(enabled=True, target_epsilon=None, noise_multiplier=1.0, max_grad_norm=10.0,
                                                 grad_sample_mode=mode)
    mean_risk = {}
    for name, weights in (("none", None), ("balanced", balanced_weights([1080, 120]))):
        torch.manual_seed(0)
        model = LogisticRiskModel(4, lr=0.05)
        train_locally(model, data, epochs=3, batch_size=64, dp=dp, noise_multiplier=0.0 if dp else None,
                      class_weights=weights)
        mean_risk[name] = float(model.predict_proba(data.x).mean())
    # DP paths draw their Poisson batches from an unpredictable seed, so the weighted mean risk
    # varies run to run (fused: 0.36-0.43 over 20 runs); the bounds sit well outside that spread.
    assert mean_risk["none"] < 0.2  # the prevalence
    assert mean_risk["balanced"] > 0.3  # weighted: the classes count (nearly) equally
    assert mean_risk["balanced"] - mean_risk["none"] > 0.15


def _one_full_batch_step(mode: str, weights: list[float] | None, images: np.ndarray, labels: np.ndarray) -> list[torch.Tensor]:
    """One SGD step on all images (batch = data, so DP's Poisson batch is every image), no noise."""
    dp = None if mode == "plain" else DPConfig(enabled=True, target_epsilon=None, noise_multiplier=1.0, max_grad_norm=1e6,
                                                 grad_sample_mode=mode)
    torch.manual_seed(0)
    model = SmallCNN(1, 2, lr=0.5, optimizer="sgd", width=4)
    train_vision_locally(model, images, labels, mean=[0.5], std=[0.3], epochs=1, batch_size=len(labels), dp=dp,
                         noise_multiplier=0.0 if dp else None, class_weights=weights, device="cpu")
    return [p.detach().clone() for p in model.parameters()]


def test_image_training_weights_each_image_in_every_path() -> None:
    """Plain, hooks and ghost DP-SGD (clipping off, no noise) take the same step on the
    class-weighted loss, and a different one from the unweighted loss."""
    rng = np.random.default_rng(0)
    labels = (rng.random(40) < 0.2).astype(np.int64)
    images = rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    weights = [0.6, 3.0]
    reference = _one_full_batch_step("plain", weights, images, labels)
    torch.manual_seed(0)
    manual = SmallCNN(1, 2, lr=0.5, optimizer="sgd", width=4)
    x = (torch.from_numpy(images).float() / 255 - 0.5) / 0.3
    y = torch.from_numpy(labels)
    loss = (nn.functional.cross_entropy(manual(x), y, reduction="none") * torch.tensor(weights)[y]).mean()
    loss.backward()
    with torch.no_grad():
        expected = [p - 0.5 * p.grad for p in manual.parameters()]
    for got, want in zip(reference, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    for mode in ("hooks", "ghost"):
        for got, want in zip(_one_full_batch_step(mode, weights, images, labels), reference, strict=True):
            assert torch.allclose(got, want, atol=1e-5), mode
    unweighted = _one_full_batch_step("hooks", None, images, labels)
    assert not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(unweighted, reference, strict=True))
