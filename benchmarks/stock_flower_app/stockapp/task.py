"""The model and data of the stock app: a tiny MLP on random tabular data."""

import torch
from torch import nn


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))


def make_data(seed: int, rows: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 20, generator=generator)
    y = (x[:, :3].sum(dim=1, keepdim=True) > 0).float()
    return x, y
