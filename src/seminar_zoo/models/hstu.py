"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., ICML 2024,
"Actions Speak Louder than Words", Sec. 3.1, Eqs. 1-3).

Each layer computes, from the layer-normed input X,
``U, V, Q, K = Split(SiLU(f1(X)))`` (Eq. 1),
``A V = SiLU(Q K^T + rab^{p,t}) V / n`` (Eq. 2: pointwise aggregated attention, no
softmax; normalised by the sequence length n as in the reference code), and
``Y = f2(Norm(A V) * U)`` (Eq. 3, SiLU gating by U), with a residual connection.
``rab^{p,t}`` is a learned relative attention bias over bucketed relative positions
and over log2-bucketed time gaps between behaviours (``hist_ts``, which every DataModule
batch carries; the reference's ``RelativeBucketedTimeAndPositionBasedBias``;
``time_bias: false`` keeps positions only). Attention is
causal. A candidate's score is the dot product with the last position's output, so
full ranking encodes a history once.

Simplified / differs from the paper:
- a ranking-only head (dot product), no interleaved action tokens and no
  M-FALCON micro-batched inference;
- items are the zoo's multi-modal (optionally query-fused) vectors, not ID-only; with
  queries the user vector also gets a projection of the target's query;
- trained autoregressively over every position (``all_positions: true``, the shipped
  config) with a full softmax over the catalogue (``loss: full_softmax``) instead of
  the paper's sampled softmax over in-batch and random negatives;
- the time bias is over gaps between history behaviours only, not to the request time;
- without timestamps in the batch only the relative-position bias is used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._sequential import DotProductScoring, PositionEmbedding, causal_valid_mask
from .base import RecModel


class RelativeBias(nn.Module):
    """rab^{p,t}: one learned scalar per relative-position bucket and per log2 time-gap bucket."""

    def __init__(self, max_len: int, time_buckets: int = 64):
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Parameter(torch.zeros(2 * max_len - 1))
        self.time = nn.Parameter(torch.zeros(time_buckets + 1))
        self.time_buckets = time_buckets

    def forward(self, L: int, device, ts=None) -> torch.Tensor:
        i = torch.arange(L, device=device)
        rel = (i[None, :] - i[:, None]).clamp(-(self.max_len - 1), self.max_len - 1) + self.max_len - 1
        bias = self.pos[rel].unsqueeze(0)  # [1, L, L]
        if ts is not None:  # ts: [B, L] seconds
            gap = (ts.unsqueeze(2) - ts.unsqueeze(1)).abs().clamp(min=1).float()
            bucket = (torch.log2(gap)).long().clamp(0, self.time_buckets)
            bias = bias + self.time[bucket]
        return bias


class HSTULayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hstu_heads ({heads}) must divide embed_dim ({dim})")
        self.h = heads
        self.norm_in = nn.LayerNorm(dim)
        self.f1 = nn.Linear(dim, 4 * dim)
        self.norm_av = nn.LayerNorm(dim)
        self.f2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).split(d, dim=-1)
        split = lambda t: t.view(B, L, self.h, d // self.h).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.h) + bias.unsqueeze(1)  # [B, H, L, L]
        a = F.silu(logits) * allowed.unsqueeze(1) / L  # pointwise, no softmax (Eq. 2)
        av = (a @ v).transpose(1, 2).reshape(B, L, d)
        return x + self.drop(self.f2(self.norm_av(av) * u))


class HSTU(DotProductScoring, RecModel):
    def __init__(self, num_layers: int = 2, hstu_heads: int = 2, position_len: int = 200,
                 time_buckets: int = 64, time_bias: bool = True, all_positions: bool = False, **kwargs):
        super().__init__(**kwargs)
        d = self.hparams.embed_dim
        self.position = PositionEmbedding(position_len, d)
        self.emb_drop = nn.Dropout(self.hparams.dropout)
        self.bias = RelativeBias(position_len, time_buckets)
        self.layers = nn.ModuleList(HSTULayer(d, hstu_heads, self.hparams.dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d)
        self.build_query_head()

    def encode_sequence(self, batch):
        x, m = self.sequence_inputs(batch)
        L = x.shape[1]
        x = self.emb_drop(x * math.sqrt(x.shape[-1]) + self.position(L, x.device)) * m.unsqueeze(-1)
        ts = batch.get("hist_ts") if self.hparams.time_bias else None
        bias = self.bias(L, x.device, ts[:, -L:] if ts is not None else None)
        allowed = causal_valid_mask(m)
        for layer in self.layers:
            x = layer(x, allowed, bias)
        return self.final_norm(x)
