"""Image classifiers: shapes, Opacus compatibility, augmentation, and plain/DP local training."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.func import functional_call, grad, vmap

import training.imaging.local as local_training
from training.errors import PrivacyConfigError
from training.imaging.batches import Augment, augment_batch
from training.imaging.ghost_clipping import GhostClipping
from training.imaging.local import evaluate_vision, predict_vision, train_vision_locally
from training.imaging.vision import ResNet18, SmallCNN, VisionModel, build_vision_model, default_device
from training.privacy import DPConfig


def _task(n: int = 120, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three learnable classes on a noisy background: plain, a bright square, stripes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(40, 90, size=(n, 1, size, size)).astype(np.float64)
    for i in np.flatnonzero(y == 1):
        r, c = rng.integers(0, size - 5, 2)
        x[i, 0, r:r + 5, c:c + 5] = 230
    x[y == 2, 0, ::2, :] += 80
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


X, Y = _task()
MEAN, STD = [float(X.mean() / 255)], [float(X.std() / 255)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny convolutions run fastest, and steadiest on a shared machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(kind: str = "cnn", channels: int = 1, classes: int = 3, **hparams: object) -> VisionModel:
    torch.manual_seed(0)
    return build_vision_model(kind, channels, classes, width=hparams.pop("width", 4), **hparams)


@pytest.mark.parametrize("size", [28, 64, 224])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["cnn", "resnet18"])
def test_logits_have_one_column_per_class_at_every_size(kind: str, channels: int, size: int) -> None:
    model = _tiny(kind, channels, 5, width=2)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 5)


@pytest.mark.parametrize("image_size", [28, 224])
def test_resnet_stem_can_be_fixed_by_image_size(image_size: int) -> None:
    model = _tiny("resnet18", 3, 4, width=2, image_size=image_size)
    assert model.imagenet_stem == (image_size >= 64)
    assert model(torch.randn(2, 3, image_size, image_size)).shape == (2, 4)
    assert model.hparams["image_size"] == image_size


@pytest.mark.parametrize("kind", ["cnn", "resnet18"])
def test_models_pass_the_opacus_validator_and_use_no_batchnorm(kind: str) -> None:
    model = build_vision_model(kind, 3, 2)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert isinstance(model, VisionModel) and type(model) is {"cnn": SmallCNN, "resnet18": ResNet18}[kind]


def test_default_widths_and_hyperparameters_are_saved() -> None:
    assert build_vision_model("cnn", 1, 3).hparams["width"] == 16
    model = build_vision_model("resnet18", 3, 2, lr=0.05, optimizer="sgd")
    assert dict(model.hparams) == {"in_channels": 3, "num_classes": 2, "lr": 0.05, "optimizer": "sgd", "width": 64, "image_size": None}
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown vision model kind 'vit'"):
        build_vision_model("vit", 1, 2)


def test_predict_proba_rows_sum_to_one_and_training_mode_is_restored() -> None:
    model = _tiny()
    model.train()
    probs = model.predict_proba(torch.randn(5, 1, 16, 16))
    assert probs.shape == (5, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(5))
    assert model.training


def test_augmentation_keeps_shape_dtype_and_range_and_is_seeded() -> None:
    x = torch.rand(6, 3, 20, 20)
    aug = Augment(hflip=True, vflip=True, rotate=30.0, translate=0.2, brightness=0.3, contrast=0.3)
    a = augment_batch(x, aug, torch.Generator().manual_seed(1))
    b = augment_batch(x, aug, torch.Generator().manual_seed(1))
    c = augment_batch(x, aug, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentation_without_transforms_is_the_identity() -> None:
    x = torch.rand(4, 1, 12, 12)
    out = augment_batch(x, Augment(rotate=0.0, translate=0.0, brightness=0.0, contrast=0.0))
    assert torch.equal(out, x)


def test_flip_only_augmentation_mirrors_some_images_exactly() -> None:
    x = torch.rand(16, 1, 8, 8)
    out = augment_batch(x, Augment(hflip=True, rotate=0.0, translate=0.0, brightness=0.0, contrast=0.0),
                        torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_default_device_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOVERSE_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.delenv("BIOVERSE_DEVICE")
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_plain_training_learns_the_task_and_is_reproducible() -> None:
    model, twin = _tiny(lr=0.01), _tiny(lr=0.01)
    before = evaluate_vision(model, X, Y, mean=MEAN, std=STD, device="cpu")
    result = train_vision_locally(model, X, Y, mean=MEAN, std=STD, epochs=6, batch_size=24, dp=None, device="cpu")
    train_vision_locally(twin, X, Y, mean=MEAN, std=STD, epochs=6, batch_size=24, dp=None, device="cpu")
    after = evaluate_vision(model, X, Y, mean=MEAN, std=STD, device="cpu")
    assert result.steps == 6 * 5 and result.num_examples == len(Y) and np.isfinite(result.loss)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.8 and after["auroc"] > 0.9
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)  # same seed, same shuffling: same weights


def test_plain_training_with_augmentation_still_learns() -> None:
    model = _tiny(lr=0.01)
    aug = Augment(hflip=True, rotate=10.0, translate=0.1)
    train_vision_locally(model, X, Y, mean=MEAN, std=STD, epochs=6, batch_size=24, dp=None, augment=aug, device="cpu")
    assert evaluate_vision(model, X, Y, mean=MEAN, std=STD, device="cpu")["accuracy"] > 0.7


@pytest.mark.parametrize("mode", ["hooks", "ghost", "functorch"])
def test_dp_training_beats_chance_and_gives_the_plain_module_back(mode: str) -> None:
    model = _tiny(lr=0.01)
    before = evaluate_vision(model, X, Y, mean=MEAN, std=STD, device="cpu")
    dp = DPConfig(grad_sample_mode=mode, max_grad_norm=1.0)
    result = train_vision_locally(model, X, Y, mean=MEAN, std=STD, epochs=6, batch_size=24, dp=dp, noise_multiplier=0.3, device="cpu")
    after = evaluate_vision(model, X, Y, mean=MEAN, std=STD, device="cpu")
    assert result.steps == 6 * 5 and np.isfinite(result.loss)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.5
    _assert_no_opacus_left(model)
    # a second round wraps the same module again (fails if hooks were left behind)
    train_vision_locally(model, X, Y, mean=MEAN, std=STD, epochs=1, batch_size=24, dp=dp, noise_multiplier=0.3, device="cpu")
    _assert_no_opacus_left(model)


def _assert_no_opacus_left(model: VisionModel) -> None:
    assert type(model) is SmallCNN and not hasattr(model, "autograd_grad_sample_hooks")
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not hasattr(module, "ft_compute_sample_grad")
    for p in model.parameters():
        assert p.device.type == "cpu" and p.grad is None
        assert not any(hasattr(p, a) for a in ("grad_sample", "_forward_counter", "summed_grad", "_norm_sample"))


def _clipped_mean_gradient(model: VisionModel, x: torch.Tensor, y: torch.Tensor, clip: float) -> dict[str, torch.Tensor]:
    """Per-sample gradients by torch.func, each clipped to ``clip``, averaged over the batch."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.stack([g.reshape(len(x), -1).norm(dim=1) for g in per_sample.values()], 1).norm(dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("i,i...->...", factor, g) / len(x) for k, g in per_sample.items()}


@pytest.mark.parametrize(
    ("kind", "mode"), [("cnn", "hooks"), ("cnn", "ghost"), ("cnn", "functorch"), ("resnet18", "hooks"), ("resnet18", "ghost")]
)
@pytest.mark.parametrize("clip", [1e-3, 100.0])
def test_dp_step_is_the_clipped_mean_gradient(kind: str, mode: str, clip: float) -> None:
    """With no noise and every image in the batch (q = 1), one SGD step moves the weights by
    exactly lr * mean of per-sample gradients clipped to ``clip``; so by at most lr * clip."""
    x, y = X[:6, :, :12, :12], Y[:6]
    model = _tiny(kind, lr=0.1, optimizer="sgd", width=2)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    xf = (torch.from_numpy(x).float() / 255 - MEAN[0]) / STD[0]
    expected = _clipped_mean_gradient(model, xf, torch.from_numpy(y), clip)
    dp = DPConfig(grad_sample_mode=mode, max_grad_norm=clip)
    result = train_vision_locally(model, x, y, mean=MEAN, std=STD, epochs=1, batch_size=6, dp=dp, noise_multiplier=0.0, device="cpu")
    assert result.steps == 1
    moved = {k: start[k] - v.detach() for k, v in model.named_parameters()}
    for k in moved:
        assert torch.allclose(moved[k], 0.1 * expected[k], atol=1e-6, rtol=1e-3), k
    total = torch.cat([m.flatten() for m in moved.values()]).norm()
    if clip < 1:
        assert 0 < total <= 0.1 * clip * (1 + 1e-4)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("size", [8, 64])
def test_conv_ghost_norms_equal_the_norms_of_materialised_per_sample_gradients(size: int) -> None:
    """Both ways of computing a Conv2d's norm (direct and Gram matrices), strides, 1x1 and 7x7
    kernels, biases and grouped convolutions (Opacus's fallback) against Opacus's hooks."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 7, 2, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, 1, 1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 1, 2),
        nn.Conv2d(8, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1, groups=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 3),
    )
    x, y = torch.randn(5, 3, size, size), torch.tensor([0, 1, 2, 0, 1])
    hooks = GradSampleModule(model)
    nn.functional.cross_entropy(hooks(x), y).backward()
    expected = torch.stack([p.grad_sample.reshape(5, -1).norm(dim=1) for p in model.parameters()], 1).norm(dim=1)
    hooks._close()
    ghost = GhostClipping(model, max_grad_norm=1.0)
    nn.functional.cross_entropy(ghost(x), y).backward()
    got = ghost.get_norm_sample()
    ghost._close()
    assert torch.allclose(got, expected, rtol=1e-4)


def test_dp_noise_has_std_noise_multiplier_times_clip_over_the_expected_batch() -> None:
    x, y = X[:6, :, :12, :12], Y[:6]
    model = _tiny(lr=1.0, optimizer="sgd", width=8)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    xf = (torch.from_numpy(x).float() / 255 - MEAN[0]) / STD[0]
    clipped = _clipped_mean_gradient(model, xf, torch.from_numpy(y), 0.5)
    dp = DPConfig(grad_sample_mode="hooks", max_grad_norm=0.5)
    train_vision_locally(model, x, y, mean=MEAN, std=STD, epochs=1, batch_size=6, dp=dp, noise_multiplier=2.0, device="cpu")
    residual = torch.cat([(start[k] - v.detach() - clipped[k]).flatten() for k, v in model.named_parameters()])
    assert residual.numel() > 5000
    assert float(residual.std()) == pytest.approx(2.0 * 0.5 / 6, rel=0.06)
    assert abs(float(residual.mean())) < 0.05 * 2.0 * 0.5 / 6 * 3


def test_dp_sampling_and_noise_are_not_replayable_from_the_seed() -> None:
    a, b = _tiny(lr=0.01), _tiny(lr=0.01)
    dp = DPConfig(grad_sample_mode="hooks")
    for model in (a, b):
        train_vision_locally(model, X[:48], Y[:48], mean=MEAN, std=STD, epochs=1, batch_size=16, dp=dp, noise_multiplier=1.0,
                             seed=7, device="cpu")
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_empty_poisson_batches_still_take_a_noise_only_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = local_training._noise_only_step

    def counting(optimizer: local_training.DPOptimizer) -> None:
        calls.append(1)
        original(optimizer)

    monkeypatch.setattr(local_training, "_noise_only_step", counting)
    model = _tiny(lr=0.01)
    start = [p.detach().clone() for p in model.parameters()]
    dp = DPConfig(grad_sample_mode="ghost")
    result = train_vision_locally(model, X[:20], Y[:20], mean=MEAN, std=STD, epochs=3, batch_size=1, dp=dp, noise_multiplier=1.0,
                                  device="cpu")
    assert result.steps == 60 and calls and np.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))


def test_fused_mode_and_missing_noise_are_refused() -> None:
    with pytest.raises(PrivacyConfigError, match="fused"):
        train_vision_locally(_tiny(), X, Y, mean=MEAN, std=STD, epochs=1, batch_size=8, dp=DPConfig(), noise_multiplier=1.0)
    with pytest.raises(ValueError, match="noise multiplier"):
        train_vision_locally(_tiny(), X, Y, mean=MEAN, std=STD, epochs=1, batch_size=8, dp=DPConfig(grad_sample_mode="hooks"))


@pytest.mark.parametrize(
    ("images", "labels", "mean", "match"),
    [
        (X.astype(np.float32), Y, MEAN, "uint8"),
        (X[:, 0], Y, MEAN, "uint8"),
        (X, Y[:-1], MEAN, "labels"),
        (X, Y + 1, MEAN, r"class indices in \[0, 3\)"),
        (X, Y, [0.5, 0.5], "one value per channel"),
    ],
)
def test_bad_inputs_are_refused(images: np.ndarray, labels: np.ndarray, mean: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_vision_locally(_tiny(), images, labels, mean=mean, std=STD, epochs=1, batch_size=8, dp=None, device="cpu")


def test_fedprox_pull_keeps_the_weights_near_the_round_start() -> None:
    distances = []
    for mu in (0.0, 20.0):
        model = _tiny(lr=0.01)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        train_vision_locally(model, X, Y, mean=MEAN, std=STD, epochs=2, batch_size=24, dp=None, proximal_mu=mu, device="cpu")
        distances.append(float((torch.cat([p.detach().flatten() for p in model.parameters()]) - start).norm()))
    assert distances[1] < 0.5 * distances[0]


def test_predict_and_evaluate() -> None:
    model = _tiny()
    model.train()
    probs = predict_vision(model, X[:10], mean=MEAN, std=STD, device="cpu", batch_size=4)
    assert probs.shape == (10, 3) and probs.dtype == np.float64
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert model.training and next(model.parameters()).device.type == "cpu"
    direct = model.predict_proba((torch.from_numpy(X[:10]).float() / 255 - MEAN[0]) / STD[0]).double().numpy()
    assert np.allclose(probs, direct, atol=1e-6)
    assert predict_vision(model, X[:0], mean=MEAN, std=STD, device="cpu").shape == (0, 3)
    metrics = evaluate_vision(model, X, Y, mean=MEAN, std=STD, device="cpu")
    assert set(metrics) == {"loss", "accuracy", "auroc"} and all(np.isfinite(v) for v in metrics.values())
    one_class = evaluate_vision(model, X[Y == 1], Y[Y == 1], mean=MEAN, std=STD, device="cpu")
    assert set(one_class) == {"loss", "accuracy"}


def test_lightning_steps_run_in_a_trainer() -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    xf = (torch.from_numpy(X[:16]).float() / 255 - MEAN[0]) / STD[0]
    loader = DataLoader(TensorDataset(xf, torch.from_numpy(Y[:16])), batch_size=8)
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, loader, loader)
    assert trainer.global_step == 1  # fast_dev_run: one optimisation step, then one val batch
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), "the step changed no weight"
    losses = {stage: trainer.callback_metrics.get(f"{stage}_loss") for stage in ("train", "val")}
    assert all(loss is not None and torch.isfinite(loss) for loss in losses.values()), losses


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [None, "hooks", "ghost"])
def test_training_and_prediction_on_cuda(mode: str | None) -> None:
    model = _tiny(lr=0.01)
    dp = DPConfig(grad_sample_mode=mode) if mode else None
    aug = Augment(hflip=True)
    result = train_vision_locally(model, X, Y, mean=MEAN, std=STD, epochs=3, batch_size=24, dp=dp,
                                  noise_multiplier=0.3 if mode else None, augment=aug, device="cuda")
    assert np.isfinite(result.loss)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    probs = predict_vision(model, X, mean=MEAN, std=STD, device="cuda")
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0)
    assert next(model.parameters()).device.type == "cpu"  # left where it was found
    model.to("cuda")
    assert np.allclose(predict_vision(model, X, mean=MEAN, std=STD, device="cuda"), probs, atol=1e-5)
    assert next(model.parameters()).device.type == "cuda"
    model.to("cpu")
    metrics = evaluate_vision(model, X, Y, mean=MEAN, std=STD, device="cuda")
    assert metrics["accuracy"] > 0.4
