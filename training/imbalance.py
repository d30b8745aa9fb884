"""Class weights for imbalanced data: resolved from federation-wide class counts, applied as
per-sample loss weights (before DP-SGD's per-sample clipping, so the guarantee is unchanged)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import ClassWeightsError, TrainingError

__all__ = ["WeightedBCE", "WeightedCrossEntropy", "balanced_weights", "received_class_weights", "resolve_class_weights"]


def balanced_weights(counts: Sequence[float]) -> list[float]:
    """``n / (K * n_k)`` per class (scikit-learn's ``balanced``): the weighted classes count
    equally and the weighted mean over the training rows is 1.

    Counts may be DP-noised: each is floored at 1 so an absent or noised-away class gets a
    large but finite weight.
    """
    floored = [max(float(c), 1.0) for c in counts]
    total, k = sum(floored), len(floored)
    return [total / (k * c) for c in floored]


def resolve_class_weights(setting: str | Mapping[str, float], classes: Sequence[str],
                          counts: Sequence[float] | None) -> list[float] | None:
    """The loss weight of each class, in model output order, or None for unweighted.

    Args:
        setting: ``"none"``, ``"balanced"`` or ``{class name: weight}`` (classes not named
            weigh 1).
        classes: Class names in output order (``["0", "1"]`` for a binary risk model).
        counts: Federation-wide training counts per class (needed for ``balanced``).

    Raises:
        ClassWeightsError: ``balanced`` without counts, or a weight for a class not in ``classes``.
    """
    if setting == "none":
        return None
    if setting == "balanced":
        if counts is None or len(counts) != len(classes):
            raise ClassWeightsError("class_weights balanced needs the federation's class counts (statistics round)")
        return balanced_weights(counts)
    assert not isinstance(setting, str)
    unknown = [c for c in setting if c not in classes]
    if unknown:
        raise ClassWeightsError(f"class_weights: {unknown[0]} is not a class ({', '.join(classes)})")
    weights = [float(setting.get(c, 1.0)) for c in classes]
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ClassWeightsError("class_weights: every weight must be a positive number")
    return weights


def received_class_weights(text: str, num_classes: int) -> list[float]:
    """The class weights a round's config carries, checked before any training: one finite,
    positive number per class (a hospital refuses anything else instead of training on it).

    Raises:
        TrainingError: naming what is wrong with the weights.
    """
    try:
        weights = json.loads(text)
    except ValueError as err:
        raise TrainingError(f"class weights from the coordinator are not JSON: {err}") from err
    if not isinstance(weights, list) or len(weights) != num_classes:
        raise TrainingError(f"class weights from the coordinator: expected a list of {num_classes} numbers, got {text[:80]!r}")
    if not all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in weights):
        raise TrainingError(f"class weights from the coordinator must be finite positive numbers, got {text[:80]!r}")
    return [float(w) for w in weights]


class WeightedBCE(nn.Module):
    """Binary cross-entropy on logits with a per-class weight on each sample's loss.

    ``reduction="mean"`` divides the weighted sum by the batch size (not by the sum of
    weights, as ``nn.BCEWithLogitsLoss(weight=...)`` would): Opacus's ``loss_reduction="mean"``
    rescales per-sample gradients by that batch size, so each sample's gradient is exactly
    ``w[y_i] * grad l_i`` before it is clipped. ``"none"`` returns the weighted per-sample
    losses (the fused DP engine, ghost clipping).
    """

    def __init__(self, weights: Sequence[float] | None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction
        self.register_buffer("weights", torch.tensor(list(weights) if weights else [1.0, 1.0], dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted loss of each sample, or their mean over the batch."""
        per_sample = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_sample = per_sample * self.weights[target.long()]
        return per_sample.mean() if self.reduction == "mean" else per_sample


class WeightedCrossEntropy(nn.Module):
    """Multi-class cross-entropy with a per-class weight on each sample's loss; ``mean`` over
    the batch size, as :class:`WeightedBCE` (and unlike ``nn.CrossEntropyLoss(weight=...)``)."""

    def __init__(self, weights: Sequence[float] | None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction
        self.weights: torch.Tensor | None
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32) if weights else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted loss of each sample, or their mean over the batch."""
        per_sample = F.cross_entropy(logits, target, reduction="none")
        if self.weights is not None:
            per_sample = per_sample * self.weights.to(per_sample.device)[target]
        return per_sample.mean() if self.reduction == "mean" else per_sample
