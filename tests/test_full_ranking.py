"""Full ranking and the Popularity reference, against numpy computations by hand."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from seminar_zoo.data.datamodule import LifelongSequenceDataModule
from seminar_zoo.metrics import RecMetrics
from seminar_zoo.models.din import DIN
from seminar_zoo.models.popularity import Popularity


def _expected(pos, neg_lists):
    """Tie-aware HR@10, NDCG@10, MRR, AUC of one positive score vs negative scores, by hand."""
    out = {"hr@10": [], "ndcg@10": [], "mrr": [], "auc": []}
    for p, neg in zip(pos, neg_lists):
        a, e = int((neg > p).sum()), int((neg == p).sum())
        ranks = np.arange(a + 1, a + e + 2)  # the positive is equally likely at each tied rank
        out["hr@10"].append((ranks <= 10).mean())
        out["ndcg@10"].append(np.mean((ranks <= 10) / np.log2(1 + ranks)))
        out["mrr"].append(np.mean(1 / ranks))
        out["auc"].append((len(neg) - a - e + 0.5 * e) / len(neg))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _trainer(tmp_path):
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=str(tmp_path))


@pytest.mark.parametrize("protocol", ["ranking", "full"])
def test_popularity_matches_hand_computed(tiny_data, tmp_path, protocol):
    dm = LifelongSequenceDataModule(str(tiny_data), protocol=protocol, max_len=20, eval_batch_size=50)
    dm.setup()
    counts = dm.train_item_counts()
    st = dm.store
    # training counts = every positive behaviour before the user's validation target
    ref = np.zeros_like(counts)
    for u in np.unique(st.user):
        ref += np.bincount(st.item[st.offsets[u]:st.offsets[u + 1] - 2], minlength=len(counts))
    assert np.array_equal(counts, ref)
    model = Popularity(data_meta=dm.data_meta)
    res = _trainer(tmp_path).test(model, dm, verbose=False)[0]
    ds, score = dm.splits["test"], np.log1p(counts.astype(np.float32))
    if protocol == "ranking":
        negs = [score[c[1:]] for c in ds.candidates]
    else:  # every item the user never interacted with (any label, whole log)
        negs = []
        for u in ds.user:
            ptr, seen = dm.interacted_items([u])
            negs.append(score[np.setdiff1d(np.arange(1, len(counts)), seen)])
    exp = _expected(score[ds.item], negs)
    for k, v in exp.items():
        assert res[f"test/{k}"] == pytest.approx(v, abs=1e-5), k
    assert model.n_test_scored == ds.n_samples


def test_full_ranking_default_scorer_equals_explicit_lists(tiny_data):
    torch.manual_seed(0)
    dm = LifelongSequenceDataModule(str(tiny_data), protocol="full", max_len=10, eval_batch_size=16)
    dm.setup()
    model = DIN(data_meta=dm.data_meta, embed_dim=8, tower_dims=[16]).eval()
    model.load_tables(dm.feature_tables())
    model.full_rank_cells = 16 * 10 * 37  # 37 candidates per chunk: many chunks, a ragged last one
    ds = dm.splits["test"]
    batch = ds.__getitems__(list(range(16)))
    chunked = RecMetrics(ks=(1, 10), protocol="full")
    model._full_rank_update(batch, chunked)
    explicit = RecMetrics(ks=(1, 10), protocol="full")
    n = dm.data_meta["n_items"]
    with torch.no_grad():
        all_scores = model.score_candidates(batch, torch.arange(1, n + 1).expand(16, -1))
        pos = model.score_candidates(batch, batch["item_id"][:, None])
    ptr, seen = batch["seen_ptr"], batch["seen_item"]
    for i in range(16):
        free = torch.ones(n, dtype=torch.bool)
        free[seen[ptr[i]:ptr[i + 1]] - 1] = False
        s = torch.cat([pos[i], all_scores[i][free]])
        explicit.update(s, torch.tensor([1] + [0] * int(free.sum())), torch.full_like(s, i).long(),
                        torch.full_like(s, i).long())
    a, b = chunked.compute(), explicit.compute()
    for k in ("hr@1", "hr@10", "ndcg@10", "mrr", "auc"):
        assert a[k].item() == pytest.approx(b[k].item(), abs=1e-4), k
    assert a["n_lists"].item() == 16


def test_repeat_targets_drop(tiny_data):
    keep = LifelongSequenceDataModule(str(tiny_data), max_len=20)
    drop = LifelongSequenceDataModule(str(tiny_data), max_len=20, repeat_targets="drop")
    keep.setup(), drop.setup()
    share = keep.summary["test"]["repeat_share"]
    assert 0 < share < 1
    st, ds = drop.store, drop.splits["test"]
    assert ds.n_samples == round(keep.splits["test"].n_samples * (1 - share))
    for u, it in zip(ds.user, ds.item):
        assert it not in st.item[st.offsets[u]:st.offsets[u + 1] - 1]  # not in the earlier history


@pytest.mark.ddp
def test_full_ranking_two_processes_match_one(tiny_data, tmp_path):
    dm = LifelongSequenceDataModule(str(tiny_data), protocol="full", eval_batch_size=25)
    one = _trainer(tmp_path).test(Popularity(data_meta=dm.data_meta), dm, verbose=False)[0]
    d = tmp_path / "run2"
    cmd = [sys.executable, "-m", "seminar_zoo.cli", "test", "--model", "Popularity", "--data.path", str(tiny_data),
           "--data.protocol", "full", "--data.eval_batch_size", "25", "--trainer.accelerator", "cpu",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(d)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "WANDB_MODE": "disabled"})
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((d / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["n_test"] == 120 and two["protocol"] == "full"
    for k in ("test/hr@10", "test/hr@50", "test/ndcg@10", "test/ndcg@50", "test/mrr", "test/auc"):
        assert two[k] == pytest.approx(one[k], abs=1e-6), k


def test_full_protocol_validates_on_the_sampled_lists_of_ranking(tiny_data):
    """Under ``full`` the validation lists default to ranking's sampled candidates (cheap model
    selection, same lists); ``full_val=True`` ranks them against every unseen item too."""
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    dms = {}
    for proto, fv in (("ranking", False), ("full", False), ("full", True)):
        dm = LifelongSequenceDataModule(str(tiny_data), protocol=proto, max_len=20, full_val=fv)
        dm.setup()
        dms[(proto, fv)] = dm
    rank_val = dms[("ranking", False)].splits["val"]
    assert np.array_equal(dms[("full", False)].splits["val"].candidates, rank_val.candidates)
    assert dms[("full", False)].splits["test"].candidates is None and dms[("full", False)].splits["test"].full
    assert dms[("full", True)].splits["val"].candidates is None and dms[("full", True)].splits["val"].full
