"""Image classifiers: a small CNN and a GroupNorm ResNet-18, built by kind, and the default device."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.classifier import ClassifierModule

__all__ = ["HEAD_GRID", "LARGE_INPUT", "VISION_KINDS", "ResNet18", "SmallCNN", "VisionModel", "build_vision_model", "default_device"]

LARGE_INPUT = 64


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm (Opacus-compatible, unlike BatchNorm) with up to 32 groups of >= 2 channels."""
    groups = max(g for g in range(1, min(32, max(channels // 2, 1)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class VisionModel(ClassifierModule):
    """Image classifier: ``forward`` maps float ``(N, C, H, W)`` to ``(N, num_classes)`` logits.

    Subclasses build ``self.net``. Only layers Opacus supports (Conv2d, GroupNorm, Linear,
    ReLU, pooling, dropout) are used, so every model trains with DP-SGD as it is.
    """

    def __init__(self, in_channels: int, num_classes: int, lr: float = 1e-3, optimizer: str = "adam", width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.criterion = nn.CrossEntropyLoss()
        self.net: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes)."""
        return self.net(x)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities: the softmax of each image's logits (rows sum to 1)."""
        return torch.softmax(logits, dim=-1)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU())


HEAD_GRID = 4


class SmallCNN(VisionModel):
    """Three 3x3 conv blocks (width, 2x, 4x channels; max-pooled between) and a linear head
    on features average-pooled to a 4x4 grid: any input size, and quick to train because the
    head keeps where in the image a finding is (a global average pool learned several times
    more slowly on the synthetic hospitals, which matters under DP's short budgets)."""

    def __init__(
        self, in_channels: int, num_classes: int, lr: float = 1e-3, optimizer: str = "adam", width: int = 16, dropout: float = 0.0
    ) -> None:
        super().__init__(in_channels, num_classes, lr, optimizer, width)
        self.net = nn.Sequential(
            _conv(in_channels, width), nn.MaxPool2d(2),
            _conv(width, 2 * width), nn.MaxPool2d(2),
            _conv(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(HEAD_GRID), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(4 * width * HEAD_GRID * HEAD_GRID, num_classes),
        )


class _BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _norm(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet18(VisionModel):
    """ResNet-18 ([2, 2, 2, 2] basic blocks) with GroupNorm instead of BatchNorm.

    The stem follows the input size. With ``image_size`` set, it is fixed: ImageNet's 7x7/2
    convolution + max-pool for ``image_size >= 64``, CIFAR's 3x3/1 convolution below. With
    ``image_size=None`` the stem is a 3x3 convolution whose input is average-pooled 2x and
    whose output is max-pooled 2x when an input is >= 64 px (decided per forward; the weights
    are the same either way). Adaptive average pooling lets 28..224 px all work.
    """

    def __init__(
        self, in_channels: int, num_classes: int, lr: float = 1e-3, optimizer: str = "adam", width: int = 64,
        image_size: int | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, lr, optimizer, width)
        self.imagenet_stem = image_size is not None and image_size >= LARGE_INPUT
        if self.imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), _norm(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = _conv(in_channels, width)
        self.downsample = image_size is None  # pool large inputs around the 3x3 stem
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks += [_BasicBlock(cin, cout, 1 if stage == 0 else 2), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes)."""
        large = self.downsample and min(x.shape[-2:]) >= LARGE_INPUT
        if large:
            x = F.avg_pool2d(x, 2)
        x = self.stem(x)
        if large:
            x = F.max_pool2d(x, 3, 2, 1)
        return self.net(x)


VISION_KINDS: dict[str, type[VisionModel]] = {"cnn": SmallCNN, "resnet18": ResNet18}


def build_vision_model(kind: str, in_channels: int, num_classes: int, **hparams: Any) -> VisionModel:
    """Instantiate an image classifier by kind (``cnn`` or ``resnet18``)."""
    try:
        cls = VISION_KINDS[kind]
    except KeyError as err:
        raise ValueError(f"unknown vision model kind {kind!r}; choose one of {sorted(VISION_KINDS)}") from err
    return cls(in_channels, num_classes, **hparams)


def default_device() -> torch.device:
    """``$BIOVERSE_DEVICE`` if set, else the GPU when there is one, else the CPU."""
    name = os.environ.get("BIOVERSE_DEVICE", "").strip()
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
