"""ETA: End-to-end Target Attention (Chen et al., "End-to-End User Behavior Retrieval in
Click-Through Rate Prediction Model", arXiv 2108.04468, 2021; extended as "Efficient Long
Sequential User Data Modeling for Click-Through Rate Prediction", arXiv 2209.12212).

Retrieval by locality-sensitive hashing: behaviour and target embeddings
get SimHash signatures (``hash_bits`` random hyperplanes, fixed at construction,
never trained; sign bits packed into int64 words); the ``topk`` behaviours with the
smallest Hamming distance to the target (ties: the more recent first; padding is
never preferred, and selected padding slots are masked out) go to multi-head target
attention. The selection is not differentiable, the embeddings are: the ESU's keys
and values are the float embeddings of the selected behaviours, gathered by index, so
the gradient reaches the item encoder (the end-to-end property of ETA: the hashes
follow the embeddings as they train).

Implementation note: the hashing pass runs without autograd, once per distinct item of
the batch (a signature is a function of the item's embedding only, so this equals
hashing every behaviour), and the K selected ids are re-encoded with autograd. This
gives exactly the values and gradients of ``gather(encode(history), idx)`` while never
keeping an O(L) autograd graph.

With queries (RecModel ``use_queries``) target and behaviours are (query, item) pair vectors,
hashed and attended as such (SEMINAR's reference ETA); a distinct behaviour is then a distinct
(item, query) pair.

Side information (the paper's time interval): ``time_embedding`` (default on) adds to each selected
behaviour an embedding of its log2-bucketed gap to the user's latest behaviour
(:class:`~seminar_zoo.modules.time_interval.TimeIntervalEmbedding`, as in SIM's ESU).

Simplified: one signature per behaviour (no multi-round hashing), no side features other than the
time interval, which is measured to the latest behaviour, not to the request time; the hashes are
recomputed every step rather than cached per item (identical values, since they are a function of
the embedding).
"""
from __future__ import annotations

import torch

from ..modules.attention import TargetAttention
from ..modules.ops import gather_rows, masked_topk
from ..modules.hashing import SimHash, hamming
from ..modules.time_interval import TimeIntervalEmbedding
from .base import RecModel


class ETA(RecModel):
    """Args:
        topk: behaviours kept for the target attention.
        hash_bits: SimHash signature length (bits).
        hash_seed: seed of the random projections.
        time_embedding: add the time-interval embedding to each selected behaviour.
        time_buckets: log2 buckets of the time interval (seconds).
    """

    def __init__(self, topk: int = 50, hash_bits: int = 32, hash_seed: int = 0, time_embedding: bool = True,
                 time_buckets: int = 32, **kwargs):
        super().__init__(**kwargs)
        if topk < 1:
            raise ValueError(f"ETA: topk must be >= 1, got {topk}")
        if hash_bits < 1:
            raise ValueError(f"ETA: hash_bits must be >= 1, got {hash_bits}")
        d = self.hparams.embed_dim
        self.topk, self.hash_bits = int(topk), int(hash_bits)
        self.hasher = SimHash(d, self.hash_bits, n_hashes=1, seed=hash_seed)
        self.esu = TargetAttention(d, self.hparams.num_heads)
        self.time_emb = TimeIntervalEmbedding(d, time_buckets) if time_embedding else None
        self.build_tower()

    def retrieve(self, target: torch.Tensor, h: torch.Tensor, q: torch.Tensor, m: torch.Tensor):
        """(idx [B, K], selected mask [B, K], hamming distance [B, L]) for history items h, queries q."""
        with torch.no_grad():
            # one signature per distinct behaviour of the batch, indexed back to [B, L, words]
            _, eu, inv = self.history_vectors(h, q, return_parts=True)
            sig = self.hasher.signature(eu)[inv]
            dist = hamming(self.hasher.signature(target).unsqueeze(1), sig)
            L = h.shape[1]
            # smallest distance first, then most recent: one exact float key per position
            key = -(dist * L).float() + torch.arange(L, device=h.device)
            idx, sel = masked_topk(key, m, self.topk)
        return idx, sel, dist

    def interest(self, batch, target):
        h, q, m = self.history(batch)
        idx, sel, _ = self.retrieve(target, h, q, m)
        keys = self.history_vectors(gather_rows(h, idx), gather_rows(q, idx))
        if self.time_emb is not None:
            keys = keys + self.time_emb(batch, h.shape[1], idx, who="ETA")
        return self.esu(target, keys, sel)
