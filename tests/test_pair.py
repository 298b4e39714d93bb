"""The shared (query, item) pair fusion (modules/pair.py) and RecModel's use_queries / history_vectors."""
import copy
import math

import pytest
import torch
from torch import nn

from seminar_zoo.models import get_model_class
from seminar_zoo.modules.encoders import ItemEncoder, QueryEncoder
from seminar_zoo.modules.pair import PairEncoder


class Table(nn.Module):
    """Encoder stub: fixed vectors looked up by id ([n + 1, M, d] per-modality items, [n + 1, d] queries)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, ids):
        return self.table[ids]


TableItems = TableQueries = Table


def _stubs():
    # item 1: id -> e0, attr -> 2 e1; query 1 -> 4 e3, "no query" (id 0) -> 8 e2
    items = torch.zeros(2, 2, 4)
    items[1, 0, 0], items[1, 1, 1] = 1.0, 2.0
    queries = torch.zeros(2, 4)
    queries[0, 2], queries[1, 3] = 8.0, 4.0
    return TableItems(items), TableQueries(queries)


def test_golden_values_by_hand():
    it, qe = _stubs()
    pair = PairEncoder(["id", "attr"], has_queries=True, lambda_q=0.5)
    with torch.no_grad():
        pair.gamma.copy_(torch.tensor([0.0, math.log(3.0)]))  # softmax -> [0.25, 0.75]
    one = torch.tensor([1])
    # 0.5 * 4 e3 + 0.5 * (0.25 * e0 + 0.75 * 2 e1)
    torch.testing.assert_close(pair.fused(it, qe, one, one), torch.tensor([[0.125, 0.75, 0.0, 2.0]]))
    # a recommendation event (query 0): the learned "no query" vector takes the query's share
    torch.testing.assert_close(pair.fused(it, qe, one, torch.tensor([0])), torch.tensor([[0.125, 0.75, 4.0, 0.0]]))
    torch.testing.assert_close(pair.weights(), torch.tensor([0.125, 0.375, 0.5]))
    torch.testing.assert_close(pair.item_vector(it, one), torch.tensor([[0.25, 1.5, 0.0, 0.0]]))
    # the per-modality form sums to the same vector
    torch.testing.assert_close(pair(it, qe, one, one).sum(-2), pair.fused(it, qe, one, one))


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_lambda_is_the_exact_query_share(lam):
    torch.manual_seed(0)
    M, d = 3, 8
    # orthonormal inputs: item modality j -> e_j, every query -> e_M
    items = torch.zeros(5, M, d)
    items[:, torch.arange(M), torch.arange(M)] = 1.0
    queries = torch.zeros(5, d)
    queries[:, M] = 1.0
    pair = PairEncoder(["id", "attr", "text"], has_queries=True, lambda_q=lam)
    with torch.no_grad():
        pair.gamma.copy_(torch.randn(M) * 3)  # any gamma
    v = pair.fused(TableItems(items), TableQueries(queries), torch.tensor([1, 2]), torch.tensor([3, 0]))
    assert torch.allclose(v[:, M], torch.full((2,), lam), atol=1e-7)  # query coordinate
    assert torch.allclose(v[:, :M].sum(-1), torch.full((2,), 1 - lam), atol=1e-6)  # item coordinates
    # linearity: the query moves the pair vector by exactly lambda * (its change)
    q2 = queries.clone()
    q2[3] = torch.randn(d)
    v2 = pair.fused(TableItems(items), TableQueries(q2), torch.tensor([1]), torch.tensor([3]))
    torch.testing.assert_close(v2 - v[:1], lam * (q2[3] - queries[3]).unsqueeze(0), rtol=0, atol=1e-6)
    # weights sum to 1: equal inputs give that input back
    same_i, same_q = torch.ones(2, M, d), torch.ones(2, d)
    torch.testing.assert_close(pair.fused(TableItems(same_i), TableQueries(same_q), torch.tensor([1]),
                                          torch.tensor([1])), torch.ones(1, d))


def test_lambda_zero_or_no_queries_is_the_item_part_alone():
    it, qe = _stubs()
    one = torch.tensor([1])
    expect = torch.tensor([[0.5, 1.0, 0.0, 0.0]])  # mean of e0 and 2 e1 (gamma = 0)
    for pair in (PairEncoder(["id", "attr"], True, 0.0), PairEncoder(["id", "attr"], False, 0.7)):
        assert pair.active == ["id", "attr"] and not pair.use_query
        torch.testing.assert_close(pair.fused(it, qe, one, one), expect)
        torch.testing.assert_close(pair.fused(it, qe, one, torch.tensor([0])), expect)
    with pytest.raises(ValueError, match="lambda_q"):
        PairEncoder(["id"], True, 1.5)


def test_fused_matches_the_formula_with_real_seeded_encoders(tiny_dm):
    torch.manual_seed(3)
    meta = tiny_dm.data_meta
    it, qe = ItemEncoder(meta, 8), QueryEncoder(meta, 8)
    it.load_tables(tiny_dm.feature_tables())
    qe.load_tables(tiny_dm.feature_tables())
    pair = PairEncoder(it.modalities, True, 0.3)
    with torch.no_grad():
        pair.gamma.copy_(torch.randn(len(it.modalities)))
    ids = torch.tensor([[1, 5, 5, 0], [7, 1, 2, 3]])
    qids = torch.tensor([[0, 3, 4, 0], [9, 0, 3, 3]])
    w = torch.softmax(pair.gamma.detach(), 0)
    expect = 0.3 * qe(qids) + 0.7 * sum(w[j] * it.modality(m, ids) for j, m in enumerate(it.modalities))
    torch.testing.assert_close(pair.fused(it, qe, ids, qids), expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair(it, qe, ids, qids).sum(-2), expect, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- RecModel
def _din(dm, **kw):
    torch.manual_seed(0)
    m = get_model_class("DIN")(data_meta=kw.pop("data_meta", dm.data_meta), embed_dim=8, **kw)
    m.load_tables(dm.feature_tables())
    return m.eval()


def test_use_queries_default_and_errors(tiny_dm):
    assert _din(tiny_dm).use_queries and _din(tiny_dm).pair is not None
    off = _din(tiny_dm, use_queries=False)
    assert off.pair is None and not any(k.startswith("pair.") for k in off.state_dict())
    meta = copy.deepcopy(tiny_dm.data_meta)
    meta["n_queries"] = 0
    meta["modalities"] = [x for x in meta["modalities"] if x != "query"]
    assert not _din(tiny_dm, data_meta=meta).use_queries  # None = on only when the data has queries
    with pytest.raises(ValueError, match="use_queries=True but dataset 'synthetic' has no queries"):
        _din(tiny_dm, data_meta=meta, use_queries=True)
    with pytest.raises(ValueError, match="lambda_q"):
        _din(tiny_dm, lambda_q=-0.1)


def test_target_and_history_vectors(tiny_dm):
    b = tiny_dm.batch("train", list(range(16)))
    h, q = b["hist_item_id"], b["hist_query_id"]
    off = _din(tiny_dm, use_queries=False)
    assert torch.equal(off.target_vector(b), off.item_encoder.fused(b["item_id"]))
    assert torch.equal(off.history_vectors(h, q), off.item_encoder.fused(h))
    on = _din(tiny_dm, lambda_q=0.5)
    enc = (on.item_encoder, on.query_encoder)
    torch.testing.assert_close(on.target_vector(b), on.pair.fused(*enc, b["item_id"], b["query_id"]))
    direct = on.history_vectors(h, q)
    torch.testing.assert_close(direct, on.pair(*enc, h, q).sum(-2), rtol=1e-5, atol=1e-6)
    # one encoding per distinct (item, query) behaviour, same values
    out, uniq, inv = on.history_vectors(h, q, return_parts=True)
    torch.testing.assert_close(out, direct, rtol=1e-5, atol=1e-6)
    assert uniq.shape[0] == torch.unique(torch.stack([h, q], -1).view(-1, 2), dim=0).shape[0]
    assert inv.shape == h.shape


@pytest.mark.parametrize("name,kw", [
    ("DIN", {}), ("SIM", {"gsu": "hard", "topk": 8}), ("SIM", {"gsu": "soft", "topk": 8}), ("ETA", {"topk": 8}),
    ("SDIM", {"n_hashes": 8}), ("TWIN", {"topk": 8, "cross_features": ["recency"]}),
    ("QIN", {"topk_stage1": 16, "topk": 8})])
def test_every_baseline_reads_queries_only_when_on(tiny_dm, name, kw):
    b = tiny_dm.batch("train", list(range(32)))
    g = torch.Generator().manual_seed(1)
    nq = tiny_dm.data_meta["n_queries"]
    b2 = {**b, "query_id": torch.randint(1, nq + 1, b["query_id"].shape, generator=g),
          "hist_query_id": torch.randint(1, nq + 1, b["hist_query_id"].shape, generator=g) * b["hist_mask"]}
    for use in (True, False):
        torch.manual_seed(0)
        m = get_model_class(name)(data_meta=tiny_dm.data_meta, embed_dim=16, use_queries=use, **kw)
        m.load_tables(tiny_dm.feature_tables())
        m.eval()
        with torch.no_grad():
            changed = not torch.allclose(m(b), m(b2), atol=1e-6)
        # QIN's stage-1 search is query-driven by design (the paper's model), with or without pair vectors
        assert changed == (use or name == "QIN"), (name, use)
