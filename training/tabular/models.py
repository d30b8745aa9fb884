"""LightningModules for tabular clinical risk: logistic regression and an MLP."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.classifier import ClassifierModule

__all__ = ["MODEL_KINDS", "LogisticRiskModel", "MLPRiskModel", "RiskModel", "build_model"]


class RiskModel(ClassifierModule):
    """Binary risk model: ``forward`` gives one logit per patient.

    Subclasses build ``self.net``. Only layers Opacus supports (Linear, activations,
    dropout) are used, so every model trains with DP-SGD as it is.
    """

    def __init__(self, input_dim: int, lr: float = 0.01, optimizer: str = "adam") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.criterion = nn.BCEWithLogitsLoss()
        self.net: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch,)."""
        return self.net(x).squeeze(-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Risk: the sigmoid of each patient's logit."""
        return torch.sigmoid(logits)


class LogisticRiskModel(RiskModel):
    """Logistic regression: one linear layer, the clinical baseline.

    Starts from zero weights and bias (risk 0.5 for everyone), as a logistic regression
    solver does: the loss is convex, so nothing is gained from a random start, and a random
    one ranks patients by noise until training outweighs it. A federation whose small sites
    take a few steps per round stayed there: 5 rounds on four sites of ~150 patients scored
    AUROC 0.18-0.24 below the pooled model from a random start, within 0.03 from zero
    (issue 11 item 7, benchmarks/quality_vs_epsilon.py).
    """

    def __init__(self, input_dim: int, lr: float = 0.05, optimizer: str = "adam") -> None:
        super().__init__(input_dim, lr, optimizer)
        self.net = nn.Linear(input_dim, 1)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)


class MLPRiskModel(RiskModel):
    """A small multi-layer perceptron with ReLU and dropout."""

    def __init__(
        self,
        input_dim: int,
        lr: float = 0.01,
        optimizer: str = "adam",
        hidden: tuple[int, ...] = (64, 32),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(input_dim, lr, optimizer)
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)


MODEL_KINDS: dict[str, type[RiskModel]] = {"logistic": LogisticRiskModel, "mlp": MLPRiskModel}


def build_model(kind: str, input_dim: int, **hparams: Any) -> RiskModel:
    """Instantiate a risk model by kind (``logistic`` or ``mlp``)."""
    try:
        cls = MODEL_KINDS[kind]
    except KeyError as err:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}") from err
    if "hidden" in hparams:
        hparams["hidden"] = tuple(hparams["hidden"])
    return cls(input_dim, **hparams)
