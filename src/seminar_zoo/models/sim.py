"""SIM: Search-based user Interest Model (Pi et al., CIKM 2020, arXiv 2006.05639).

Two cascaded units over the lifelong history (Sec. 3):

* **GSU** (General Search Unit, Sec. 3.1) picks at most ``topk`` behaviours relevant
  to the target, ``gsu: hard | soft``:

  - ``hard``: behaviours whose category equals the target's (the attribute column
    ``category_attr``, default ``attr_category``); when more than ``topk`` match, the
    most recent ``topk``. Padding and unknown categories (0) never match. A list of
    columns is a multi-label category (e.g. ML-100K's up to 3 genres of a film): a
    behaviour matches when it shares any known value with the target.
  - ``soft``: relevance ``r_l = <W_a e_t, W_b e_l>`` (inner product of separately
    projected target and behaviour embeddings), top-``topk``. As in the paper the
    soft-search parameters are trained by an auxiliary CTR task built on the soft
    search over *all* L behaviours: ``u_aux = sum_l w_l e_l`` with
    ``w = softmax(r)`` over valid positions, ``logit_aux = MLP([e_t, u_aux])``,
    loss ``aux_weight * BCE(logit_aux, label)``, registered as ``train/gsu_aux``.
    The top-k selection itself is not differentiable.

* **ESU** (Exact Search Unit, Sec. 3.2): multi-head target attention over the
  selected behaviours (selected padding slots are masked out). Each selected behaviour
  carries an embedding of its time interval (``time_embedding``, default on): the gap
  ``ts_last - ts_l`` to the user's most recent behaviour, log2-bucketed, a learned vector
  per bucket added to the behaviour vector
  (:class:`~seminar_zoo.modules.time_interval.TimeIntervalEmbedding`; the paper concatenates
  ``e_l`` and the interval embedding; adding keeps the ESU width). Without it the ESU sees the
  selected behaviours as an unordered bag.

With queries (RecModel ``use_queries``) ``e_t`` and ``e_l`` are (query, item) pair vectors in the
soft search, its auxiliary loss and the ESU, as in SEMINAR's reference SIM; the hard search keeps
matching the item category.

Simplified / differs from the paper:
  - the time interval is measured to the user's latest behaviour (``hist_ts[:, -1]``), not
    to the request time, which the batch does not carry; the hard search uses the
    DataModule's history window, not an offline user-behaviour tree (same result,
    computed on the fly);
  - multi-label categories (a list ``category_attr``) are our extension: the paper's items
    have one leaf category; matching on the first of several genres only would drop
    behaviours that share the target's other genres;
  - soft-search pooling is softmax-normalised (the paper's weights are raw inner
    products; over L = 2000 behaviours their unnormalised sum is numerically
    unstable), and the GSU shares the item encoder with the ESU (the paper may
    train a separate embedding for the soft search).
"""
from __future__ import annotations

import math
from typing import List, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.attention import TargetAttention
from ..modules.ops import gather_rows, masked_softmax, masked_topk
from ..modules.time_interval import TimeIntervalEmbedding
from ..modules.tower import Tower
from .base import RecModel


class SIM(RecModel):
    """Args:
        gsu: ``hard`` (category match) or ``soft`` (projected inner product + auxiliary loss).
        topk: behaviours kept by the GSU for the ESU.
        category_attr: attribute column used by the hard search, or a list of columns
            (a multi-label category: a behaviour matches when it shares any value).
        aux_weight: weight of the soft-search auxiliary CTR loss.
        time_embedding: add a time-interval embedding to each selected behaviour in the ESU
            (Sec. 3.2; needs ``hist_ts`` in the batch, which every DataModule batch carries).
        time_buckets: log2 buckets of the time interval (seconds): gaps up to ``2**time_buckets``.
    """

    def __init__(self, gsu: Literal["hard", "soft"] = "hard", topk: int = 50,
                 category_attr: Union[str, List[str]] = "attr_category", aux_weight: float = 1.0,
                 time_embedding: bool = True, time_buckets: int = 32, **kwargs):
        super().__init__(**kwargs)
        if gsu not in ("hard", "soft"):
            raise ValueError(f"SIM: gsu must be 'hard' or 'soft', got {gsu!r}")
        if topk < 1:
            raise ValueError(f"SIM: topk must be >= 1, got {topk}")
        d = self.hparams.embed_dim
        meta = self.hparams.data_meta
        self.gsu, self.topk, self.aux_weight = gsu, int(topk), float(aux_weight)
        if gsu == "hard":
            cols = list(meta.get("attr_cols", []))
            wanted = [category_attr] if isinstance(category_attr, str) else list(category_attr)
            bad = [c for c in wanted if c not in cols] or ([] if wanted else ["(empty list)"])
            if bad:
                raise ValueError(f"SIM(gsu='hard'): category_attr {bad[0]!r} is not an attribute column of "
                                 f"dataset {meta.get('name', '?')!r} (attr_cols: {cols}); pass "
                                 "--model.init_args.category_attr or use gsu: soft")
            self.category_columns = [cols.index(c) for c in wanted]
            self.category_index = self.category_columns[0]
        else:
            self.gsu_q = nn.Linear(d, d, bias=False)  # W_a (target)
            self.gsu_k = nn.Linear(d, d, bias=False)  # W_b (behaviours)
            self.aux_tower = Tower(2 * d, self.hparams.tower_dims, self.hparams.dropout)
        self.esu = TargetAttention(d, self.hparams.num_heads)
        self.time_emb = TimeIntervalEmbedding(d, time_buckets) if time_embedding else None
        self.build_tower()

    # ---- GSU
    def hard_search(self, batch, h: torch.Tensor, m: torch.Tensor):
        """(idx [B, K], selected mask [B, K]): the most recent behaviours of the target's category
        (sharing any known value of the category columns)."""
        cat = self.item_encoder.item_attr[:, self.category_columns]  # [n_items + 1, c]
        ct = cat[batch["item_id"]].unsqueeze(1)  # [B, 1, c]
        same = (cat[h].unsqueeze(-1) == ct.unsqueeze(-2)) & (ct.unsqueeze(-2) > 0)  # [B, L, c, c]
        match = same.flatten(-2).any(-1) & m
        recency = torch.arange(h.shape[1], device=h.device).expand_as(h)
        return masked_topk(recency, match, self.topk)

    def soft_scores(self, target: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """[B, L] soft-search relevance <W_a e_t, W_b e_l> / sqrt(d)."""
        return (self.gsu_k(e) @ self.gsu_q(target).unsqueeze(-1)).squeeze(-1) / math.sqrt(e.shape[-1])

    def interest(self, batch, target):
        h, q, m = self.history(batch)
        if self.gsu == "hard":
            idx, sel = self.hard_search(batch, h, m)
            keys = self.history_vectors(gather_rows(h, idx), gather_rows(q, idx))
        else:
            e = self.history_vectors(h, q, unique=True)
            r = self.soft_scores(target, e)
            idx, sel = masked_topk(r.detach(), m, self.topk)
            keys = gather_rows(e, idx)
            if self.training and "label" in batch:
                w = masked_softmax(r, m)
                u_aux = (w.unsqueeze(-1) * e).sum(1)
                logit = self.aux_tower(torch.cat([target, u_aux], -1))
                aux = F.binary_cross_entropy_with_logits(logit, batch["label"])
                self.add_aux_loss("gsu_aux", self.aux_weight * aux)
        if self.time_emb is not None:
            keys = keys + self.time_emb(batch, h.shape[1], idx, who="SIM")
        return self.esu(target, keys, sel)
