"""Evaluation metrics from logits, tie-aware, synchronised across DDP processes.

Every ranking metric is the **expected value over uniformly random orders of tied
scores** (README, "Evaluation protocol"), for lists with one or several positives.
A list is reduced to its tie groups that hold a positive: a group of ``t`` items
(``p`` positives, ``n = t - p`` negatives) with ``o`` items scoring strictly higher.
In a random order of the group every positive sits at each of ranks ``o+1..o+t`` with
probability ``1/t``, so, with ``P`` positives and ``N`` negatives in the list:

* ``ndcg@K``: by linearity, DCG = sum_g p_g * mean_{r=o+1..o+t} [r<=K]/log2(1+r);
  IDCG = sum_{r<=min(P,K)} 1/log2(1+r) (Jarvelin & Kekalainen 2002, binary gains).
* ``hr@K``: probability that at least one positive lands in the top K. A group wholly
  above the cut gives 1; the group straddling it gives 1 - C(n, k)/C(t, k) with
  k = K - o free slots (hypergeometric: no positive among the k drawn).
* ``recall@K``: expected share of positives in the top K: sum_g p_g min(t, max(0, K-o))/t / P.
* ``mrr``: exact E[1/rank of the first positive]: in the first group with a positive the
  lowest of its ``p`` positions is j with probability C(t-j, p-1)/C(t, p).
* ``auc`` (per list): Mann-Whitney with ties counting 1/2, averaged over lists.

Two inputs feed the same state: scored candidate lists (``update``; the ``ranking``
and ``ctr`` protocols) and, for full ranking, per-list counts of negatives scoring
above / equal to the single positive (``update_counts``), which keeps the state tiny.
Lists without a positive are left out of the ranking metrics (the ctr rule). States
are concatenated, so 1 and 2 processes give the same result.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torchmetrics import Metric


def _binary_auc(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pooled ROC-AUC with ties counting 1/2 (Mann-Whitney U with mid-ranks)."""
    n_pos = target.sum()
    n_neg = target.numel() - n_pos
    order = torch.argsort(preds)
    p = preds[order]
    ranks = torch.empty_like(p, dtype=torch.float64)
    ranks[order] = torch.arange(1, p.numel() + 1, dtype=torch.float64, device=p.device)
    _, inv, counts = torch.unique(p, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=torch.float64, device=p.device).index_add_(0, inv, ranks[order])
    ranks[order] = (sums / counts)[inv]
    return (ranks[target > 0].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _cat(x, dtype) -> torch.Tensor:
    if isinstance(x, list):
        return torch.cat([v.reshape(-1) for v in x]).to(dtype) if x else torch.zeros(0, dtype=dtype)
    return x.reshape(-1).to(dtype)


def positive_groups(preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor):
    """Tie groups holding a positive, per list (``groups`` = list id).

    Returns ``lists`` (dense list index of each tie group), ``o``, ``t``, ``p``,
    ``neg_below`` per tie group, and ``P``, ``N`` per list.
    """
    preds, target, groups = preds.double(), target.long(), groups.long()
    order = torch.argsort(-preds, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # by list, then score descending
    s, y, g = preds[order], target[order], groups[order]
    _, lst = torch.unique_consecutive(g, return_inverse=True)
    n_lists = int(lst[-1]) + 1 if lst.numel() else 0
    new = torch.ones_like(y, dtype=torch.bool)
    new[1:] = (lst[1:] != lst[:-1]) | (s[1:] != s[:-1])
    tie = torch.cumsum(new.long(), 0) - 1
    n_tie = int(tie[-1]) + 1 if tie.numel() else 0
    t = torch.zeros(n_tie, dtype=torch.long).index_add_(0, tie, torch.ones_like(y))
    p = torch.zeros(n_tie, dtype=torch.long).index_add_(0, tie, y)
    tie_list = lst[new]
    head = torch.searchsorted(tie_list, tie_list)  # first tie group of each group's list
    start = torch.cumsum(t, 0) - t  # global position of each tie group
    o = start - start[head]
    P = torch.zeros(n_lists, dtype=torch.long).index_add_(0, tie_list, p)
    L = torch.zeros(n_lists, dtype=torch.long).index_add_(0, tie_list, t)
    N = L - P
    neg_before = torch.cumsum(t - p, 0) - (t - p)
    neg_before = neg_before - neg_before[head]
    neg_below = N[tie_list] - neg_before - (t - p)
    keep = p > 0
    return tie_list[keep], o[keep], t[keep], p[keep], neg_below[keep], P, N


def _lbinom(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)


def _expected_mrr(o: torch.Tensor, t: torch.Tensor, p: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """E[1/(o + J)] with J the lowest position of p positives placed at random in t slots."""
    out = torch.empty(o.numel(), dtype=torch.float64)
    one = p == 1  # closed form: (H(o+t) - H(o)) / t, H(n) = digamma(n+1) + Euler's gamma
    od, td = o.double(), t.double()
    out[one] = ((torch.digamma(od + td + 1) - torch.digamma(od + 1)) / td)[one]
    idx = torch.nonzero(~one).flatten()
    if idx.numel():
        width = int(t[idx].max())
        step = max(1, chunk // width)
        j = torch.arange(1, width + 1, dtype=torch.float64)
        for lo in range(0, idx.numel(), step):
            i = idx[lo:lo + step]
            ti, pi, oi = td[i, None], p[i, None].double(), od[i, None]
            ok = j[None] <= ti - pi + 1
            lw = _lbinom((ti - j).clamp_min(0), pi - 1) - _lbinom(ti, pi)
            out[i] = (torch.where(ok, lw.exp(), 0.0) / (oi + j)).sum(1)
    return out


def list_metrics(lists, o, t, p, neg_below, P, N, ks: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Per-list expected metrics (see the module docstring) for lists with P > 0."""
    n_lists = P.numel()
    od, td, pd = o.double(), t.double(), p.double()
    n = td - pd
    maxr = int((o + t).max()) if o.numel() else 1
    disc = torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.cumsum(1.0 / torch.log2(torch.arange(2, maxr + 2, dtype=torch.float64)), 0)])
    add = lambda v: torch.zeros(n_lists, dtype=torch.float64).index_add_(0, lists, v)  # noqa: E731
    has = P > 0
    out = {}
    for k in ks:
        hi, lo = torch.clamp(o + t, max=k), torch.clamp(o, max=k)
        dcg = add(pd * (disc[hi] - disc[lo]) / td)
        out[f"ndcg@{k}"] = dcg / disc[torch.clamp(P, max=k)].clamp_min(1e-12)
        free = (k - od).clamp(min=0.0)
        within = torch.minimum(free, td)
        out[f"recall@{k}"] = add(pd * within / td) / P.double().clamp_min(1)
        # P(no positive among the `free` slots of a straddling group) = C(n, free) / C(t, free)
        miss = torch.where(free <= n, (_lbinom(n, torch.minimum(free, n)) - _lbinom(td, torch.minimum(free, td))).exp(),
                           torch.zeros_like(n))
        hit_g = torch.where(free >= td, torch.ones_like(n), torch.where(free > 0, 1.0 - miss, torch.zeros_like(n)))
        out[f"hr@{k}"] = torch.zeros(n_lists, dtype=torch.float64).scatter_reduce_(0, lists, hit_g, "amax")
    first = torch.full((n_lists,), torch.iinfo(torch.long).max, dtype=torch.long).scatter_reduce_(0, lists, o, "amin")
    is_first = o == first[lists]
    mrr = torch.zeros(n_lists, dtype=torch.float64)
    mrr[lists[is_first]] = _expected_mrr(o[is_first], t[is_first], p[is_first])
    out["mrr"] = mrr
    won = add(pd * (neg_below.double() + 0.5 * n))
    out["auc"] = won / (P * N).double().clamp_min(1)
    out["_valid"] = has
    out["_auc_valid"] = has & (N > 0)
    return out


class RankingMetrics(Metric):
    """Tie-aware NDCG/HR/recall@K, MRR, per-list AUC and GAUC, from logits.

    ``compute`` returns means over lists with a positive (AUC: lists with both classes),
    ``auc_pooled`` (all rows as one list), ``gauc`` (per-user AUC weighted by rows,
    users with both classes; Zhou et al., DIN Sec. 5.1) and ``n_lists`` (lists scored).
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 50), **kwargs):
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        for name in ("preds", "target", "groups", "users", "n_above", "n_equal", "n_neg"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor,
               users: torch.Tensor) -> None:
        """Rows of scored candidate lists: logits, 0/1 labels, list id, user id."""
        self.preds.append(preds.detach().double().flatten())
        self.target.append(target.detach().long().flatten())
        self.groups.append(groups.detach().long().flatten())
        self.users.append(users.detach().long().flatten())

    def update_counts(self, n_above: torch.Tensor, n_equal: torch.Tensor, n_neg: torch.Tensor) -> None:
        """Full ranking: one positive per list, negatives scoring above / equal to it, and in all."""
        self.n_above.append(n_above.detach().long().flatten())
        self.n_equal.append(n_equal.detach().long().flatten())
        self.n_neg.append(n_neg.detach().long().flatten())
        # torchmetrics only does this for ``update``: count the call and drop a cached compute()
        self._update_count += 1
        self._computed = None

    def compute(self) -> Dict[str, torch.Tensor]:
        dt = torch.float64
        preds, target = _cat(self.preds, dt).cpu(), _cat(self.target, torch.long).cpu()
        groups, users = _cat(self.groups, torch.long).cpu(), _cat(self.users, torch.long).cpu()
        lists, o, t, p, nb, P, N = positive_groups(preds, target, groups)
        g, e, nn_ = (_cat(x, torch.long).cpu() for x in (self.n_above, self.n_equal, self.n_neg))
        if g.numel():  # full ranking lists, appended after the candidate lists
            off = P.numel()
            lists = torch.cat([lists, off + torch.arange(g.numel())])
            o, t, p = torch.cat([o, g]), torch.cat([t, e + 1]), torch.cat([p, torch.ones_like(g)])
            nb = torch.cat([nb, nn_ - g - e])
            P, N = torch.cat([P, torch.ones_like(g)]), torch.cat([N, nn_])
        per = list_metrics(lists, o, t, p, nb, P, N, self.ks)
        valid, auc_valid = per.pop("_valid"), per.pop("_auc_valid")
        mean = lambda v, m: v[m].mean().float() if bool(m.any()) else torch.tensor(float("nan"))  # noqa: E731
        out = {k: mean(v, valid) for k, v in per.items() if k != "auc"}
        out["auc"] = mean(per["auc"], auc_valid)
        has_both = 0 < int(target.sum()) < target.numel()
        out["auc_pooled"] = _binary_auc(preds, target).float() if has_both else torch.tensor(float("nan"))
        out["gauc"] = self._gauc(preds, target, users)
        out["n_lists"] = torch.tensor(float(valid.sum()))
        return out

    @staticmethod
    def _gauc(preds, target, users) -> torch.Tensor:
        if not preds.numel():
            return torch.tensor(float("nan"))
        lists, o, t, p, nb, P, N = positive_groups(preds, target, users)
        auc = list_metrics(lists, o, t, p, nb, P, N, ())["auc"]
        ok = (P > 0) & (N > 0)
        w = (P + N).double()[ok]
        return (auc[ok] * w).sum().div(w.sum()).float() if bool(ok.any()) else torch.tensor(float("nan"))


class RecMetrics(torch.nn.Module):
    """All evaluation metrics of one stage, named for the protocol.

    ``ranking``/``full``: ``auc`` = mean per-list AUC (the headline), ``auc_pooled`` = pooled.
    ``ctr``: ``auc`` = pooled AUC, ``gauc`` = per-user AUC; NDCG/HR/MRR over requests with a click.
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 50), gauc: bool = True, protocol: str = "ranking"):
        super().__init__()
        self.ks, self.with_gauc, self.protocol = tuple(ks), gauc, protocol
        self.ranking = RankingMetrics(self.ks)

    def update(self, preds, target, groups, users) -> None:
        self.ranking.update(preds, target, groups, users)

    def update_counts(self, n_above, n_equal, n_neg) -> None:
        self.ranking.update_counts(n_above, n_equal, n_neg)

    def compute(self) -> Dict[str, torch.Tensor]:
        r = self.ranking.compute()
        out = {}
        if self.protocol == "ctr":
            out["auc"] = r["auc_pooled"]
        elif self.protocol == "full":
            out["auc"] = r["auc"]
        else:
            out["auc"], out["auc_pooled"] = r["auc"], r["auc_pooled"]
        if self.with_gauc and self.protocol != "full":
            out["gauc"] = r["gauc"]
        for k in self.ks:
            out[f"ndcg@{k}"], out[f"hr@{k}"], out[f"recall@{k}"] = r[f"ndcg@{k}"], r[f"hr@{k}"], r[f"recall@{k}"]
        out["mrr"] = r["mrr"]
        out["n_lists"] = r["n_lists"]
        return out

    def reset(self) -> None:
        self.ranking.reset()

