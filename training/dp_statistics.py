"""The Gaussian mechanism shared by every modality's DP statistics release: noise scale and fresh entropy.

What the releases hold and why they cost exactly ``(epsilon, delta)``: docs/privacy.md.
"""

from __future__ import annotations

import math

import numpy as np

from training.privacy import noise_for_budget

__all__ = ["gaussian_noise_scale", "release_rng"]


def gaussian_noise_scale(*, epsilon: float, delta: float, coordinates: int) -> float:
    """Noise standard deviation per unit of sensitivity for ``coordinates`` numbers released
    together at ``(epsilon, delta)`` (each coordinate's noise is this times its bound)."""
    z = noise_for_budget(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1)
    return z * math.sqrt(max(coordinates, 1))


def release_rng() -> np.random.Generator:
    """Fresh OS entropy every release: noise that could be replayed could be subtracted."""
    return np.random.default_rng()
