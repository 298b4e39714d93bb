"""PSU: SEMINAR's Pretraining Search Unit (arXiv 2407.10714, Sec. 3.2 "pretraining").

A LightningModule trained on the same :class:`~seminar_zoo.data.datamodule.LifelongSequenceDataModule`
batches as the recommenders. Each *positive* row (label 1) gives one behaviour sequence: its
history followed by its target (a real (query, item) behaviour). Rows with label 0 are skipped
(under the ranking protocol they repeat a positive row's history with a random item). From every
sequence ``positions`` positions are drawn (the last behaviour, plus stratified positions across
the rest of the sequence, by a hash of (request, user, step) so every process picks the same ones);
all three losses use them:

1. **Multi-modal alignment** (``w_align``): for the items at those positions, an in-batch
   N-pair cross-entropy (symmetric InfoNCE on L2-normalised vectors, temperature ``temperature``)
   for each pair in ``align_pairs`` (default text-image, image-attr, text-attr); a pair whose
   modality the dataset lacks is skipped. Logged as ``train/align_text_image`` etc.
2. **Next query-item pair prediction** (``w_next``): for position t the PSU's multi-head target
   attention runs with the candidate pair as the query over the pairs *before* t (causal mask)
   and scores cos(attention output, candidate) / temperature. Candidates: the true pair at t and
   ``next_negatives`` pairs at other drawn positions of the (all-gathered) batch, spread evenly
   over it; candidates with the same item as the true one are masked. Logged ``train/next_pair``.
   This is the attention (W_q, W_k, W_v, out) that SEMINAR's GSU and ESU restore.
3. **Query-item relevance** (``w_relevance``), a binary task. Signal: a search behaviour's query
   and the item clicked for it are relevant (label 1); the same query with the item of another
   search behaviour of the batch (half the gathered batch away, skipped when it has the same query
   or item) is not (label 0). Score = a * <query vector, gamma-weighted item vector> / sqrt(d) + b.
   Only when the pair fusion uses queries (the dataset has queries and lambda_q > 0).
   Logged ``train/relevance``.

Under DDP all contrastive candidates (and the relevance negatives) are gathered from every
process keeping the local gradient (:func:`~seminar_zoo.models.seminar.losses.gather_with_grad`),
so 2 processes with batch B compute, averaged, the loss of 1 process with the concatenated 2B batch.

Simplified: the reference's next-pair task scores full GSU+ESU+MLP logits with BCE; ours scores
the target attention's output by cosine with in-batch negatives (InfoNCE), which trains the same
attention and embeddings at a fraction of the cost on CPU. The relevance task uses in-batch
shuffled items as negatives as the reference does, but with a binary cross-entropy.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ...modules.attention import TargetAttention
from ...modules.encoders import ItemEncoder, QueryEncoder, UsesFeatureTables
from ...modules.pair import PairEncoder, data_has_queries
from .config import ALIGN_PAIRS
from .losses import dist_mean, gather_with_grad, hash_uniform, info_nce


class PSU(UsesFeatureTables, pl.LightningModule):
    """Pretraining Search Unit. See the module docstring for the losses.

    Args:
        data_meta: dataset facts (``LifelongSequenceDataModule.data_meta``).
        embed_dim, num_heads, dropout: encoders and the multi-head target attention (must match SEMINAR).
        lambda_q: query/item fusion weight of the pair vectors.
        max_len: most recent behaviours of each history used (None = all the batch has).
        w_align, w_next, w_relevance: loss weights (0 disables a loss).
        temperature: of the InfoNCE losses.
        align_pairs: modality pairs to align ("a-b" with a, b in id/attr/text/image).
        positions: positions drawn per sequence; next_negatives: negatives per next-pair prediction.
    """

    def __init__(self, data_meta: Optional[dict] = None, embed_dim: int = 32, num_heads: int = 4,
                 dropout: float = 0.1, lambda_q: float = 0.5, max_len: Optional[int] = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, w_align: float = 1.0, w_next: float = 1.0,
                 w_relevance: float = 1.0, temperature: float = 0.1, align_pairs: List[str] = list(ALIGN_PAIRS),
                 positions: int = 2, next_negatives: int = 15):
        super().__init__()
        if data_meta is None:
            raise ValueError("PSU needs data_meta (LifelongSequenceDataModule(...).data_meta)")
        if positions < 1:
            raise ValueError(f"positions must be >= 1, got {positions}")
        if next_negatives < 1:
            raise ValueError(f"next_negatives must be >= 1, got {next_negatives}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.save_hyperparameters()
        self.item_encoder = ItemEncoder(data_meta, embed_dim)
        self.query_encoder = QueryEncoder(data_meta, embed_dim)
        self.pair = PairEncoder(self.item_encoder.modalities, data_has_queries(data_meta), lambda_q)
        self.attn = TargetAttention(embed_dim, num_heads, dropout)
        self.rel_scale = nn.Parameter(torch.tensor(1.0))
        self.rel_bias = nn.Parameter(torch.tensor(0.0))
        self.align_pairs: List[Tuple[str, str]] = []
        for p in align_pairs:
            a, _, b = p.partition("-")
            if not b or a not in ("id", "attr", "text", "image") or b not in ("id", "attr", "text", "image") or a == b:
                raise ValueError(f"align_pairs entry {p!r}: expected 'a-b' with two different modalities "
                                 "of id/attr/text/image")
            if a in self.item_encoder.modalities and b in self.item_encoder.modalities:
                self.align_pairs.append((a, b))

    # ---- data
    def sequences(self, batch: Dict[str, torch.Tensor]):
        """Positive rows as sequences: (items [N, T], queries [N, T], mask [N, T], keep [B])."""
        h, q, m = batch["hist_item_id"], batch["hist_query_id"], batch["hist_mask"]
        n = self.hparams.max_len
        if n is not None and n < h.shape[1]:
            h, q, m = h[:, -n:], q[:, -n:], m[:, -n:]
        pos = batch["label"] > 0.5
        keep = pos if bool(pos.any()) else torch.ones_like(pos)
        items = torch.cat([h[keep], batch["item_id"][keep, None]], 1)
        queries = torch.cat([q[keep], batch["query_id"][keep, None]], 1)
        mask = torch.cat([m[keep], pos[keep, None]], 1) & (items > 0)
        return items, queries, mask, keep

    def draw_positions(self, mask: torch.Tensor, request: torch.Tensor, user: torch.Tensor):
        """[N, P] positions: the last valid one, then stratified hashed positions before it.

        Returns (pos [N, P] long, valid [N, P] bool, first [N] first valid index).
        """
        N, T = mask.shape
        P = self.hparams.positions
        ar = torch.arange(T, device=mask.device)
        any_valid = mask.any(1)
        first = torch.where(mask, ar, T).min(1).values.clamp_max(T - 1)
        last = torch.where(mask, ar, -1).max(1).values.clamp_min(0)
        cols = [last]
        valid = [any_valid]
        span = (last - first).clamp_min(0)
        step = torch.full_like(request, int(self.global_step))
        for k in range(1, P):
            u = hash_uniform(request, user, step, torch.full_like(request, k))
            frac = (k - 1 + u) / (P - 1)
            p = first + (frac * span.float()).long().clamp_max((span - 1).clamp_min(0))
            cols.append(p)
            valid.append(any_valid & (span >= k))  # distinct strata need span >= P-1; fewer -> fewer draws
        pos = torch.stack(cols, 1)
        val = torch.stack(valid, 1) & mask.gather(1, pos)
        return pos, val, first

    # ---- losses
    def losses(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        hp = self.hparams
        items, queries, mask, keep = self.sequences(batch)
        pos, valid, first = self.draw_positions(mask, batch["request_id"][keep], batch["user_id"][keep])
        parts: Dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=items.device)
        sel_items = items.gather(1, pos)[valid]
        if hp.w_align > 0 and self.align_pairs:
            vals = []
            cache = {}
            for a, b in self.align_pairs:
                for m in (a, b):
                    if m not in cache:
                        cache[m] = self.item_encoder.modality(m, sel_items)
                loss = info_nce(cache[a], cache[b], sel_items, hp.temperature)
                parts[f"align_{a}_{b}"] = loss
                vals.append(loss)
            total = total + hp.w_align * torch.stack(vals).mean()
        if hp.w_next > 0:
            parts["next_pair"] = self.next_pair_loss(items, queries, mask, pos, valid, first)
            total = total + hp.w_next * parts["next_pair"]
        if hp.w_relevance > 0 and self.pair.use_query:
            sel_q = queries.gather(1, pos)[valid]
            parts["relevance"] = self.relevance_loss(sel_items, sel_q)
            total = total + hp.w_relevance * parts["relevance"]
        # keep every parameter in the graph (a disabled loss leaves some unused; DDP would stop)
        total = total + 0.0 * sum(p.view(-1)[0] for p in self.parameters() if p.requires_grad)
        return total, parts

    def next_pair_loss(self, items, queries, mask, pos, valid, first) -> torch.Tensor:
        hp = self.hparams
        N, T = items.shape
        P = pos.shape[1]
        seq = self.pair.fused(self.item_encoder, self.query_encoder, items, queries)  # [N, T, d] pair vectors
        d = seq.shape[-1]
        ctx = valid & (pos > first.unsqueeze(1))  # needs an earlier behaviour
        cand = seq.gather(1, pos.unsqueeze(-1).expand(N, P, d))  # [N, P, d]
        cand_ids = items.gather(1, pos)
        flat_c, flat_ids = cand[ctx], cand_ids[ctx]
        all_c, off = gather_with_grad(flat_c)
        all_ids, _ = gather_with_grad(flat_ids)
        n_g = all_c.shape[0]
        n_loc = flat_c.shape[0]
        if n_g < 2:
            return dist_mean(seq.new_zeros(0)) + seq.sum() * 0.0
        C = min(hp.next_negatives, n_g - 1) + 1
        stride = max(1, n_g // C)
        local_idx = torch.cumsum(ctx.flatten().long(), 0).view(N, P) - 1 + off  # global index per context
        g = local_idx.clamp_min(0)
        cidx = (g.unsqueeze(-1) + stride * torch.arange(C, device=items.device)) % n_g  # [N, P, C]
        targets = all_c[cidx]  # [N, P, C, d]
        t_ids = all_ids[cidx]
        ar = torch.arange(T, device=items.device)
        causal = mask.unsqueeze(1) & (ar.view(1, 1, T) < pos.unsqueeze(-1))  # [N, P, T]
        out = self.attn.forward_multi(targets.reshape(N, P * C, d), seq,
                                      causal.unsqueeze(2).expand(N, P, C, T).reshape(N, P * C, T))
        out = out.view(N, P, C, d)
        logits = F.cosine_similarity(out.float(), targets.float(), dim=-1) / hp.temperature
        dup = t_ids == t_ids[..., :1]
        dup[..., 0] = False
        logits = logits.masked_fill(dup, float("-inf"))
        ce = F.cross_entropy(logits[ctx], torch.zeros(n_loc, dtype=torch.long, device=items.device), reduction="none")
        return dist_mean(ce) + 0.0 * seq.sum()

    def relevance_loss(self, item_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        has_q = query_ids > 0
        it, qi = item_ids[has_q], query_ids[has_q]
        i_vec = self.pair.item_vector(self.item_encoder, it)
        q_vec = self.query_encoder(qi)
        all_i, off = gather_with_grad(i_vec)
        all_it, _ = gather_with_grad(it)
        all_q, _ = gather_with_grad(qi)
        n, n_g = it.shape[0], all_i.shape[0]
        if n_g < 2:
            return dist_mean(q_vec.new_zeros(0)) + q_vec.sum() * 0.0 + i_vec.sum() * 0.0
        d = q_vec.shape[-1]
        j = (torch.arange(n, device=it.device) + off + max(1, n_g // 2)) % n_g
        neg_ok = (all_q[j] != qi) & (all_it[j] != it)
        score = lambda q, i: self.rel_scale * (q * i).sum(-1).float() / math.sqrt(d) + self.rel_bias  # noqa: E731
        s_pos = score(q_vec, i_vec)
        s_neg = score(q_vec[neg_ok], all_i[j][neg_ok])
        logits = torch.cat([s_pos, s_neg])
        labels = torch.cat([torch.ones_like(s_pos), torch.zeros_like(s_neg)])
        per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return dist_mean(per) + 0.0 * (q_vec.sum() + i_vec.sum())

    # ---- Lightning
    def training_step(self, batch, batch_idx):
        loss, parts = self.losses(batch)
        bs = int(batch["label"].shape[0])
        for k, v in parts.items():
            self.log(f"train/{k}", v, batch_size=bs)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
