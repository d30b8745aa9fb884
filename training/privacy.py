"""DP-SGD settings and privacy accounting (Opacus accountants)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.errors import PrivacyConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CLIPPING_MODES",
    "COUNT_NOISE_FACTOR",
    "GRAD_SAMPLE_MODES",
    "DPConfig",
    "QuantileClipper",
    "adaptive_noise",
    "epsilon_after",
    "noise_for_budget",
]

#: Per-sample clipping implementations: ``fused`` (ours, Linear-only models, one
#: backward pass; see :mod:`training.tabular.fused_dp`) and Opacus's ``hooks`` (materialised
#: per-sample gradients), ``ghost`` (fast gradient clipping) and ``functorch`` (vmap).
GRAD_SAMPLE_MODES = ("fused", "hooks", "ghost", "functorch")

#: RDP orders for the ``rdp`` accountant: integers have a closed form (Mironov et al.,
#: 2019) that is several times faster than Opacus's default fractional orders; any set
#: of orders gives a valid bound, and the best order is an integer in practice.
RDP_ORDERS = (*range(2, 65), 80, 96, 128, 256)

#: ``fixed``: every step clips to ``max_grad_norm``. ``adaptive``: the bound follows a
#: quantile of the per-sample gradient norms (Andrew et al., 2021), from ``max_grad_norm``.
CLIPPING_MODES = ("fixed", "adaptive")

#: Adaptive clipping's noise on the unclipped count, relative to the run's noise
#: multiplier: ``sigma_b = 1.2 * sigma`` raises the gradient's noise by 10% (see
#: :func:`adaptive_noise`) and keeps the noisy unclipped fraction usable on small batches.
COUNT_NOISE_FACTOR = 1.2


@dataclass(frozen=True)
class DPConfig:
    """How a hospital privatises its local training.

    Attributes:
        enabled: False trains without privacy (for comparison only).
        target_epsilon: Epsilon the whole run may spend at this hospital; the noise is
            calibrated to it. Exclusive with ``noise_multiplier``.
        target_delta: Delta of the (epsilon, delta) guarantee.
        noise_multiplier: Fixed Gaussian noise scale instead of a target epsilon.
        max_grad_norm: Per-sample gradient clipping bound.
        grad_sample_mode: Opacus mode used to compute per-sample gradient norms.
        accountant: Opacus accountant (``rdp`` or ``prv``).
        clipping: ``fixed`` or ``adaptive`` (quantile-based; ``max_grad_norm`` is then the
            first bound).
        target_quantile: Adaptive clipping: the share of per-sample gradients left unclipped.
        clip_learning_rate: Adaptive clipping: the geometric step of the bound per DP step.
    """

    enabled: bool = True
    target_epsilon: float | None = 3.0
    target_delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "fused"
    accountant: str = "rdp"
    clipping: str = "fixed"
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        for name in ("target_epsilon", "target_delta", "noise_multiplier", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise PrivacyConfigError(f"{name} must be a finite number, not {value}")
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise PrivacyConfigError("set exactly one of target_epsilon and noise_multiplier")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise PrivacyConfigError("target_epsilon must be positive")
        if self.noise_multiplier is not None and self.noise_multiplier <= 0:
            raise PrivacyConfigError("noise_multiplier must be positive")
        if not 0 < self.target_delta < 1:
            raise PrivacyConfigError("target_delta must be between 0 and 1")
        if self.max_grad_norm <= 0:
            raise PrivacyConfigError("max_grad_norm must be positive")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise PrivacyConfigError(f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}")
        if self.accountant not in ("rdp", "prv"):
            raise PrivacyConfigError("accountant must be rdp or prv")
        if self.clipping not in CLIPPING_MODES:
            raise PrivacyConfigError("clipping must be fixed or adaptive")
        if not 0 < self.target_quantile < 1:
            raise PrivacyConfigError("target_quantile must be between 0 and 1")
        if not 0 < self.clip_learning_rate <= 1:
            raise PrivacyConfigError("clip_learning_rate must be in (0, 1]")

    def noise_multiplier_for(self, *, sample_rate: float, total_steps: int) -> float:
        """The noise scale for a run of ``total_steps`` steps at ``sample_rate``."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.target_epsilon is not None
        return noise_for_budget(
            target_epsilon=self.target_epsilon,
            delta=self.target_delta,
            sample_rate=sample_rate,
            steps=total_steps,
            accountant=self.accountant,
        )


@functools.lru_cache(maxsize=256)
def noise_for_budget(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """Smallest noise multiplier (to 1%) whose ``steps`` DP-SGD steps spend at most ``target_epsilon``.

    Cached: a hospital calibrates once per run, not once per round.

    Raises:
        PrivacyConfigError: if no noise scale reaches the target.
    """
    steps = max(steps, 1)
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise PrivacyConfigError(f"target epsilon must be a positive finite number, not {target_epsilon}")
    if accountant != "rdp":
        from opacus.accountants.utils import get_noise_multiplier

        try:
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps, accountant=accountant))
        except ValueError as err:
            raise PrivacyConfigError(f"cannot reach epsilon {target_epsilon}: {err}") from err

    def spent(sigma: float) -> float:
        return epsilon_after(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta)

    low, high = 0.0, 10.0
    while spent(high) > target_epsilon:
        high *= 2
        if high > 1e4:
            raise PrivacyConfigError(f"cannot reach epsilon {target_epsilon} with delta {delta} in {steps} steps")
    while high - low > 0.01 * high:
        mid = (low + high) / 2
        if spent(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def epsilon_after(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon spent by ``steps`` Poisson-sampled DP-SGD steps (0 for no steps)."""
    if steps <= 0:
        return 0.0
    if accountant == "rdp":
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

        rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=RDP_ORDERS)
        eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    else:
        from opacus.accountants import create_accountant

        acc = create_accountant(accountant)
        acc.history = [(noise_multiplier, sample_rate, steps)]
        eps = acc.get_epsilon(delta=delta)
    eps = float(eps)
    return eps if math.isfinite(eps) else float("inf")


def adaptive_noise(noise_multiplier: float) -> tuple[float, float]:
    """Gradient noise multiplier and unclipped-count noise (std, in examples) of adaptive
    clipping, such that the two releases of a step together cost what one Gaussian release
    at ``noise_multiplier`` costs (Andrew et al., 2021, Theorem 1):
    ``sigma_grad = (sigma^-2 - (2 sigma_b)^-2)^-1/2`` with ``sigma_b = COUNT_NOISE_FACTOR * sigma``.

    The accountant is therefore run at ``noise_multiplier``, as for fixed clipping.
    """
    count_std = COUNT_NOISE_FACTOR * noise_multiplier
    grad = (noise_multiplier**-2 - (2 * count_std) ** -2) ** -0.5
    return grad, count_std


class QuantileClipper:
    """The clipping bound of adaptive clipping, moved after each DP step towards the
    ``target_quantile`` of per-sample gradient norms (geometric update of Andrew et al.):
    ``C <- C * exp(-eta * (b - gamma))``, ``b`` the noisy share of the expected batch whose
    gradient norm was at most ``C``.

    Args:
        bound: The first clipping bound.
        target_quantile: ``gamma``, the share of gradients to leave unclipped.
        learning_rate: ``eta``.
        count_std: Gaussian noise (std, in examples) on the unclipped count.
        expected_batch_size: Poisson sampling's expected batch, the count's denominator
            (public, unlike the batch's actual size).
        generator: Random generator for the count's noise.
    """

    #: The bound never leaves [MIN_BOUND, MAX_BOUND].
    MIN_BOUND, MAX_BOUND = 1e-6, 1e6

    def __init__(self, bound: float, *, target_quantile: float, learning_rate: float, count_std: float,
                 expected_batch_size: float, generator: torch.Generator | None = None) -> None:
        self.bound = float(bound)
        self.target_quantile = target_quantile
        self.learning_rate = learning_rate
        self.count_std = count_std
        self.expected_batch_size = max(expected_batch_size, 1e-9)
        self.generator = generator

    def update(self, norms: torch.Tensor | None) -> float:
        """Release the noisy unclipped count of one step's per-sample gradient ``norms``
        (None or empty for an empty batch) and move the bound; returns the new bound."""
        import torch

        unclipped = 0.0 if norms is None else float((norms <= self.bound).sum())
        device = self.generator.device if self.generator is not None else "cpu"
        noise = float(torch.normal(0.0, self.count_std, (1,), generator=self.generator, device=device))
        share = (unclipped + noise) / self.expected_batch_size
        self.bound *= math.exp(-self.learning_rate * (share - self.target_quantile))
        self.bound = min(max(self.bound, self.MIN_BOUND), self.MAX_BOUND)
        return self.bound
