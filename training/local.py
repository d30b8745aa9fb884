"""A hospital's local training: plain SGD or DP-SGD (Opacus), with an optional FedProx term."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from training.data import TabularDataset, _keep_batch
from training.metrics import risk_metrics
from training.models import RiskModel
from training.privacy import DPConfig

__all__ = ["LocalTrainingResult", "evaluate_model", "sample_rate", "steps_per_epoch", "train_locally"]


@dataclass(frozen=True)
class LocalTrainingResult:
    """What one round of local training did."""

    loss: float
    steps: int
    num_examples: int
    seconds: float


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate giving ``batch_size`` rows per step on average."""
    return min(1.0, batch_size / max(num_examples, 1))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps in one epoch, as Opacus's Poisson loader takes them."""
    return int(1 / sample_rate(num_examples, batch_size))


def _plain_loader(data: TabularDataset, batch_size: int, seed: int) -> DataLoader:
    sampler = BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(seed)), batch_size, drop_last=False)
    return DataLoader(data, batch_sampler=sampler, collate_fn=_keep_batch)


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
        seed: Seed for sampling and noise.

    Returns:
        Mean loss, steps taken, rows and seconds.
    """
    torch.manual_seed(seed)
    started = time.perf_counter()
    optimizer = model.configure_optimizers()
    criterion: nn.Module = nn.BCEWithLogitsLoss()
    loader = _plain_loader(data, batch_size, seed)
    trained: nn.Module = model
    private = dp is not None and dp.enabled
    if private:
        assert dp is not None and noise_multiplier is not None
        engine = PrivacyEngine(accountant=dp.accountant)
        dp_loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=_keep_batch, generator=torch.Generator().manual_seed(seed))
        wrapped = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=dp_loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            grad_sample_mode=dp.grad_sample_mode,
            poisson_sampling=True,
        )
        if dp.grad_sample_mode == "ghost":
            trained, optimizer, criterion, loader = wrapped
        else:
            trained, optimizer, loader = wrapped
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    lr = float(model.hparams["lr"])
    trained.train()
    losses, steps = [], 0
    try:
        for _ in range(epochs):
            for x, y in loader:
                steps += 1
                if len(y) == 0:
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(trained(x).view(-1), y)
                loss.backward()
                optimizer.step()
                if anchor is not None:
                    with torch.no_grad():
                        for p, p0 in zip(model.parameters(), anchor, strict=True):
                            p.sub_(lr * proximal_mu * (p - p0))
                losses.append(float(loss.detach()))
    finally:
        if trained is not model and hasattr(trained, "_close"):
            trained._close()  # remove Opacus hooks: the plain module goes back to the caller
    mean_loss = float(np.mean(losses)) if losses else math.nan
    return LocalTrainingResult(mean_loss, steps, len(data), time.perf_counter() - started)


def evaluate_model(model: RiskModel, data: TabularDataset) -> dict[str, float]:
    """Risk metrics of ``model`` on encoded rows."""
    probs = model.predict_proba(data.x).numpy()
    return risk_metrics(data.y.numpy(), probs)
