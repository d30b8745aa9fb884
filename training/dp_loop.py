"""DP-SGD loop helpers every modality shares: Poisson batches, adaptive clipping, FedProx pull, round result."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.classifier import ClassifierModule
from training.privacy import DPConfig, QuantileClipper, adaptive_noise

__all__ = ["LocalTrainingResult", "ProximalPull", "adaptive_clipper", "per_sample_norms", "poisson_batches", "sample_rate",
           "steps_per_epoch"]


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


def adaptive_clipper(dp: DPConfig, noise_multiplier: float, n: int, batch_size: int,
                     device: torch.device | str = "cpu") -> QuantileClipper | None:
    """The round's adaptive clipping bound, starting at ``dp.max_grad_norm`` (None for fixed
    clipping); its count noise follows the run's noise multiplier (:func:`adaptive_noise`)."""
    if dp.clipping != "adaptive":
        return None
    return QuantileClipper(dp.max_grad_norm, target_quantile=dp.target_quantile, learning_rate=dp.clip_learning_rate,
                           count_std=adaptive_noise(noise_multiplier)[1], expected_batch_size=sample_rate(n, batch_size) * n,
                           generator=torch.Generator(device=device).manual_seed(secrets.randbits(63)))


class ProximalPull:
    """FedProx as a data-independent step towards the weights the round started from."""

    def __init__(self, model: ClassifierModule, mu: float) -> None:
        self.params = list(model.parameters())
        self.anchor = [p.detach().clone() for p in self.params] if mu > 0 else None
        self.rate = float(model.hparams["lr"]) * mu

    def __call__(self) -> None:
        if self.anchor is not None:
            with torch.no_grad():
                for p, p0 in zip(self.params, self.anchor, strict=True):
                    p.sub_(self.rate * (p - p0))


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


def per_sample_norms(module: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The last backward pass's per-sample gradient norms (before clipping): those Opacus's
    ghost clipping computed, or the norms of its per-sample gradients."""
    norms = getattr(module, "per_sample_gradient_norms", None)
    if norms is not None:
        return norms
    parts = [g.reshape(len(g), -1).norm(2, dim=1) for g in optimizer.grad_samples]  # type: ignore[attr-defined]
    return torch.stack(parts, dim=1).norm(2, dim=1)
