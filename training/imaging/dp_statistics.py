"""Differentially private pixel sums and class counts of a hospital's images for the federated-statistics round."""

from __future__ import annotations

from typing import Any

import numpy as np

from training.dp_statistics import gaussian_noise_scale, release_rng

__all__ = ["dp_pixel_statistics"]


def dp_pixel_statistics(images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                        epsilon: float, delta: float) -> dict[str, Any]:
    """Noised per-channel pixel sums and class counts of a hospital's training images.

    One image changes the pixel count by ``H*W``, each channel's sum and sum of squares
    (pixels in [0, 1]) by at most ``H*W``, and one class count by 1; the classes are the
    spec's (public), so every class count is released (noised, rounded, at least 0).

    Returns:
        ``{"pixels": {"pixels", "sum", "sumsq"}, "classes": [...]}`` as the exact
        statistics round would, plus ``dp``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    n, channels, h, w = images.shape
    area = float(h * w)
    scale = gaussian_noise_scale(epsilon=epsilon, delta=delta, coordinates=2 + 2 * channels)
    rng = release_rng()
    unit = images.astype(np.float64) / 255.0
    sums = unit.sum(axis=(0, 2, 3))
    sumsq = np.square(unit).sum(axis=(0, 2, 3))
    pixels = max(n * area + rng.normal(0, scale * area), area)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    classes = [max(int(round(c + rng.normal(0, scale))), 0) for c in counts]
    return {
        "pixels": {"pixels": pixels,
                   "sum": [float(s + rng.normal(0, scale * area)) for s in sums],
                   "sumsq": [float(s + rng.normal(0, scale * area)) for s in sumsq]},
        "classes": classes,
        "dp": {"epsilon": epsilon, "delta": delta, "noise_scale": scale},
    }
