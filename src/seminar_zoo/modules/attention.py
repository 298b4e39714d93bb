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


# --------------------------------------------------------------------------- retrieval helpers
# (appended for the long-sequence baselines SIM / ETA / QIN / TWIN; see models/*.py)

def masked_topk(scores: torch.Tensor, mask: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k positions of ``scores`` [..., L] among the valid ones (``mask`` True).

    Returns (idx [..., k'], selected_mask [..., k']) with k' = min(k, L), sorted by
    descending score. Invalid positions rank below every valid one, so they are only
    taken when fewer than k are valid, and then ``selected_mask`` is False there: a
    consumer must mask those slots out (never attend to padding).
    """
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    k = min(k, scores.shape[-1])
    s = scores.float().masked_fill(~mask, float("-inf"))
    idx = s.topk(k, dim=-1, sorted=True).indices
    return idx, mask.gather(-1, idx)


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...] (or [B, L]) and idx [B, K] -> x at those positions [B, K, ...]; differentiable in x."""
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))


class BiasedTargetAttention(TargetAttention):
    """TargetAttention with an additive logit bias: softmax_l(<W_q t, W_k h_l>/sqrt(d_h) + bias_l).

    ``bias`` is [B, L] (shared by all heads) or [B, H, L]; ``values`` (default: the keys)
    lets keys and values differ. Used by QIN's fused attention (query relevance as bias).
    """

    def forward(self, target: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                bias: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None,
                return_weights: bool = False):
        B, L, d = keys.shape
        logits = self.scores(target, keys)
        if bias is not None:
            logits = logits + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
        w = masked_softmax(logits, mask.unsqueeze(1))
        vals = keys if values is None else values
        v = self.v(vals).view(B, L, self.h, d // self.h).transpose(1, 2)
        o = (self.drop(w).unsqueeze(-2) @ v).squeeze(-2).reshape(B, d)
        o = self.out(o) * mask.any(-1, keepdim=True)
        return (o, w) if return_weights else o


def encode_unique(fn, ids: torch.Tensor, return_parts: bool = False):
    """``fn(ids)`` computed once per distinct id: a lifelong history repeats items, so the
    encoder runs on the batch's distinct ids and the result is indexed back (exactly the
    same values and, through the index, the same gradients as ``fn(ids)``).

    With ``return_parts`` also returns (per-distinct-id output [U, ...], inverse index
    with the shape of ``ids``), for callers that derive more from the distinct rows
    (hash signatures, projections: TWIN's pre-computed inherent-feature projection).
    """
    uniq, inv = torch.unique(ids, return_inverse=True)
    enc = fn(uniq)
    out = enc[inv]
    return (out, enc, inv) if return_parts else out
