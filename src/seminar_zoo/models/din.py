"""DIN: Deep Interest Network (Zhou et al., KDD 2018).

The user-interest vector is the sum of behaviour vectors weighted by the local
activation unit on (target, behaviour, target - behaviour, target * behaviour),
with padding masked (Sec. 4.3, Eq. 3). It attends over the whole history it is
given, so its cost grows linearly with ``max_len``; ``max_len: 50`` gives the
"recent window only" reference the long-sequence models must beat.

Simplified: sigmoid instead of Dice activations in the unit; no mini-batch aware
regularisation (the embedding tables here are small).

Target and behaviours are (query, item) pair vectors when the data has queries
(RecModel ``use_queries``), item vectors otherwise.
"""
from __future__ import annotations

from typing import List

from ..modules.attention import DINActivationUnit
from .base import RecModel


class DIN(RecModel):
    def __init__(self, attention_hidden: List[int] = [64, 32], **kwargs):
        super().__init__(**kwargs)
        self.attention = DINActivationUnit(self.hparams.embed_dim, attention_hidden)
        self.build_tower()

    def interest(self, batch, target):
        h, q, m = self.history(batch)
        return self.attention(target, self.history_vectors(h, q), m)
