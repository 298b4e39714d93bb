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
from typing import Optional, Sequence

import torch
from torch import nn

from .ops import masked_softmax


class TargetAttention(nn.Module):
    """Multi-head target attention: out = sum_l softmax_l(<W_q t, W_k h_l>/sqrt(d_h) + bias_l) W_v v_l.

    One class for every target attention of the zoo (SIM / ETA / TWIN's ESU, QIN's fused attention,
    SEMINAR's PSU, GSU and ESU, the short-term branch), so weights move between them by name
    (``q``, ``k``, ``v``, ``out``).

    Args:
        dim: input and output width; num_heads must divide it.
    Shapes: ``forward(target [B, d], keys [B, L, d], mask [B, L] (True = valid), bias=None, values=None)``
    -> [B, d]. ``bias`` ([B, L], shared by all heads, or [B, H, L]) is added to the logits (QIN's query
    relevance, SEMINAR's GSU scores); ``values`` (default: the keys) lets keys and values differ.
    ``forward_multi(targets [B, C, d], keys [B, L, d], mask [B, C, L])`` -> [B, C, d]: several targets
    per row (SEMINAR's next-pair pretraining loss).
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
                bias: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None,
                return_weights: bool = False):
        B, L, d = keys.shape
        logits = self.scores(target, keys)  # [B, H, L]
        if bias is not None:
            logits = logits + (bias.unsqueeze(1) if bias.dim() == 2 else bias).to(logits.dtype)
        w = masked_softmax(logits, mask.unsqueeze(1))
        vals = keys if values is None else values
        v = self.v(vals).view(B, L, self.h, d // self.h).transpose(1, 2)  # [B, H, L, dh]
        o = (self.drop(w).unsqueeze(-2) @ v.to(w.dtype)).squeeze(-2).reshape(B, d)
        o = self.out(o) * mask.any(-1, keepdim=True)
        return (o, w) if return_weights else o

    def head_logits(self, target: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[B, C, d] x [B, L, d] -> [B, H, C, L] per-head scaled dot products."""
        B, C, d = target.shape
        L, h = keys.shape[1], self.h
        q = self.q(target).view(B, C, h, d // h).transpose(1, 2)  # [B, H, C, dh]
        k = self.k(keys).view(B, L, h, d // h).transpose(1, 2)  # [B, H, L, dh]
        return (q @ k.transpose(-1, -2).to(q.dtype)) / math.sqrt(d // h)

    def forward_multi(self, targets: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                      return_weights: bool = False):
        """Several targets per row; no attention dropout (used for pretraining scores).

        Masked logits get a large finite negative instead of -inf (cheaper than re-zeroing NaN
        rows on these [B, H, C, L] tensors); rows with no valid key output zero.
        """
        B, C, d = targets.shape
        L, h = keys.shape[1], self.h
        logits = self.head_logits(targets, keys)
        logits = logits.masked_fill(~mask.unsqueeze(1), torch.finfo(logits.dtype).min / 4)
        w = torch.softmax(logits, -1)  # [B, H, C, L]
        v = self.v(keys).view(B, L, h, d // h).transpose(1, 2)  # [B, H, L, dh]
        o = (w @ v.to(w.dtype)).transpose(1, 2).reshape(B, C, d)
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
