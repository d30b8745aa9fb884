"""DP-SGD settings and privacy accounting (Opacus accountants)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from training.errors import PrivacyConfigError

__all__ = ["DPConfig", "GRAD_SAMPLE_MODES", "epsilon_after", "noise_for_budget"]

#: Per-sample clipping implementations: ``fused`` (ours, Linear-only models, one
#: backward pass; see :mod:`training.fused_dp`) and Opacus's ``hooks`` (materialised
#: per-sample gradients), ``ghost`` (fast gradient clipping) and ``functorch`` (vmap).
GRAD_SAMPLE_MODES = ("fused", "hooks", "ghost", "functorch")

#: RDP orders for the ``rdp`` accountant: integers have a closed form (Mironov et al.,
#: 2019) that is several times faster than Opacus's default fractional orders; any set
#: of orders gives a valid bound, and the best order is an integer in practice.
RDP_ORDERS = (*range(2, 65), 80, 96, 128, 256)


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
    """

    enabled: bool = True
    target_epsilon: float | None = 3.0
    target_delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "fused"
    accountant: str = "rdp"

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
        rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=RDP_ORDERS)
        eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    else:
        acc = create_accountant(accountant)
        acc.history = [(noise_multiplier, sample_rate, steps)]
        eps = acc.get_epsilon(delta=delta)
    eps = float(eps)
    return eps if math.isfinite(eps) else float("inf")
