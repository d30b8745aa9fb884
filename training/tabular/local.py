"""A hospital's local training: plain SGD or DP-SGD (Opacus), with an optional FedProx term."""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from training.tabular.data import TabularDataset, _keep_batch
from training.tabular.fused_dp import FusedDPSGD
from training.imbalance import WeightedBCE
from training.metrics import risk_metrics
from training.tabular.models import RiskModel
from training.privacy import DPConfig, QuantileClipper, adaptive_noise

__all__ = ["LocalTrainingResult", "adaptive_clipper", "evaluate_model", "per_sample_norms", "poisson_batches", "sample_rate", "steps_per_epoch", "train_locally"]


@dataclass(frozen=True)
class LocalTrainingResult:
    """What one round of local training did."""

    loss: float
    steps: int
    num_examples: int
    seconds: float
    clip_bound: float | None = None  # adaptive clipping: the bound the round ended with


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate giving ``batch_size`` rows per step on average."""
    return min(1.0, batch_size / max(num_examples, 1))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps in one epoch, as Opacus's Poisson loader takes them."""
    return int(1 / sample_rate(num_examples, batch_size))


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


def adaptive_clipper(dp: DPConfig, noise_multiplier: float, n: int, batch_size: int,
                     device: torch.device | str = "cpu") -> QuantileClipper | None:
    """The round's adaptive clipping bound, starting at ``dp.max_grad_norm`` (None for fixed
    clipping); its count noise follows the run's noise multiplier (:func:`adaptive_noise`)."""
    if dp.clipping != "adaptive":
        return None
    return QuantileClipper(dp.max_grad_norm, target_quantile=dp.target_quantile, learning_rate=dp.clip_learning_rate,
                           count_std=adaptive_noise(noise_multiplier)[1], expected_batch_size=sample_rate(n, batch_size) * n,
                           generator=torch.Generator(device=device).manual_seed(secrets.randbits(63)))


class _ProximalPull:
    """FedProx as a data-independent step towards the weights the round started from."""

    def __init__(self, model: RiskModel, mu: float) -> None:
        self.params = list(model.parameters())
        self.anchor = [p.detach().clone() for p in self.params] if mu > 0 else None
        self.rate = float(model.hparams["lr"]) * mu

    def __call__(self) -> None:
        if self.anchor is not None:
            with torch.no_grad():
                for p, p0 in zip(self.params, self.anchor, strict=True):
                    p.sub_(self.rate * (p - p0))


def _train_plain(model: RiskModel, data: TabularDataset, epochs: int, batch_size: int, mu: float, seed: int,
                 class_weights: Sequence[float] | None = None) -> tuple[list[float], int]:
    generator = torch.Generator().manual_seed(seed)
    optimizer, pull, losses = model.configure_optimizers(), _ProximalPull(model, mu), []
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


def poisson_batches(n: int, q: float, steps: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """Row indices of ``steps`` Poisson-sampled batches: each row is in each batch
    independently with probability ``q``.

    The gaps between included rows are i.i.d. Geometric(q), so drawing gaps costs
    O(batch) per step instead of one uniform draw per row.
    """
    if q >= 1.0:
        return [torch.arange(n) for _ in range(steps)]
    expected = n * q
    width = int(expected + 8 * math.sqrt(expected) + 16)
    positions = np.cumsum(rng.geometric(q, size=(steps, width)), axis=1) - 1
    batches = []
    for row in positions:
        while row[-1] < n:  # ran out of gaps before the end of the data (rare): draw more
            row = np.concatenate([row, row[-1] + np.cumsum(rng.geometric(q, size=width))])
        batches.append(torch.from_numpy(row[: np.searchsorted(row, n)]))
    return batches


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
    optimizer, pull, losses, steps = model.configure_optimizers(), _ProximalPull(model, mu), [], 0
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


def _train_opacus(
    model: RiskModel, data: TabularDataset, epochs: int, batch_size: int, dp: DPConfig, noise: float, mu: float,
    class_weights: Sequence[float] | None = None, clipper: QuantileClipper | None = None,
) -> tuple[list[float], int]:
    optimizer = model.configure_optimizers()
    criterion: nn.Module = WeightedBCE(class_weights)  # mean over the batch size: see WeightedBCE
    if clipper is not None:  # adaptive clipping: the gradient's share of the step's noise
        noise = adaptive_noise(noise)[0]
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=_keep_batch)
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
    pull, losses, steps = _ProximalPull(model, mu), [], 0
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


def per_sample_norms(module: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The last backward pass's per-sample gradient norms (before clipping): those Opacus's
    ghost clipping computed, or the norms of its per-sample gradients."""
    norms = getattr(module, "per_sample_gradient_norms", None)
    if norms is not None:
        return norms
    parts = [g.reshape(len(g), -1).norm(2, dim=1) for g in optimizer.grad_samples]  # type: ignore[attr-defined]
    return torch.stack(parts, dim=1).norm(2, dim=1)


def evaluate_model(model: RiskModel, data: TabularDataset) -> dict[str, float]:
    """Risk metrics of ``model`` on encoded rows."""
    probs = model.predict_proba(data.x).numpy()
    return risk_metrics(data.y.numpy(), probs)
