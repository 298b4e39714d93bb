"""Target attention over a behaviour sequence, with masks.

* :class:`TargetAttention`: multi-head scaled dot-product attention whose single
  query is the target (used by SIM/ETA/TWIN's ESU, SEMINAR's GSU and ESU, and the
  short-term branch).
* :class:`DINActivationUnit`: DIN's local activation unit (Zhou et al., KDD 2018,
  Sec. 4.3): an MLP on (target, behaviour, target - behaviour, target * behaviour);
  weights are not softmax-normalised, as in the paper.

Rows whose history is entirely masked return a zero vector (not NaN).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(w, nan=0.0)  # all-masked rows -> 0


class TargetAttention(nn.Module):
    """Multi-head target attention: out = sum_l softmax_l(<W_q t, W_k h_l>/sqrt(d_h)) W_v h_l.

    Args:
        dim: input and output width; num_heads must divide it.
    Shapes: target [B, d], keys [B, L, d], mask [B, L] (True = valid) -> [B, d].
    """

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.0, project_values: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim})")
        self.dim, self.h = dim, num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False) if project_values else nn.Identity()
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def scores(self, target: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[B, H, L] per-head attention logits."""
        B, L, d = keys.shape
        q = self.q(target).view(B, self.h, 1, d // self.h)
        k = self.k(keys).view(B, L, self.h, d // self.h).transpose(1, 2)
        return (q @ k.transpose(-1, -2)).squeeze(-2) / math.sqrt(d // self.h)

    def forward(self, target: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                return_weights: bool = False):
        B, L, d = keys.shape
        w = masked_softmax(self.scores(target, keys), mask.unsqueeze(1))  # [B, H, L]
        v = self.v(keys).view(B, L, self.h, d // self.h).transpose(1, 2)  # [B, H, L, dh]
        o = (self.drop(w).unsqueeze(-2) @ v).squeeze(-2).reshape(B, d)
        o = self.out(o) * mask.any(-1, keepdim=True)
        return (o, w) if return_weights else o


class DINActivationUnit(nn.Module):
    """DIN's activation unit: weight_l = MLP([t, h_l, t - h_l, t * h_l]); out = sum_l weight_l h_l."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 32)):
        super().__init__()
        layers, d_in = [], 4 * dim
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.Sigmoid()]  # the paper uses Dice/PReLU; sigmoid as FuxiCTR's default
            d_in = h
        layers.append(nn.Linear(d_in, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, target: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                return_weights: bool = False):
        t = target.unsqueeze(1).expand_as(keys)
        w = self.mlp(torch.cat([t, keys, t - keys, t * keys], -1)).squeeze(-1)
        w = w * mask
        o = (w.unsqueeze(-1) * keys).sum(1)
        return (o, w) if return_weights else o
