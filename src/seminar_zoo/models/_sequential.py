"""Shared parts of the reference sequential recommenders (SASRec, HSTU).

Both encode the history with a causal sequence model and score a candidate by the
dot product of its vector with the output at the last (most recent) position, so a
user's history is encoded once and any number of candidates is scored with one
matrix product (:meth:`DotProductScoring.score_candidates`), which is what full
ranking needs.

:class:`DotProductScoring` is a mixin, not a ``RecModel``, so it stays out of the
model registry.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn


def causal_valid_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, L, L] boolean: query i may attend key j iff j <= i and (j is valid or j == i).

    Histories are right-aligned (padding on the left). Letting every position see
    itself keeps padded rows finite; valid rows never see padding.
    """
    L = mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    diag = torch.eye(L, dtype=torch.bool, device=mask.device)
    return causal & (mask.unsqueeze(1) | diag)


def _shared_history_rows(batch: Dict[str, torch.Tensor]):
    """(first row of each distinct (user, request), inverse index) when rows repeat and the
    repeated rows carry identical histories; None otherwise."""
    if "request_id" not in batch or "user_id" not in batch:
        return None
    key = batch["user_id"] * (1 << 40) + batch["request_id"]
    uniq, inv = torch.unique(key, return_inverse=True)
    if len(uniq) == len(key):
        return None
    first = torch.full((len(uniq),), len(key), dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inv, torch.arange(len(key), device=key.device), "amin")
    for k in ("hist_item_id", "hist_query_id", "hist_mask", "hist_ts"):
        if k in batch and not torch.equal(batch[k][first][inv], batch[k]):
            return None  # same request id but different histories (e.g. ctr events at different times)
    return first, inv


class DotProductScoring:
    """logit = <target vector, sequence output at the last position> (SASRec Eq. 11 style)."""

    def encode_sequence(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def sequence_inputs(self, batch: Dict[str, torch.Tensor]):
        """(behaviour vectors [B, L, d], mask [B, L]) from the shared (pair) encoder."""
        h, q, m = self.history(batch)
        return self.history_vectors(h, q), m

    def user_vector(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, d]; rows that share a request (a ranking list's candidates, a target and its
        sampled negatives) and the same history are encoded once."""
        rows = _shared_history_rows(batch)
        if rows is not None:
            first, inv = rows
            sub = {k: v[first] for k, v in batch.items() if torch.is_tensor(v) and v.shape[:1] == inv.shape}
            return self._user_vector(sub)[inv]
        return self._user_vector(batch)

    def _user_vector(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encode_sequence(batch)  # [B, L, d]
        _, _, m = self.history(batch)
        return out[:, -1] * m.any(-1, keepdim=True)  # empty history -> zero vector

    def interest(self, batch, target):
        return self.user_vector(batch)

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        self._aux = {}
        return (self.target_vector(batch) * self.user_vector(batch)).sum(-1)

    @torch.no_grad()
    def score_candidates(self, batch: Dict[str, torch.Tensor], item_ids: torch.Tensor) -> torch.Tensor:
        """[B, C] logits of ``item_ids`` [B, C] with one history encoding per row."""
        u = self.user_vector(batch)
        b = dict(batch)
        b["item_id"] = item_ids
        b["query_id"] = batch["query_id"].unsqueeze(1).expand_as(item_ids)
        return (self.target_vector(b) * u.unsqueeze(1)).sum(-1)


class PositionEmbedding(nn.Module):
    """Learned absolute positions counted back from the most recent behaviour (index -1 -> 0)."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(max_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, L: int, device) -> torch.Tensor:
        back = torch.arange(L - 1, -1, -1, device=device).clamp(max=self.emb.num_embeddings - 1)
        return self.emb(back)  # [L, d]
