"""``seminar-zoo prepare movielens``: MovieLens (RecBole atomic files) -> dataset contract.

Input (``--raw DIR``): ``<name>.inter`` (user_id, item_id, rating, timestamp) and
``<name>.item`` (item_id, movie_title, release_year, class = space-separated genres)
in RecBole's atomic-file format (tab-separated, header ``field:type``), as shipped
for ML-100K in ``recbole/dataset_example/ml-100k``. ``<name>.user`` is not used (the
contract has no user features).

What SEMINAR (arXiv 2407.10714) needs and what MovieLens has:

* behaviours: ratings. ``--protocol ranking`` (default): every rating is a positive
  interaction (label 1), evaluated leave-one-out against sampled negatives.
  ``--protocol ctr``: every rating is a labelled impression, rating >= 4 -> 1, else 0;
  histories are built from the label-1 events only (by the DataModule). One folder
  serves one protocol (the label column differs); meta.json ``protocols`` says which.
* item modalities (Sec. 3.1): ``id``; ``attr`` = genres (multi-valued: the first three
  genres in the file's order in slots attr_genre1..3, 0 = none) and a release-year
  bucket; ``text`` = "title. genres" embedded by the text encoder. No ``image``.
* search queries: MovieLens has none. The query modality is absent from meta.json and
  every event has query_id 0; we do not fake queries. SEMINAR's query-fusion weight
  (lambda) therefore has nothing to act on for this dataset.
* timestamps are kept as they are (unix seconds). About half of ML-100K's ratings share
  their timestamp with another rating of the same user; events are sorted by
  (user, ts, line of the .inter file) and the DataModule only puts strictly earlier
  behaviours in a history, so tied ratings never see each other.
* request ids: ML has no impressions, so a request is a block of about
  ``--request-size`` consecutive ratings of a user, closed only at a timestamp change
  (the ctr split takes the last request as test, the one before as validation).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..schema import DatasetError, emb_array
from ..text_cache import empty_text_mask
from . import common as C
from . import readers as R

SOURCE = ("MovieLens (F. M. Harper and J. A. Konstan, 'The MovieLens Datasets: History and Context', "
          "ACM TiiS 2015; GroupLens Research), RecBole atomic-file layout")
LICENCE = ("GroupLens terms: research use, cite the paper above, do not redistribute; "
           "see https://grouplens.org/datasets/movielens/")
MAX_GENRES = 3


def _find(raw: Path, suffix: str, name: Optional[str]) -> Path:
    if name:
        return R.require_file(raw / f"{name}{suffix}")
    if not raw.is_dir():
        raise DatasetError(f"{raw}: raw data folder does not exist")
    cands = sorted(raw.glob(f"*{suffix}"))
    if len(cands) != 1:
        raise DatasetError(f"{raw}: expected exactly one *{suffix} file (RecBole atomic format), found "
                           f"{[c.name for c in cands]}; pass --name")
    return cands[0]


def read_items(path: Path, quiet: bool):
    f = R.AtomicFile(path, ["item_id", "movie_title", "release_year", "class"], quiet)
    raw_ids, titles, years, genres = [], [], [], []
    bad_years = 0
    seen = set()
    for n, p in f.rows("ml items"):
        iid = f.number(p, "item_id", n, integer=True)
        if iid in seen:
            raise R.bad(path, n, "item_id", f"duplicate item id {iid}")
        seen.add(iid)
        ys = p[f.index["release_year"]].strip()
        year = int(ys) if ys.isdigit() and 1800 <= int(ys) <= 2100 else None
        bad_years += year is None
        raw_ids.append(iid)
        titles.append(p[f.index["movie_title"]].strip())
        years.append(year)
        genres.append(p[f.index["class"]].split())
    return raw_ids, titles, years, genres, bad_years


def read_inter(path: Path, quiet: bool):
    f = R.AtomicFile(path, ["user_id", "item_id", "rating", "timestamp"], quiet)
    u, i, r, t, line = (C.IntColumn() for _ in range(5))
    for n, p in f.rows("ml ratings"):
        u.append(f.number(p, "user_id", n, integer=True))
        i.append(f.number(p, "item_id", n, integer=True))
        r.append(int(round(f.number(p, "rating", n) * 1000)))  # exact for x.5 steps
        ts = f.number(p, "timestamp", n)
        if ts < 0:
            raise R.bad(path, n, "timestamp", f"negative timestamp {ts}")
        t.append(int(ts))
        line.append(n)
    return u.numpy(), i.numpy(), r.numpy() / 1000.0, t.numpy(), line.numpy()


def prepare(raw, out, protocol: str = "ranking", positive_threshold: float = 4.0, min_user_interactions: int = 3,
            request_size: int = 10, encoder=None, args=None, name: Optional[str] = None, quiet: bool = False) -> Path:
    t0 = time.time()
    raw = Path(raw)
    inter_path, item_path = _find(raw, ".inter", name), _find(raw, ".item", name)
    user, item, rating, ts, line = read_inter(inter_path, quiet)
    if len(user) == 0:
        raise DatasetError(f"{inter_path}: no ratings")
    if protocol == "ranking":
        label = np.ones(len(user), np.int64)
    else:
        label = (rating >= positive_threshold).astype(np.int64)
    raw_ids, titles, years, genres, bad_years = read_items(item_path, quiet)
    known = np.array(sorted(raw_ids), np.int64)
    missing = ~np.isin(item, known)
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        raise R.bad(inter_path, int(line[k]), "item_id", f"item {item[k]} is not in {item_path.name}")

    events, info = C.finalize_events(user, ts, item, label, tiebreak=line, request_size=request_size,
                                     min_user_pos=min_user_interactions)
    # items in new-id order
    pos = {iid: k for k, iid in enumerate(raw_ids)}
    rows = [pos[int(r)] for r in info["maps"]["item"]]
    vocab = sorted({g for k in rows for g in genres[k]})
    gcode = {g: j + 1 for j, g in enumerate(vocab)}
    n = len(rows)
    gslots = np.zeros((MAX_GENRES, n), np.int64)
    truncated = 0
    for j, k in enumerate(rows):
        gs = genres[k]
        truncated += len(gs) > MAX_GENRES
        for s, g in enumerate(gs[:MAX_GENRES]):
            gslots[s, j] = gcode[g]
    ybucket = np.array([C.year_bucket(years[k]) for k in rows], np.int64)
    texts = [f"{titles[k]}. {', '.join(genres[k])}" if genres[k] else titles[k] for k in rows]

    if encoder is None:
        from ..text_encoders import HashEncoder

        encoder = HashEncoder()
    text = C.text_embeddings(encoder, texts, args)

    items = {"item_id": np.arange(1, n + 1, dtype=np.int64)}
    for s in range(MAX_GENRES):
        items[f"attr_genre{s + 1}"] = gslots[s]
    items["attr_year"] = ybucket
    items["text_emb"] = emb_array(text)
    items["raw_item_id"] = np.asarray(info["maps"]["item"], np.int64)
    items["title"] = [titles[k] for k in rows]  # for inspection; the DataModule ignores it

    st = info["stats"]
    st["items_without_text"] = int(empty_text_mask(texts).sum())  # zero text rows, never encoded
    attr_cols = [f"attr_genre{s + 1}" for s in range(MAX_GENRES)] + ["attr_year"]
    meta = {
        "name": "ml100k" if inter_path.stem == "ml-100k" else inter_path.stem,
        "source": SOURCE,
        "licence": LICENCE,
        "raw_files": [inter_path.name, item_path.name],
        "n_users": st["n_users"], "n_items": n, "n_queries": 0, "n_events": st["n_events"],
        "modalities": ["id", "attr", "text"],
        "absent_modalities": {
            "query": "MovieLens has no search queries: every event has query_id 0 and there is no "
                     "queries.parquet; no queries are synthesised (SEMINAR's lambda has no effect here)",
            "image": "no item images in the MovieLens atomic files",
        },
        "attr_cols": attr_cols,
        "attr_cardinality": {**{c: len(vocab) for c in attr_cols[:MAX_GENRES]}, "attr_year": C.N_YEAR_BUCKETS},
        "attr_vocab": {"genre": vocab, "year_bucket": C.YEAR_BUCKETS_DOC},
        "attr_rule": (f"attr_genre1..{MAX_GENRES}: the item's first {MAX_GENRES} genres in file order "
                      f"(0 = none; {truncated} items had more and were truncated); attr_year: release-year bucket "
                      f"({bad_years} items in the raw file had no valid year -> 0)"),
        "dims": {"text": int(text.shape[1])},
        "text": {"content": "'<title>. <genre>, <genre>, ...'", "encoder": encoder.describe()},
        "protocol": protocol,
        "protocols": [protocol],
        "label_rule": C.rating_label_rule(protocol, positive_threshold, "rating"),
        "positive_threshold": positive_threshold if protocol == "ctr" else None,
        "filter_rule": C.filter_rule(min_user_interactions, st, "items are those rated by the kept users"),
        "ts_rule": ("unix seconds as in the raw file; events sorted by (user, ts, raw line); "
                    f"{st['ts_ties_within_user']} events share their ts with the previous event of the same user, "
                    "and histories hold only strictly earlier behaviours"),
        "request_rule": C.pseudo_request_rule(request_size, "ratings") + " (MovieLens has no impression logs)",
        "split_rule": C.SPLIT_RULE,
        "recommended": {"max_len": 200, "train_window": None},
        "stats": st,
    }
    return C.write("movielens", out, items, events, meta, None, t0, quiet)


def main(argv: Optional[List[str]] = None) -> Path:
    ap = argparse.ArgumentParser(prog="seminar-zoo prepare movielens",
                                 description="MovieLens in RecBole atomic-file format -> seminar-zoo dataset folder")
    C.add_common_args(ap)
    C.add_rating_protocol_args(ap, request_size=10)
    ap.add_argument("--name", default=None, help="file stem (default: the only *.inter file in --raw)")
    a = ap.parse_args(argv)
    enc = C.make_encoder(a)
    return prepare(a.raw, a.out, protocol=a.protocol, positive_threshold=a.positive_threshold,
                   min_user_interactions=a.min_user_interactions, request_size=a.request_size, encoder=enc,
                   args=a, name=a.name, quiet=a.quiet)


if __name__ == "__main__":
    main()
