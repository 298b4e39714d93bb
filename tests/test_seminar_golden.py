"""Golden values of SEMINAR's named parts (torchrec dlrm style): PairEncoder, GSU.select (exact and PQ),
the ESU and MultiModalPQ, each on seeded weights and inputs. The numbers were computed once from the code
before the models/seminar/ restructuring (issue 14; modules/seminar_parts.py gave the same to 6 decimals)
and are hard-coded: a change to any part's maths fails here even when every shape still fits."""
import pytest
import torch

from seminar_zoo.models.seminar.esu import ESU
from seminar_zoo.models.seminar.gsu import GSU
from seminar_zoo.modules.pair import PairEncoder
from seminar_zoo.modules.quantization import MultiModalPQ

D, MI = 8, 3
TOL = dict(rtol=0, atol=2e-5)


def _t(x):
    return torch.tensor(x)


@pytest.fixture
def pair_case():
    g = torch.Generator().manual_seed(0)
    item_table, query_table = torch.randn(20, MI, D, generator=g), torch.randn(10, D, generator=g)
    pe = PairEncoder(["id", "attr", "text"], True, lambda_q=0.3)
    with torch.no_grad():
        pe.gamma.copy_(_t([0.5, -0.25, 0.0]))
    items, queries = _t([[1, 2, 3, 4], [5, 5, 6, 0]]), _t([[0, 1, 2, 3], [4, 4, 0, 0]])
    return pe, (lambda ids: item_table[ids]), (lambda ids: query_table[ids]), items, queries


@pytest.fixture
def gsu_case():
    torch.manual_seed(0)
    gsu = GSU(["id", "attr", "text", "query"], D, num_heads=2)
    with torch.no_grad():
        gsu.proj.weight.add_(0.1 * torch.randn_like(gsu.proj.weight))
    g = torch.Generator().manual_seed(1)
    target_modal, hist_modal = torch.randn(3, 4, D, generator=g), torch.randn(3, 12, 4, D, generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, :5] = False
    mask[2, :10] = False  # 2 valid behaviours < K
    return gsu, target_modal, hist_modal, mask


def test_pair_encoder_golden(pair_case):
    pe, item_enc, query_enc, items, queries = pair_case
    torch.testing.assert_close(pe.weights().detach(), _t([0.336717, 0.159054, 0.204229, 0.3]), **TOL)
    with torch.no_grad():
        fused = pe.fused(item_enc, query_enc, items, queries)
        torch.testing.assert_close(fused, pe(item_enc, query_enc, items, queries).sum(-2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[0, 1], _t([-0.430934, 0.789019, 0.905486, 0.659972, -0.950523, 0.7, 0.111499, 0.02176]), **TOL)
    torch.testing.assert_close(fused[1, 3], _t([-0.772412, -1.064405, -0.012949, -0.398946, 0.422722, 0.479803, 0.479597, -0.862572]), **TOL)
    assert float(fused.sum()) == pytest.approx(-2.092767, abs=1e-4)


def test_gsu_select_exact_golden(gsu_case):
    gsu, tm, hm, mask = gsu_case
    with torch.no_grad():
        s = gsu.select(gsu.pair(tm), gsu.keys(gsu.pair(hm)), mask, 4)
        shares = gsu.modality_shares(gsu.pair(tm), hm, mask)
    assert s.idx.tolist() == [[5, 6, 7, 11], [6, 7, 9, 11], [6, 7, 10, 11]]
    assert s.sel.tolist() == [[True] * 4, [True] * 4, [False, False, True, True]]
    torch.testing.assert_close(s.bias, _t([[1.391999, 1.16956, 2.676072, 1.24706], [0.089725, 0.855369, 0.436074, 1.264372],
                                           [0.0, 0.0, 1.390592, 0.619575]]), **TOL)
    torch.testing.assert_close(shares, _t([[0.313982, 0.247497, 0.244613, 0.193907], [0.334924, 0.223295, 0.214322, 0.227459],
                                           [0.252659, 0.170806, 0.126972, 0.449563]]), **TOL)


def test_gsu_select_pq_golden(gsu_case):
    gsu, tm, hm, mask = gsu_case
    with torch.no_grad():
        t, kv = gsu.vectors(tm, hm)
        pq = MultiModalPQ(4, D, n_sub=2, n_centroids=8, n_iter=10, seed=0, backend="torch").fit(kv[mask])
        s = gsu.select(gsu.pair(tm), gsu.keys(gsu.pair(hm)), mask, 4, pq=pq, pq_vectors=lambda: (t, kv), probe=True)
    assert s.idx.tolist() == [[0, 5, 7, 11], [6, 7, 9, 11], [6, 7, 10, 11]]  # row 0: PQ swaps 6 for 0
    assert s.exact[0].tolist() == [[5, 6, 7, 11], [6, 7, 9, 11], [6, 7, 10, 11]]
    assert s.sel.tolist() == [[True] * 4, [True] * 4, [False, False, True, True]]
    # the bias is the exact score of what PQ selected
    torch.testing.assert_close(s.bias, _t([[0.80687, 1.391999, 2.676072, 1.24706], [0.089725, 0.855369, 0.436074, 1.264372],
                                           [0.0, 0.0, 1.390592, 0.619575]]), **TOL)


def test_esu_golden():
    torch.manual_seed(0)
    esu = ESU(D, num_heads=2)
    g = torch.Generator().manual_seed(2)
    t, keys, bias = torch.randn(2, D, generator=g), torch.randn(2, 5, D, generator=g), torch.randn(2, 5, generator=g)
    sel = _t([[True, True, True, False, True], [True, False, False, False, False]])
    with torch.no_grad():
        out = esu(t, keys, sel, bias=bias)
    torch.testing.assert_close(out, _t([[-0.086869, 0.634939, -0.064345, -0.289215, 0.002533, 0.478644, 0.108822, 0.352005],
                                        [-0.549196, 0.017456, 0.017491, -0.1769, -0.369908, 0.539932, 0.106076, 0.448391]]), **TOL)


def test_multimodal_pq_golden():
    g = torch.Generator().manual_seed(3)
    train = torch.randn(400, 2, D, generator=g)
    pq = MultiModalPQ(2, D, n_sub=2, n_centroids=8, n_iter=10, seed=0, backend="torch").fit(train)
    q, keys = torch.randn(2, 2, D, generator=g), torch.randn(2, 10, 2, D, generator=g)
    assert tuple(pq.codebooks.shape) == (2, 2, 8, 4)
    assert float(pq.codebooks.sum()) == pytest.approx(0.420832, abs=1e-4)
    codes = pq.encode(keys)
    assert codes[0, :3].tolist() == [[[2, 2], [6, 0]], [[3, 6], [4, 1]], [[7, 3], [0, 5]]]
    full = torch.ones(2, 10, dtype=torch.bool)
    scores = pq.score(pq.lut(q), codes, full)
    torch.testing.assert_close(scores, _t([[-9.562925, 0.61849, -5.448728, 1.222277, 0.686286, 3.846373, -1.011983, -0.810625,
                                            6.337023, 8.017499],
                                           [-1.442706, 7.734665, -7.768117, -4.905845, -7.85561, -4.976777, 3.405134, -10.014961,
                                            1.103336, -4.722352]]), rtol=0, atol=1e-4)
    top = pq.topk(q, codes, 3, mask=full)
    assert top.indices.tolist() == [[9, 8, 5], [1, 6, 8]]
