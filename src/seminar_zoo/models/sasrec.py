"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Behaviour vectors plus learned position embeddings (Sec. III-B) go through
``num_blocks`` causal self-attention blocks, each attention then a point-wise
feed-forward net with residual connections, layer norm and dropout (Sec. III-C/D).
A candidate's score is the dot product of its vector with the output at the last
position (Sec. III-E, Eq. 11, with shared item embeddings), so full ranking encodes
a history once (:meth:`score_candidates`).

Simplified / differs from the paper:
- items are the zoo's multi-modal item vectors (ID + attributes (+ text)), fused with
  the query when the dataset has queries, instead of an ID embedding alone; with
  queries the user vector also gets a projection of the target's query (the paper
  has no queries; see :meth:`~._sequential.DotProductScoring.build_query_head`);
- trained as the paper (``all_positions: true``, the shipped config: one causal pass,
  a loss term at every position), with the loss of choice: ``bce`` with one sampled
  negative per position is the paper's Eq. 12, ``full_softmax`` the cross-entropy
  over all items that RecBole and later work use (the shipped default);
- pre-layer-norm blocks (``nn.TransformerEncoderLayer(norm_first=True)``), a
  stable variant of the paper's block.
"""
from __future__ import annotations

import torch
from torch import nn

from ._sequential import DotProductScoring, PositionEmbedding, causal_valid_mask
from .base import RecModel


class SASRec(DotProductScoring, RecModel):
    def __init__(self, num_blocks: int = 2, sasrec_heads: int = 1, position_len: int = 200, all_positions: bool = False, **kwargs):
        super().__init__(**kwargs)
        d = self.hparams.embed_dim
        self.position = PositionEmbedding(position_len, d)
        self.emb_drop = nn.Dropout(self.hparams.dropout)
        layer = nn.TransformerEncoderLayer(d, sasrec_heads, dim_feedforward=d, dropout=self.hparams.dropout,
                                           activation="relu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_blocks, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d)
        self.build_query_head()

    def encode_sequence(self, batch):
        x, m = self.sequence_inputs(batch)
        x = x * (self.hparams.embed_dim ** 0.5)
        x = self.emb_drop(x + self.position(x.shape[1], x.device)) * m.unsqueeze(-1)
        allowed = causal_valid_mask(m)  # [B, L, L]
        heads = self.hparams.sasrec_heads
        attn_mask = ~allowed.repeat_interleave(heads, dim=0)  # True = blocked
        return self.final_norm(self.blocks(x, mask=attn_mask))
