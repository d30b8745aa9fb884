"""A hospital's local training: plain SGD or DP-SGD (Opacus), with an optional FedProx term."""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from training.dp_loop import (
    LocalTrainingResult,
    ProximalPull,
    adaptive_clipper,
    per_sample_norms,
    poisson_batches,
    sample_rate,
    steps_per_epoch,
)
from training.imbalance import WeightedBCE
from training.metrics import risk_metrics
from training.privacy import DPConfig, QuantileClipper, adaptive_noise
from training.tabular.data import TabularDataset, keep_batch
from training.tabular.fused_dp import FusedDPSGD
from training.tabular.models import RiskModel

__all__ = ["evaluate_model", "train_locally"]


def train_locally(
    model: RiskModel,
    data: TabularDataset,
    *,
    epochs: int,
    batch_size: int,
    dp: DPConfig | None,
    noise_multiplier: float | None = None,
    proximal_mu: float = 0.0,
    seed: int = 0,
    class_weights: Sequence[float] | None = None,
) -> LocalTrainingResult:
    """Train ``model`` in place on one hospital's rows.

    Args:
        model: The risk model, holding the current global weights.
        data: Encoded training rows.
        epochs: Local epochs.
        batch_size: Expected rows per step.
        dp: DP-SGD settings, or None (or disabled) for plain training.
        noise_multiplier: Gaussian noise scale for DP-SGD (from the run's plan).
        proximal_mu: FedProx coefficient; the proximal pull towards the global weights is
            applied after each step as a data-independent update, so it spends no privacy.
        seed: Seed of plain training's shuffling. DP-SGD's Poisson sampling and noise come
            from an unpredictable seed instead: an attacker who can replay them learns more.
        class_weights: Loss weight of class 0 and class 1 (None: unweighted). Each patient's
            loss is weighted before DP-SGD clips its gradient (docs/imbalance.md).

    Returns:
        Mean loss, steps taken, rows and seconds.
    """
    started = time.perf_counter()
    private = dp is not None and dp.enabled
    clipper: QuantileClipper | None = None
    if private:
        assert dp is not None
        if noise_multiplier is None:
            raise ValueError("DP-SGD needs the run's noise multiplier")
        clipper = adaptive_clipper(dp, noise_multiplier, len(data), batch_size)
        if dp.grad_sample_mode == "fused":
            losses, steps = _train_fused(model, data, epochs, batch_size, dp, noise_multiplier, proximal_mu, class_weights,
                                         clipper)
        else:
            losses, steps = _train_opacus(model, data, epochs, batch_size, dp, noise_multiplier, proximal_mu, class_weights,
                                          clipper)
    else:
        losses, steps = _train_plain(model, data, epochs, batch_size, proximal_mu, seed, class_weights)
    mean_loss = float(np.mean(losses)) if losses else math.nan
    bound = clipper.bound if private and clipper is not None else None
    return LocalTrainingResult(mean_loss, steps, len(data), time.perf_counter() - started, clip_bound=bound)


def _train_plain(model: RiskModel, data: TabularDataset, epochs: int, batch_size: int, mu: float, seed: int,
                 class_weights: Sequence[float] | None = None) -> tuple[list[float], int]:
    generator = torch.Generator().manual_seed(seed)
    optimizer, pull, losses = model.configure_optimizers(), ProximalPull(model, mu), []
    criterion = WeightedBCE(class_weights)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(data.x[idx]), data.y[idx])
            loss.backward()
            optimizer.step()
            pull()
            losses.append(float(loss.detach()))
    return losses, len(losses)


def _secret_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


def _train_fused(
    model: RiskModel, data: TabularDataset, epochs: int, batch_size: int, dp: DPConfig, noise: float, mu: float,
    class_weights: Sequence[float] | None = None, clipper: QuantileClipper | None = None,
) -> tuple[list[float], int]:
    n = len(data)
    q = sample_rate(n, batch_size)
    sampler, noise_gen = np.random.default_rng(secrets.randbits(128)), _secret_generator()
    if clipper is not None:  # adaptive clipping: the gradient's share of the step's noise
        noise = adaptive_noise(noise)[0]
    engine = FusedDPSGD(model, noise_multiplier=noise, max_grad_norm=dp.max_grad_norm, expected_batch_size=q * n, generator=noise_gen,
                        clipper=clipper)
    optimizer, pull, losses, steps = model.configure_optimizers(), ProximalPull(model, mu), [], 0
    criterion = WeightedBCE(class_weights, reduction="none")  # weighted per patient, then clipped
    model.train()
    try:
        for _ in range(epochs):
            for idx in poisson_batches(n, q, steps_per_epoch(n, batch_size), sampler):
                steps += 1
                per_sample = criterion(model(data.x[idx]), data.y[idx]) if len(idx) else None
                engine.privatise(per_sample)  # sets every .grad: no zero_grad needed
                optimizer.step()
                pull()
                if per_sample is not None:
                    losses.append(float(per_sample.detach().mean()))
    finally:
        engine.close()
    return losses, steps


def _make_private(model: RiskModel, data: TabularDataset, batch_size: int, dp: DPConfig, noise: float,
                  class_weights: Sequence[float] | None) -> tuple[nn.Module, Any, nn.Module, DataLoader]:
    """Opacus's private module, optimiser, loss and Poisson loader for one round."""
    optimizer = model.configure_optimizers()
    criterion: nn.Module = WeightedBCE(class_weights)  # mean over the batch size: see WeightedBCE
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=keep_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about its non-secure default RNG
        engine = PrivacyEngine(accountant=dp.accountant)
        wrapped = engine.make_private(
            module=model, optimizer=optimizer, criterion=criterion, data_loader=loader, noise_multiplier=noise,
            max_grad_norm=dp.max_grad_norm, grad_sample_mode=dp.grad_sample_mode, poisson_sampling=True,
        )
    if dp.grad_sample_mode == "ghost":
        trained, optimizer, criterion, loader = wrapped
    else:
        trained, optimizer, loader = wrapped
    return trained, optimizer, criterion, loader


def _train_opacus(
    model: RiskModel, data: TabularDataset, epochs: int, batch_size: int, dp: DPConfig, noise: float, mu: float,
    class_weights: Sequence[float] | None = None, clipper: QuantileClipper | None = None,
) -> tuple[list[float], int]:
    if clipper is not None:  # adaptive clipping: the gradient's share of the step's noise
        noise = adaptive_noise(noise)[0]
    trained, optimizer, criterion, loader = _make_private(model, data, batch_size, dp, noise, class_weights)
    pull, losses, steps = ProximalPull(model, mu), [], 0
    trained.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full backward hooks on inputs without grad
            for _ in range(epochs):
                for x, y in loader:
                    steps += 1
                    if len(y) == 0:
                        if clipper is not None:
                            clipper.update(None)
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    loss = criterion(trained(x).view(-1), y)
                    loss.backward()
                    norms = per_sample_norms(trained, optimizer) if clipper is not None else None
                    optimizer.step()
                    if clipper is not None:
                        optimizer.max_grad_norm = clipper.update(norms)
                        if dp.grad_sample_mode == "ghost":
                            trained.max_grad_norm = clipper.bound  # ghost clipping clips in the module
                    pull()
                    losses.append(float(loss.detach()))
    finally:
        if hasattr(trained, "_close"):
            trained._close()  # remove Opacus hooks: the plain module goes back to the caller
    return losses, steps


def evaluate_model(model: RiskModel, data: TabularDataset) -> dict[str, float]:
    """Risk metrics of ``model`` on encoded rows."""
    probs = model.predict_proba(data.x).numpy()
    return risk_metrics(data.y.numpy(), probs)
