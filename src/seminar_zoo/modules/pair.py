"""Fusion of (query, item) pairs, shared by SEMINAR and every baseline (arXiv 2407.10714, Sec. 3.2).

Each behaviour (and the target) is a (query, item) pair. Its vector is the weighted average

    pair = lambda * query + (1 - lambda) * sum_j w_j x_j,    w = softmax(gamma),

over the item modalities x_j (``id``, ``attr``, ``text``, ``image``: whatever the dataset has)
with learnable log-weights ``gamma`` (SEMINAR's modality weights). The item weights sum to 1, so
``lambda`` is the query's exact share, as the reference implementation's ``weighed_average``
fusion with ``fusion_weight_query`` (there the query gets alpha and the item 1 - alpha).

Events without a query: ``query_id == 0`` (a recommendation event) takes the QueryEncoder's
learned "no query" vector in the query slot, still with share lambda, so the item part has the
same scale on search and recommendation events. **When the dataset has no queries, or lambda is 0,
the query slot is dropped and the item part alone has weight 1**: changing query ids then cannot
change any output.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn


def data_has_queries(data_meta: dict) -> bool:
    """True when the dataset has a query table (``n_queries > 0`` and ``query`` among its modalities)."""
    return int(data_meta.get("n_queries", 0)) > 0 and "query" in data_meta.get("modalities", [])


class PairEncoder(nn.Module):
    """Weighted per-modality vectors of (query, item) pairs ([..., M, d]) and their sum (the pair vector).

    ``names`` = the item encoder's modalities, plus ``"query"`` if the dataset has queries (the
    modality list of SEMINAR's per-modality projections G(j)). ``gamma`` has one log-weight per
    item modality (init 0: a plain mean); :attr:`active` is the subset that enters the pair vector
    with this lambda.
    """

    def __init__(self, item_modalities: Sequence[str], has_queries: bool, lambda_q: float = 0.5):
        super().__init__()
        if not 0.0 <= float(lambda_q) <= 1.0:
            raise ValueError(f"lambda_q must be in [0, 1], got {lambda_q}")
        self.item_modalities = list(item_modalities)
        self.names = self.item_modalities + (["query"] if has_queries else [])
        self.lambda_q = float(lambda_q)
        self.use_query = bool(has_queries) and self.lambda_q > 0
        self.gamma = nn.Parameter(torch.zeros(len(self.item_modalities)))

    @property
    def active(self) -> List[str]:
        """Modalities that enter the pair vector (query dropped when unused)."""
        return self.item_modalities + (["query"] if self.use_query else [])

    def item_weights(self) -> torch.Tensor:
        """w = softmax(gamma): the item modalities' weights within the item part (sum to 1)."""
        return torch.softmax(self.gamma, 0)

    def weights(self) -> torch.Tensor:
        """Weights of the active modalities, summing to 1: (1 - lambda) w_j for items, lambda for the query."""
        w = self.item_weights()
        if not self.use_query:
            return w
        return torch.cat([w * (1.0 - self.lambda_q), w.new_full((1,), self.lambda_q)])

    def raw(self, item_encoder, query_encoder, item_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        """Unweighted per-modality vectors [..., M_active, d]; item ids encoded once per distinct id."""
        uniq, inv = torch.unique(item_ids, return_inverse=True)
        item = item_encoder(uniq)[inv]  # [..., M_item, d]
        if not self.use_query:
            return item
        q = query_encoder(query_ids).unsqueeze(-2)
        return torch.cat([item, q.to(item.dtype)], -2)

    def forward(self, item_encoder, query_encoder, item_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        """Weighted per-modality vectors [..., M_active, d] (sum over M = the fused pair vector)."""
        x = self.raw(item_encoder, query_encoder, item_ids, query_ids)
        return x * self.weights().to(x.dtype).unsqueeze(-1)

    def fused(self, item_encoder, query_encoder, item_ids: torch.Tensor, query_ids: torch.Tensor,
              proj: Optional[nn.Module] = None) -> torch.Tensor:
        """Pair vectors sum_j proj_j(weight_j x_j): [..., d], the same as ``proj(forward(...)).sum(-2)``.

        ``proj`` (SEMINAR's G(j), called as ``proj(x [..., m, d], start)``) is optional. Computed once
        per distinct item / query id and indexed back (a history repeats ids), so it never
        materialises the [..., M, d] stack.
        """
        w = self.weights()
        mi = len(self.item_modalities)
        uniq, inv = torch.unique(item_ids, return_inverse=True)
        xi = item_encoder(uniq)
        xi = xi * w[:mi].to(xi.dtype).unsqueeze(-1)
        if proj is not None:
            xi = proj(xi)
        out = xi.sum(-2)[inv]
        if self.use_query:
            uq, iq = torch.unique(query_ids, return_inverse=True)
            xq = (query_encoder(uq) * w[mi].to(out.dtype)).unsqueeze(-2)
            if proj is not None:
                xq = proj(xq, start=mi)
            out = out + xq.squeeze(-2)[iq]
        return out

    def item_vector(self, item_encoder, item_ids: torch.Tensor) -> torch.Tensor:
        """The item part alone, sum_j w_j x_j (no lambda): [..., d]."""
        x = item_encoder(item_ids)
        return (x * self.item_weights().to(x.dtype).unsqueeze(-1)).sum(-2)
