"""MovieLens preparer: a 2000-line slice of ML-100K (RecBole atomic files) and hand-written fixtures."""
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from seminar_zoo.data.datamodule import LifelongSequenceDataModule
from seminar_zoo.data.prepare import movielens
from seminar_zoo.data.schema import DatasetError, validate_dataset

ML = Path(os.environ.get("SEMINAR_ZOO_ML100K", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ml-100k"))
needs_ml = pytest.mark.skipif(not (ML / "ml-100k.inter").exists(), reason=f"ML-100K not found at {ML}")
HASH = ["--text-encoder", "hash", "--text-dim", "64", "--quiet"]


@pytest.fixture(scope="module")
def ml_slice(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml") / "ml-100k"
    d.mkdir()
    with open(ML / "ml-100k.inter", encoding="utf-8") as src, open(d / "ml-100k.inter", "w", encoding="utf-8") as dst:
        for k, line in enumerate(src):
            if k >= 2000:
                break
            dst.write(line)
    shutil.copy(ML / "ml-100k.item", d / "ml-100k.item")
    return d


def _raw_inter(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")][1:]
    return np.array([[int(r[0]), int(r[1]), float(r[2]), int(float(r[3]))] for r in rows])


@needs_ml
def test_ml100k_slice_ranking(ml_slice, tmp_path):
    out = movielens.main(["--raw", str(ml_slice), "--out", str(tmp_path / "ml"), *HASH])
    t = validate_dataset(out)
    m, ev = t.meta, t.events
    raw = _raw_inter(ml_slice / "ml-100k.inter")
    users, counts = np.unique(raw[:, 0], return_counts=True)
    kept = set(users[counts >= 3].astype(int))
    assert m["n_users"] == len(kept) and m["stats"]["users_dropped_min_interactions"] == (counts < 3).sum()
    assert len(ev["user_id"]) == int(counts[counts >= 3].sum())
    assert (ev["label"] == 1).all() and (ev["query_id"] == 0).all()
    assert m["protocols"] == ["ranking"] and m["modalities"] == ["id", "attr", "text"]
    assert set(m["absent_modalities"]) == {"query", "image"}
    assert not (out / "queries.parquet").exists()
    assert m["text"]["encoder"]["name"] == "hash"
    # sorted by (user, ts); ties are kept as they are
    key = ev["user_id"] * (1 << 34) + ev["ts"]
    assert (np.diff(key) >= 0).all()
    assert m["stats"]["ts_ties_within_user"] == int(((np.diff(ev["user_id"]) == 0) & (np.diff(ev["ts"]) == 0)).sum())
    # items: Toy Story (raw id 1) -> Animation, Children's, Comedy; 1995 -> bucket 8 (1995-99)
    items = pq.read_table(out / "items.parquet").to_pydict()
    vocab = m["attr_vocab"]["genre"]
    if 1 in items["raw_item_id"]:
        k = items["raw_item_id"].index(1)
        got = [vocab[items[f"attr_genre{s}"][k] - 1] for s in (1, 2, 3)]
        assert got == ["Animation", "Children's", "Comedy"] and items["attr_year"][k] == 8
        assert items["title"][k] == "Toy Story"
    assert m["attr_cardinality"]["attr_genre1"] == len(vocab)
    # DataModule: the ranking protocol works, ctr is refused for this folder
    dm = LifelongSequenceDataModule(str(out), max_len=30, n_eval_negatives=20)
    dm.setup()
    assert dm.splits["test"].n_samples == m["n_users"]
    with pytest.raises(DatasetError, match="does not support protocol 'ctr'"):
        LifelongSequenceDataModule(str(out), protocol="ctr")


@needs_ml
def test_ml100k_slice_ctr(ml_slice, tmp_path):
    out = movielens.main(["--raw", str(ml_slice), "--out", str(tmp_path / "ml"), *HASH, "--protocol", "ctr",
                          "--request-size", "4"])
    t = validate_dataset(out)
    m, ev = t.meta, t.events
    assert m["protocols"] == ["ctr"] and "rating >= 4" in m["label_rule"]
    raw = _raw_inter(ml_slice / "ml-100k.inter")
    pos = raw[raw[:, 2] >= 4]
    users, counts = np.unique(pos[:, 0], return_counts=True)
    assert m["n_users"] == int((counts >= 3).sum())  # k-core counts label-1 events
    assert ev["label"].sum() == int(counts[counts >= 3].sum())
    # requests: contiguous, increasing, never split a (user, ts) tie, >= 4 events unless the user has fewer
    r = ev["request_id"]
    assert (np.diff(r) >= 0).all()
    same_tie = (np.diff(ev["user_id"]) == 0) & (np.diff(ev["ts"]) == 0)
    assert (np.diff(r)[same_tie] == 0).all()
    _, rc = np.unique(r, return_counts=True)
    per_user = np.bincount(ev["user_id"])
    first_u = ev["user_id"][np.unique(r, return_index=True)[1]]
    assert ((rc >= 4) | (per_user[first_u] < 4)).all()
    dm = LifelongSequenceDataModule(str(out), protocol="ctr", max_len=30)
    dm.setup()
    test = dm.splits["test"]
    assert test.n_samples > 0 and set(np.unique(test.label)) <= {0.0, 1.0}


def _write_atomic(d: Path, inter_rows, item_rows):
    d.mkdir(parents=True, exist_ok=True)
    (d / "toy.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" +
                                 "".join("\t".join(map(str, r)) + "\n" for r in inter_rows))
    (d / "toy.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" +
                                "".join("\t".join(map(str, r)) + "\n" for r in item_rows))
    return d


ITEMS = [(10, "Alpha", 1995, "Action Comedy Drama Thriller War"), (20, "Beta", "V", "Drama"),
         (30, "Gamma", 1939, "Film-Noir"), (40, "Unused", 2001, "Drama")]


def test_fixture_ties_genres_years(tmp_path):
    inter = [(7, 30, 5, 100), (7, 10, 4, 50), (7, 20, 3, 100), (7, 30, 1, 200),  # user 7: tie at ts 100
             (3, 10, 5, 10), (3, 20, 5, 11), (3, 30, 5, 12),
             (5, 10, 5, 1)]  # user 5: one rating -> dropped
    raw = _write_atomic(tmp_path / "raw", inter, ITEMS)
    out = movielens.main(["--raw", str(raw), "--out", str(tmp_path / "toy"), *HASH, "--cache-dir",
                          str(tmp_path / "cache")])
    t = validate_dataset(out)
    ev, m = t.events, t.meta
    assert m["name"] == "toy" and m["n_users"] == 2 and m["n_items"] == 3  # item 40 is never rated
    # user 3 -> id 1, user 7 -> id 2; ties at ts 100 keep the file order (item 30 before 20)
    items = pq.read_table(out / "items.parquet").to_pydict()
    raw_of = {i + 1: r for i, r in enumerate(items["raw_item_id"])}
    seq7 = [raw_of[int(i)] for i in ev["item_id"][ev["user_id"] == 2]]
    assert seq7 == [10, 30, 20, 30]
    assert ev["ts"][ev["user_id"] == 2].tolist() == [50, 100, 100, 200]
    k = items["raw_item_id"].index(10)
    assert [items[f"attr_genre{s}"][k] for s in (1, 2, 3)] != [0, 0, 0]
    assert "1 items had more" in m["attr_rule"] and "1 items in the raw file had no valid year" in m["attr_rule"]
    assert items["attr_year"][items["raw_item_id"].index(20)] == 0  # "V" -> unknown
    assert items["attr_year"][items["raw_item_id"].index(30)] == 1  # 1939 -> <1940
    kb = items["raw_item_id"].index(20)
    assert items["attr_genre1"][kb] > 0 and items["attr_genre2"][kb] == 0
    assert list((tmp_path / "cache").glob("hash-*/part-*.parquet"))  # embeddings cached per text
    # histories hold only strictly earlier behaviours: the ts-100 rating of item 20 sees item 10 only
    dm = LifelongSequenceDataModule(str(out), max_len=5)
    dm._load()
    end = dm.store.history_end(np.array([2]), np.array([100]))
    h_item, _, mask, _ = dm.store.gather(np.array([2]), end, 5)
    assert [raw_of[int(i)] for i in h_item[0][mask[0]]] == [10]


def test_fixture_bad_input(tmp_path):
    raw = _write_atomic(tmp_path / "raw", [(1, 10, 5, 1), (1, 20, "x", 2)], ITEMS)
    with pytest.raises(DatasetError, match=r"toy.inter, line 3, field 'rating': not a number: 'x'"):
        movielens.main(["--raw", str(raw), "--out", str(tmp_path / "o"), *HASH])
    raw = _write_atomic(tmp_path / "raw2", [(1, 10, 5, 1), (1, 99, 4, 2), (1, 20, 4, 3)], ITEMS)
    with pytest.raises(DatasetError, match=r"toy.inter, line 3, field 'item_id': item 99 is not in toy.item"):
        movielens.main(["--raw", str(raw), "--out", str(tmp_path / "o"), *HASH])
    raw = _write_atomic(tmp_path / "raw3", [(1, 10, 5, 1)], ITEMS)
    (raw / "toy.inter").write_text("user_id\titem_id\n1\t2\n")
    with pytest.raises(DatasetError, match=r"toy.inter, line 1, field 'user_id': header field must be name:type"):
        movielens.main(["--raw", str(raw), "--out", str(tmp_path / "o"), *HASH])
    raw = _write_atomic(tmp_path / "raw4", [(1, 10, 5, 1), (1, 20, 5, 2)], ITEMS)
    with pytest.raises(DatasetError, match="no user has at least 3 positive"):
        movielens.main(["--raw", str(raw), "--out", str(tmp_path / "o"), *HASH])
    assert not (tmp_path / "o").exists()
