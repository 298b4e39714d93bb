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

    def build_query_head(self) -> None:
        """With queries, the user vector gets ``P(query vector of the target)``: a pair target vector
        is linear in its query, so <u, pair(q, j)> shifts every candidate of a request by the same
        amount and the query could not change a ranking; ``<P q, item_j>`` lets it (a
        query-conditioned user vector, as search-aware sequential recommenders feed the query)."""
        self.query_head = None
        if self.pair is not None and self.pair.use_query:
            d = self.hparams.embed_dim
            self.query_head = nn.Linear(d, d)

    def query_term(self, query_ids: torch.Tensor) -> torch.Tensor:
        """[..., d] added to the user vector (0 without queries)."""
        if getattr(self, "query_head", None) is None:
            return torch.zeros((), device=query_ids.device)
        return self.query_head(self.query_encoder(query_ids))

    def user_vector(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, d]; rows that share a request (a ranking list's candidates, a target and its
        sampled negatives) and the same history are encoded once."""
        rows = _shared_history_rows(batch)
        if rows is not None:
            first, inv = rows
            sub = {k: v[first] for k, v in batch.items() if torch.is_tensor(v) and v.shape[:1] == inv.shape}
            return self._user_vector(sub)[inv] + self.query_term(batch["query_id"])
        return self._user_vector(batch) + self.query_term(batch["query_id"])

    def _user_vector(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encode_sequence(batch)  # [B, L, d]
        _, _, m = self.history(batch)
        return out[:, -1] * m.any(-1, keepdim=True)  # empty history -> zero vector

    def interest(self, batch, target):
        return self.user_vector(batch)

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        self._aux = {}
        return (self.target_vector(batch) * self.user_vector(batch)).sum(-1)

    def _item_table(self, ref: torch.Tensor) -> torch.Tensor:
        """[n_items + 1, d]: every item's target vector with query id 0 (row 0 = padding)."""
        ids = torch.arange(int(self.hparams.data_meta["n_items"]) + 1, device=ref.device)
        if self.pair is None:
            return self.item_encoder.fused(ids)
        return self.pair.fused(self.item_encoder, self.query_encoder, ids, torch.zeros_like(ids))

    def _logits_all_items(self, u: torch.Tensor, item: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """[P, n_items + 1] logits of every item for user vectors ``u`` [P, d] whose targets carry
        queries ``query`` [P]. A pair vector is linear in its query part (lambda * query), so
        <u, pair(q, j)> = <u, pair(0, j)> + <u, pair(q, t) - pair(0, t)> for any item t: one
        product with the item table plus a per-row offset."""
        logits = u @ self._item_table(u).T
        if self.pair is not None and self.pair.use_query:
            delta = self.pair.fused(self.item_encoder, self.query_encoder, item, query) - \
                self.pair.fused(self.item_encoder, self.query_encoder, item, torch.zeros_like(query))
            logits = logits + (u * delta).sum(-1, keepdim=True)
        return logits

    def all_item_logits(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, n_items + 1] logits of every item id (column 0 = padding) for each row's history and
        query: one product with the item table (the ``full_softmax`` loss, RecBole's ``CE``)."""
        return self._logits_all_items(self.user_vector(batch), batch["item_id"], batch["query_id"])

    def training_step(self, batch, batch_idx):
        if not getattr(self.hparams, "all_positions", False):
            return super().training_step(batch, batch_idx)
        with self.step_rng.active():
            return self._all_positions_step(batch)

    def _all_positions_step(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """SASRec's recipe (Kang & McAuley 2018, Sec. III-E/F): one causal pass over each history,
        a loss term at every position for the behaviour that follows it (the last position: the
        sample's target). ``full_softmax``: cross-entropy over every item; ``bce``: one item drawn
        uniformly per position as its negative (the paper's Eq. 12)."""
        self._aux = {}
        pos = batch["label"] > 0.5
        batch = {k: v[pos] for k, v in batch.items() if torch.is_tensor(v) and v.shape[:1] == pos.shape}
        out = self.encode_sequence(batch)  # [B, L, d]
        h, q, m = self.history(batch)
        nxt_item = torch.cat([h[:, 1:], batch["item_id"][:, None]], 1)
        nxt_query = torch.cat([q[:, 1:], batch["query_id"][:, None]], 1)
        valid = m & torch.cat([m[:, 1:], torch.ones_like(m[:, :1])], 1)
        u, item, query = out[valid], nxt_item[valid], nxt_query[valid]
        u = u + self.query_term(query)  # each position predicts its next behaviour under that one's query
        loss_name = self.hparams.loss
        if loss_name == "full_softmax":
            logits = self._logits_all_items(u, item, query)
            logits[:, 0] = float("-inf")
            loss = torch.nn.functional.cross_entropy(logits, item)
        elif loss_name == "bce":
            n = int(self.hparams.data_meta["n_items"])
            neg = torch.randint(1, n + 1, item.shape, device=item.device)
            neg = torch.where(neg == item, neg % n + 1, neg)  # never the positive itself
            tgt = lambda ids: self.target_vector({"item_id": ids, "query_id": query})  # noqa: E731
            pl, nl = (u * tgt(item)).sum(-1), (u * tgt(neg)).sum(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                torch.cat([pl, nl]), torch.cat([torch.ones_like(pl), torch.zeros_like(nl)]))
        else:
            raise ValueError(f"all_positions trains with loss full_softmax or bce, not {loss_name!r}")
        self.log(f"train/{loss_name}", loss, batch_size=len(u))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(u))
        return loss

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
