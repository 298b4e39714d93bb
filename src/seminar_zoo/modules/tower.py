"""The prediction tower: an MLP from concatenated features to one CTR logit."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Tower(nn.Module):
    def __init__(self, d_in: int, hidden: Sequence[int] = (128, 64), dropout: float = 0.1):
        super().__init__()
        layers = []
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.ReLU(), nn.Dropout(dropout)]
            d_in = h
        layers.append(nn.Linear(d_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
