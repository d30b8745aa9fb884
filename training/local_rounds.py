"""What every modality's local round shares: the round's DP settings, seed and clip-bound metric."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

__all__ = ["clip_metrics", "round_dp_config", "round_seed"]


def round_dp_config(spec: Any, clip_bound: float | None) -> Any:
    """The spec's DP settings (a ``DPConfig``) for one round: with adaptive clipping,
    starting from the coordinator's ``clip_bound`` when it sent one (a positive finite number)."""
    dp = spec.privacy.dp_config
    if dp.enabled and dp.clipping == "adaptive" and clip_bound is not None and math.isfinite(clip_bound) and clip_bound > 0:
        return replace(dp, max_grad_norm=clip_bound)
    return dp


def round_seed(spec: Any, server_round: int) -> int:
    """The local round's seed: the spec's seed and the round, so reruns draw the same batches."""
    return int(spec.seed) * 100_003 + server_round


def clip_metrics(clip_bound: float | None) -> dict[str, float]:
    """The round's final adaptive clipping bound as the ``clip-bound`` metric (none for fixed)."""
    return {"clip-bound": clip_bound} if clip_bound is not None else {}
