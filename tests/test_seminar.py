"""SEMINAR finetuning: GSU / ESU shapes and masks, PSU restore, G(j) gradients, lambda fusion, fitting."""
import copy

import pytest
import pytorch_lightning as pl
import torch

from seminar_zoo.models.seminar import PSU, SEMINAR
from seminar_zoo.models.seminar.extras import cold_items
from seminar_zoo.modules.attention import TargetAttention
from seminar_zoo.modules.ops import masked_topk


def _model(dm, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("dropout", 0.0)
    m = SEMINAR(data_meta=kw.pop("data_meta", dm.data_meta), embed_dim=16, num_heads=2, topk=kw.pop("topk", 8), **kw)
    m.load_tables(dm.feature_tables())
    return m


def _batch(dm, n=32):
    return dm.batch("train", list(range(n)))


def _exact_scores(m, b):
    """[B, L] exact GSU scores from the fused pair vectors (padding -inf)."""
    h, q, mask = m.history(b)
    return m.gsu.scores(m.target_vector(b), m.gsu.keys(m.pair_vector(h, q)), mask)


def _trainer(tmp_path, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def _short_history(b, keep):
    """Left-pad all but the last ``keep`` behaviours of every row (as a short user would have)."""
    b = dict(b)
    L = b["hist_item_id"].shape[1]
    pad = torch.arange(L) < L - keep
    b["hist_item_id"] = b["hist_item_id"].masked_fill(pad, 0)
    b["hist_query_id"] = b["hist_query_id"].masked_fill(pad, 0)
    b["hist_mask"] = b["hist_mask"] & ~pad
    return b


# --------------------------------------------------------------------------- GSU / ESU
def test_gsu_shapes_scores_and_vectors_agree(tiny_dm):
    m = _model(tiny_dm)
    b = _short_history(_batch(tiny_dm), keep=30)
    tm = m.modal(b["item_id"], b["query_id"])
    hm = m.modal(b["hist_item_id"], b["hist_query_id"])
    B, L = b["hist_item_id"].shape
    M = len(m.pair.active)
    assert tm.shape == (B, M, 16) and hm.shape == (B, L, M, 16)
    s = m.gsu.scores(m.gsu.pair(tm), m.gsu.keys(m.gsu.pair(hm)), b["hist_mask"])
    assert s.shape == (B, L)
    assert bool(torch.isinf(s[~b["hist_mask"]]).all()) and bool(torch.isfinite(s[b["hist_mask"]]).all())
    t, k = m.gsu.vectors(tm, hm)
    assert t.shape == (B, M, 16) and k.shape == (B, L, M, 16)
    via = torch.einsum("bid,bljd->bl", t, k)
    torch.testing.assert_close(via[b["hist_mask"]], s[b["hist_mask"]], rtol=1e-4, atol=1e-5)
    # the fused per-id path equals the per-modality path
    torch.testing.assert_close(m.pair_vector(b["hist_item_id"], b["hist_query_id"]), m.gsu.pair(hm), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_exact_scores(m, b)[b["hist_mask"]], s[b["hist_mask"]], rtol=1e-5, atol=1e-6)


def test_gsu_select_never_selects_padding(tiny_dm):
    m = _model(tiny_dm)
    b = _short_history(_batch(tiny_dm), keep=5)  # 5 valid behaviours, K = 8
    sel = m.select(b, m.target_vector(b))  # what interest() attends to
    idx, ok = sel.idx, sel.sel
    assert idx.shape == ok.shape == sel.bias.shape == (32, 8)
    assert bool((ok.sum(1) == 5).all())  # all 5 valid kept, the 3 extra slots masked
    assert bool(b["hist_mask"].gather(1, idx)[ok].all())
    assert torch.equal(b["hist_mask"].gather(1, idx), ok)
    assert bool((idx.diff(dim=1) > 0).all())  # chronological
    # with enough valid behaviours every selected slot is valid and they are the K best; the bias is their score
    b2 = _short_history(_batch(tiny_dm), keep=30)
    sel2 = m.select(b2, m.target_vector(b2))
    s2 = _exact_scores(m, b2)
    assert bool(sel2.sel.all())
    kth = s2.gather(1, sel2.idx).min(1).values
    others = s2.scatter(1, sel2.idx, float("-inf")).max(1).values
    assert bool((kth >= others).all())
    torch.testing.assert_close(sel2.bias, s2.gather(1, sel2.idx), rtol=1e-5, atol=1e-6)


def test_masked_topk_k_larger_than_length():
    s = torch.randn(2, 4)
    mask = torch.tensor([[False, True, True, True], [False, False, False, False]])
    idx, sel = masked_topk(s, mask, 10)
    assert idx.shape == (2, 4)
    assert sel[0].sum() == 3 and not bool(sel[1].any())


def test_esu_masks_padding_and_empty_rows():
    torch.manual_seed(0)
    att = TargetAttention(8, 2)
    t, keys = torch.randn(3, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    bias = torch.randn(3, 5)
    out = att(t, keys, mask, bias=bias)
    keys2, bias2 = keys.clone(), bias.clone()
    keys2[~mask] = 100.0  # padding content must not matter
    bias2[~mask] = 50.0
    out2 = att(t, keys2, mask, bias=bias2)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, out2)
    assert not torch.allclose(out[:2], att(t, keys, mask)[:2])  # the bias does act on valid slots
    assert torch.equal(out[2], torch.zeros(8))  # no valid behaviour -> zero, not NaN
    # multi-target form agrees with the single-target one
    multi = att.forward_multi(t.unsqueeze(1), keys, mask.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(multi, att(t, keys, mask), rtol=1e-5, atol=1e-6)


def test_use_gsu_false_reads_only_the_last_k(tiny_dm):
    m = _model(tiny_dm, use_gsu=False).eval()
    b = _batch(tiny_dm)
    b2 = dict(b)
    h = b["hist_item_id"].clone()
    h[:, :-8] = torch.randint(1, tiny_dm.data_meta["n_items"] + 1, h[:, :-8].shape)
    b2["hist_item_id"] = h
    with torch.no_grad():
        torch.testing.assert_close(m(b), m(b2))
    m2 = _model(tiny_dm, use_gsu=True).eval()
    with torch.no_grad():
        assert not torch.allclose(m2(b), m2(b2))


@pytest.mark.parametrize("use_gsu", [True, False])
def test_time_embedding_is_an_opt_in_that_reaches_the_esu(tiny_dm, use_gsu):
    """Off by default (the paper's ESU has no time input): the default model neither builds nor reads it, so
    its parameters and logits are those of a model built without the option; on, the behaviours' gaps to the
    latest behaviour enter the ESU (both through the GSU's top-K and the last-K ablation) and get gradient."""
    b = _batch(tiny_dm)
    shifted = {**b, "hist_ts": b["hist_ts"] * 1000}
    off = _model(tiny_dm, use_gsu=use_gsu).eval()
    assert off.time_emb is None
    with torch.no_grad():
        torch.testing.assert_close(off(b), off(shifted))
        torch.testing.assert_close(off(b), _model(tiny_dm, use_gsu=use_gsu, time_embedding=False).eval()(b))
    on = _model(tiny_dm, use_gsu=use_gsu, time_embedding=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(on(b), off(b))  # zero-initialised: starts as the time-blind ESU
        on.time_emb.weight.normal_()
        assert not torch.allclose(on(b), on(shifted))
    on.train()
    on(b).sum().backward()
    assert on.time_emb.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- restore / gradients / lambda
@pytest.fixture(scope="module")
def psu_ckpt(tiny_dm, tmp_path_factory):
    torch.manual_seed(1)
    psu = PSU(data_meta=tiny_dm.data_meta, embed_dim=16, num_heads=2, dropout=0.0)
    tmp = tmp_path_factory.mktemp("psu")
    tr = _trainer(tmp, max_steps=2, limit_val_batches=0)
    tr.fit(psu, tiny_dm)
    path = tmp / "psu.ckpt"
    tr.save_checkpoint(str(path))
    return path, psu


def test_restore_from_psu_checkpoint_gives_identical_embeddings(tiny_dm, psu_ckpt):
    path, psu = psu_ckpt
    m = _model(tiny_dm, psu_ckpt=str(path))
    b = _batch(tiny_dm)
    ids, qids = b["hist_item_id"], b["hist_query_id"]
    with torch.no_grad():
        torch.testing.assert_close(m.item_encoder(ids), psu.item_encoder(ids), rtol=0, atol=0)
        torch.testing.assert_close(m.query_encoder(qids), psu.query_encoder(qids), rtol=0, atol=0)
        # G(j) start at the identity: the GSU's pair vectors are the PSU's
        torch.testing.assert_close(m.pair_vector(ids, qids),
                                   psu.pair.fused(psu.item_encoder, psu.query_encoder, ids, qids), rtol=0, atol=1e-6)
    assert torch.equal(m.pair.gamma, psu.pair.gamma)
    for name in ("q", "k", "v", "out"):
        assert torch.equal(getattr(m.gsu.attn, name).weight, getattr(psu.attn, name).weight)
        assert torch.equal(getattr(m.esu, name).weight, getattr(psu.attn, name).weight)
    # a fresh model is different; freeze_psu freezes what was restored, not G(j)
    assert not torch.equal(_model(tiny_dm).item_encoder.id_emb.weight, psu.item_encoder.id_emb.weight)
    f = _model(tiny_dm, psu_ckpt=str(path), freeze_psu=True)
    assert not f.item_encoder.id_emb.weight.requires_grad and not f.pair.gamma.requires_grad
    assert f.gsu.proj.weight.requires_grad and f.esu.q.weight.requires_grad


def test_restore_rejects_a_mismatched_checkpoint(tiny_dm, psu_ckpt, tmp_path):
    path, _ = psu_ckpt
    with pytest.raises(ValueError, match="embed_dim"):
        SEMINAR(data_meta=tiny_dm.data_meta, embed_dim=32, num_heads=2, psu_ckpt=str(path))
    with pytest.raises(FileNotFoundError, match="psu_ckpt"):
        SEMINAR(data_meta=tiny_dm.data_meta, embed_dim=16, num_heads=2, psu_ckpt=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="unknown pretrain settings"):
        SEMINAR(data_meta=tiny_dm.data_meta, embed_dim=16, num_heads=2, pretrain={"epochs": 1, "w_algn": 1.0})


def test_gradients_reach_every_G_projection_and_the_gsu(tiny_dm):
    m = _model(tiny_dm)
    b = _batch(tiny_dm)
    m(b).sum().backward()
    g = m.gsu.proj.weight.grad
    names = m.pair.active
    assert g is not None and g.shape[0] == len(m.pair.names)
    for j, name in enumerate(names):
        assert float(g[j].abs().sum()) > 0, f"no gradient reaches G({name})"
    assert float(m.pair.gamma.grad[: len(names)].abs().sum()) > 0
    # the GSU's W_q / W_k train through the ESU bias (top-K itself is not differentiable)
    assert float(m.gsu.attn.q.weight.grad.abs().sum()) > 0 and float(m.gsu.attn.k.weight.grad.abs().sum()) > 0


def test_lambda_zero_ignores_queries(tiny_dm):
    b = _batch(tiny_dm)
    b2 = dict(b)
    nq = tiny_dm.data_meta["n_queries"]
    b2["query_id"] = torch.randint(0, nq + 1, b["query_id"].shape)
    b2["hist_query_id"] = torch.randint(0, nq + 1, b["hist_query_id"].shape) * b["hist_mask"]
    m0 = _model(tiny_dm, lambda_q=0.0).eval()
    assert "query" not in m0.pair.active
    with torch.no_grad():
        torch.testing.assert_close(m0(b), m0(b2), rtol=0, atol=0)
    m5 = _model(tiny_dm, lambda_q=0.5).eval()
    with torch.no_grad():
        assert not torch.allclose(m5(b), m5(b2))


def test_lambda_has_no_effect_without_queries(tiny_dm):
    meta = copy.deepcopy(tiny_dm.data_meta)
    meta["n_queries"] = 0
    meta["modalities"] = [x for x in meta["modalities"] if x != "query"]
    b = _batch(tiny_dm)
    b = {**b, "query_id": torch.zeros_like(b["query_id"]), "hist_query_id": torch.zeros_like(b["hist_query_id"])}
    outs = []
    for lam in (0.1, 0.9):
        m = _model(tiny_dm, data_meta=meta, lambda_q=lam).eval()
        assert m.pair.active == m.item_encoder.modalities
        with torch.no_grad():
            outs.append(m(b))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_pq_retrieval_finds_the_exact_top_k(tiny_dm):
    """PQ against exact, for real: fitted codebooks, the selection interest() runs with PQ switched on, and
    the recall of the exact top-K within the PQ top-K well above chance."""
    m = _model(tiny_dm, retrieval="pq", pq={"n_sub": 2, "n_centroids": 16, "fit_rows": 2000}).eval()
    with pytest.raises(RuntimeError, match="no codebooks"):
        m.use_pq(True)
    m.fit_pq(tiny_dm)
    b = _short_history(_batch(tiny_dm), keep=30)  # 30 valid behaviours, K = 8
    mask = b["hist_mask"]
    with torch.no_grad():
        t = m.target_vector(b)
        exact = m.select(b, t)
        m.use_pq(True)
        assert m.pq_active
        approx = m.select(b, t)
        probed = m.gsu.select(t, m.gsu.keys(m.pair_vector(*m.history(b)[:2])), mask, 8, pq=m.pq_index,
                              pq_vectors=lambda: m.gsu.vectors(m.modal(b["item_id"], b["query_id"]),
                                                               m.modal(b["hist_item_id"], b["hist_query_id"])),
                              probe=True)
        m.use_pq(False)
        assert torch.equal(m.select(b, t).idx, exact.idx)
    # the PQ path really ran (another selection than exact), on valid behaviours only
    assert not torch.equal(approx.idx, exact.idx)
    assert bool(approx.sel.all()) and bool(mask.gather(1, approx.idx).all())
    assert torch.equal(probed.idx, approx.idx) and torch.equal(probed.exact[0], exact.idx)
    # ... and approximates it: most of the exact top-K is found (chance: 8 / 30 = 0.27)
    hit = torch.zeros_like(mask).scatter(1, approx.idx, approx.sel)
    recall = float((hit.gather(1, exact.idx) & exact.sel).sum()) / float(exact.sel.sum())
    assert 0.6 < recall < 1.0, recall
    # the ESU bias is the exact score of the PQ-selected behaviours
    torch.testing.assert_close(approx.bias, _exact_scores(m, b).gather(1, approx.idx), rtol=1e-5, atol=1e-6)
    tr = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_test_batches=2)
    tr.test(m, tiny_dm, verbose=False)
    r = m.extra_test_metrics["test/gsu/recall@8"]
    assert 0.5 < r < 1.0 and m.extra_test_metrics["gsu_retrieval"] == "pq" and not m.pq_active


# --------------------------------------------------------------------------- fitting
def test_tiny_seminar_fits_and_tests(tiny_dm, tmp_path):
    m = _model(tiny_dm, dropout=0.1)
    before = m.gsu.proj.weight.detach().clone()
    tr = _trainer(tmp_path, max_steps=3, limit_val_batches=0)
    tr.fit(m, tiny_dm)
    assert torch.isfinite(tr.logged_metrics["train/loss"])
    assert not torch.equal(before, m.gsu.proj.weight)  # G(j) trained
    _trainer(tmp_path, limit_test_batches=4).test(m, tiny_dm, verbose=False)  # 4 x 500 rows = 20 lists
    x = m.extra_test_metrics
    for k in ("test/auc_cold_targets", "test/auc_warm_targets", "test/n_cold_targets"):
        assert k in x
    shares = [x[f"test/modality_weight/{n}"] for n in m.pair.active]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4) and min(shares) >= 0
    assert x["test/n_cold_targets"] + x["test/n_warm_targets"] == 20


def test_cold_items_are_never_training_targets(tiny_dm):
    cold = cold_items(tiny_dm)
    assert not bool(cold[torch.as_tensor(tiny_dm.train_target_items())].any())
    meta_cold = torch.tensor(__import__("json").loads((tiny_dm.path / "meta.json").read_text())["cold_items"])
    assert bool(cold[meta_cold].all())  # the generator's cold items are among them


# --------------------------------------------------------------------------- retrieval: pq from a checkpoint
def test_pq_test_from_a_saved_checkpoint(tiny_data, tiny_dm, tmp_path, recwarn):
    """`seminar-zoo test --ckpt_path C --model.init_args.retrieval pq` on an exact model's checkpoint: the
    command-line retrieval wins over the checkpoint's, codebooks are fitted at test start without a warning,
    the fast path (faiss fast-scan) runs and metrics.json gets recall, timings and a run name."""
    import json
    import warnings

    from seminar_zoo.cli import main

    base = ["--data.path", str(tiny_data), "--data.max_len", "40", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false"]
    main(["fit", "--model", "SEMINAR", "--model.init_args.embed_dim", "16", "--model.init_args.num_heads", "2",
          "--model.init_args.topk", "8", "--model.init_args.pretrain={epochs: 0}", "--trainer.max_steps", "3",
          "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path / "fit"), *base])
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    common = [*base, "--ckpt_path", str(ckpt), "--trainer.limit_test_batches", "3"]
    main(["test", "--model", "SEMINAR", "--trainer.default_root_dir", str(tmp_path / "pq"), *common,
          "--model.init_args.retrieval", "pq", "--model.init_args.pq={n_sub: 4, n_centroids: 16, fit_rows: 3000}"])
    assert not [w for w in recwarn.list if "pq_index" in str(w.message) or "codebook" in str(w.message)]
    rec = json.loads((tmp_path / "pq" / "metrics.json").read_text())
    assert rec["gsu_retrieval"] == "pq" and rec["name"] == "SEMINAR-pq" and rec["gsu_bytes_per_behaviour"] == 20
    if __import__("seminar_zoo.modules.pq_backends", fromlist=["x"]).faiss_available():
        assert rec["gsu_backend"] == "faiss4"
    assert 0.5 < rec["test/gsu/recall@8"] < 1.0  # approximate, not exact (measured 0.76)
    assert rec["test/gsu/ms_per_request"] > 0 and rec["test/gsu/exact_ms_per_request"] > 0
    main(["test", "--model", "SEMINAR", "--trainer.default_root_dir", str(tmp_path / "ex"), *common])
    ex = json.loads((tmp_path / "ex" / "metrics.json").read_text())
    assert ex["gsu_retrieval"] == "exact" and ex["test/gsu/recall@8"] == 1.0 and ex["name"] == "SEMINAR"
    assert "test/gsu/exact_ms_per_request" not in ex
    assert abs(ex["test/auc"] - rec["test/auc"]) < 0.05  # same weights, other top-K

    # codebooks saved in a checkpoint are loaded, not refitted; another size or an exact model drops them
    pqm = SEMINAR.load_from_checkpoint(str(ckpt), retrieval="pq", pq={"n_sub": 4, "n_centroids": 16})
    assert not bool(pqm.pq_index.is_fitted)
    pqm.load_tables(tiny_dm.feature_tables())
    pqm.fit_pq(tiny_dm)
    state = torch.load(ckpt, weights_only=False)
    state["state_dict"].update({f"pq_index.{k}": v for k, v in pqm.pq_index.state_dict().items()})
    torch.save(state, tmp_path / "pq.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = SEMINAR.load_from_checkpoint(str(tmp_path / "pq.ckpt"), retrieval="pq", pq={"n_sub": 4, "n_centroids": 16})
        other = SEMINAR.load_from_checkpoint(str(tmp_path / "pq.ckpt"), retrieval="pq", pq={"n_sub": 2, "n_centroids": 16})
        exact = SEMINAR.load_from_checkpoint(str(tmp_path / "pq.ckpt"))
    assert bool(again.pq_index.is_fitted) and torch.equal(again.pq_index.codebooks, pqm.pq_index.codebooks)
    assert not bool(other.pq_index.is_fitted) and exact.pq_index is None
