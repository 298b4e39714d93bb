"""SEMINAR's building blocks (arXiv 2407.10714, Sec. 3; notes in ../shared/seminar-paper-notes.md).

* :class:`PairEncoder` (in ``modules/pair.py``, re-exported here): the (query, item) pair fusion
  ``lambda * query + (1 - lambda) * sum_j softmax(gamma)_j x_j`` shared with every baseline;
  lambda is the query's exact share. **Without queries in the data, or with lambda_q == 0, the
  query is dropped and the item part alone has weight 1** (lambda then has no effect).
* :class:`ModalityProjections`: the GSU's per-modality maps G(j) in R^{d x d} (Sec. 3.3), applied
  to the restored (pretrained) embeddings; initialised to the identity so a freshly restored
  model starts from exactly the PSU's representation.
* :class:`MultiHeadTargetAttention`: :class:`~seminar_zoo.modules.attention.TargetAttention`
  (same parameter names, so weights move between PSU, GSU and ESU) plus several targets per row
  (used by the PSU's next-pair loss) and an additive logit bias (used by the ESU).
* :class:`GSU`: the PSU's multi-head target attention with G(j); scores all L behaviours with the
  head-averaged attention logit and keeps the top-K. :meth:`GSU.vectors` returns the
  per-modality vectors whose full inner product *is* that score, the form a multi-modal product
  quantizer (``modules/quantization.py``) needs.
* :func:`gather_with_grad`: CLIP-style all-gather across processes that keeps the local slot's
  gradient (uneven sizes allowed); :func:`info_nce`: the in-batch N-pair loss on top of it.
* :class:`ColdTargetAUC`: AUC restricted to test lists whose positive item never was a training
  target (the paper's ID-sparsity claim, Sec. 1).

Simplified w.r.t. the paper: one attention layer (no stacked encoder), the GSU score is the
head-averaged scaled dot product, and the top-K selection is made differentiable for the GSU
only through the ESU's additive bias (see :class:`~seminar_zoo.models.seminar.SEMINAR`).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..metrics import _binary_auc
from .attention import TargetAttention, masked_softmax
from .pair import PairEncoder, data_has_queries  # noqa: F401  (re-exported: moved to modules/pair.py)


# --------------------------------------------------------------------------- G(j)
class ModalityProjections(nn.Module):
    """Per-modality linear maps G(j) in R^{d x d} (no bias), identity-initialised.

    forward: [..., M, d] -> [..., M, d] with out[..., j, :] = G(j) x[..., j, :].
    """

    def __init__(self, names: Sequence[str], dim: int):
        super().__init__()
        self.names = list(names)
        self.weight = nn.Parameter(torch.eye(dim).repeat(len(self.names), 1, 1))  # [M, d_out, d_in]

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x [..., m, d] holds modalities start..start+m-1 of ``names``."""
        m = x.shape[-2]
        w = self.weight[start:start + m].to(x.dtype)
        return torch.einsum("...mi,moi->...mo", x, w)


# --------------------------------------------------------------------------- attention
class MultiHeadTargetAttention(TargetAttention):
    """TargetAttention (parameters q, k, v, out) with several targets per row and a logit bias.

    * ``forward(target [B, d], keys [B, L, d], mask [B, L], bias=None [B, L])`` -> [B, d]
    * ``forward_multi(targets [B, C, d], keys [B, L, d], mask [B, C, L])`` -> [B, C, d]
    """

    def head_logits(self, target: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[B, C, d] x [B, L, d] -> [B, H, C, L] per-head scaled dot products."""
        B, C, d = target.shape
        L, h = keys.shape[1], self.h
        q = self.q(target).view(B, C, h, d // h).transpose(1, 2)  # [B, H, C, dh]
        k = self.k(keys).view(B, L, h, d // h).transpose(1, 2)  # [B, H, L, dh]
        return (q @ k.transpose(-1, -2).to(q.dtype)) / math.sqrt(d // h)

    def forward_multi(self, targets: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                      return_weights: bool = False):
        """Several targets per row; no attention dropout (used for pretraining scores).

        Masked logits get a large finite negative instead of -inf (cheaper than re-zeroing NaN
        rows on these [B, H, C, L] tensors); rows with no valid key output zero.
        """
        B, C, d = targets.shape
        L, h = keys.shape[1], self.h
        logits = self.head_logits(targets, keys)
        logits = logits.masked_fill(~mask.unsqueeze(1), torch.finfo(logits.dtype).min / 4)
        w = torch.softmax(logits, -1)  # [B, H, C, L]
        v = self.v(keys).view(B, L, h, d // h).transpose(1, 2)  # [B, H, L, dh]
        o = (w @ v.to(w.dtype)).transpose(1, 2).reshape(B, C, d)
        o = self.out(o) * mask.any(-1, keepdim=True)
        return (o, w) if return_weights else o

    def forward(self, target: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                bias: Optional[torch.Tensor] = None, return_weights: bool = False):
        B, L, d = keys.shape
        logits = self.scores(target, keys)  # [B, H, L]
        if bias is not None:
            logits = logits + bias.unsqueeze(1).to(logits.dtype)
        w = masked_softmax(logits, mask.unsqueeze(1))
        v = self.v(keys).view(B, L, self.h, d // self.h).transpose(1, 2)
        o = (self.drop(w).unsqueeze(-2) @ v.to(w.dtype)).squeeze(-2).reshape(B, d)
        o = self.out(o) * mask.any(-1, keepdim=True)
        return (o, w) if return_weights else o


def masked_topk(scores: torch.Tensor, mask: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``scores`` [B, L] among valid positions -> (idx [B, k'], selected mask [B, k']).

    k' = min(k, L). Padding ranks below every valid behaviour, so it is taken only when fewer than
    k are valid, and then its slot is masked out. Indices come back in chronological order.
    """
    if k < 1:
        raise ValueError(f"topk must be >= 1, got {k}")
    k = min(k, scores.shape[-1])
    s = scores.detach().float().masked_fill(~mask, float("-inf"))
    idx = s.topk(k, dim=-1).indices
    idx = idx.sort(-1).values
    return idx, mask.gather(1, idx)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...], idx [B, K] -> [B, K, ...] (differentiable in x)."""
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))


class GSU(nn.Module):
    """General Search Unit: the PSU's target attention with per-modality projections G(j).

    Inputs are the *weighted* per-modality pair vectors of :class:`PairEncoder` (target
    [B, M, d], history [B, L, M, d]). With e_j = G(j) x_j and e = sum_j e_j, the score of
    behaviour l is the attention logit averaged over heads:

        s_l = <W_q e_t, W_k e_l> / (H sqrt(d / H)) = sum_i sum_j <t_i, k_{l,j}>,
        t_i = W_q G(i) x_{t,i} / (H sqrt(d / H)),  k_{l,j} = W_k G(j) x_{l,j}.

    :meth:`vectors` returns (t [B, M, d], k [B, L, M, d]); :meth:`scores` computes the same
    numbers through the sums (cheaper); a product quantizer can encode k per modality.
    """

    def __init__(self, names: Sequence[str], dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = MultiHeadTargetAttention(dim, num_heads, dropout)
        self.proj = ModalityProjections(names, dim)
        self.scale = 1.0 / (num_heads * math.sqrt(dim // num_heads))

    def pair(self, modal: torch.Tensor) -> torch.Tensor:
        """G-projected fused pair vector e = sum_j G(j) x_j: [..., M, d] -> [..., d]."""
        return self.proj(modal).sum(-2)

    def vectors(self, target_modal: torch.Tensor, hist_modal: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t = self.attn.q(self.proj(target_modal)) * self.scale
        k = self.attn.k(self.proj(hist_modal))
        return t, k

    def scores_from_pairs(self, target_pair: torch.Tensor, hist_pair: torch.Tensor,
                          mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, d], [B, L, d] (G-projected pair vectors) -> [B, L]; padding -> -inf."""
        return self.scores_from_keys(target_pair, self.attn.k(hist_pair), mask)

    def scores_from_keys(self, target_pair: torch.Tensor, hist_keys: torch.Tensor,
                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Like :meth:`scores_from_pairs` with the history already through W_k ([B, L, d])."""
        t = self.attn.q(target_pair) * self.scale
        s = torch.einsum("bd,bld->bl", t, hist_keys.to(t.dtype))
        return s if mask is None else s.masked_fill(~mask, float("-inf"))

    def scores(self, target_modal: torch.Tensor, hist_modal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.scores_from_pairs(self.pair(target_modal), self.pair(hist_modal), mask)

    def modality_shares(self, target_pair: torch.Tensor, hist_modal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Share of each history modality in the GSU score, averaged with the GSU attention weights.

        c_{l,j} = <t, k_{l,j}>; share_j = sum_l softmax_l(s) |c_{l,j}| / sum_j' |c_{l,j'}|. Returns [B, M].
        """
        t = self.attn.q(target_pair) * self.scale
        k = self.attn.k(self.proj(hist_modal))  # [B, L, M, d]
        c = torch.einsum("bd,blmd->blm", t.float(), k.float())
        s = c.sum(-1)
        w = masked_softmax(s, mask)
        share = c.abs() / c.abs().sum(-1, keepdim=True).clamp_min(1e-12)
        return (w.unsqueeze(-1) * share).sum(1)


# --------------------------------------------------------------------------- distributed
def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """All-gather ``x`` [n, ...] from every process along dim 0 (sizes may differ).

    The local slot is ``x`` itself, so gradients flow into the local rows; the other processes'
    rows are constants (CLIP / OpenCLIP ``local_loss`` style: the gradient a process's rows would
    get as *other* processes' negatives is not sent back). Returns (gathered, offset of the
    local rows). Without an initialised process group (or world size 1) returns (x, 0).
    """
    if not _dist_ready():
        return x, 0
    dist = torch.distributed
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    pad = torch.zeros((m - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    xp = torch.cat([x.detach(), pad], 0).contiguous()
    bufs = [torch.empty_like(xp) for _ in range(world)]
    dist.all_gather(bufs, xp)
    parts = [x if r == rank else bufs[r][: sizes[r]] for r in range(world)]
    return torch.cat(parts, 0), sum(sizes[:rank])


def dist_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample losses over *all* processes, as this process's share.

    Returns ``world * sum(local values) / global count``: averaged over processes (what DDP does
    to gradients and what a logger shows when it syncs) it is the mean over the concatenated
    batch, whatever the local counts are. Single process: the plain mean.
    """
    n = torch.tensor([float(values.numel())], device=values.device)
    world = 1
    if _dist_ready():
        torch.distributed.all_reduce(n)
        world = torch.distributed.get_world_size()
    if float(n) == 0:
        return values.sum() * 0.0
    return values.float().sum() * world / n[0]


def info_nce(a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch N-pair loss between two views a, b [n, d] of the same n items.

    Negatives are gathered from all processes (:func:`gather_with_grad`); anchors are the local
    rows, so the loss averaged over processes equals the single-process loss on the concatenated
    batch. Other rows with the same item id (``ids``) are not counted as negatives.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    a_all, off = gather_with_grad(a)
    b_all, _ = gather_with_grad(b)
    ids_all, _ = gather_with_grad(ids)
    n = a.shape[0]
    target = torch.arange(n, device=a.device) + off
    same = ids.unsqueeze(1) == ids_all.unsqueeze(0)
    same[torch.arange(n, device=a.device), target] = False
    l_ab = (a @ b_all.T / temperature).masked_fill(same, float("-inf"))
    l_ba = (b @ a_all.T / temperature).masked_fill(same, float("-inf"))
    per = 0.5 * (F.cross_entropy(l_ab, target, reduction="none") + F.cross_entropy(l_ba, target, reduction="none"))
    return dist_mean(per) + 0.0 * (a.sum() + b.sum())


def hash_uniform(*xs: torch.Tensor) -> torch.Tensor:
    """Deterministic uniform [0, 1) numbers from integer tensors (same on every process)."""
    h = torch.zeros(torch.broadcast_shapes(*[x.shape for x in xs]), dtype=torch.long, device=xs[0].device)
    for x in xs:
        h = (h * 1_000_003 + x.long() * 2_654_435_761 + 12_345) % 2_147_483_647
        h = (h ^ (h >> 13)) * 1_103_515_245 % 2_147_483_647
    return h.double().div(2_147_483_647).float()


# --------------------------------------------------------------------------- metrics
class ColdTargetAUC(Metric):
    """AUC over the ranking lists whose positive is a *cold* item (never a training target).

    ``update(preds, target, groups, items)`` per batch; ``compute(cold_items)`` with a bool tensor
    [n_items + 1]. Ranking protocol: a list (group) is cold if its positive item is cold, and the
    AUC is over all rows of cold lists (and, separately, warm lists). ``per_row=True`` (the ctr
    protocol) selects rows by their own item instead.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for s in ("preds", "target", "groups", "items"):
            self.add_state(s, default=[], dist_reduce_fx="cat")

    def update(self, preds, target, groups, items) -> None:
        self.preds.append(preds.detach().float().flatten())
        self.target.append(target.detach().long().flatten())
        self.groups.append(groups.detach().long().flatten())
        self.items.append(items.detach().long().flatten())

    def compute_split(self, cold_items: torch.Tensor, per_row: bool = False) -> Dict[str, float]:
        with self.sync_context(should_sync=_dist_ready()):
            if not isinstance(self.preds, torch.Tensor) and not self.preds:
                return {}
            p, t, g, it = (dim_zero_cat(x) for x in (self.preds, self.target, self.groups, self.items))
        if p.numel() == 0:
            return {}
        cold_items = cold_items.to(it.device)
        if per_row:
            is_cold = cold_items[it]
        else:
            pos = t > 0
            cold_groups = torch.unique(g[pos & cold_items[it]])
            is_cold = torch.isin(g, cold_groups)
        out = {}
        for name, sel in (("cold", is_cold), ("warm", ~is_cold)):
            tt = t[sel]
            npos = int(tt.sum())
            out[f"n_{name}"] = float(npos if not per_row else sel.sum())
            out[name] = float(_binary_auc(p[sel].double(), tt)) if 0 < npos < tt.numel() else float("nan")
        return out

    def compute(self):  # torchmetrics API; callers use compute_split
        raise NotImplementedError("use compute_split(cold_items)")
