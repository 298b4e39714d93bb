"""Amazon preparer on small fixture files in the 2018 and 2023 JSON-lines formats."""
import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from seminar_zoo.data.prepare import amazon
from seminar_zoo.data.schema import DatasetError, validate_dataset

DAY = 86400
T0 = 1252800000


def _reviews_2018(n_users=5, per_user=6):
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            asin = f"B{(u * 3 + k) % 10:09d}"
            rows.append({"overall": float(1 + (u + k) % 5), "verified": True, "reviewTime": "09 13, 2009",
                         "reviewerID": f"A{u}XYZ", "asin": asin, "reviewerName": "x", "reviewText": "good",
                         "summary": "ok", "unixReviewTime": T0 + (k // 2) * DAY + u})
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({"overall": 5.0, "reviewerID": "LONELY", "asin": "B000000001", "unixReviewTime": T0})
    return rows


def _meta_2018():
    out = []
    for j in range(10):
        if j == 9:
            continue  # item without metadata
        out.append({"asin": f"B{j:09d}", "title": f"Movie {j} <b>deluxe</b>",
                    "description": [f"A story about item{j} and friends &amp; more words here"] if j != 8 else [],
                    "category": ["Movies & TV", "Genre" if j % 2 else "Drama", f"Sub{j % 3}"],
                    "brand": "Studio A" if j < 5 else "Studio B", "price": "$3.17"})
    out.append(dict(out[0], title="duplicate row, ignored"))
    return out


def _write_jsonl(path, rows, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.fixture()
def raw2018(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    _write_jsonl(d / "Movies_and_TV.json.gz", _reviews_2018(), gz=True)
    _write_jsonl(d / "meta_Movies_and_TV.json", _meta_2018())
    return d


def test_amazon_2018_ranking(raw2018, tmp_path):
    out = amazon.main(["--raw", str(raw2018), "--out", str(tmp_path / "az"), "--text-encoder", "hash",
                       "--text-dim", "64", "--quiet", "--no-cache", "--min-attr-count", "1"])
    t = validate_dataset(out)
    m = t.meta
    assert m["protocols"] == ["ranking"] and m["modalities"] == ["id", "attr", "text"]
    assert "query" in m["absent_modalities"] and m["n_queries"] == 0
    assert m["n_users"] == 5 and m["stats"]["users_dropped_min_interactions"] == 1
    assert m["stats"]["duplicate_reviews_dropped"] == 1
    assert m["stats"]["items_without_meta"] == 1 and m["stats"]["items_without_text"] == 1
    ev = t.events
    assert len(ev["user_id"]) == 30 and (ev["label"] == 1).all() and (ev["query_id"] == 0).all()
    # blocks of about 5 reviews: 6 reviews per user -> one block each (the remainder is folded in)
    _, counts = np.unique(ev["request_id"], return_counts=True)
    assert counts.sum() == 30 and (counts >= 5).all()
    items = pq.read_table(out / "items.parquet").to_pydict()
    k9 = items["raw_item_id"].index("B000000009")
    assert np.allclose(t.item_text[k9 + 1], 0)  # no metadata -> zero text
    assert items["attr_brand"][k9] == 0 and items["attr_cat1"][k9] == 0
    k1, k3 = items["raw_item_id"].index("B000000001"), items["raw_item_id"].index("B000000003")
    assert items["attr_cat1"][k1] == items["attr_cat1"][k3] > 0  # both "Genre"
    assert items["attr_brand"][k1] == items["attr_brand"][k3] > 0  # both "Studio A"
    assert m["attr_cardinality"]["attr_cat1"] == 2 and m["attr_cardinality"]["attr_cat2"] == 3


def test_amazon_ctr_and_dummy_queries(raw2018, tmp_path):
    out = amazon.main(["--raw", str(raw2018), "--out", str(tmp_path / "az"), "--text-encoder", "hash",
                       "--text-dim", "64", "--quiet", "--no-cache", "--protocol", "ctr",
                       "--dummy-queries-from-description", "3", "--min-user-interactions", "1"])
    t = validate_dataset(out)
    m = t.meta
    assert m["protocols"] == ["ctr"] and "query" in m["modalities"] and m["queries_are_synthetic"] is True
    assert "DUMMY" in m["query_rule"]
    ev = t.events
    assert set(np.unique(ev["label"])) == {0, 1}
    q = pq.read_table(out / "queries.parquet").to_pydict()
    assert q["text"][0].startswith("A story about")  # first 3 words of the description
    items = pq.read_table(out / "items.parquet").to_pydict()
    k8 = items["raw_item_id"].index("B000000008")  # empty description -> no dummy query
    assert (ev["query_id"][ev["item_id"] == k8 + 1] == 0).all()
    assert (ev["query_id"][ev["item_id"] != k8 + 1] > 0).sum() > 0


def test_amazon_2023_format(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    revs = [{"rating": 5.0, "title": "t", "text": "x", "images": [], "asin": f"X{k}", "parent_asin": f"P{k % 4}",
             "user_id": f"U{u}", "timestamp": (T0 + k * DAY) * 1000 + 123, "helpful_vote": 0,
             "verified_purchase": True} for u in range(3) for k in range(4)]
    meta = [{"main_category": "Movies & TV", "title": f"Film {j}", "description": ["Great film"],
             "categories": [], "store": "Acme", "details": {}, "parent_asin": f"P{j}"} for j in range(4)]
    _write_jsonl(d / "Movies_and_TV.jsonl", revs)
    _write_jsonl(d / "meta_Movies_and_TV.jsonl", meta)
    out = amazon.main(["--raw", str(d), "--out", str(tmp_path / "az"), "--text-encoder", "hash", "--quiet",
                       "--no-cache", "--min-attr-count", "1"])
    t = validate_dataset(out)
    assert t.meta["stats"]["review_format"] == "2023"
    assert t.meta["n_items"] == 4 and t.meta["attr_cols"] == ["attr_brand"]
    assert t.events["ts"].min() == T0  # ms -> s


def test_amazon_bad_input(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    rows = _reviews_2018()
    rows[3] = {k: v for k, v in rows[3].items() if k != "overall"}
    _write_jsonl(d / "reviews.json", rows)
    _write_jsonl(d / "meta_x.json", _meta_2018())
    args = ["--raw", str(d), "--out", str(tmp_path / "az"), "--text-encoder", "hash", "--quiet", "--no-cache"]
    with pytest.raises(DatasetError, match=r"reviews.json, line 4, field 'overall/rating': missing rating"):
        amazon.main(args)
    (d / "reviews.json").write_text('{"reviewerID": "a", "asin": "b", "overall": 5, "unixReviewTime": 1}\n{oops\n')
    with pytest.raises(DatasetError, match=r"reviews.json, line 2: not valid JSON"):
        amazon.main(args)
    (d / "other.json").write_text("{}\n")
    with pytest.raises(DatasetError, match="pass --reviews and --meta"):
        amazon.main(args)
    assert not (tmp_path / "az").exists()
