"""LifelongSequenceDataModule: no leakage, masks, protocols, negatives, workers."""
import numpy as np
import torch

from seminar_zoo.data.datamodule import LifelongSequenceDataModule



def test_history_strictly_before_sample(tiny_dm):
    st = tiny_dm.store
    for name, ds in tiny_dm.splits.items():
        b = ds.__getitems__(list(range(0, len(ds), max(1, len(ds) // 300))))
        s = np.arange(0, len(ds), max(1, len(ds) // 300)) // ds.per_sample
        # the target behaviour's own ts: every gathered behaviour must be earlier
        user_start = st.offsets[ds.user[s]]
        assert (ds.end[s] > user_start).all()  # never an empty history
        last_hist_ts = st.ts[ds.end[s] - 1]
        tgt_global = np.searchsorted(st.key, ds.user[s] * (1 << 34) + last_hist_ts, side="right")
        tgt_ts = st.ts[np.minimum(tgt_global, len(st.ts) - 1)]
        assert (last_hist_ts < tgt_ts).all()
        # the most recent behaviour sits at index -1 and padding is on the left
        m = b["hist_mask"].numpy()
        assert m[:, -1].all()
        assert (np.diff(m.astype(int), axis=1) >= 0).all()
        assert (b["hist_item_id"].numpy()[~m] == 0).all()
        assert (b["hist_item_id"].numpy()[m] > 0).all()


def test_ranking_history_matches_sequence(tiny_dm):
    st, ds = tiny_dm.store, tiny_dm.splits["test"]
    b = ds.__getitems__([0])
    u = int(ds.user[0])
    seq = st.item[st.offsets[u]:st.offsets[u + 1]]
    assert b["item_id"].item() == seq[-1]  # test target = last behaviour
    L = tiny_dm.hparams.max_len
    assert b["hist_item_id"][0].tolist() == seq[-1 - L:-1].tolist()


def test_batches_carry_history_timestamps(tiny_dm):
    """hist_ts: each history behaviour's own ts (aligned with hist_item_id, chronological, before the target),
    0 on padding; every split and protocol batch has it (HSTU's relative time bias reads it)."""
    st = tiny_dm.store
    for name, ds in tiny_dm.splits.items():
        rows = list(range(0, len(ds), max(1, len(ds) // 7)))[:7]
        b = ds.__getitems__(rows)
        assert b["hist_ts"].shape == b["hist_item_id"].shape and b["hist_ts"].dtype == torch.int64
        assert (b["hist_ts"][~b["hist_mask"]] == 0).all()
        for r in range(len(rows)):
            s = rows[r] // ds.per_sample
            u, end = int(ds.user[s]), int(ds.end[s])
            n = int(b["hist_mask"][r].sum())
            if n == 0:
                continue
            assert b["hist_ts"][r, -n:].tolist() == st.ts[end - n:end].tolist()
            assert b["hist_item_id"][r, -n:].tolist() == st.item[end - n:end].tolist()
            t = b["hist_ts"][r, -n:]
            assert (t[1:] >= t[:-1]).all() and st.offsets[u] <= end - n


def test_eval_candidates_are_unseen_distinct_and_seeded(tiny_data):
    dm1 = LifelongSequenceDataModule(str(tiny_data), max_len=20, seed=3)
    dm2 = LifelongSequenceDataModule(str(tiny_data), max_len=20, seed=3)
    dm1.setup(), dm2.setup()
    c = dm1.splits["test"].candidates
    assert c.shape[1] == 100
    assert np.array_equal(c, dm2.splits["test"].candidates)
    st = dm1.store
    for i in range(0, len(c), 17):
        u = dm1.splits["test"].user[i]
        seen = set(st.item[st.offsets[u]:st.offsets[u + 1]].tolist())
        assert len(set(c[i, 1:].tolist())) == 99
        assert not (set(c[i, 1:].tolist()) & seen)
    b = dm1.splits["test"].__getitems__(list(range(200)))
    assert b["label"].sum().item() == 2 and b["label"][0] == 1 and b["label"][100] == 1
    assert b["request_id"][:100].unique().numel() == 1


def test_train_negatives_depend_on_epoch_and_are_reproducible(tiny_dm):
    ds = tiny_dm.splits["train"]
    n = len(ds)
    a = ds.__getitems__([1, 3, 5])["item_id"]
    b = ds.__getitems__([1, 3, 5])["item_id"]
    c = ds.__getitems__([n + 1, n + 3, n + 5])["item_id"]  # same rows, next epoch
    assert torch.equal(a, b) and not torch.equal(a, c)
    labels = ds.__getitems__(list(range(0, 10)))["label"]
    assert labels.tolist() == [1, 0] * 5


def test_train_window_and_cold_items(tiny_dm, tiny_data):
    import json

    meta = json.loads((tiny_data / "meta.json").read_text())
    ds = tiny_dm.splits["train"]
    per_user = np.bincount(ds.user)
    assert per_user.max() <= tiny_dm.hparams.train_window
    cold = set(meta["cold_items"])
    assert not (set(ds.item.tolist()) & cold)  # cold items are never training targets
    assert set(tiny_dm.splits["test"].item.tolist()) & cold  # ...but do appear as test targets


def test_all_positions_and_stride(tiny_data):
    """train_window None: every position from the user's second behaviour up to the one before
    the validation target; train_stride = max_len: histories ending at those targets tile the
    log, so each position is a target (sample target or next item in a history) exactly once."""
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    full = LifelongSequenceDataModule(str(tiny_data), max_len=7, train_negatives=0)
    full.setup()
    st, tr = full.store, full.splits["train"]
    cnt = np.diff(st.offsets)[1:]
    assert len(tr.user) == int(np.maximum(cnt - 3, 0).sum())
    tiled = LifelongSequenceDataModule(str(tiny_data), max_len=7, train_negatives=0, train_stride="max_len")
    tiled.setup()
    ts = tiled.splits["train"]
    covered = np.zeros(len(st.item), int)
    for u, e in zip(ts.user, ts.end):  # history [max(start, e-7), e) and the target at e
        lo = max(st.offsets[u], e - 7)
        covered[lo + 1:e + 1] += 1  # positions predicted: all but the window's first behaviour
    want = np.zeros(len(st.item), int)
    for u in range(1, len(cnt) + 1):
        want[st.offsets[u] + 1:st.offsets[u] + cnt[u - 1] - 2] = 1
    assert np.array_equal(covered, want)  # every training position exactly once, nothing else


def test_grouped_training_batches(tiny_data):
    """Each training batch holds whole groups: a target followed by its sampled negatives."""
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    dm = LifelongSequenceDataModule(str(tiny_data), max_len=10, batch_size=16, train_negatives=3)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].shape == (64,)
    assert batch["label"].view(16, 4).tolist() == [[1.0, 0.0, 0.0, 0.0]] * 16
    assert (batch["request_id"].view(16, 4) == batch["request_id"].view(16, 4)[:, :1]).all()


def test_ctr_protocol(tiny_data):
    dm = LifelongSequenceDataModule(str(tiny_data), protocol="ctr", max_len=30)
    dm.setup()
    te = dm.splits["test"]
    assert set(np.unique(te.label).tolist()) == {0.0, 1.0}
    # one request per user in test; every row of a request shares the history end
    for r in np.unique(te.group)[:20]:
        m = te.group == r
        assert len(np.unique(te.user[m])) == 1 and len(np.unique(te.end[m])) == 1
    # test requests are later than val requests for each user
    va = dm.splits["val"]
    for u in np.unique(te.user)[:20]:
        assert te.end[te.user == u].min() > va.end[va.user == u].max()


def test_workers_give_same_batches(tiny_data):
    batches = []
    for nw in (0, 2):
        dm = LifelongSequenceDataModule(str(tiny_data), max_len=20, batch_size=32, num_workers=nw)
        dm.setup()
        it = iter(dm.train_dataloader())
        batches.append([next(it) for _ in range(3)])
    for x, y in zip(*batches):
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_no_per_sample_history_copies(tiny_dm):
    ds = tiny_dm.splits["train"]
    for v in vars(ds).values():
        if isinstance(v, np.ndarray):
            assert v.ndim == 1 or v.shape[1] <= 100, "a per-sample 2-D history array was materialised"


def test_stats_report(tiny_dm):
    s = tiny_dm.stats
    assert s["train"]["samples"] > 0 and 0 < s["train"]["avg_hist_len"] <= s["train"]["max_hist_len"] <= 40


def test_public_api_and_summary(tiny_dm, tiny_data):
    import pyarrow.parquet as pq

    assert tiny_dm.protocol == "ranking"
    sizes = tiny_dm.split_sizes()
    assert sizes == {k: v.n_samples for k, v in tiny_dm.splits.items()}
    ev = pq.read_table(tiny_data / "events.parquet", columns=["user_id", "item_id"]).to_pydict()
    ptr, items = tiny_dm.interacted_items([3, 1])
    for j, u in enumerate((3, 1)):  # every item of the user's log, any label, sorted, distinct
        want = sorted({i for uu, i in zip(ev["user_id"], ev["item_id"]) if uu == u})
        assert items[ptr[j]:ptr[j + 1]].tolist() == want
    counts = tiny_dm.train_item_counts()
    assert counts.shape == (tiny_dm.data_meta["n_items"] + 1,) and counts[0] == 0
    assert counts.sum() == sum(max(0, n - 2) for n in np.diff(tiny_dm.store.offsets)[1:])
    for name in ("val", "test"):
        s = tiny_dm.summary[name]
        assert s["dropped_users"] == 0 and 0 <= s["repeat_share"] <= 1


def test_summary_counts_users_dropped_for_too_few_behaviours(tmp_path):
    from seminar_zoo.data.synthetic import generate

    src = generate(tmp_path / "d", users=30, items=100, seq_len=12, seed=1)
    import pyarrow.parquet as pq

    ev = pq.read_table(src / "events.parquet")
    u = np.asarray(ev["user_id"])
    lab = np.asarray(ev["label"])
    # keep only 2 positive behaviours of users 1..4: they have a test target but no validation target
    pos_rank = np.zeros(len(u), int)
    for x in range(1, 5):
        idx = np.flatnonzero((u == x) & (lab == 1))
        pos_rank[idx] = np.arange(len(idx)) + 1
    keep = ~np.isin(u, [1, 2, 3, 4]) | ((lab == 1) & (pos_rank <= 2))
    pq.write_table(ev.filter(keep), src / "events.parquet")
    import json

    meta = json.loads((src / "meta.json").read_text())
    meta["n_events"] = int(keep.sum())
    (src / "meta.json").write_text(json.dumps(meta))
    dm = LifelongSequenceDataModule(str(src), max_len=10, n_eval_negatives=20)
    dm.setup()
    assert dm.summary["val"]["dropped_users"] == 4 and dm.summary["test"]["dropped_users"] == 0
    assert dm.split_sizes()["val"] == 26 and dm.split_sizes()["test"] == 30


def test_public_api_matches_the_splits(tiny_dm):
    """The API models, serving and benches use instead of reaching into splits / store (issue 14)."""
    import torch

    te, tr = tiny_dm.splits["test"], tiny_dm.splits["train"]
    b = tiny_dm.batch("test", [0, 5, 7])
    ref = te.__getitems__([0, 5, 7])
    assert all(torch.equal(b[k], ref[k]) for k in ref)
    per = tiny_dm.rows_per_sample("test")
    assert per == te.per_sample == 1 + tiny_dm.hparams.n_eval_negatives
    lists = tiny_dm.eval_lists("test", 3)
    assert len(lists["label"]) == 3 * per and int(lists["label"].sum()) == 3
    assert np.array_equal(tiny_dm.eval_candidates("test"), te.candidates)
    assert np.array_equal(tiny_dm.eval_users("test"), te.user)
    h, q, m = tiny_dm.eval_histories("test")
    L = b["hist_item_id"].shape[1]  # a batch is cut to its longest history; eval_histories keeps max_len
    rows = [0, 0, 0]  # rows 0, 5, 7 are candidates of sample 0
    assert np.array_equal(h[rows, -L:], b["hist_item_id"].numpy()) and not h[rows, :-L].any()
    assert np.array_equal(m[rows, -L:], b["hist_mask"].numpy())
    s3 = tiny_dm.batch("test", [0, per, 2 * per])  # candidate 0 of samples 0, 1, 2
    L3 = s3["hist_item_id"].shape[1]
    assert np.array_equal(h[:3, -L3:], s3["hist_item_id"].numpy()) and not h[:3, :-L3].any()
    assert np.array_equal(tiny_dm.train_target_items(), tr.item[tr.label > 0.5])
    a = [x["item_id"] for _, x in zip(range(2), tiny_dm.sample_batches("train", seed=3, batch_size=16))]
    c = [x["item_id"] for _, x in zip(range(2), tiny_dm.sample_batches("train", seed=3, batch_size=16))]
    assert all(torch.equal(x, y) for x, y in zip(a, c)) and len(a[0]) == 16
    user, item, offsets = tiny_dm.positive_log()
    assert len(user) == len(item) == offsets[-1]
