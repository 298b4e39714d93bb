"""KuaiSAR preparer on small fixture files written in the documented release format
(Ethan00Si/KuaiSAR pages/decriptions.md: rec_inter.csv, src_inter.csv, item_features.csv)."""
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from seminar_zoo.data.datamodule import LifelongSequenceDataModule
from seminar_zoo.data.prepare import kuaisar
from seminar_zoo.data.schema import DatasetError, validate_dataset

REC_HEADER = ["user_id", "item_id", "playing_time", "duration_ms", "time", "timestamp", "click", "forward",
              "like", "follow", "search", "search_item_related"]
SRC_HEADER = ["user_id", "search_session_id", "search_session_time", "search_session_timestamp", "keyword",
              "search_source", "item_id", "click_cnt", "item_type"]
ITEM_HEADER = ["item_id", "caption", "author_id", "item_type", "upload_time", "upload_type",
               "first_level_category_id", "first_level_category_name", "first_level_category_name_en",
               "second_level_category_id", "second_level_category_name", "second_level_category_name_en",
               "third_level_category_id", "third_level_category_name", "third_level_category_name_en",
               "fourth_level_category_id", "fourth_level_category_name", "fourth_level_category_name_en"]
T0 = 1684742000000  # 2023-05-22, ms


def _write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_raw(d, n_users=6, bad_rec=None):
    """Users 1..n: 8 recommendation deliveries of 2 items (one clicked) + 3 search sessions each."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rec, src = [], []
    items = set()
    for u in range(1, n_users + 1):
        for k in range(8):
            ts = T0 + u * 10_000_000 + k * 60_000
            for j, click in ((0, 1), (1, 0)):
                it = int(rng.integers(1, 40))
                items.add(it)
                rec.append([u, it, 60792.0, 45400.0, "2023-05-22 15:53:20", f"{float(ts):.1f}", click, 0, 0, 0, 0, 0])
        for s in range(3):
            sid = u * 100 + s
            ts = T0 + u * 10_000_000 + (2 * s + 1) * 30_000  # between deliveries
            kw = [20 + s, 34, 3 + u % 2]
            for j, (click, typ) in enumerate(((1, "VIDEO"), (0, "VIDEO"), (0, "LIVE"))):
                it = 103656000000 + u * 10 + s if typ == "VIDEO" and click else int(rng.integers(1, 40))
                items.add(it)
                src.append([u, sid, "2023-05-22 21:58:52", ts, json.dumps(kw), "USER_INPUT", it, click, typ])
    # user 99: only unclicked recommendations -> dropped by the k-core
    rec.append([99, 1, 1.0, 2.0, "2023-05-22 15:53:20", f"{float(T0):.1f}", 0, 0, 0, 0, 0, 0])
    if bad_rec is not None:
        rec[bad_rec[0]][REC_HEADER.index(bad_rec[1])] = bad_rec[2]
    _write(d / "rec_inter.csv", REC_HEADER, rec)
    _write(d / "src_inter.csv", SRC_HEADER, src)
    rows = []
    for it in sorted(items)[:-2]:  # the last two items have no feature row
        if it >= 10**11:  # clicked search results: caption shares a token with the session's keyword
            cap = [20 + it % 10, 99]
        else:
            cap = [] if it % 5 == 0 else [200, int(it % 7) + 100]
        rows.append([it, json.dumps(cap), it % 3, "NORMAL", "2023-04-22", "LongImport",
                     it % 4, "搞笑", "Funny", it % 6, "搞笑段子", "Funny joke", 0, "空", "empty", 0, "空", "empty"])
    rows.append(rows[0])  # duplicate row: the first wins
    _write(d / "item_features.csv", ITEM_HEADER, rows)
    (d / "user_features.csv").write_text("user_id,search_active_level,rec_active_level,onehot_feat1,onehot_feat2\n")
    return d


def test_prepare_kuaisar_fixture(tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = kuaisar.main(["--raw", str(raw), "--out", str(tmp_path / "ks"), "--quiet", "--min-attr-count", "1"])
    t = validate_dataset(out)
    meta = t.meta
    assert meta["protocols"] == ["ranking", "ctr"]
    assert meta["modalities"] == ["id", "attr", "text", "query"]
    assert "image" in meta["absent_modalities"]
    assert meta["n_users"] == 6 and meta["stats"]["users_dropped_min_interactions"] == 1
    ev = t.events
    # LIVE search results are skipped: 6 users x 3 sessions x 2 VIDEO rows + 6 x 16 rec rows
    assert len(ev["user_id"]) == 6 * 3 * 2 + 6 * 16
    assert meta["stats"]["search_rows_skipped_item_type"] == 6 * 3
    # search rows have queries, recommendation rows none; sessions with the same keyword share a query
    is_search = ev["query_id"] > 0
    assert is_search.sum() == 6 * 3 * 2
    assert meta["n_queries"] == 6  # keywords [20+s, 34, 3 + u%2]: 3 sessions x 2 parities
    # one request per search session and per delivery (2 items each)
    _, counts = np.unique(ev["request_id"], return_counts=True)
    assert (counts == 2).all() and len(counts) == 6 * (3 + 8)
    # sorted by user then ts, requests contiguous and increasing
    assert (np.diff(ev["request_id"]) >= 0).all()
    key = ev["user_id"] * 10**12 + ev["ts"]
    assert (np.diff(key) >= 0).all()
    # ts in seconds; search sessions interleave between deliveries of the same user
    u1 = ev["user_id"] == 1
    assert ev["ts"][u1].min() == (T0 + 1 * 10_000_000) // 1000
    seq = ev["query_id"][u1] > 0
    assert seq.tolist()[:6] == [False, False, True, True, False, False]
    # queries: hashed token bags, identical keywords identical vectors, overlapping keywords positive dot
    q = t.query_text
    assert q.shape == (7, 64) and np.allclose(np.linalg.norm(q[1:], axis=1), 1, atol=1e-5)
    # items: attributes and text
    items = pq.read_table(out / "items.parquet").to_pydict()
    assert set(meta["attr_cols"]) >= {"attr_author", "attr_cat1", "attr_cat2", "attr_item_type", "attr_upload_type"}
    assert "attr_cat3" not in meta["attr_cols"]  # all 0 / 'empty' in the fixture -> dropped
    assert meta["stats"]["items_without_features"] == 2
    nofeat = [i for i, a in enumerate(items["attr_item_type"]) if a == 0]
    assert len(nofeat) == 2
    text = t.item_text[1:]
    assert np.allclose(text[nofeat], 0)  # no features -> zero text, declared in stats
    # the clicked result of user 1's second session shares token 21 with that session's keyword
    raw_ids = items["raw_item_id"]
    j = raw_ids.index(103656000000 + 1 * 10 + 1)
    qid = ev["query_id"][u1 & is_search][2]
    assert t.item_text[j + 1] @ q[qid] > 0.3
    assert items["attr_item_type"][j] > 0 and np.linalg.norm(t.item_text[j + 1]) > 0.99
    # the DataModule serves both protocols
    for protocol in ("ranking", "ctr"):
        dm = LifelongSequenceDataModule(str(out), protocol=protocol, max_len=20, n_eval_negatives=10)
        dm.setup()
        b = next(iter(dm.test_dataloader()))
        assert b["hist_item_id"].shape[1] <= 20 and b["hist_mask"].any(1).all()
        assert dm.splits["test"].n_samples > 0


def test_prepare_kuaisar_bad_input(tmp_path):
    raw = make_raw(tmp_path / "raw", bad_rec=(3, "click", "yes"))
    with pytest.raises(DatasetError, match=r"rec_inter.csv, line 5, field 'click': .*'yes'"):
        kuaisar.main(["--raw", str(raw), "--out", str(tmp_path / "ks"), "--quiet"])
    assert not (tmp_path / "ks").exists()
    raw2 = make_raw(tmp_path / "raw2", bad_rec=(0, "timestamp", ""))
    with pytest.raises(DatasetError, match=r"line 2, field 'timestamp'"):
        kuaisar.main(["--raw", str(raw2), "--out", str(tmp_path / "ks"), "--quiet"])
    (raw2 / "src_inter.csv").unlink()
    with pytest.raises(DatasetError, match="src_inter.csv"):
        kuaisar.main(["--raw", str(raw2), "--out", str(tmp_path / "ks"), "--quiet"])


def test_kuaisar_bad_keyword(tmp_path):
    raw = make_raw(tmp_path / "raw")
    lines = (raw / "src_inter.csv").read_text().splitlines()
    lines[2] = lines[2].replace('"[20, 34, 4]"', '"[20, x]"')
    (raw / "src_inter.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"src_inter.csv, line 3, field 'keyword'"):
        kuaisar.main(["--raw", str(raw), "--out", str(tmp_path / "ks"), "--quiet"])
