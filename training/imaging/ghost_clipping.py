"""Opacus ghost clipping with Conv2d per-sample gradient norms (Opacus has them for Linear/Embedding only)."""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.utils.tensor_utils import unfold2d
from torch import nn

__all__ = ["GhostClipping", "conv2d_norm_sample"]


def conv2d_norm_sample(layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
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


class GhostClipping(GradSampleModuleFastGradientClipping):
    """Opacus's ghost clipping with norms for Conv2d too (Opacus 1.6 has them for Linear and
    Embedding only, and otherwise materialises each layer's per-sample gradients)."""

    NORM_SAMPLERS = {**GradSampleModuleFastGradientClipping.NORM_SAMPLERS, nn.Conv2d: conv2d_norm_sample}
