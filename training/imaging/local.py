"""A hospital's local training of an image classifier (plain or DP-SGD with Opacus), prediction and evaluation.

Images stay uint8 on the device and each batch is cast, augmented and normalised there; DP-SGD
uses per-sample clipping (``hooks``, ``ghost`` or ``functorch``) with Poisson sampling and an
unpredictable seed, as :mod:`training.tabular.local` does for tables.
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from sklearn.metrics import roc_auc_score

from training.dp_loop import (
    LocalTrainingResult,
    ProximalPull,
    adaptive_clipper,
    per_sample_norms,
    poisson_batches,
    sample_rate,
    steps_per_epoch,
)
from training.errors import PrivacyConfigError
from training.imaging.batches import Augment, DeviceImages, class_labels
from training.imaging.ghost_clipping import GhostClipping
from training.imaging.vision import VisionModel, default_device
from training.imbalance import WeightedCrossEntropy
from training.privacy import DPConfig, QuantileClipper, adaptive_noise

__all__ = ["evaluate_vision", "predict_vision", "train_vision_locally"]

_BatchFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def train_vision_locally(
    model: VisionModel,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    epochs: int,
    batch_size: int,
    dp: DPConfig | None,
    noise_multiplier: float | None = None,
    proximal_mu: float = 0.0,
    augment: Augment | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    class_weights: Sequence[float] | None = None,
) -> LocalTrainingResult:
    """Train ``model`` in place on one hospital's images.

    Args:
        model: The classifier, holding the current global weights; back on the CPU after.
        images: uint8 ``(N, C, H, W)`` pixels.
        labels: Class indices ``(N,)``.
        mean: Per-channel mean of ``x / 255`` (the federation's pooled statistics).
        std: Per-channel standard deviation of ``x / 255``.
        epochs: Local epochs.
        batch_size: Expected images per step.
        dp: DP-SGD settings, or None (or disabled) for plain training. ``grad_sample_mode``
            ``hooks``, ``ghost`` or ``functorch``; ``fused`` is for tabular models only.
        noise_multiplier: Gaussian noise scale for DP-SGD (from the run's plan).
        proximal_mu: FedProx coefficient, applied as a data-independent pull towards the
            round's starting weights after each step (it spends no privacy).
        augment: Per-batch augmentation on the device, or None.
        seed: Seed of plain training's shuffling and of the augmentation. DP-SGD's Poisson
            sampling and noise come from an unpredictable seed instead.
        device: Where to train; :func:`default_device` when None.
        class_weights: Loss weight per class (None: unweighted), applied to each image's
            loss before DP-SGD clips its gradient (docs/imbalance.md).

    Returns:
        Mean loss, steps taken (empty DP batches included), images and seconds.

    Raises:
        PrivacyConfigError: ``fused`` mode, or a model Opacus cannot privatise.
        ValueError: missing noise multiplier, or images/labels/statistics that do not fit.
    """
    started = time.perf_counter()
    private = dp is not None and dp.enabled
    if private:
        assert dp is not None
        _check_private(model, dp, noise_multiplier)
    target = torch.device(device) if device is not None else default_device()
    data = DeviceImages(images, mean, std, target)
    if len(data) == 0:
        raise ValueError("no training images")
    y = class_labels(labels, len(data), int(model.hparams["num_classes"]), target)
    aug_gen = torch.Generator(device=target).manual_seed(seed) if augment is not None else None
    model.to(target)
    clipper: QuantileClipper | None = None
    try:
        def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return data.get(idx, augment, aug_gen), y[idx]

        if private:
            assert dp is not None and noise_multiplier is not None
            clipper = adaptive_clipper(dp, noise_multiplier, len(data), batch_size, target)
            losses, steps = _train_dp(model, len(data), batch, epochs, batch_size, dp, noise_multiplier, proximal_mu, target,
                                      class_weights, clipper)
        else:
            losses, steps = _train_plain(model, len(data), batch, epochs, batch_size, proximal_mu, seed, target, class_weights)
        mean_loss = float(torch.stack(losses).mean()) if losses else math.nan
    finally:
        model.zero_grad(set_to_none=True)
        model.to("cpu")
    bound = clipper.bound if clipper is not None else None
    return LocalTrainingResult(mean_loss, steps, len(data), time.perf_counter() - started, clip_bound=bound)


def _check_private(model: VisionModel, dp: DPConfig, noise_multiplier: float | None) -> None:
    """Refuse DP-SGD settings images cannot train with, before anything moves to the device."""
    if noise_multiplier is None:
        raise ValueError("DP-SGD needs the run's noise multiplier")
    if dp.grad_sample_mode not in ("hooks", "ghost", "functorch"):
        raise PrivacyConfigError(
            f"grad_sample_mode {dp.grad_sample_mode!r} is for tabular models; images use 'ghost', 'hooks' or 'functorch'")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise PrivacyConfigError(f"Opacus cannot privatise this model: {errors[0]}")


def _train_plain(
    model: VisionModel, n: int, batch: _BatchFn, epochs: int, batch_size: int, mu: float, seed: int, device: torch.device,
    class_weights: Sequence[float] | None = None,
) -> tuple[list[torch.Tensor], int]:
    generator = torch.Generator().manual_seed(seed)
    optimizer, pull, losses = model.configure_optimizers(), ProximalPull(model, mu), []  # type: ignore[arg-type]
    criterion = WeightedCrossEntropy(class_weights)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).to(device).split(batch_size):
            x, y = batch(idx)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            pull()
            losses.append(loss.detach())
    return losses, len(losses)


def _noise_only_step(optimizer: DPOptimizer) -> None:
    """An empty Poisson batch still takes a step: noise only, as DP-SGD's analysis assumes."""
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    for p in optimizer.params:
        noise = torch.normal(0.0, std, size=p.shape, device=p.device, generator=optimizer.generator)
        p.grad = noise / optimizer.expected_batch_size
    optimizer.original_optimizer.step()


def _private_step(
    model: VisionModel, mode: str, noise: float, clip: float, expected: float, noise_gen: torch.Generator,
    class_weights: Sequence[float] | None,
) -> tuple[GradSampleModule | GhostClipping, DPOptimizer, Callable[..., Any]]:
    """The per-sample-gradient module, DP optimiser and loss of one DP-SGD mode (``ghost``, ``hooks``, ``functorch``)."""
    # mean over the batch size: Opacus rescales per-sample gradients by it, so each image's
    # gradient is its class weight times its loss gradient before clipping
    criterion = WeightedCrossEntropy(class_weights)
    if mode == "ghost":
        ghost = GhostClipping(model, batch_first=True, loss_reduction="mean", max_grad_norm=clip)
        fast = DPOptimizerFastGradientClipping(model.configure_optimizers(), noise_multiplier=noise, max_grad_norm=clip,
                                               expected_batch_size=expected, generator=noise_gen)
        return ghost, fast, DPLossFastGradientClipping(ghost, fast, criterion, "mean")
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", force_functorch=mode == "functorch")
    optimizer = DPOptimizer(model.configure_optimizers(), noise_multiplier=noise, max_grad_norm=clip,
                            expected_batch_size=expected, generator=noise_gen)
    return gsm, optimizer, criterion


def _train_dp(
    model: VisionModel, n: int, batch: _BatchFn, epochs: int, batch_size: int, dp: DPConfig, noise: float, mu: float,
    device: torch.device, class_weights: Sequence[float] | None = None, clipper: QuantileClipper | None = None,
) -> tuple[list[torch.Tensor], int]:
    q = sample_rate(n, batch_size)
    sampler = np.random.default_rng(secrets.randbits(128))
    noise_gen = torch.Generator(device=device).manual_seed(secrets.randbits(63))
    clip, expected = dp.max_grad_norm, q * n
    if clipper is not None:  # adaptive clipping: the gradient's share of the step's noise
        noise = adaptive_noise(noise)[0]
    gsm, optimizer, loss_fn = _private_step(model, dp.grad_sample_mode, noise, clip, expected, noise_gen, class_weights)
    pull, losses, steps = ProximalPull(model, mu), [], 0  # type: ignore[arg-type]
    gsm.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full backward hooks on inputs without grad
            for _ in range(epochs):
                for idx in poisson_batches(n, q, steps_per_epoch(n, batch_size), sampler):
                    steps += 1
                    optimizer.zero_grad(set_to_none=True)
                    norms = None
                    if len(idx) == 0:
                        _noise_only_step(optimizer)
                    else:
                        x, y = batch(idx.to(device))
                        loss = loss_fn(gsm(x), y)
                        loss.backward()
                        norms = per_sample_norms(gsm, optimizer) if clipper is not None else None
                        optimizer.step()
                        losses.append(loss.detach())
                    if clipper is not None:
                        optimizer.max_grad_norm = clipper.update(norms)
                        if isinstance(gsm, GhostClipping):
                            gsm.max_grad_norm = clipper.bound
                    pull()
    finally:
        gsm._close()  # remove Opacus hooks: the plain module goes back to the caller
        for p in model.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad  # the DPOptimizer's last clipped sum
    return losses, steps


@torch.inference_mode()
def _probabilities(model: VisionModel, data: DeviceImages, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        parts = [torch.softmax(model(data.get(slice(i, i + batch_size))).double(), dim=-1) for i in range(0, len(data), batch_size)]
    finally:
        model.train(was_training)
    k = int(model.hparams["num_classes"])
    return torch.cat(parts).cpu() if parts else torch.zeros((0, k), dtype=torch.float64)


def predict_vision(
    model: VisionModel, images: np.ndarray | torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
    device: torch.device | str | None = None, batch_size: int = 256,
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` (float64, rows sum to 1) for uint8 images.

    The model runs on ``device`` (:func:`default_device` when None) and is left where it was
    found, so a server can keep it on the GPU between calls.
    """
    target = torch.device(device) if device is not None else default_device()
    home = next(model.parameters()).device
    data = DeviceImages(images, mean, std, target)
    model.to(target)
    try:
        return _probabilities(model, data, batch_size).numpy()
    finally:
        model.to(home)


def evaluate_vision(
    model: VisionModel, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *, mean: Sequence[float],
    std: Sequence[float], device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy`` and macro one-vs-rest ``auroc``.

    ``auroc`` averages the classes that have both positives and negatives among ``labels``
    and is left out when there is none (so no NaN is ever returned).
    """
    probs = predict_vision(model, images, mean=mean, std=std, device=device)
    y = class_labels(labels, len(probs), probs.shape[1], torch.device("cpu")).numpy()
    if len(y) == 0:
        raise ValueError("no images to evaluate")
    picked = np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0)
    metrics = {"loss": float(-np.log(picked).mean()), "accuracy": float((probs.argmax(axis=1) == y).mean())}
    aucs = [roc_auc_score(y == k, probs[:, k]) for k in range(probs.shape[1]) if 0 < (y == k).sum() < len(y)]
    if aucs:
        metrics["auroc"] = float(np.mean(aucs))
    return metrics
