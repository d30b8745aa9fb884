"""Image classifiers (a small CNN, a GroupNorm ResNet-18) and their local DP-SGD training.

Images travel as uint8 ``(N, C, H, W)``; they are moved to the device once and each batch
is cast, augmented and normalised there, so no DataLoader (and no worker process) is
involved. DP-SGD uses Opacus's per-sample clipping (``hooks``, ``ghost`` or ``functorch``)
with Poisson sampling and an unpredictable seed, as :mod:`training.tabular.local` does for tables.
"""

from __future__ import annotations

import math
import os
import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.utils.tensor_utils import unfold2d
from opacus.validators import ModuleValidator
from sklearn.metrics import roc_auc_score
from torch import nn

from training.errors import PrivacyConfigError
from training.imbalance import WeightedCrossEntropy
from training.tabular.local import (
    LocalTrainingResult,
    _ProximalPull,
    adaptive_clipper,
    poisson_batches,
    sample_rate,
    steps_per_epoch,
)
from training.tabular.models import ClassifierModule
from training.privacy import DPConfig, QuantileClipper, adaptive_noise

__all__ = [
    "Augment", "ResNet18", "SmallCNN", "VISION_KINDS", "VisionModel", "augment_batch", "build_vision_model",
    "default_device", "evaluate_vision", "predict_vision", "train_vision_locally",
]

#: Inputs at least this many pixels wide are downsampled 4x in ResNet-18's stem.
LARGE_INPUT = 64


_BatchFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


#: SmallCNN's head sees the last feature map average-pooled to this grid.
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


def default_device() -> torch.device:
    """``$BIOVERSE_DEVICE`` if set, else the GPU when there is one, else the CPU."""
    name = os.environ.get("BIOVERSE_DEVICE", "").strip()
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: A dataset larger than this share of the GPU's free memory stays on the host (pinned).
GPU_DATA_SHARE = 0.25


class _Batches:
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


def _labels(labels: np.ndarray | torch.Tensor, n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(labels).long().reshape(-1)
    if len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes}); got {int(y.min())}..{int(y.max())}")
    return y.to(device)


def train_vision_locally(
    model: VisionModel,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    epochs: int,
    batch_size: int,
    dp: DPConfig | None,
    noise_multiplier: float | None = None,
    proximal_mu: float = 0.0,
    augment: Augment | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    class_weights: Sequence[float] | None = None,
) -> LocalTrainingResult:
    """Train ``model`` in place on one hospital's images.

    Args:
        model: The classifier, holding the current global weights; back on the CPU after.
        images: uint8 ``(N, C, H, W)`` pixels.
        labels: Class indices ``(N,)``.
        mean: Per-channel mean of ``x / 255`` (the federation's pooled statistics).
        std: Per-channel standard deviation of ``x / 255``.
        epochs: Local epochs.
        batch_size: Expected images per step.
        dp: DP-SGD settings, or None (or disabled) for plain training. ``grad_sample_mode``
            ``hooks``, ``ghost`` or ``functorch``; ``fused`` is for tabular models only.
        noise_multiplier: Gaussian noise scale for DP-SGD (from the run's plan).
        proximal_mu: FedProx coefficient, applied as a data-independent pull towards the
            round's starting weights after each step (it spends no privacy).
        augment: Per-batch augmentation on the device, or None.
        seed: Seed of plain training's shuffling and of the augmentation. DP-SGD's Poisson
            sampling and noise come from an unpredictable seed instead.
        device: Where to train; :func:`default_device` when None.
        class_weights: Loss weight per class (None: unweighted), applied to each image's
            loss before DP-SGD clips its gradient (docs/imbalance.md).

    Returns:
        Mean loss, steps taken (empty DP batches included), images and seconds.

    Raises:
        PrivacyConfigError: ``fused`` mode, or a model Opacus cannot privatise.
        ValueError: missing noise multiplier, or images/labels/statistics that do not fit.
    """
    started = time.perf_counter()
    private = dp is not None and dp.enabled
    if private:
        assert dp is not None
        if noise_multiplier is None:
            raise ValueError("DP-SGD needs the run's noise multiplier")
        if dp.grad_sample_mode not in ("hooks", "ghost", "functorch"):
            raise PrivacyConfigError(
                f"grad_sample_mode {dp.grad_sample_mode!r} is for tabular models; images use 'ghost', 'hooks' or 'functorch'")
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise PrivacyConfigError(f"Opacus cannot privatise this model: {errors[0]}")
    target = torch.device(device) if device is not None else default_device()
    data = _Batches(images, mean, std, target)
    if len(data) == 0:
        raise ValueError("no training images")
    y = _labels(labels, len(data), int(model.hparams["num_classes"]), target)
    aug_gen = torch.Generator(device=target).manual_seed(seed) if augment is not None else None
    model.to(target)
    clipper: QuantileClipper | None = None
    try:
        def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return data.get(idx, augment, aug_gen), y[idx]

        if private:
            assert dp is not None and noise_multiplier is not None
            clipper = adaptive_clipper(dp, noise_multiplier, len(data), batch_size, target)
            losses, steps = _train_dp(model, len(data), batch, epochs, batch_size, dp, noise_multiplier, proximal_mu, target,
                                      class_weights, clipper)
        else:
            losses, steps = _train_plain(model, len(data), batch, epochs, batch_size, proximal_mu, seed, target, class_weights)
        mean_loss = float(torch.stack(losses).mean()) if losses else math.nan
    finally:
        model.zero_grad(set_to_none=True)
        model.to("cpu")
    bound = clipper.bound if clipper is not None else None
    return LocalTrainingResult(mean_loss, steps, len(data), time.perf_counter() - started, clip_bound=bound)


def _train_plain(
    model: VisionModel, n: int, batch: _BatchFn, epochs: int, batch_size: int, mu: float, seed: int, device: torch.device,
    class_weights: Sequence[float] | None = None,
) -> tuple[list[torch.Tensor], int]:
    generator = torch.Generator().manual_seed(seed)
    optimizer, pull, losses = model.configure_optimizers(), _ProximalPull(model, mu), []  # type: ignore[arg-type]
    criterion = WeightedCrossEntropy(class_weights)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).to(device).split(batch_size):
            x, y = batch(idx)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            pull()
            losses.append(loss.detach())
    return losses, len(losses)


def _per_sample_norms(gsm: nn.Module, optimizer: DPOptimizer) -> torch.Tensor:
    """The last backward pass's per-sample gradient norms (before clipping)."""
    if isinstance(gsm, _GhostClipping):
        return gsm.per_sample_gradient_norms
    norms = [g.reshape(len(g), -1).norm(2, dim=1) for g in optimizer.grad_samples]
    return torch.stack(norms, dim=1).norm(2, dim=1)


def _noise_only_step(optimizer: DPOptimizer) -> None:
    """An empty Poisson batch still takes a step: noise only, as DP-SGD's analysis assumes."""
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    for p in optimizer.params:
        noise = torch.normal(0.0, std, size=p.shape, device=p.device, generator=optimizer.generator)
        p.grad = noise / optimizer.expected_batch_size
    optimizer.original_optimizer.step()


def _conv2d_norm_sample(layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
    """Per-sample gradient norms of a Conv2d without keeping per-sample gradients.

    Image ``i``'s weight gradient is ``G_i U_i^T`` (``G_i``: output gradients, ``c x L``;
    ``U_i``: unfolded input patches, ``k x L``). Its squared norm is computed directly, or as
    ``<U_i^T U_i, G_i^T G_i>`` (ghost norm) when the ``L x L`` Gram matrices are cheaper.
    """
    a = activations[0].to(backprops.dtype)
    n = a.shape[0]
    if layer.groups != 1 or isinstance(layer.padding, str) or n == 0:
        grads = compute_conv_grad_sample(layer, activations, backprops)
        return {p: g.reshape(n, -1).norm(dim=1) for p, g in grads.items()}
    u = unfold2d(a, kernel_size=layer.kernel_size, padding=layer.padding, stride=layer.stride, dilation=layer.dilation)
    g = backprops.reshape(n, layer.out_channels, -1)
    (k, length), c = u.shape[1:], g.shape[1]
    norms: dict[torch.Tensor, torch.Tensor] = {}
    if layer.weight.requires_grad:
        if length * (k + c) < k * c:
            sq = (torch.bmm(u.transpose(1, 2), u) * torch.bmm(g.transpose(1, 2), g)).sum(dim=(1, 2))
        else:
            sq = torch.bmm(g, u.transpose(1, 2)).square().sum(dim=(1, 2))
        norms[layer.weight] = sq.clamp(min=0).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = g.sum(dim=2).norm(dim=1)
    return norms


class _GhostClipping(GradSampleModuleFastGradientClipping):
    """Opacus's ghost clipping with norms for Conv2d too (Opacus 1.6 has them for Linear and
    Embedding only, and otherwise materialises each layer's per-sample gradients)."""

    NORM_SAMPLERS = {**GradSampleModuleFastGradientClipping.NORM_SAMPLERS, nn.Conv2d: _conv2d_norm_sample}


def _train_dp(
    model: VisionModel, n: int, batch: _BatchFn, epochs: int, batch_size: int, dp: DPConfig, noise: float, mu: float,
    device: torch.device, class_weights: Sequence[float] | None = None, clipper: QuantileClipper | None = None,
) -> tuple[list[torch.Tensor], int]:
    q = sample_rate(n, batch_size)
    sampler = np.random.default_rng(secrets.randbits(128))
    noise_gen = torch.Generator(device=device).manual_seed(secrets.randbits(63))
    clip, expected = dp.max_grad_norm, q * n
    if clipper is not None:  # adaptive clipping: the gradient's share of the step's noise
        noise = adaptive_noise(noise)[0]
    # mean over the batch size: Opacus rescales per-sample gradients by it, so each image's
    # gradient is its class weight times its loss gradient before clipping
    criterion = WeightedCrossEntropy(class_weights)
    gsm: GradSampleModule | _GhostClipping
    loss_fn: Callable[..., Any]
    optimizer: DPOptimizer
    if dp.grad_sample_mode == "ghost":
        gsm = _GhostClipping(model, batch_first=True, loss_reduction="mean", max_grad_norm=clip)
        optimizer = DPOptimizerFastGradientClipping(model.configure_optimizers(), noise_multiplier=noise, max_grad_norm=clip,
                                                    expected_batch_size=expected, generator=noise_gen)
        loss_fn = DPLossFastGradientClipping(gsm, optimizer, criterion, "mean")
    else:
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", force_functorch=dp.grad_sample_mode == "functorch")
        optimizer = DPOptimizer(model.configure_optimizers(), noise_multiplier=noise, max_grad_norm=clip,
                                expected_batch_size=expected, generator=noise_gen)
        loss_fn = criterion
    pull, losses, steps = _ProximalPull(model, mu), [], 0  # type: ignore[arg-type]
    gsm.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full backward hooks on inputs without grad
            for _ in range(epochs):
                for idx in poisson_batches(n, q, steps_per_epoch(n, batch_size), sampler):
                    steps += 1
                    optimizer.zero_grad(set_to_none=True)
                    norms = None
                    if len(idx) == 0:
                        _noise_only_step(optimizer)
                    else:
                        x, y = batch(idx.to(device))
                        loss = loss_fn(gsm(x), y)
                        loss.backward()
                        norms = _per_sample_norms(gsm, optimizer) if clipper is not None else None
                        optimizer.step()
                        losses.append(loss.detach())
                    if clipper is not None:
                        optimizer.max_grad_norm = clipper.update(norms)
                        if isinstance(gsm, _GhostClipping):
                            gsm.max_grad_norm = clipper.bound
                    pull()
    finally:
        gsm._close()  # remove Opacus hooks: the plain module goes back to the caller
        for p in model.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad  # the DPOptimizer's last clipped sum
    return losses, steps


@torch.inference_mode()
def _probabilities(model: VisionModel, data: _Batches, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        parts = [torch.softmax(model(data.get(slice(i, i + batch_size))).double(), dim=-1) for i in range(0, len(data), batch_size)]
    finally:
        model.train(was_training)
    k = int(model.hparams["num_classes"])
    return torch.cat(parts).cpu() if parts else torch.zeros((0, k), dtype=torch.float64)


def predict_vision(
    model: VisionModel, images: np.ndarray | torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
    device: torch.device | str | None = None, batch_size: int = 256,
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` (float64, rows sum to 1) for uint8 images.

    The model runs on ``device`` (:func:`default_device` when None) and is left where it was
    found, so a server can keep it on the GPU between calls.
    """
    target = torch.device(device) if device is not None else default_device()
    home = next(model.parameters()).device
    data = _Batches(images, mean, std, target)
    model.to(target)
    try:
        return _probabilities(model, data, batch_size).numpy()
    finally:
        model.to(home)


def evaluate_vision(
    model: VisionModel, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *, mean: Sequence[float],
    std: Sequence[float], device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy`` and macro one-vs-rest ``auroc``.

    ``auroc`` averages the classes that have both positives and negatives among ``labels``
    and is left out when there is none (so no NaN is ever returned).
    """
    probs = predict_vision(model, images, mean=mean, std=std, device=device)
    y = _labels(labels, len(probs), probs.shape[1], torch.device("cpu")).numpy()
    if len(y) == 0:
        raise ValueError("no images to evaluate")
    picked = np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0)
    metrics = {"loss": float(-np.log(picked).mean()), "accuracy": float((probs.argmax(axis=1) == y).mean())}
    aucs = [roc_auc_score(y == k, probs[:, k]) for k in range(probs.shape[1]) if 0 < (y == k).sum() < len(y)]
    if aucs:
        metrics["auroc"] = float(np.mean(aucs))
    return metrics
