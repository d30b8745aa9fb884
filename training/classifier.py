"""The LightningModule every BioVerse model shares: loss step per stage, optimiser, probabilities."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pytorch_lightning as pl
import torch
from torch import nn

__all__ = ["ClassifierModule"]


class ClassifierModule(pl.LightningModule, ABC):
    """What every BioVerse model shares: the loss step logged per stage, the optimiser
    (Adam, or SGD with momentum, from ``hparams``) and class probabilities.

    Subclasses set ``self.criterion`` and ``self.net`` and say how logits become
    probabilities (:meth:`probabilities`, abstract: the class itself is never built).
    """

    criterion: nn.Module

    def _common_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        loss = self.criterion(self(x), y)
        if self._trainer is not None:
            self.log(f"{stage}_loss", loss, prog_bar=stage != "train", batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        return self._common_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Validation loss."""
        return self._common_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Test loss."""
        return self._common_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam or SGD with momentum, as configured."""
        if self.hparams["optimizer"] == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from this model's logits."""

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch of model inputs (eval mode, then the mode it was in)."""
        was_training = self.training
        self.eval()
        try:
            return self.probabilities(self(x))
        finally:
            self.train(was_training)
