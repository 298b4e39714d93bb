"""SASRec and HSTU: causality, padding, candidate scoring, HSTU's pointwise attention, a planted signal."""
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from seminar_zoo.models import registry
from seminar_zoo.models._sequential import causal_valid_mask
from seminar_zoo.models.hstu import HSTU, HSTULayer, RelativeBias
from seminar_zoo.models.sasrec import SASRec

N_ITEMS = 40
META = {"name": "toy", "n_items": N_ITEMS, "n_queries": 0, "n_users": 10, "attr_cols": [],
        "attr_cardinality": [], "dims": {}, "modalities": ["id"]}
MODELS = [(SASRec, {"num_blocks": 2, "sasrec_heads": 2}), (HSTU, {"num_layers": 2, "hstu_heads": 2})]
IDS = ["SASRec", "HSTU"]


def make(cls, kw, **extra):
    torch.manual_seed(0)
    return cls(data_meta=META, embed_dim=16, position_len=16, dropout=0.0, **kw, **extra)


def toy_batch(B=6, L=8, n_valid=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, N_ITEMS + 1, (B, L), generator=g)
    n_valid = torch.randint(0, L + 1, (B,), generator=g) if n_valid is None else torch.full((B,), n_valid)
    m = torch.arange(L)[None, :] >= (L - n_valid)[:, None]
    return {"item_id": torch.randint(1, N_ITEMS + 1, (B,), generator=g), "query_id": torch.zeros(B, dtype=torch.long),
            "label": torch.ones(B), "user_id": torch.arange(B), "request_id": torch.arange(B),
            "hist_item_id": h * m, "hist_query_id": torch.zeros(B, L, dtype=torch.long), "hist_mask": m}


def test_registered():
    assert {"SASRec", "HSTU"} <= set(registry())


def test_causal_valid_mask_hand_computed():
    m = torch.tensor([[False, True, True]])
    expect = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 1, 1]]], dtype=torch.bool)
    assert torch.equal(causal_valid_mask(m), expect)


@pytest.mark.parametrize("cls,kw", MODELS, ids=IDS)
def test_shapes_padding_and_causality(cls, kw):
    model = make(cls, kw).eval()
    b = toy_batch()
    out = model(b)
    assert out.shape == (6,) and torch.isfinite(out).all()
    # junk ids in padded slots change nothing
    noisy = dict(b)
    noisy["hist_item_id"] = torch.where(b["hist_mask"], b["hist_item_id"], 7)
    assert torch.allclose(model(noisy), out, atol=1e-5)
    # causality: the output at position i does not depend on later behaviours
    full = toy_batch(n_valid=8)
    seq = model.encode_sequence(full)
    changed = dict(full)
    changed["hist_item_id"] = full["hist_item_id"].clone()
    changed["hist_item_id"][:, 5:] = (full["hist_item_id"][:, 5:] % N_ITEMS) + 1
    seq2 = model.encode_sequence(changed)
    assert torch.allclose(seq[:, :5], seq2[:, :5], atol=1e-5)
    assert not torch.allclose(seq[:, -1], seq2[:, -1], atol=1e-3)
    # empty history: score is exactly 0 (zero user vector), not NaN
    assert torch.equal(model(toy_batch(n_valid=0)), torch.zeros(6))


@pytest.mark.parametrize("cls,kw", MODELS, ids=IDS)
def test_score_candidates_equals_forward_per_candidate(cls, kw):
    model = make(cls, kw).eval()
    b = toy_batch()
    cands = torch.randint(1, N_ITEMS + 1, (6, 5))
    fast = model.score_candidates(b, cands)
    for c in range(5):
        bc = dict(b)
        bc["item_id"] = cands[:, c]
        assert torch.allclose(fast[:, c], model(bc), atol=1e-5)


def test_hstu_layer_is_pointwise_silu_not_softmax():
    """Eq. 2: with zero bias and a single valid key, A = SiLU(q.k/sqrt(d_h)) / n, not softmax's 1."""
    torch.manual_seed(0)
    layer = HSTULayer(8, 1, 0.0).eval()
    x = torch.randn(1, 1, 8)
    allowed = torch.ones(1, 1, 1, dtype=torch.bool)
    u, v, q, k = F.silu(layer.f1(layer.norm_in(x))).split(8, -1)
    a = F.silu((q * k).sum(-1, keepdim=True) / 8 ** 0.5)
    expect = x + layer.f2(layer.norm_av(a * v) * u)
    assert torch.allclose(layer(x, allowed, torch.zeros(1, 1, 1)), expect, atol=1e-6)


def test_hstu_time_bias_reads_hist_ts_and_can_be_turned_off():
    """With hist_ts in the batch the HSTU output depends on the time gaps (once the time bias is non-zero);
    time_bias=False, or a batch without hist_ts, gives the positions-only model."""
    b = toy_batch(n_valid=8)
    g = torch.Generator().manual_seed(3)
    b["hist_ts"] = torch.cumsum(torch.randint(1, 10 ** 6, (6, 8), generator=g), 1) * b["hist_mask"]
    for time_bias in (True, False):
        model = make(HSTU, {"num_layers": 1, "hstu_heads": 2}, time_bias=time_bias).eval()
        with torch.no_grad():
            model.bias.time.copy_(torch.linspace(-2, 2, len(model.bias.time)))
        no_ts = {k: v for k, v in b.items() if k != "hist_ts"}
        spread = dict(b, hist_ts=b["hist_ts"] * 1000)  # other gaps -> other log2 buckets
        with torch.no_grad():
            out, out_no_ts, out_spread = model(b), model(no_ts), model(spread)
        if time_bias:
            assert not torch.allclose(out, out_no_ts, atol=1e-4) and not torch.allclose(out, out_spread, atol=1e-4)
        else:
            assert torch.equal(out, out_no_ts) and torch.equal(out, out_spread)


def test_relative_bias_uses_positions_and_time_gaps():
    rb = RelativeBias(max_len=4, time_buckets=8)
    with torch.no_grad():
        rb.pos.copy_(torch.arange(7.0))
        rb.time.copy_(torch.arange(9.0) * 10)
    b = rb(3, "cpu")
    assert b[0, 0, 0] == 3 and b[0, 2, 0] == 1 and b[0, 0, 2] == 5  # offset by max_len - 1
    ts = torch.tensor([[0, 1, 16]])
    bt = rb(3, "cpu", ts)
    assert bt[0, 2, 1] - b[0, 2, 1] == 30  # |16 - 1| = 15 -> floor(log2 15) = 3 -> 30
    assert bt[0, 0, 0] - b[0, 0, 0] == 0  # gap 0 clamps to bucket 0


@pytest.mark.parametrize("cls,kw", MODELS, ids=IDS)
def test_learns_a_planted_next_item_rule(cls, kw):
    """Next item = last item + 1 (mod N): only a model that reads the most recent position can learn it."""
    pl.seed_everything(0)
    model = make(cls, kw)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)

    def batch(seed_shift=0):
        b = toy_batch(B=64, L=8, n_valid=8, seed=int(torch.randint(0, 10**6, (1,), generator=g)) + seed_shift)
        pos = b["hist_item_id"][:, -1] % N_ITEMS + 1
        neg = torch.randint(1, N_ITEMS + 1, (64,), generator=g)
        return b, pos, neg

    for _ in range(80):
        b, pos, neg = batch()
        u = model.user_vector(b)
        t = model.item_encoder.fused(torch.stack([pos, neg], 1))
        s = (t * u.unsqueeze(1)).sum(-1)
        loss = F.binary_cross_entropy_with_logits(s, torch.tensor([1.0, 0.0]).expand_as(s))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    b, pos, neg = batch(seed_shift=12345)
    s = model.score_candidates(b, torch.stack([pos, neg], 1))
    assert (s[:, 0] > s[:, 1]).float().mean() > 0.9


@pytest.mark.parametrize("name", ["SASRec", "HSTU"])
def test_fit_on_tiny_dm_trains_embeddings(tiny_dm, name):
    torch.manual_seed(0)
    model = registry()[name](data_meta=tiny_dm.data_meta, embed_dim=16, position_len=64)
    model.load_tables(tiny_dm.feature_tables())
    trainer = pl.Trainer(max_steps=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         val_check_interval=3)
    before = model.item_encoder.id_emb.weight.detach().clone()
    trainer.fit(model, tiny_dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, model.item_encoder.id_emb.weight)


@pytest.mark.parametrize("cls,kw", MODELS, ids=IDS)
def test_rows_of_one_request_share_one_history_encoding(cls, kw):
    """A ranking list's rows (same user, request and history) give the same logits whether the
    history is encoded once per request or once per row."""
    model = make(cls, kw).eval()
    b = toy_batch(B=4)
    rep = {k: v.repeat_interleave(3, 0) for k, v in b.items()}
    rep["item_id"] = torch.randint(1, N_ITEMS + 1, (12,))
    calls = []
    orig = model.encode_sequence
    model.encode_sequence = lambda bb: calls.append(bb["hist_item_id"].shape[0]) or orig(bb)
    shared = model(rep)
    assert calls == [4]
    rep["request_id"] = torch.arange(12)  # every row its own request: no sharing
    assert torch.allclose(model(rep), shared, atol=1e-5) and calls == [4, 12]


# ---- training recipe: losses (README "Training recipe")
QMETA = {**META, "n_queries": 12, "modalities": ["id", "query"], "dims": {"query": 8}}


@pytest.mark.parametrize("cls,kw", MODELS, ids=IDS)
def test_full_softmax_logits_match_brute_force(cls, kw):
    """all_item_logits == scoring every item one by one, with and without queries (the query's
    share enters through the linear offset, not an [P, N, d] product)."""
    for meta in (META, QMETA):
        torch.manual_seed(0)
        model = cls(data_meta=meta, embed_dim=16, position_len=16, dropout=0.0, lambda_q=0.3, **kw).eval()
        if meta is QMETA:
            model.query_encoder.query_text.normal_()
        b = toy_batch(B=4)
        if meta is QMETA:
            b["query_id"] = torch.tensor([0, 3, 7, 12])
            b["hist_query_id"] = (b["hist_item_id"] % 12) * b["hist_mask"]
        fast = model.all_item_logits(b)
        ids = torch.arange(N_ITEMS + 1).expand(4, -1)
        slow = model.score_candidates(b, ids)
        assert fast.shape == (4, N_ITEMS + 1)
        assert torch.allclose(fast, slow, atol=1e-4)


def test_listwise_losses_hand_computed():
    model = make(SASRec, {"num_blocks": 1}, loss="softmax")
    logits = torch.tensor([2.0, 0.0, 1.0, 0.5, 0.5, 0.5])  # groups [2, 0, 1] and [0.5, 0.5, 0.5]
    label = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    ce1 = -(2.0 - torch.log(torch.exp(torch.tensor([2.0, 0.0, 1.0])).sum()))
    ce2 = torch.log(torch.tensor(3.0))  # all tied: -log(1/3)
    assert torch.isclose(model.listwise_loss(logits, label), (ce1 + ce2) / 2, atol=1e-6)
    model.hparams.loss = "bpr"
    s = torch.nn.functional.logsigmoid
    want = -(s(torch.tensor(2.0)) + s(torch.tensor(1.0)) + 2 * s(torch.tensor(0.0))) / 4
    assert torch.isclose(model.listwise_loss(logits, label), want, atol=1e-6)
    with pytest.raises(ValueError, match="followed by its sampled negatives"):
        model.listwise_loss(logits, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0]))


def test_full_softmax_needs_a_dot_product_model():
    from seminar_zoo.models.din import DIN

    with pytest.raises(ValueError, match="full_softmax needs a model"):
        DIN(data_meta=META, embed_dim=16, loss="full_softmax")


@pytest.mark.parametrize("loss", ["full_softmax", "bce"])
@pytest.mark.parametrize("cls,kw", MODELS, ids=IDS)
def test_all_positions_step_uses_every_position(cls, kw, loss):
    """The all-positions loss has a term for every valid next behaviour: changing the item that
    follows position 2 changes the loss (it is a target), and every parameter gets a gradient."""
    torch.manual_seed(0)
    model = cls(data_meta=META, embed_dim=16, position_len=16, dropout=0.0, all_positions=True, loss=loss, **kw)
    b = toy_batch(B=4, n_valid=8)
    torch.manual_seed(1)
    l1 = model._all_positions_step(b)
    l1.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("tower", "query_encoder", "bias.time"))]
    assert all(g is not None for g in grads)
    c = dict(b)
    c["hist_item_id"] = b["hist_item_id"].clone()
    c["hist_item_id"][:, 3] = b["hist_item_id"][:, 3] % N_ITEMS + 1
    torch.manual_seed(1)
    with torch.no_grad():
        l2 = model._all_positions_step(c)
    assert not torch.isclose(l1.detach(), l2)


@pytest.mark.parametrize("cls,kw", MODELS, ids=IDS)
def test_query_changes_the_ranking_of_a_request(cls, kw):
    """A pair target vector is linear in its query, so without the query head a request's query
    would shift all its candidates equally; with it, changing the query reorders the candidates."""
    torch.manual_seed(0)
    model = cls(data_meta=QMETA, embed_dim=16, position_len=16, dropout=0.0, **kw).eval()
    model.query_encoder.query_text.normal_()
    b = toy_batch(B=2)
    ids = torch.arange(1, N_ITEMS + 1).expand(2, -1)
    b["query_id"] = torch.tensor([1, 1])
    s1 = model.score_candidates(b, ids)
    b["query_id"] = torch.tensor([5, 5])
    s2 = model.score_candidates(b, ids)
    assert not torch.equal(s1.argsort(-1), s2.argsort(-1))
    assert torch.allclose(model.all_item_logits(b)[:, 1:], s2, atol=1e-4)
