"""Negatives are uniform over each user's unseen items (statistical checks) and resume-exact.

The bounds are tight enough that the pre-fix sampler (sort-then-truncate, which kept
the smallest ids: mean id ~ 1/4 of the catalogue) fails both checks.
"""
import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from seminar_zoo.data.datamodule import LifelongSequenceDataModule
from seminar_zoo.data.negatives import Interacted, _distinct_ranks

N_ITEMS = 3000


@pytest.fixture(scope="module")
def big_catalogue(tmp_path_factory):
    from seminar_zoo.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("neg") / "cat", users=400, items=N_ITEMS, seq_len=120, seed=0)


def _seen_sets(path):
    ev = pq.read_table(path / "events.parquet", columns=["user_id", "item_id"]).to_pydict()
    seen = {}
    for u, i in zip(ev["user_id"], ev["item_id"]):
        seen.setdefault(u, set()).add(i)
    return seen


def test_eval_negatives_uniform_over_unseen(big_catalogue):
    dm = LifelongSequenceDataModule(str(big_catalogue), max_len=20, n_eval_negatives=99, seed=5)
    dm.setup()
    seen = _seen_sets(big_catalogue)
    ds = dm.splits["test"]
    neg = ds.candidates[:, 1:]
    ids = np.arange(1, N_ITEMS + 1)
    edges = np.linspace(0.5, N_ITEMS + 0.5, 21)
    expected_mean, expected_hist, var = 0.0, np.zeros(20), 0.0
    for r, u in enumerate(ds.user):
        s = seen[int(u)]
        assert not (set(neg[r].tolist()) & s) and len(set(neg[r].tolist())) == 99
        unseen = ids[~np.isin(ids, list(s))]
        expected_mean += unseen.mean() * 99
        var += unseen.var() * 99
        expected_hist += np.histogram(unseen, edges)[0] / len(unseen) * 99
    n = neg.size
    # mean id within 4 standard errors of the expectation over each user's unseen set
    se = np.sqrt(var) / n
    assert abs(neg.mean() - expected_mean / n) < 4 * se, (neg.mean(), expected_mean / n, se)
    assert se < 6  # the bound is tight: ~0.4% of the catalogue
    # chi-square of 20 id buckets (sampling without replacement only lowers the statistic)
    chi2 = ((np.histogram(neg, edges)[0] - expected_hist) ** 2 / expected_hist).sum()
    assert chi2 < stats.chi2.ppf(0.999, df=19), chi2
    # seeded: same seed same lists, another seed other lists; positions carry no signal
    dm2 = LifelongSequenceDataModule(str(big_catalogue), max_len=20, n_eval_negatives=99, seed=5)
    dm2.setup()
    assert np.array_equal(dm2.splits["test"].candidates, ds.candidates)
    dm3 = LifelongSequenceDataModule(str(big_catalogue), max_len=20, n_eval_negatives=99, seed=6)
    dm3.setup()
    assert not np.array_equal(dm3.splits["test"].candidates, ds.candidates)
    col_means = neg.mean(0)
    assert abs(col_means[:10].mean() - col_means[-10:].mean()) < 8 * se * np.sqrt(neg.shape[1] / 10)


def test_distinct_ranks_uniform_small_and_large_ranges():
    rng = np.random.default_rng(0)
    for n_range, k in ((12, 5), (400, 5)):  # permutation path and rejection path
        r = _distinct_ranks(np.full(20000, n_range), k, rng)
        assert (np.sort(r, 1)[:, 1:] != np.sort(r, 1)[:, :-1]).all()  # distinct within a row
        assert r.min() >= 0 and r.max() < n_range
        counts = np.bincount(r.ravel(), minlength=n_range)
        chi2 = ((counts - r.size / n_range) ** 2 / (r.size / n_range)).sum()
        assert chi2 < stats.chi2.ppf(0.999, df=n_range - 1)
        first = np.bincount(r[:, 0], minlength=n_range)  # order is random: first column uniform too
        assert ((first - 20000 / n_range) ** 2 / (20000 / n_range)).sum() < stats.chi2.ppf(0.999, df=n_range - 1)


def test_unseen_rank_mapping_is_exact():
    rng = np.random.default_rng(1)
    n_items, users = 50, 30
    u = rng.integers(1, users + 1, 400)
    i = rng.integers(1, n_items + 1, 400)
    it = Interacted(u, i, users, n_items)
    for user in range(1, users + 1):
        unseen = sorted(set(range(1, n_items + 1)) - set(i[u == user].tolist()))
        assert it.n_unseen[user] == len(unseen)
        got = it.unseen(np.full(len(unseen), user), np.arange(len(unseen)))
        assert got.tolist() == unseen
        ptr, items = it.of(np.array([user]))
        assert items.tolist() == sorted(set(i[u == user].tolist()))


def test_training_negatives_avoid_interacted_items_and_resume_exactly(big_catalogue):
    dm = LifelongSequenceDataModule(str(big_catalogue), max_len=20, train_negatives=3, seed=2)
    dm.setup()
    seen = _seen_sets(big_catalogue)
    ds = dm.splits["train"]
    n = len(ds)
    rows = np.arange(0, n, 4)  # per_sample = 1 + 3: rows 4s + 1 are negatives
    negs, expect, var = [], [], []
    ids = np.arange(1, N_ITEMS + 1)
    for epoch in (0, 1):
        b = ds.__getitems__(rows + epoch * n + 1)  # column 1: a negative
        assert (b["label"].numpy() == 0).all()
        for u, it in zip(b["user_id"].tolist(), b["item_id"].tolist()):
            assert it not in seen[u]
            unseen = ids[~np.isin(ids, list(seen[u]))]
            expect.append(unseen.mean())
            var.append(unseen.var())
        negs.append(b["item_id"].numpy())
    assert (negs[0] != negs[1]).mean() > 0.9  # resampled every epoch
    # a resumed run (fresh DataModule, same seed) draws exactly the same negatives for epoch 1
    dm2 = LifelongSequenceDataModule(str(big_catalogue), max_len=20, train_negatives=3, seed=2)
    dm2.setup()
    assert np.array_equal(dm2.splits["train"].__getitems__(rows + n + 1)["item_id"].numpy(), negs[1])
    # uniform over each user's unseen items: mean id within 4 standard errors of its expectation
    allneg = np.concatenate(negs)
    assert abs(allneg.mean() - np.mean(expect)) < 4 * np.sqrt(np.sum(var)) / len(allneg)
