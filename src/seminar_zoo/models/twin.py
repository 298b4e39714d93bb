"""TWIN: TWo-stage Interest Network (Chang et al., KDD 2023, arXiv 2302.02352).

SIM-style two-stage models score behaviours in the GSU with a metric different from
the ESU's target attention, so the GSU passes on behaviours the ESU would ignore.
TWIN's Consistency-Preserved GSU (CP-GSU) uses *the same* target attention, with the
same parameters, as the ESU: one :class:`CPTargetAttention` module computes the
attention logits of all L behaviours (CP-GSU, top-``topk`` per head) and then attends
over the selected ones (ESU). The test suite checks that both stages call it.

Behaviour feature split (the paper's efficiency device): a behaviour's
features are

* **inherent** item features ``K_h``: here the shared ItemEncoder vector of the item
  (ID + attributes + text + image), fused with the behaviour's query into the pair vector
  when the data has queries (RecModel ``use_queries``; as SEMINAR's reference TWIN). They enter the keys through a full linear
  projection ``K_h W_h`` (in production this projection is pre-computed per item).
* **behaviour-specific** user-item cross features ``K_c``: what the batch offers about
  the behaviour relative to the target request, each embedded in ``cross_dim``:

  1. ``recency``: bucket of the behaviour's position counted back from the target
     (0 = most recent; bucket ``floor(log2(1 + steps_back))``, capped; the batch has
     positions, not timestamps);
  2. ``has_query``: whether the behaviour was a search (``hist_query_id > 0``);
  3. ``same_query``: whether the behaviour's query equals the target request's query
     (both non-zero). All candidates of one request share the query, so this does not
     leak the label under the ranking protocol.

  ``cross_features`` picks a subset (default: all three; ``[]`` = inherent features
  only). Each cross feature is compressed to one scalar per head, ``(k_c^j . w_{h,j})``, and
  combined with learned weights ``beta_j`` into a per-head bias added to the logits.

Per head h: ``alpha_{h,l} = <W_q e_t, W_h k_h,l>_h / sqrt(d_h) + sum_j beta_j (k_c^j,l . w_{h,j})``;
the ESU output is ``W_o concat_h sum_{l in top-K_h} softmax(alpha_h)_l (W_v [k_h,l ; k_c,l])_h``.
Padding is never selected (selected padding slots, when fewer than K are valid, are
masked out).

Simplified: the CP-GSU runs without autograd (its top-k is not differentiable; the ESU
recomputes the logits of the selected behaviours with the same parameters, so the
values agree exactly); no caching of ``K_h W_h`` across requests; the paper's cross
features (watch time, interaction type, time gap) are replaced by the three above.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from ..modules.ops import masked_softmax, masked_topk
from .base import RecModel

N_RECENCY_BUCKETS = 16
CROSS_FEATURES = {"recency": N_RECENCY_BUCKETS, "has_query": 2, "same_query": 2}


class CPTargetAttention(nn.Module):
    """TWIN's target attention, shared by CP-GSU and ESU.

    Shapes: target [B, d]; inherent [B, L, d] (shared by heads) or [B, H, K, d] (per-head
    selections); cross [B, L, J] or [B, H, K, J] long; mask likewise [B, L] / [B, H, K].
    """

    def __init__(self, dim: int, num_heads: int, cross_cardinalities: List[int], cross_dim: int = 8):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim})")
        self.dim, self.h, self.dh = dim, num_heads, dim // num_heads
        self.n_cross, self.cross_dim = len(cross_cardinalities), cross_dim
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_h = nn.Linear(dim, dim, bias=False)  # inherent features -> keys
        self.cross_emb = nn.ModuleList(nn.Embedding(c, cross_dim) for c in cross_cardinalities)
        self.w_c = nn.Parameter(torch.randn(num_heads, self.n_cross, cross_dim) / math.sqrt(cross_dim))
        self.beta = nn.Parameter(torch.ones(self.n_cross))
        self.w_v = nn.Linear(dim + self.n_cross * cross_dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def cross_bias(self, cross: torch.Tensor) -> torch.Tensor:
        """Per-head scalar bias of the cross features: [..., J] long -> [..., H].

        Equals sum_j beta_j * (emb_j(c_j) . w_c[h, j]), computed as a look-up in per-value
        tables of size [V_j, H] instead of materialising the embeddings.
        """
        out = cross.new_zeros(cross.shape[:-1] + (self.h,), dtype=self.w_c.dtype)
        for j, emb in enumerate(self.cross_emb):
            table = emb.weight @ self.w_c[:, j].t()  # [V_j, H]
            out = out + self.beta[j] * table[cross[..., j]]
        return out

    def logits(self, target: torch.Tensor, inherent: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """alpha: [B, H, L] (inherent [B, L, d]) or [B, H, K] (inherent [B, H, K, d])."""
        B = target.shape[0]
        q = self.w_q(target).view(B, self.h, self.dh)
        wk = self.w_h.weight.view(self.h, self.dh, self.dim)
        if inherent.dim() == 3:
            k = torch.einsum("bld,hed->bhle", inherent, wk)
            bias = self.cross_bias(cross).permute(0, 2, 1)  # [B, H, L]
        else:
            k = torch.einsum("bhkd,hed->bhke", inherent, wk)
            hidx = torch.arange(self.h, device=cross.device)
            bias = self.cross_bias(cross)[:, hidx, :, hidx].permute(1, 0, 2)  # head h's bias of its own picks
        return torch.einsum("bhe,bhle->bhl", q, k) / math.sqrt(self.dh) + bias

    def forward(self, target: torch.Tensor, inherent: torch.Tensor, cross: torch.Tensor,
                mask: torch.Tensor, return_weights: bool = False):
        """ESU over per-head selections: inherent [B, H, K, d], cross [B, H, K, J], mask [B, H, K] -> [B, d]."""
        B, H, K, d = inherent.shape
        w = masked_softmax(self.logits(target, inherent, cross), mask)  # [B, H, K]
        feats = [inherent] + [emb(cross[..., j]) for j, emb in enumerate(self.cross_emb)]
        wv = self.w_v.weight.view(self.h, self.dh, -1)
        v = torch.einsum("bhkf,hef->bhke", torch.cat(feats, -1), wv)
        o = (w.unsqueeze(-2) @ v).squeeze(-2).reshape(B, d)
        o = self.out(o) * mask.any(-1).any(-1, keepdim=True)
        return (o, w) if return_weights else o


class TWIN(RecModel):
    """Args:
        topk: behaviours kept per head by the CP-GSU.
        cross_dim: embedding width of each behaviour-specific (cross) feature.
        cross_features: which cross features to use, a subset of ``recency``, ``has_query``,
            ``same_query`` (an empty list = inherent features only, as FuxiCTR's default).
    """

    def __init__(self, topk: int = 50, cross_dim: int = 8,
                 cross_features: List[str] = ["recency", "has_query", "same_query"], **kwargs):
        super().__init__(**kwargs)
        if topk < 1:
            raise ValueError(f"TWIN: topk must be >= 1, got {topk}")
        bad = [f for f in cross_features if f not in CROSS_FEATURES]
        if bad or len(set(cross_features)) != len(cross_features):
            raise ValueError(f"TWIN: cross_features must be distinct names from {sorted(CROSS_FEATURES)}, "
                             f"got {list(cross_features)}")
        self.topk, self.cross_names = int(topk), list(cross_features)
        self.attention = CPTargetAttention(self.hparams.embed_dim, self.hparams.num_heads,
                                           [CROSS_FEATURES[f] for f in self.cross_names], cross_dim)
        self.build_tower()

    @staticmethod
    def cross_features(batch, hq: torch.Tensor, names=tuple(CROSS_FEATURES)) -> torch.Tensor:
        """[B, L, J] long, columns in ``names`` order: recency bucket, has_query, same_query (see above)."""
        B, L = hq.shape
        cols = []
        for name in names:
            if name == "recency":
                back = torch.arange(L - 1, -1, -1, device=hq.device)  # steps back from the target
                cols.append(torch.log2(back.float() + 1).floor().long().clamp_max(N_RECENCY_BUCKETS - 1).expand(B, L))
            elif name == "has_query":
                cols.append((hq > 0).long())
            elif name == "same_query":
                tq = batch["query_id"].unsqueeze(1)
                cols.append(((hq == tq) & (tq > 0)).long())
        return torch.stack(cols, -1) if cols else hq.new_zeros(B, L, 0)

    def gsu(self, target, e, cross, m):
        """CP-GSU: the shared attention's logits over all L, top-k per head -> (idx, sel) [B, H, K]."""
        with torch.no_grad():
            alpha = self.attention.logits(target, e, cross)
            return masked_topk(alpha, m.unsqueeze(1).expand_as(alpha), self.topk)

    def interest(self, batch, target):
        h, hq, m = self.history(batch)
        cross = self.cross_features(batch, hq, self.cross_names)
        with torch.no_grad():
            e_all = self.history_vectors(h, hq, unique=True)  # per distinct behaviour (the paper caches K_h W_h per item)
        idx, sel = self.gsu(target, e_all, cross, m)
        B, H, K = idx.shape
        flat = idx.reshape(B, H * K)
        picked, picked_q = h.gather(1, flat).view(B, H, K), hq.gather(1, flat).view(B, H, K)
        cross_k = cross.gather(1, idx.reshape(B, H * K, 1).expand(-1, -1, cross.shape[-1])).view(B, H, K, -1)
        # the ESU re-encodes the K picks with autograd: same values as gathering e_all
        return self.attention(target, self.history_vectors(picked, picked_q), cross_k, sel)
