"""SEMINAR's General Search Unit (arXiv 2407.10714, Sec. 3.3-3.4): one :meth:`GSU.select` for exact and PQ retrieval.

* :class:`ModalityProjections`: the per-modality maps G(j) in R^{d x d} (Sec. 3.3), applied to the
  restored (pretrained) embeddings; initialised to the identity so a freshly restored model starts
  from exactly the PSU's representation.
* :class:`GSU`: the PSU's multi-head target attention with G(j). With e_j = G(j) x_j (x_j the
  weighted per-modality pair vectors of :class:`~seminar_zoo.modules.pair.PairEncoder`) and
  e = sum_j e_j, the score of behaviour l is the attention logit averaged over heads:

      s_l = <W_q e_t, W_k e_l> / (H sqrt(d / H)) = sum_i sum_j <t_i, k_{l,j}>,
      t_i = W_q G(i) x_{t,i} / (H sqrt(d / H)),  k_{l,j} = W_k G(j) x_{l,j}.

  :meth:`GSU.select` keeps the top-K valid behaviours by s (exact) or by the multi-modal product
  quantizer's approximation of it from the per-modality vectors (:meth:`GSU.vectors`, the form a
  quantizer can encode per modality), and returns the ESU bias: the exact scores of the K selected.

Simplified w.r.t. the paper: one attention layer, the score is the head-averaged logit (the reference
concatenates heads), and the top-K is made differentiable for the GSU only through the ESU's bias.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from ...modules.attention import TargetAttention
from ...modules.ops import gather_rows, masked_softmax, masked_topk


class ModalityProjections(nn.Module):
    """G(j): one d x d map per modality (identity at init). ``forward(x [..., m, d], start)`` maps
    modalities start..start+m-1 of ``names``."""

    def __init__(self, names: Sequence[str], dim: int):
        super().__init__()
        self.names = list(names)
        self.weight = nn.Parameter(torch.eye(dim).repeat(len(self.names), 1, 1))  # [M, d_out, d_in]

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        m = x.shape[-2]
        w = self.weight[start:start + m].to(x.dtype)
        return torch.einsum("...mi,moi->...mo", x, w)


@dataclass
class Selection:
    """What :meth:`GSU.select` chose for each row: positions ``idx`` [B, K] (chronological), ``sel`` [B, K]
    (False on padding slots), the ESU ``bias`` [B, K] (or None), and, when asked for (``probe``), the exact
    top-K (``exact``: (idx, sel)) and the seconds spent on (exact scoring + top-K, pq encoding + search)."""

    idx: torch.Tensor
    sel: torch.Tensor
    bias: Optional[torch.Tensor]
    exact: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    seconds: Optional[Tuple[float, float]] = None


def _now(x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter()


class GSU(nn.Module):
    """General Search Unit (module docstring): ``attn`` (W_q, W_k restored from the PSU; W_v / out unused),
    ``proj`` (G(j))."""

    def __init__(self, names: Sequence[str], dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = TargetAttention(dim, num_heads, dropout)
        self.proj = ModalityProjections(names, dim)
        self.scale = 1.0 / (num_heads * math.sqrt(dim // num_heads))

    def pair(self, modal: torch.Tensor) -> torch.Tensor:
        """G-projected fused pair vector e = sum_j G(j) x_j: [..., M, d] -> [..., d]."""
        return self.proj(modal).sum(-2)

    def vectors(self, target_modal: torch.Tensor, hist_modal: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-modality (t [B, M, d], k [..., L, M, d]) whose full inner product is the score (module docstring)."""
        return self.attn.q(self.proj(target_modal)) * self.scale, self.attn.k(self.proj(hist_modal))

    def keys(self, hist_pair: torch.Tensor) -> torch.Tensor:
        """W_k e_l of G-projected pair vectors [..., L, d]."""
        return self.attn.k(hist_pair)

    def scores(self, target_pair: torch.Tensor, keys: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """s [B, L] from the target's G-projected pair vector [B, d] and :meth:`keys` [B, L, d]; padding -> -inf."""
        t = self.attn.q(target_pair) * self.scale
        s = torch.einsum("bd,bld->bl", t, keys.to(t.dtype))
        return s if mask is None else s.masked_fill(~mask, float("-inf"))

    def select(self, target_pair: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, k: int,
               inv: Optional[torch.Tensor] = None, bias: bool = True, pq: Optional[nn.Module] = None,
               pq_vectors: Optional[Callable[[], Tuple[torch.Tensor, torch.Tensor]]] = None,
               probe: bool = False) -> Selection:
        """The top-``k`` behaviours of each row by the GSU score.

        ``keys`` [U, L, d] are the :meth:`keys` of the batch's distinct histories, row b having history
        ``inv[b]`` (None: one history per row). Exact (``pq`` None): scores, top-K, and the selected
        scores as the ESU bias. PQ (a fitted :class:`~seminar_zoo.modules.quantization.MultiModalPQ`):
        ``pq_vectors()`` gives the per-modality (t [B, M, d], k [U, L, M, d]) (:meth:`vectors`); each
        distinct history is encoded once and searched for all its rows; the bias is the exact score of
        the K selected only. ``probe``: also the exact top-K and the time of each path (test extras).
        """
        rows = keys if inv is None else keys[inv]
        t0 = _now(mask) if probe else 0.0
        exact = None
        if pq is None or probe:
            s = self.scores(target_pair, rows, mask)
            exact = masked_topk(s, mask, k, order="time")
        t1 = _now(mask) if probe else 0.0
        if pq is None:
            idx, sel = exact
            b = gather_rows(s, idx).masked_fill(~sel, 0.0) if bias else None
            return Selection(idx, sel, b, exact, (t1 - t0, t1 - t0) if probe else None)
        with torch.no_grad():
            t, kv = pq_vectors()
            codes = pq.encode(kv.float())  # [U, L, M, n_sub]
            if inv is None:
                inv = torch.arange(len(mask), device=mask.device)
            mu = torch.zeros(len(keys), mask.shape[1], dtype=torch.bool, device=mask.device).index_copy(0, inv, mask)
            _, idx = pq.topk(t.float(), codes, k, mask=mu, inv=inv)
            idx = idx.sort(1).values
            sel = mask.gather(1, idx)
        t2 = _now(mask) if probe else 0.0
        b = self.scores(target_pair, gather_rows(rows, idx), sel).masked_fill(~sel, 0.0) if bias else None
        return Selection(idx, sel, b, exact, (t1 - t0, t2 - t1) if probe else None)

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
