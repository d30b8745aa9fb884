"""uint8 images on the device, cast, augmented and normalised a batch at a time (no DataLoader)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["GPU_DATA_SHARE", "Augment", "DeviceImages", "augment_batch", "class_labels"]


@dataclass(frozen=True)
class Augment:
    """Random training-time augmentation, drawn per image.

    Attributes:
        hflip: Mirror left-right with probability 1/2.
        vflip: Mirror top-bottom with probability 1/2.
        rotate: Largest rotation, in degrees either way.
        translate: Largest shift, as a fraction of the image size, along each axis.
        brightness: Largest additive brightness change (pixels in [0, 1]).
        contrast: Largest relative contrast change around the image's mean.
    """

    hflip: bool = False
    vflip: bool = False
    rotate: float = 10.0
    translate: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a float batch of pixels in [0, 1], ``(N, C, H, W)``, on its own device.

    One random affine transform per image (a single ``grid_sample`` for the batch), then
    flips and brightness/contrast jitter; the result is clipped to [0, 1]. ``generator``
    must live on ``x``'s device; the same generator state gives the same batch.
    """
    n = x.shape[0]
    u = torch.rand(n, 7, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1  # U(-1, 1)
    if aug.rotate or aug.translate:
        angle = u[:, 0] * math.radians(aug.rotate)
        cos, sin = torch.cos(angle), torch.sin(angle)
        shift = u[:, 1:3] * 2 * aug.translate  # affine_grid coordinates span 2 per image
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.hflip:
        x = torch.where((u[:, 3] < 0).view(n, 1, 1, 1), x.flip(-1), x)
    if aug.vflip:
        x = torch.where((u[:, 4] < 0).view(n, 1, 1, 1), x.flip(-2), x)
    if aug.contrast:
        centre = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - centre) * (1 + aug.contrast * u[:, 5]).view(n, 1, 1, 1) + centre
    if aug.brightness:
        x = x + (aug.brightness * u[:, 6]).view(n, 1, 1, 1)
    return x.clamp(0.0, 1.0)


GPU_DATA_SHARE = 0.25


class DeviceImages:
    """uint8 images on the device (once), cast, augmented and normalised a batch at a time."""

    def __init__(self, images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W); got {x.dtype} of shape {tuple(x.shape)}")
        channels = x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}); got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError("std must be positive")
        self.device = device
        on_host = device.type == "cuda" and x.nbytes > GPU_DATA_SHARE * torch.cuda.mem_get_info(device)[0]
        self.x = x.pin_memory() if on_host else x.to(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1 / (255 * self.std), self.mean / self.std

    def __len__(self) -> int:
        return self.x.shape[0]

    def get(self, idx: torch.Tensor | slice, augment: Augment | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised float images ``idx``, augmented if asked."""
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.x.device)
        raw = self.x[idx].to(self.device, non_blocking=True)
        if augment is None:
            return raw.float() * self.scale - self.shift  # (x / 255 - mean) / std in one pass
        return (augment_batch(raw.float() / 255, augment, generator) - self.mean) / self.std


def class_labels(labels: np.ndarray | torch.Tensor, n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(labels).long().reshape(-1)
    if len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes}); got {int(y.min())}..{int(y.max())}")
    return y.to(device)
