"""Fused DP-SGD for Linear-only models: per-sample clipping in one backward pass (ghost norms, two matmuls).

Equal to Opacus's ``DPOptimizer`` step, so its accountants apply; the derivation is in docs/privacy.md.
"""

from __future__ import annotations

import torch
from torch import nn

from training.errors import PrivacyConfigError
from training.privacy import QuantileClipper

__all__ = ["FusedDPSGD"]


class FusedDPSGD:
    """Privatises the gradients of a model built only of ``nn.Linear`` layers (plus
    parameter-free activations and dropout).

    Args:
        model: The model; every parameter must belong to an ``nn.Linear``.
        noise_multiplier: Gaussian noise scale relative to ``max_grad_norm``.
        max_grad_norm: Per-sample clipping bound ``C``.
        expected_batch_size: Poisson sampling's expected batch (``q * N``); the noisy
            sum is divided by it, as Opacus does for ``loss_reduction="mean"``.
        generator: Random generator for the noise.
        clipper: Adaptive clipping: moves ``max_grad_norm`` after every step (its first
            bound replaces ``max_grad_norm``); ``noise_multiplier`` is then the gradient's
            share of the step's noise (:func:`training.privacy.adaptive_noise`).

    Raises:
        PrivacyConfigError: the model has parameters outside Linear layers.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        generator: torch.Generator | None = None,
        clipper: QuantileClipper | None = None,
    ) -> None:
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        covered = {id(p) for m in self.linears for p in m.parameters()}
        if any(id(p) not in covered for p in model.parameters() if p.requires_grad):
            raise PrivacyConfigError("fused DP-SGD supports models made of Linear layers only; use grad_sample_mode 'ghost'")
        self.clipper = clipper
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = clipper.bound if clipper is not None else max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        self.last_norms: torch.Tensor | None = None
        self._inputs: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._capture) for m in self.linears]

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if inputs[0].dim() != 2:
            raise PrivacyConfigError("fused DP-SGD needs 2-D inputs (batch, features) to every Linear layer")
        self._inputs.append(inputs[0].detach())
        self._outputs.append(output)

    def clipped_gradients(self, per_sample_loss: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Sum over the batch of per-sample gradients, each clipped to ``max_grad_norm``.

        Args:
            per_sample_loss: Loss of each sample (``reduction="none"``) from the forward
                pass just run through the model.

        Returns:
            Weight and bias gradient sums, one per Linear layer, in ``self.linears`` order.
        """
        inputs, outputs = self._inputs, self._outputs
        self._inputs, self._outputs = [], []
        grads = torch.autograd.grad(per_sample_loss.sum(), outputs)
        norms_sq = None
        for layer, a, g in zip(self.linears, inputs, grads, strict=True):
            a_sq = a.square().sum(1)
            term = g.square().sum(1) * (a_sq + 1.0 if layer.bias is not None else a_sq)
            norms_sq = term if norms_sq is None else norms_sq + term
        assert norms_sq is not None
        self.last_norms = norms_sq.sqrt()
        scale = (self.max_grad_norm / (self.last_norms + 1e-6)).clamp(max=1.0)
        weights, biases = [], []
        for layer, a, g in zip(self.linears, inputs, grads, strict=True):
            scaled = g * scale[:, None]
            weights.append(scaled.T @ a)
            biases.append(scaled.sum(0) if layer.bias is not None else None)
        return weights, biases

    def privatise(self, per_sample_loss: torch.Tensor | None) -> None:
        """Set each parameter's ``.grad`` to the noisy, clipped mean gradient.

        ``per_sample_loss`` is None for an empty Poisson batch: the step is then noise
        alone, as the privacy analysis assumes.
        """
        self.last_norms = None
        if per_sample_loss is None or per_sample_loss.numel() == 0:
            self._inputs, self._outputs = [], []
            weights = [torch.zeros_like(m.weight) for m in self.linears]
            biases = [torch.zeros_like(m.bias) if m.bias is not None else None for m in self.linears]
        else:
            weights, biases = self.clipped_gradients(per_sample_loss)
        std = self.noise_multiplier * self.max_grad_norm
        for layer, w, b in zip(self.linears, weights, biases, strict=True):
            layer.weight.grad = self._noisy(w, std)
            if layer.bias is not None and b is not None:
                layer.bias.grad = self._noisy(b, std)
        if self.clipper is not None:  # the step's noisy unclipped count moves the next step's bound
            self.max_grad_norm = self.clipper.update(self.last_norms)

    def _noisy(self, summed: torch.Tensor, std: float) -> torch.Tensor:
        if std > 0:
            summed = summed.add_(torch.randn(summed.shape, generator=self.generator), alpha=std)
        return summed.div_(self.expected_batch_size)

    def close(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
