"""Metrics against values computed by hand."""
import math

import pytest
import torch

from seminar_zoo.metrics import GroupAUC, RecMetrics, _binary_auc


def test_auc_hand_computed():
    # positives 0.9, 0.4; negatives 0.8, 0.3, 0.1 -> pairs won: (0.9>all 3) + (0.4>0.3,0.1) = 5 of 6
    p = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.1])
    y = torch.tensor([1, 0, 1, 0, 0])
    assert _binary_auc(p.double(), y).item() == pytest.approx(5 / 6)
    m = RecMetrics(ks=(1, 2))
    m.update(p, y, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    assert m.compute()["auc"].item() == pytest.approx(5 / 6)


def test_auc_ties_count_half():
    p = torch.tensor([0.5, 0.5, 0.2])
    y = torch.tensor([1, 0, 0])
    assert _binary_auc(p.double(), y).item() == pytest.approx((0.5 + 1) / 2)


def test_gauc_weighted_by_samples_and_skips_single_class_users():
    g = GroupAUC()
    # user 1: 4 samples, AUC 0.75 ; user 2: 2 samples, AUC 0 ; user 3: only positives -> skipped
    g.update(torch.tensor([0.9, 0.2, 0.5, 0.6]), torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 1, 1]))
    g.update(torch.tensor([0.1, 0.7]), torch.tensor([1, 0]), torch.tensor([2, 2]))
    g.update(torch.tensor([0.3]), torch.tensor([1]), torch.tensor([3]))
    assert g.compute().item() == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)


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


def test_reset_clears_state():
    m = RecMetrics(ks=(1,))
    m.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    m.reset()
    m.update(torch.tensor([0.1, 0.9]), torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert m.compute()["auc"].item() == pytest.approx(0.0)
