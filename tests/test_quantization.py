"""MultiModalPQ: exactness, monotone recall, codes, errors, state_dict, determinism, masking."""
import pytest
import torch

from seminar_zoo.modules.quantization import MultiModalPQ

M, D = 3, 16


def _clustered(n_users, length, seed, n_topics=8):
    """Topic-clustered per-modality vectors with different norms per modality."""
    g = torch.Generator().manual_seed(seed)
    world = torch.Generator().manual_seed(99)
    centres = torch.randn(n_topics, M, D, generator=world)
    norms = torch.tensor([1.0, 0.5, 4.0])[:, None]
    topics = torch.randint(n_topics, (n_users, length), generator=g)
    v = centres[topics] + 0.7 * torch.randn(n_users, length, M, D, generator=g)
    v = norms * v / v.norm(dim=-1, keepdim=True)
    t = centres[torch.randint(n_topics, (n_users,), generator=g)] + 0.7 * torch.randn(n_users, M, D, generator=g)
    return norms * t / t.norm(dim=-1, keepdim=True), v


def _recall(approx, exact, k):
    a, e = approx.topk(k).indices, exact.topk(k).indices
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, e)) / (k * a.shape[0])


def test_exact_when_centroids_cover_all_distinct_subvectors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, M, D, generator=g) * torch.tensor([1.0, 0.3, 5.0])[:, None]
    train = base[torch.randint(12, (300,), generator=g)]
    hist = base[torch.randint(12, (2, 40), generator=g)]
    target = torch.randn(2, M, D, generator=g)
    pq = MultiModalPQ(M, D, n_sub=4, n_centroids=16, seed=0).fit(train)
    codes = pq.encode(hist)
    exact = MultiModalPQ.exact_score(target, hist)
    # the double sum over all M x M modality pairs, computed naively
    naive = sum((target[:, i, None, :] * hist[:, :, j, :]).sum(-1) for i in range(M) for j in range(M))
    assert torch.allclose(exact, naive, atol=1e-4)
    assert torch.allclose(pq.score(pq.lut(target), codes), exact, atol=1e-4)
    # folded table == sum of the per-modality-pair tables; a fused [B, d] target gives the same
    assert torch.allclose(pq.lut(target, per_pair=True).sum(1), pq.lut(target), atol=1e-5)
    assert torch.allclose(pq.score(pq.lut(target, per_pair=True), codes), exact, atol=1e-4)
    assert torch.allclose(pq.score(pq.lut(target.sum(1)), codes), exact, atol=1e-4)
    # per-request behaviour-modality weights: sum_j w_j <t, k_j>
    w = torch.tensor([0.5, 2.0, 0.1])
    weighted = MultiModalPQ.exact_score(target, hist * w[:, None])
    assert torch.allclose(pq.score(pq.lut(target, weights=w), codes), weighted, atol=1e-4)
    assert torch.allclose(pq.decode(codes), hist, atol=1e-5)


def test_lower_precision_tables_stay_close():
    target, hist = _clustered(2, 200, seed=1)
    pq = MultiModalPQ(M, D, n_sub=4, n_centroids=32, seed=0).fit(hist.reshape(-1, M, D))
    codes, table = pq.encode(hist), pq.lut(target)
    ref = pq.score(table, codes)
    for dt, tol in (("float16", 5e-3), ("int16", 1e-3)):
        pq.lut_dtype = dt
        got = pq.score(table, codes)
        assert got.dtype == torch.float32
        assert (got - ref).abs().max() <= tol * ref.abs().max()


def test_recall_rises_monotonically_with_n_centroids():
    _, train = _clustered(8, 512, seed=2)
    target, hist = _clustered(16, 400, seed=3)
    exact = MultiModalPQ.exact_score(target, hist)
    recalls = []
    for k in (2, 8, 32, 128):
        pq = MultiModalPQ(M, D, n_sub=4, n_centroids=k, seed=0, n_iter=10).fit(train.reshape(-1, M, D))
        recalls.append(_recall(pq.score(pq.lut(target), pq.encode(hist)), exact, 10))
    assert all(b >= a for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[-1] > recalls[0] + 0.2, recalls


def test_codes_are_uint8_and_history_bytes():
    _, hist = _clustered(2, 50, seed=4)
    pq = MultiModalPQ(M, D, n_sub=8, n_centroids=256, seed=0).fit(hist.reshape(-1, M, D))
    codes = pq.encode(hist)
    assert codes.dtype == torch.uint8 and codes.shape == (2, 50, M, 8)
    assert codes.numel() * codes.element_size() == 2 * 50 * pq.bytes_per_behaviour
    assert pq.bytes_per_behaviour == M * 8


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="n_sub=5 must .* divide dim=16"):
        MultiModalPQ(M, D, n_sub=5)
    with pytest.raises(ValueError, match="n_centroids=257 .*uint8"):
        MultiModalPQ(M, D, n_sub=4, n_centroids=257)
    with pytest.raises(ValueError, match="lut_dtype"):
        MultiModalPQ(M, D, lut_dtype="int8")
    pq = MultiModalPQ(M, D, n_sub=4, n_centroids=4)
    with pytest.raises(RuntimeError, match="not fitted"):
        pq.encode(torch.randn(5, M, D))
    with pytest.raises(ValueError, match=r"expected vectors \[..., M=3, d=16\]"):
        pq.fit(torch.randn(5, M, D + 1))
    with pytest.raises(ValueError, match="NaN"):
        pq.fit(torch.full((5, M, D), float("nan")))
    pq.fit(torch.randn(40, M, D))
    with pytest.raises(ValueError, match="uint8 codes"):
        pq.score(pq.lut(torch.randn(1, M, D)), torch.zeros(1, 5, M, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask must be"):
        pq.score(pq.lut(torch.randn(1, M, D)), torch.zeros(1, 5, M, 4, dtype=torch.uint8), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="target"):
        pq.lut(torch.randn(1, M, D + 2))


def test_state_dict_round_trip():
    _, hist = _clustered(2, 100, seed=5)
    pq = MultiModalPQ(M, D, n_sub=4, n_centroids=16, seed=0).fit(hist.reshape(-1, M, D))
    sd = pq.state_dict()
    assert set(sd) == {"codebooks", "is_fitted"}
    fresh = MultiModalPQ(M, D, n_sub=4, n_centroids=16)
    assert not bool(fresh.is_fitted)
    fresh.load_state_dict(sd)
    assert bool(fresh.is_fitted)
    assert torch.equal(fresh.encode(hist), pq.encode(hist))


def test_fit_and_encode_deterministic_per_seed():
    _, hist = _clustered(2, 300, seed=6)
    x = hist.reshape(-1, M, D)
    for init in ("kmeans++", "random"):
        a = MultiModalPQ(M, D, n_sub=4, n_centroids=16, seed=3, init=init).fit(x)
        b = MultiModalPQ(M, D, n_sub=4, n_centroids=16, seed=3, init=init).fit(x)
        c = MultiModalPQ(M, D, n_sub=4, n_centroids=16, seed=4, init=init).fit(x)
        assert torch.equal(a.codebooks, b.codebooks)
        assert torch.equal(a.encode(hist), b.encode(hist))
        assert not torch.equal(a.codebooks, c.codebooks)


def test_fit_handles_fewer_points_than_centroids_and_empty_clusters():
    x = torch.randn(5, M, D)
    for init in ("kmeans++", "random"):
        pq = MultiModalPQ(M, D, n_sub=2, n_centroids=32, seed=0, init=init).fit(x)
        assert torch.isfinite(pq.codebooks).all()
        assert torch.allclose(pq.decode(pq.encode(x)), x, atol=1e-5)


def test_padding_is_masked_in_scores_topk_and_fit():
    target, hist = _clustered(2, 30, seed=7)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[:, :10] = False  # left padding, as in the DataModule
    hist = hist.clone()
    hist[:, :10] = 100.0  # padding rows that would win every score if not masked
    pq = MultiModalPQ(M, D, n_sub=4, n_centroids=8, seed=0).fit(hist, mask=mask)
    assert pq.codebooks.abs().max() < 50  # the padding rows did not enter the codebooks
    s = pq.score(pq.lut(target), pq.encode(hist), mask)
    assert torch.isinf(s[:, :10]).all() and (s[:, :10] < 0).all()
    assert torch.isfinite(s[:, 10:]).all()
    _, idx = pq.topk(target, pq.encode(hist), k=5, mask=mask)
    assert (idx >= 10).all()
    with pytest.raises(ValueError, match="all masked"):
        pq.fit(hist, mask=torch.zeros(2, 30, dtype=torch.bool))


def test_no_python_loop_over_length_large_history_is_fast():
    """Scoring 2 x 20,000 behaviours is one batched gather (well under a second even on a busy CPU)."""
    import time

    _, train = _clustered(4, 256, seed=8)
    pq = MultiModalPQ(M, D, n_sub=4, n_centroids=16, seed=0).fit(train.reshape(-1, M, D))
    target, hist = _clustered(2, 20_000, seed=9)
    codes = pq.encode(hist)
    t0 = time.perf_counter()
    s = pq.score(pq.lut(target), codes)
    assert s.shape == (2, 20_000)
    assert time.perf_counter() - t0 < 2.0


# --------------------------------------------------------------------------- scoring backends
def test_faiss_backends_agree_with_torch_reference():
    """faiss8 scans float tables (float rounding only); faiss4 fast-scan rounds each 16-entry table to uint8,
    so |score - reference| <= G * max_g span_g / 255 (fastscan_error_bound); top-K overlap stays high."""
    pytest.importorskip("faiss")
    from seminar_zoo.modules.pq_backends import fastscan_error_bound

    target, hist = _clustered(3, 600, seed=5)
    mask = torch.rand(3, 600, generator=torch.Generator().manual_seed(1)) > 0.2
    for k_c, backend in ((16, "faiss4"), (64, "faiss8"), (16, "auto")):
        pq = MultiModalPQ(M, D, n_sub=4, n_centroids=k_c, seed=0).fit(hist.reshape(-1, M, D))
        codes, lut = pq.encode(hist), pq.lut(target)
        ref = pq.score(lut, codes, mask)
        ref_v, ref_i = pq.topk(target, codes, 20, mask)
        pq.backend = backend
        with torch.no_grad():
            assert pq.resolved_backend(codes.device, for_topk=True) == ("faiss4" if k_c == 16 else backend)
            s = pq.score(lut, codes, mask)
            v, i = pq.topk(target, codes, 20, mask)
        assert torch.isinf(s[~mask]).all() and bool(mask.gather(1, i).all())
        err = (s[mask] - ref[mask]).abs()
        if k_c == 64:
            assert float(err.max()) < 1e-4
            torch.testing.assert_close(v, ref_v, atol=1e-4, rtol=0)
        else:
            bound = fastscan_error_bound(lut.reshape(3, -1, 16))
            assert ((s - ref).abs().masked_fill(~mask, 0).amax(1) <= bound).all()
            assert float(err.mean()) < 0.25 * float(bound.mean())  # rounding errors mostly cancel
        overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(i, ref_i)) / 60
        assert overlap >= (1.0 if k_c == 64 else 0.85), (backend, overlap)
    with torch.enable_grad():  # auto never takes the faiss path under autograd
        assert pq.resolved_backend(torch.device("cpu")) == "torch"


def test_faiss_topk_pads_short_histories_like_torch():
    pytest.importorskip("faiss")
    target, hist = _clustered(2, 30, seed=2)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :4] = True
    mask[1] = True
    pq = MultiModalPQ(M, D, n_sub=2, n_centroids=16, seed=0, backend="faiss4").fit(hist.reshape(-1, M, D))
    with torch.no_grad():
        v, i = pq.topk(target, pq.encode(hist), 6, mask)
    assert set(i[0, :4].tolist()) == {0, 1, 2, 3} and torch.isinf(v[0, 4:]).all() and not bool(mask[0, i[0, 4:]].any())
    assert torch.isfinite(v[1]).all() and len(set(i[1].tolist())) == 6


def test_topk_over_distinct_histories_equals_per_row_topk():
    """``inv``: rows sharing a history (a ranking list) search one index per history; same result per row."""
    pytest.importorskip("faiss")
    target, hist = _clustered(6, 200, seed=3)
    mask = torch.rand(2, 200, generator=torch.Generator().manual_seed(2)) > 0.3
    mask[1, :190], mask[1, 190:] = False, True  # a short history: 10 real, padding fills the tail
    inv = torch.tensor([0, 1, 0, 0, 1, 1])
    for k_c, backend in ((16, "faiss4"), (64, "faiss8"), (16, "torch")):
        pq = MultiModalPQ(M, D, n_sub=4, n_centroids=k_c, seed=0, backend=backend).fit(hist.reshape(-1, M, D))
        codes = pq.encode(hist[:2])
        with torch.no_grad():
            v, i = pq.topk(target, codes, 20, mask=mask, inv=inv)
            rv, ri = pq.topk(target, codes[inv], 20, mask=mask[inv])
        assert torch.equal(i, ri) and torch.equal(v.isinf(), rv.isinf())
        torch.testing.assert_close(v[v.isfinite()], rv[rv.isfinite()])
        assert bool(mask[inv].gather(1, i)[[1, 4, 5], :10].all()) and not bool(mask[1, i[1, 10:]].any())


def test_backend_errors():
    with pytest.raises(ValueError, match="faiss4"):
        MultiModalPQ(M, D, n_sub=4, n_centroids=64, backend="faiss4")
    with pytest.raises(ValueError, match="backend"):
        MultiModalPQ(M, D, backend="gpu")


def test_allocate_subspaces_by_variance_share():
    from seminar_zoo.modules.pq_backends import allocate_subspaces

    # hand-computed, always doubling the largest share per sub-space that still fits in 32:
    # image 1->2->4->8->16 (19 used; 32 no longer fits), query ->2 (20), text ->2 (21), query ->4 (23),
    # id ->2 (24, tie with text: lower index), text ->4 (26), query ->8 (30), id ->4 (32)
    assert allocate_subspaces([0.03, 0.01, 0.02, 0.94], 32, 64) == [8, 4, 4, 16]
    assert allocate_subspaces([1, 1], 8, 64) == [4, 4]  # equal shares split evenly
    assert allocate_subspaces([1, 0], 6, 4) == [4, 2]  # capped by the width (4), the rest gets what is left
    with pytest.raises(ValueError, match="total"):
        allocate_subspaces([1, 1, 1], 2, 64)


def test_per_modality_n_sub_allocation_and_score_aware_codes():
    """n_sub per modality (bit allocation): codes [..., G], scores = <t, decoded keys>, faiss agrees with torch;
    on data whose last modality dominates the score (norms 1, 0.5, 4), giving it more sub-spaces raises
    recall@20 at equal bytes (measured 0.55 -> 0.69), and the score-aware loss (aniso_eta 4) raises the uniform
    quantizer's (0.55 -> 0.59)."""
    pytest.importorskip("faiss")
    target, hist = _clustered(20, 500, seed=5)
    train, ex = hist.reshape(-1, M, D), MultiModalPQ.exact_score(target, hist)
    recall = {}
    for n_sub, eta in ((4, 1.0), ([4, 4, 4], 1.0), ([2, 2, 8], 1.0), (4, 4.0)):
        pq = MultiModalPQ(M, D, n_sub=n_sub, n_centroids=16, seed=0, aniso_eta=eta).fit(train)
        codes = pq.encode(hist)
        assert pq.n_groups == 12 and codes.shape == ((20, 500, M, 4) if isinstance(n_sub, int) else (20, 500, 12))
        s = pq.score(pq.lut(target), codes)
        torch.testing.assert_close(s, MultiModalPQ.exact_score(target, pq.decode(codes)), atol=1e-4, rtol=1e-4)
        per_pair = pq.lut(target, per_pair=True, weights=torch.tensor([1.0, 2.0, 0.5]))
        weighted = (target.sum(1)[:, None, None] * pq.decode(codes) * torch.tensor([1.0, 2.0, 0.5])[:, None]).sum((-1, -2))
        torch.testing.assert_close(pq.score(per_pair, codes), weighted, atol=1e-4, rtol=1e-4)
        pq.backend = "faiss4"
        with torch.no_grad():
            _, i = pq.topk(target, codes, 20)
        agree = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(i, s.topk(20).indices)) / 400
        assert agree >= 0.95, (n_sub, agree)
        recall[(str(n_sub), eta)] = _recall(s, ex, 20)
    assert recall[("[4, 4, 4]", 1.0)] == recall[("4", 1.0)]  # the same quantizer in the flat layout
    assert recall[("[2, 2, 8]", 1.0)] > recall[("4", 1.0)] + 0.08, recall
    assert recall[("4", 4.0)] > recall[("4", 1.0)] + 0.02, recall
    with pytest.raises(ValueError, match="n_sub"):
        MultiModalPQ(M, D, n_sub=[4, 4])
    with pytest.raises(ValueError, match="aniso_eta"):
        MultiModalPQ(M, D, aniso_eta=0.5)


def test_faiss_scanner_single_and_batched_queries():
    pytest.importorskip("faiss")
    target, hist = _clustered(3, 100, seed=4)
    pq = MultiModalPQ(M, D, n_sub=2, n_centroids=16, seed=0).fit(hist.reshape(-1, M, D))
    sc = pq.scanner(pq.encode(hist[0]), "faiss4")
    d, i = sc.search(pq.lut(target[:1])[0].reshape(-1, 16).numpy(), 5)
    assert d.shape == i.shape == (5,)  # one table -> one result row
    q = target.sum(1).repeat(1, M).numpy()
    d2, i2 = sc.search_query(q, 5)
    assert d2.shape == (3, 5) and (i2[0] == sc.search_query(q[0], 5)[1]).all()


@pytest.mark.parametrize("n_cand", [120, 400])  # the small-pool full sort and the partition path
def test_by_id_reranker_matches_brute_force(n_cand):
    """ByIdReranker (stacked tables, a history's row map, one by-id call) == brute-force top-k of the summed
    inner products, best first and chronologically; the numpy fallback gives the same rows."""
    import numpy as np

    from seminar_zoo.modules.pq_backends import ByIdReranker

    rng = np.random.default_rng(1)
    tables = [rng.standard_normal((n, 16)).astype(np.float32) for n in (500, 40, 7)]
    ids = [rng.integers(0, len(t), 600) for t in tables]
    q = rng.standard_normal(16).astype(np.float32)
    cand = rng.choice(600, n_cand, replace=False)
    full = sum(t[i] @ q for t, i in zip(tables, ids))
    want = cand[np.argsort(-full[cand])[:10]]
    rr = ByIdReranker(tables)
    hist = rr.rows(*ids)
    assert hist.shape == (600, 3) and rr.table.shape == (547, 16)
    assert rr.topk(q, hist, cand, 10).tolist() == want.tolist()
    assert rr.topk(q.astype(np.float64), hist, cand, 10, order="time").tolist() == sorted(want.tolist())
    rr._faiss = None  # as without faiss
    assert rr.topk(q, hist, cand, 10).tolist() == want.tolist()
    two = ByIdReranker(tables[:2])  # the two-table (item + query) fast path
    s2 = tables[0][ids[0]] @ q + tables[1][ids[1]] @ q
    assert two.topk(q, two.rows(*ids[:2]), cand, 10).tolist() == cand[np.argsort(-s2[cand])[:10]].tolist()
    assert two.topk(q, two.rows(*ids[:2]), cand[:4], 10).tolist() == cand[:4][np.argsort(-s2[cand[:4]])].tolist()
    with pytest.raises(ValueError, match="one per table"):
        rr.rows(*ids[:2])
    with pytest.raises(ValueError, match="one d"):
        ByIdReranker([tables[0], tables[1][:, :8]])
    with pytest.raises(ValueError, match="order"):
        rr.topk(q, hist, cand, 10, order="random")


def test_faiss_scanner_block_size_changes_speed_not_results():
    """fast-scan's block size (bbs) is a layout choice: the same top-k rows and scores for every allowed bbs."""
    import numpy as np

    pytest.importorskip("faiss")
    from seminar_zoo.modules.pq_backends import FaissScanner

    rng = np.random.default_rng(2)
    codes = rng.integers(0, 16, (1000, 12)).astype(np.uint8)
    cb = rng.standard_normal((12, 16, 4)).astype(np.float32)
    q = rng.standard_normal(48).astype(np.float32)
    ref_d, ref_i = FaissScanner(codes, 4, codebooks=cb, bbs=32).search_query(q, 40)
    for bbs in (64, 96, 128):
        d, i = FaissScanner(codes, 4, codebooks=cb, bbs=bbs).search_query(q, 40)
        assert np.allclose(d, ref_d) and set(i.tolist()) == set(ref_i.tolist())
    with pytest.raises(ValueError, match="bbs"):
        FaissScanner(codes, 4, bbs=48)
