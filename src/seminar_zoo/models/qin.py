"""QIN: Query-dominant user Interest Network (Guo et al., CIKM 2023, arXiv 2310.06444).

For search ranking the current query says more about intent than the target item. QIN
cascades a Relevance Search Unit (RSU) and a Fused Attention Unit (FAU):

* **RSU stage 1** (query-driven): score every valid behaviour by its relevance to the
  target *query*, ``s1_l = <P_q q_t, P_k (e_l + q_l)> / sqrt(d)``, where ``q_t`` is
  ``query_encoder(query_id)``, ``e_l`` the behaviour item vector and ``q_l`` the
  behaviour's query vector (the learned "no query" vector for recommendation events).
  When the target has no query (``query_id == 0``) the target item vector stands in
  for ``q_t``. Keep the top ``topk_stage1``.
* **RSU stage 2** (item-driven): among those, keep the ``topk`` with the highest
  target-attention logits of the *target item* (head mean of the FAU's own logits).
* **FAU**: multi-head target attention with the target item over the ``topk``, with
  the query relevance ``s1_l`` added to every head's logits, so the attention fuses
  item and query relevance. ``s1`` is recomputed with autograd on the kept behaviours,
  which is how ``P_q, P_k`` learn (the top-k selections are not differentiable).

Queries everywhere (RecModel ``use_queries``, on by default when the data has queries): the
target and every behaviour are (query, item) pair vectors, as in SEMINAR's reference QIN, so
``e_l`` already carries ``q_l`` (with share lambda) and stage 1 scores ``<P_q q_t, P_k e_l>``;
the FAU attends with the target pair. With ``use_queries: false`` the model is the paper's:
item vectors for target, keys and FAU, and queries only in stage 1 (``e_l + q_l`` above).

Simplified: the paper's RSU scores relevance by cosine similarity of *pretrained*
multi-modal query/item embeddings; ours uses learned projections of the shared encoders
(trained through the FAU bias). The paper's FAU computes attention on the ID field and
the attribute field separately and fuses them adaptively by user engagement (e.g. watch
depth); the synthetic data has no engagement signal, so our FAU attends over the fused
item vector and fuses query relevance as an additive logit bias. Cf. SEMINAR's reference
implementation, whose QIN also cascades a query-driven and an item-driven top-k before
multi-head target attention.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..modules.attention import TargetAttention
from ..modules.ops import encode_unique, gather_rows, masked_topk
from .base import RecModel


class QIN(RecModel):
    """Args:
        topk_stage1: behaviours kept by the query-driven stage.
        topk: behaviours kept by the item-driven stage (attended by the FAU).
    """

    def __init__(self, topk_stage1: int = 100, topk: int = 50, **kwargs):
        super().__init__(**kwargs)
        if topk < 1 or topk_stage1 < 1:
            raise ValueError(f"QIN: topk and topk_stage1 must be >= 1, got {topk}, {topk_stage1}")
        if topk > topk_stage1:
            raise ValueError(f"QIN: topk ({topk}) must not exceed topk_stage1 ({topk_stage1})")
        d = self.hparams.embed_dim
        self.topk_stage1, self.topk = int(topk_stage1), int(topk)
        self.rel_q = nn.Linear(d, d, bias=False)
        self.rel_k = nn.Linear(d, d, bias=False)
        self.fau = TargetAttention(d, self.hparams.num_heads)
        self.build_tower()

    def query_vector(self, batch, target: torch.Tensor) -> torch.Tensor:
        """[B, d]: the target query's vector, or the target item's where there is no query."""
        qid = batch["query_id"]
        return torch.where((qid > 0).unsqueeze(-1), self.query_encoder(qid), target)

    def query_relevance(self, qv: torch.Tensor, e: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        """[B, L]: <P_q qv, P_k b_l> / sqrt(d), b_l = e_l if it is a pair vector (it holds q_l), else e_l + q_l."""
        pairs = self.pair is not None and self.pair.use_query
        b = e if pairs else e + encode_unique(self.query_encoder, hq)
        return (self.rel_k(b) @ self.rel_q(qv).unsqueeze(-1)).squeeze(-1) / math.sqrt(e.shape[-1])

    def select(self, batch, target):
        """The RSU. Returns (keys [B, K, d], query relevance [B, K], mask [B, K], positions [B, K] in the history)."""
        h, hq, m = self.history(batch)
        qv = self.query_vector(batch, target)
        # stage 1 over all L: selection only, no autograd graph over L
        with torch.no_grad():
            s1_all = self.query_relevance(qv, self.history_vectors(h, hq, unique=True), hq)
            idx1, sel1 = masked_topk(s1_all, m, self.topk_stage1)
        h1, hq1 = gather_rows(h, idx1), gather_rows(hq, idx1)
        e1 = self.history_vectors(h1, hq1)
        s1 = self.query_relevance(qv, e1, hq1)  # the same values as s1_all at idx1, with gradients
        # stage 2: item-driven, ranked by the FAU's own logits (head mean)
        with torch.no_grad():
            s2 = self.fau.scores(target, e1).mean(1)
            idx2, sel2 = masked_topk(s2, sel1, self.topk)
        return gather_rows(e1, idx2), gather_rows(s1, idx2), sel2, gather_rows(idx1, idx2)

    def interest(self, batch, target):
        keys, bias, mask, _ = self.select(batch, target)
        return self.fau(target, keys, mask, bias=bias)
