"""SDIM: Sampling-based Deep Interest Modeling (Cao et al., "Sampling Is All You Need
on Modeling Long-Term User Behaviors for CTR Prediction", CIKM 2022, arXiv 2205.10249).

No attention over L: ``n_hashes`` SimHash functions of ``hash_bits``
bits each (random, fixed, never trained) map the target and every behaviour to a
bucket id per hash. For hash j the behaviours whose bucket collides with the
target's are summed and normalised; the user interest is the mean over hashes:

    u = (1/m) * sum_j norm( sum_{l valid, b_j(e_l) = b_j(e_t)} e_l )

``norm``: ``l2`` (the paper's L2 normalisation; an empty bucket gives 0), ``count``
(mean of the colliding behaviours) or ``none``. Collision probability per hash is
(1 - theta/pi)^tau, so this approximates target attention with weights that decay
with the angle. Gradients reach the embeddings through the sum.

``topk`` (optional, default None = the paper): cap each hash's collision set at its
``topk`` most recent colliding behaviours, bounding the work per request.

With queries (RecModel ``use_queries``) ``e_t`` and ``e_l`` are (query, item) pair vectors.

Simplified: the paper's serving split (hashes of behaviours computed in a separate
server, the model receives bucket sums) is folded into the forward pass; no short-term
module here (RecModel's ``short_term_len`` adds one, off by default).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..modules.hashing import SimHash
from .base import RecModel


class SDIM(RecModel):
    """Args:
        n_hashes: number of hash functions m.
        hash_bits: bits per hash function tau (2^tau buckets).
        norm: ``l2`` | ``count`` | ``none``: normalisation of each hash's bucket sum.
        topk: optional cap on colliding behaviours per hash (most recent); None = all.
        hash_seed: seed of the random projections.
    """

    def __init__(self, n_hashes: int = 48, hash_bits: int = 3, norm: Literal["l2", "count", "none"] = "l2",
                 topk: Optional[int] = None, hash_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if norm not in ("l2", "count", "none"):
            raise ValueError(f"SDIM: norm must be 'l2', 'count' or 'none', got {norm!r}")
        if topk is not None and topk < 1:
            raise ValueError(f"SDIM: topk must be >= 1 or None, got {topk}")
        if not 1 <= hash_bits <= 62 or n_hashes < 1:
            raise ValueError(f"SDIM: need 1 <= hash_bits <= 62 and n_hashes >= 1, got {hash_bits}, {n_hashes}")
        self.norm, self.topk = norm, topk
        self.hasher = SimHash(self.hparams.embed_dim, hash_bits, n_hashes=n_hashes, seed=hash_seed)
        self.build_tower()

    def collisions(self, target: torch.Tensor, buckets: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """[B, L, m] bool: behaviour l is valid and its bucket ``buckets`` [B, L, m] of hash j equals the target's."""
        coll = (buckets == self.hasher.buckets(target).unsqueeze(1)) & m.unsqueeze(-1)
        if self.topk is not None:
            from_end = coll.flip(1).cumsum(1).flip(1)  # colliding behaviours at or after l
            coll = coll & (from_end <= self.topk)
        return coll

    def aggregate(self, target: torch.Tensor, e: torch.Tensor, m: torch.Tensor,
                  buckets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """u [B, d] from behaviour vectors e [B, L, d] (their buckets [B, L, m] if already known)."""
        if buckets is None:
            buckets = self.hasher.buckets(e)
        coll = self.collisions(target, buckets, m).to(e.dtype)
        s = torch.einsum("blj,bld->bjd", coll, e)  # per-hash bucket sums [B, m, d]
        if self.norm == "l2":
            s = F.normalize(s, dim=-1)
        elif self.norm == "count":
            s = s / coll.sum(1).clamp_min(1.0).unsqueeze(-1)
        return s.mean(1)

    def interest(self, batch, target):
        h, q, m = self.history(batch)
        # encode and hash each distinct behaviour of the batch once, index back to [B, L, ...]
        e, eu, inv = self.history_vectors(h, q, return_parts=True)
        return self.aggregate(target, e, m, buckets=self.hasher.buckets(eu)[inv])
