"""Federated image normalisation: per-hospital pixel sums and class counts, pooled into an ImagePreprocessor."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["ImagePreprocessor", "class_counts", "pixel_statistics"]


def pixel_statistics(images: np.ndarray) -> dict[str, Any]:
    """Per-channel sums of a hospital's pixels (scaled to [0, 1]), for a federated mean/std.

    Args:
        images: uint8 array (N, C, H, W).

    Returns:
        JSON-able ``{"pixels": N*H*W, "sum": [C floats], "sumsq": [C floats]}``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    wide = images.astype(np.int64)
    sums = wide.sum(axis=(0, 2, 3))
    sumsq = np.square(wide).sum(axis=(0, 2, 3))
    n, _, h, w = images.shape
    return {"pixels": int(n * h * w), "sum": [float(s) / 255.0 for s in sums],
            "sumsq": [float(s) / 65025.0 for s in sumsq]}


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Images per class index ``0..num_classes-1``."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return [int(c) for c in np.bincount(labels, minlength=num_classes)]


@dataclass(frozen=True)
class ImagePreprocessor:
    """The federation's image normalisation: size, channels, per-channel mean/std, classes."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @classmethod
    def from_statistics(cls, stats: list[dict[str, Any]], *, size: int, channels: int, classes: Sequence[str],
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ImagePreprocessor:
        """Pool the hospitals' :func:`pixel_statistics` into per-channel mean and std.

        A ``mean`` or ``std`` given explicitly (e.g. ImageNet's) is used instead of the pooled one.

        Raises:
            ValueError: If the statistics or the given values do not have ``channels`` entries.
        """
        pooled_mean, pooled_std = [0.0] * channels, [1.0] * channels
        if mean is None or std is None:
            if not stats:
                raise ValueError("no pixel statistics to pool; give mean and std")
            if any(len(s["sum"]) != channels or len(s["sumsq"]) != channels for s in stats):
                raise ValueError(f"pixel statistics must have {channels} channel(s)")
            pixels = sum(int(s["pixels"]) for s in stats)
            if pixels <= 0:
                raise ValueError("pixel statistics hold no pixels")
            for c in range(channels):
                m = sum(s["sum"][c] for s in stats) / pixels
                var = max(sum(s["sumsq"][c] for s in stats) / pixels - m * m, 0.0)
                pooled_mean[c], pooled_std[c] = m, (math.sqrt(var) if var > 1e-12 else 1.0)
        mean_t = tuple(float(v) for v in (pooled_mean if mean is None else mean))
        std_t = tuple(float(v) for v in (pooled_std if std is None else std))
        if len(mean_t) != channels or len(std_t) != channels or min(std_t) <= 0:
            raise ValueError(f"mean and std need {channels} value(s), std > 0; got {mean_t}, {std_t}")
        return cls(size, channels, mean_t, std_t, tuple(str(c) for c in classes))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) or (C, H, W) on any device -> float32 ``(x/255 - mean) / std``."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def to_json(self) -> str:
        """Serialise for messages and model artifacts."""
        return json.dumps({"size": self.size, "channels": self.channels, "mean": self.mean, "std": self.std,
                           "classes": self.classes})

    @classmethod
    def from_json(cls, text: str) -> ImagePreprocessor:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(int(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]), tuple(d["classes"]))
