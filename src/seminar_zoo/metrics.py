"""Evaluation metrics on torchmetrics, synchronised across DDP processes.

* ``auc``: global ROC-AUC (``torchmetrics.classification.BinaryAUROC``).
* ``gauc``: per-user AUC averaged with weights = the user's number of samples, over
  users that have both a positive and a negative (Zhou et al., DIN, Sec. 5.1).
* ``ndcg@K``, ``hr@K``, ``mrr``: torchmetrics retrieval metrics grouped by the
  ranking list id (``request_id``: the sample under the ranking protocol, the
  impression request under ctr).

Under the ranking protocol each list has exactly one positive, so HR@K = recall@K
and NDCG@K = 1/log2(1 + rank) if rank <= K.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG
from torchmetrics.utilities import dim_zero_cat


def _binary_auc(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Exact ROC-AUC with tie handling (Mann-Whitney U with mid-ranks)."""
    n_pos = target.sum()
    n_neg = target.numel() - n_pos
    order = torch.argsort(preds)
    p = preds[order]
    ranks = torch.empty_like(p, dtype=torch.float64)
    ranks[order] = torch.arange(1, p.numel() + 1, dtype=torch.float64, device=p.device)
    # mid-ranks for ties
    _, inv, counts = torch.unique(p, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=torch.float64, device=p.device).index_add_(0, inv, ranks[order])
    ranks[order] = (sums / counts)[inv]
    return (ranks[target > 0].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class GroupAUC(Metric):
    """GAUC: sample-weighted mean of per-group AUC over groups with both classes."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> None:
        self.preds.append(preds.detach().float().flatten())
        self.target.append(target.detach().long().flatten())
        self.groups.append(groups.detach().long().flatten())

    def compute(self) -> torch.Tensor:
        preds, target, groups = (dim_zero_cat(x) for x in (self.preds, self.target, self.groups))
        order = torch.argsort(groups, stable=True)
        preds, target, groups = preds[order], target[order], groups[order]
        _, counts = torch.unique_consecutive(groups, return_counts=True)
        total, weight = torch.zeros((), dtype=torch.float64), 0
        for p, t in zip(torch.split(preds, counts.tolist()), torch.split(target, counts.tolist())):
            npos = int(t.sum())
            if 0 < npos < t.numel():
                total += _binary_auc(p.double(), t) * t.numel()
                weight += t.numel()
        return (total / weight).float() if weight else torch.tensor(float("nan"))


class RecMetrics(torch.nn.Module):
    """All evaluation metrics of one stage; ``update`` per batch, ``compute`` at epoch end."""

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 50), gauc: bool = True):
        super().__init__()
        self.ks = tuple(ks)
        self.auc = BinaryAUROC(thresholds=None)
        self.gauc = GroupAUC() if gauc else None
        self.ndcg = torch.nn.ModuleDict({str(k): RetrievalNormalizedDCG(top_k=k) for k in self.ks})
        self.hr = torch.nn.ModuleDict({str(k): RetrievalHitRate(top_k=k) for k in self.ks})
        self.mrr = RetrievalMRR()

    def update(self, preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, users: torch.Tensor) -> None:
        preds, target = preds.detach().float(), target.detach().long()
        self.auc.update(preds, target)
        if self.gauc is not None:
            self.gauc.update(preds, target, users)
        for k in self.ks:
            self.ndcg[str(k)].update(preds, target, indexes=groups)
            self.hr[str(k)].update(preds, target, indexes=groups)
        self.mrr.update(preds, target, indexes=groups)

    def compute(self) -> Dict[str, torch.Tensor]:
        out = {"auc": self.auc.compute()}
        if self.gauc is not None:
            out["gauc"] = self.gauc.compute()
        for k in self.ks:
            out[f"ndcg@{k}"] = self.ndcg[str(k)].compute()
            out[f"hr@{k}"] = self.hr[str(k)].compute()
        out["mrr"] = self.mrr.compute()
        return out

    def reset(self) -> None:
        for m in [self.auc, self.mrr, *self.ndcg.values(), *self.hr.values()] + ([self.gauc] if self.gauc else []):
            m.reset()
