"""Is the federated training loss rising? The coordinator's warning for runs that diverge."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LOSS_RISING_TAG", "loss_rising"]

#: MLflow run tag carrying the warning.
LOSS_RISING_TAG = "training.loss_rising"


def loss_rising(losses: Sequence[float], *, margin: float = 0.1, min_increase: float = 0.02) -> str | None:
    """A one-line warning when the training loss of the last rounds exceeds its best level.

    The losses are the rounds' federated training losses, in round order (NaN rounds, where
    no hospital reported a loss, are skipped). From 4 rounds on, with ``k = clamp(n // 3, 2,
    3)`` rounds per window, the mean of the last ``k`` rounds is compared with the lowest
    mean of ``k`` consecutive earlier rounds: it must exceed it by ``margin`` (relative) and
    by ``min_increase`` (absolute). Windows of two or more rounds, not single rounds, so that
    one noisy DP round neither raises nor hides the warning.

    Args:
        losses: Training loss per round so far.
        margin: Relative rise that warns.
        min_increase: Absolute rise below which nothing is said (for losses near 0).

    Returns:
        The warning (``training loss rose from 0.52 (rounds 1-2) to 0.81 (rounds 5-6)``), or None.
    """
    rounds = [(r, float(v)) for r, v in enumerate(losses, start=1) if v is not None and math.isfinite(float(v))]
    if len(rounds) < 4:
        return None
    k = min(3, max(2, len(rounds) // 3))
    recent = rounds[-k:]
    recent_mean = sum(v for _, v in recent) / k
    earlier = rounds[:-k]
    if len(earlier) < k:
        return None
    best_mean, best_start = min(
        (sum(v for _, v in earlier[i : i + k]) / k, i) for i in range(len(earlier) - k + 1)
    )
    if recent_mean <= best_mean * (1 + margin) or recent_mean - best_mean < min_increase:
        return None
    return (f"training loss rose from {best_mean:.3f} ({_span(earlier[best_start:best_start + k])}) to {recent_mean:.3f} "
            f"({_span(recent)})")


def _span(window: list[tuple[int, float]]) -> str:
    first, last = window[0][0], window[-1][0]
    return f"round {first}" if first == last else f"rounds {first}-{last}"
