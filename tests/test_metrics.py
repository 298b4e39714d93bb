"""Metrics against values computed by hand and by enumerating every tie order."""
import itertools
import math

import numpy as np
import pytest
import torch

from seminar_zoo.metrics import RankingMetrics, RecMetrics, _binary_auc


def _zeros(n):
    return torch.zeros(n, dtype=torch.long)


def test_auc_hand_computed():
    # positives 0.9, 0.4; negatives 0.8, 0.3, 0.1 -> pairs won: (0.9>all 3) + (0.4>0.3,0.1) = 5 of 6
    p = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.1])
    y = torch.tensor([1, 0, 1, 0, 0])
    assert _binary_auc(p.double(), y).item() == pytest.approx(5 / 6)
    m = RecMetrics(ks=(1, 2))
    m.update(p, y, _zeros(5), _zeros(5))
    r = m.compute()
    assert r["auc"].item() == pytest.approx(5 / 6) and r["auc_pooled"].item() == pytest.approx(5 / 6)


def test_auc_ties_count_half():
    p = torch.tensor([0.5, 0.5, 0.2])
    y = torch.tensor([1, 0, 0])
    assert _binary_auc(p.double(), y).item() == pytest.approx((0.5 + 1) / 2)


def test_per_list_auc_differs_from_pooled():
    # list 0: pos 5 > neg 4 (AUC 1); list 1: pos 1 < neg 2 (AUC 0). Pooled: pos {5,1} vs neg {4,2}: 2 of 4
    m = RecMetrics(ks=(1,), protocol="ranking")
    m.update(torch.tensor([5.0, 4.0, 1.0, 2.0]), torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1]),
             torch.tensor([7, 7, 8, 8]))
    r = m.compute()
    assert r["auc"].item() == pytest.approx(0.5) and r["auc_pooled"].item() == pytest.approx(0.5)
    m.reset()
    # list 0 AUC 1 (pos 9 > 8), list 1 AUC 1 (pos 1 > 0) but pooled sees 8 > 1: 3 of 4
    m.update(torch.tensor([9.0, 8.0, 1.0, 0.0]), torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1]),
             torch.tensor([7, 7, 8, 8]))
    r = m.compute()
    assert r["auc"].item() == pytest.approx(1.0) and r["auc_pooled"].item() == pytest.approx(0.75)
    ctr = RecMetrics(ks=(1,), protocol="ctr")
    ctr.update(torch.tensor([9.0, 8.0, 1.0, 0.0]), torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1]),
               torch.tensor([7, 7, 8, 8]))
    assert ctr.compute()["auc"].item() == pytest.approx(0.75)  # ctr headline = pooled


def test_gauc_weighted_by_samples_and_skips_single_class_users():
    g = RankingMetrics(ks=())
    # user 1: 4 samples, AUC 0.75 ; user 2: 2 samples, AUC 0 ; user 3: only positives -> skipped
    g.update(torch.tensor([0.9, 0.2, 0.5, 0.6]), torch.tensor([1, 0, 1, 0]), _zeros(4) + 1, torch.tensor([1, 1, 1, 1]))
    g.update(torch.tensor([0.1, 0.7]), torch.tensor([1, 0]), _zeros(2) + 2, torch.tensor([2, 2]))
    g.update(torch.tensor([0.3]), torch.tensor([1]), _zeros(1) + 3, torch.tensor([3]))
    assert g.compute()["gauc"].item() == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)


def test_ranking_metrics_hand_computed():
    # two lists with one positive each: list 0 positive at rank 1, list 1 positive at rank 3
    p = torch.tensor([0.9, 0.5, 0.1, 0.8, 0.7, 0.6, 0.1])
    y = torch.tensor([1, 0, 0, 0, 0, 1, 0])
    grp = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    m = RecMetrics(ks=(1, 2, 5), gauc=False)
    m.update(p, y, grp, grp)
    r = m.compute()
    assert r["hr@1"].item() == pytest.approx(0.5)
    assert r["hr@2"].item() == pytest.approx(0.5)
    assert r["hr@5"].item() == pytest.approx(1.0)
    assert r["ndcg@1"].item() == pytest.approx(0.5)
    assert r["ndcg@5"].item() == pytest.approx((1 + 1 / math.log2(4)) / 2)
    assert r["mrr"].item() == pytest.approx((1 + 1 / 3) / 2)
    assert r["n_lists"].item() == 2


def test_all_tied_single_positive():
    # 1 positive + 19 negatives, all equal, positive listed first (the old code's HR@5 read 0.667)
    m = RecMetrics(ks=(1, 5, 10))
    m.update(torch.zeros(20), torch.tensor([1] + [0] * 19), _zeros(20), _zeros(20))
    r = m.compute()
    assert r["hr@5"].item() == pytest.approx(0.25)
    assert r["hr@1"].item() == pytest.approx(0.05)
    assert r["hr@10"].item() == pytest.approx(0.5)
    assert r["mrr"].item() == pytest.approx(np.mean(1 / np.arange(1, 21)))
    assert r["ndcg@5"].item() == pytest.approx(np.sum(1 / np.log2(np.arange(2, 7))) / 20)
    assert r["auc"].item() == pytest.approx(0.5)
    # MRR and HR@1 agree: P(rank 1) = 1/20 contributes 1/20 to MRR
    assert r["mrr"].item() >= r["hr@1"].item()


def test_full_ranking_counts_equal_candidate_lists():
    # the same lists given as scored rows and as (n_above, n_equal, n_neg) counts
    rng = np.random.default_rng(0)
    rows, counts = RecMetrics(ks=(1, 3, 10)), RecMetrics(ks=(1, 3, 10), protocol="full")
    for i in range(50):
        s = torch.tensor(rng.integers(0, 4, 12), dtype=torch.float64)
        y = torch.zeros(12, dtype=torch.long)
        y[0] = 1
        rows.update(s, y, _zeros(12) + i, _zeros(12) + i)
        counts.update_counts((s[1:] > s[0]).sum().view(1), (s[1:] == s[0]).sum().view(1), torch.tensor([11]))
    a, b = rows.compute(), counts.compute()
    for k in ("hr@1", "hr@3", "ndcg@3", "ndcg@10", "mrr", "auc", "recall@3"):
        assert a[k].item() == pytest.approx(b[k].item(), abs=1e-6), k
    assert "gauc" not in b and "auc_pooled" not in b


def _brute(scores, labels, ks):
    """Average of each metric over every order of the tied scores (exhaustive)."""
    n, P = len(scores), sum(labels)
    acc = {f"{m}@{k}": 0.0 for k in ks for m in ("ndcg", "hr", "recall")}
    acc["mrr"], cnt = 0.0, 0
    for perm in itertools.permutations(range(n)):
        if any(scores[perm[i]] < scores[perm[i + 1]] for i in range(n - 1)):
            continue
        cnt += 1
        ranks = [r + 1 for r, i in enumerate(perm) if labels[i]]
        for k in ks:
            idcg = sum(1 / math.log2(1 + r) for r in range(1, min(P, k) + 1))
            acc[f"ndcg@{k}"] += sum(1 / math.log2(1 + r) for r in ranks if r <= k) / idcg
            acc[f"hr@{k}"] += float(any(r <= k for r in ranks))
            acc[f"recall@{k}"] += sum(r <= k for r in ranks) / P
        acc["mrr"] += 1 / min(ranks)
    return {k: v / cnt for k, v in acc.items()}


def test_several_positives_match_exhaustive_tie_orders():
    rng = np.random.default_rng(1)
    ks = (1, 2, 4)
    for trial in range(12):
        n = int(rng.integers(3, 8))
        scores = rng.integers(0, 3, n).tolist()
        labels = [0] * n
        for i in rng.choice(n, int(rng.integers(1, n)), replace=False):
            labels[i] = 1
        m = RecMetrics(ks=ks, gauc=False)
        m.update(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels), _zeros(n), _zeros(n))
        r = m.compute()
        ref = _brute(scores, labels, ks)
        for k, v in ref.items():
            assert r[k].item() == pytest.approx(v, abs=1e-6), (trial, k, scores, labels)


def test_ctr_lists_without_click_are_left_out():
    m = RecMetrics(ks=(1,), protocol="ctr")
    m.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 0, 0, 0]), torch.tensor([0, 0, 1, 1]),
             torch.tensor([0, 0, 1, 1]))
    r = m.compute()
    assert r["hr@1"].item() == 0.0 and r["mrr"].item() == pytest.approx(0.5) and r["n_lists"].item() == 1


def test_logits_do_not_saturate():
    # sigmoid(20) == sigmoid(30) == 1.0 in float32; the logits still rank the positive first
    m = RecMetrics(ks=(1,))
    m.update(torch.tensor([30.0, 20.0, 19.0]), torch.tensor([1, 0, 0]), _zeros(3), _zeros(3))
    assert m.compute()["hr@1"].item() == 1.0


def test_reset_clears_state():
    m = RecMetrics(ks=(1,))
    m.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    m.reset()
    m.update(torch.tensor([0.1, 0.9]), torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert m.compute()["auc"].item() == pytest.approx(0.0)
