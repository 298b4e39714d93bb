"""``seminar-zoo prepare kuaisar``: the public KuaiSAR release -> dataset contract.

KuaiSAR (Sun et al., CIKM 2023, https://kuaisar.github.io, Zenodo record 8181109) is
the unified search-and-recommendation log of the Kuaishou app that SEMINAR
(arXiv 2407.10714, Sec. 4.1) evaluates on. Input (``--raw DIR``), as documented in
the dataset's repository (Ethan00Si/KuaiSAR ``pages/decriptions.md``), CSV files with
a header row (``.gz`` also accepted):

* ``rec_inter.csv``: user_id, item_id, playing_time, duration_ms, time, timestamp
  (unix ms), click, forward, like, follow, search, search_item_related;
* ``src_inter.csv``: user_id, search_session_id, search_session_time,
  search_session_timestamp (unix ms), keyword (anonymised token ids, ``[20, 34, 3]``),
  search_source, item_id, click_cnt, item_type;
* ``item_features.csv``: item_id, caption (token ids), author_id, item_type,
  upload_time, upload_type, first..fourth_level_category_id (+ names), and in some
  releases music_id. ``user_features.csv`` and ``social_network.csv`` are not used.

What we build (SEMINAR's search-recommendation pair sequence, Sec. 3):

* events: both logs joined by user and time into one table sorted by
  (user, ts, request). Recommendation rows: query_id 0, label = ``click``; one request
  = the items the system delivered to the user at the same millisecond timestamp.
  Search rows: query_id = the session's keyword, label = ``click_cnt > 0``; one request
  = one search session. Search results of item types outside
  ``--search-item-types`` (default VIDEO, IMAGE_ATLAS: the types the recommendation
  service shows) are skipped. ts = unix seconds (ms // 1000).
* queries: one per distinct keyword token sequence. Its text embedding is a hashed bag
  of its token ids (signed feature hashing into ``--token-dim`` buckets,
  L2-normalised): the tokens are anonymised, so no pretrained text encoder applies,
  and a learned token embedding would belong to the model, not the data.
* items: attributes author, category levels 1-4, item type, upload type (and music
  if present); values seen on fewer than ``--min-attr-count`` kept items -> 0. The
  item text embedding is the same hashed bag over the caption's token ids (same
  hashing as queries; if the release shares one vocabulary between keywords and
  captions -- not documented -- query/caption overlap shows as a positive dot product).
* users with fewer than ``--min-user-interactions`` label-1 events are dropped.
* Both protocols are served by one folder: ranking uses the label-1 events as
  behaviours, ctr the labelled impressions.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..schema import DatasetError, emb_array
from ..text_encoders import hash_token_ids
from . import common as C
from . import readers as R

SOURCE = ("KuaiSAR (Z. Sun et al., 'KuaiSAR: A Unified Search And Recommendation Dataset', CIKM 2023; "
          "https://kuaisar.github.io, https://zenodo.org/record/8181109)")
LICENCE = "CC BY-NC-SA 4.0 (non-commercial; see the dataset's LICENSE)"

REC_COLS = ["user_id", "item_id", "timestamp", "click"]
SRC_COLS = ["user_id", "search_session_id", "search_session_timestamp", "keyword", "item_id", "click_cnt"]
ITEM_COLS = ["item_id"]
ITEM_OPTIONAL = ["caption", "author_id", "item_type", "upload_type", "music_id", "first_level_category_id",
                 "second_level_category_id", "third_level_category_id", "fourth_level_category_id"]
# attribute column -> (raw column, is integer id where 0 means unknown)
ATTRS = {
    "attr_author": ("author_id", True),
    "attr_cat1": ("first_level_category_id", True),
    "attr_cat2": ("second_level_category_id", True),
    "attr_cat3": ("third_level_category_id", True),
    "attr_cat4": ("fourth_level_category_id", True),
    "attr_item_type": ("item_type", False),
    "attr_upload_type": ("upload_type", False),
    "attr_music": ("music_id", True),
}
UNKNOWN_STRINGS = {"", "nan", "NaN", "UNKNOWN", "unknown", "empty", "None"}


def _binary(df, col, path, line0) -> np.ndarray:
    v = R.column_numbers(df, col, path, line0)
    badm = (v != 0) & (v != 1)
    if badm.any():
        i = int(np.flatnonzero(badm)[0])
        raise R.bad(path, line0 + i, col, f"expected 0 or 1, got {df[col].iloc[i]!r}")
    return v


def read_rec(path: Path, cols: Dict[str, C.IntColumn], chunksize: int, quiet: bool) -> int:
    n = 0
    for line0, df in R.iter_csv_chunks(path, REC_COLS, chunksize=chunksize, desc="rec_inter", quiet=quiet):
        ts_ms = R.column_numbers(df, "timestamp", path, line0, integer=False).astype(np.int64)
        cols["user"].extend(R.column_numbers(df, "user_id", path, line0))
        cols["item"].extend(R.column_numbers(df, "item_id", path, line0))
        cols["ts"].extend(ts_ms // 1000)
        cols["label"].extend(_binary(df, "click", path, line0))
        cols["query"].extend(np.zeros(len(df), np.int64))
        cols["rkey"].extend(ts_ms * 2)  # even keys: recommendation requests (same delivery time)
        n += len(df)
    return n


def read_src(path: Path, cols: Dict[str, C.IntColumn], queries: C.Interner, item_types: Optional[set],
             chunksize: int, quiet: bool) -> Dict[str, int]:
    kw_cache: Dict[str, int] = {}
    kept = skipped = 0
    for line0, df in R.iter_csv_chunks(path, SRC_COLS, optional=["item_type"], chunksize=chunksize,
                                       desc="src_inter", quiet=quiet):
        if item_types is not None and "item_type" in df.columns:
            m = df["item_type"].str.strip().isin(item_types).to_numpy()
        else:
            m = np.ones(len(df), bool)
        rows = np.flatnonzero(m)
        skipped += len(df) - len(rows)
        if not len(rows):
            continue
        sub = df.iloc[rows]
        lines = line0 + rows
        # numbers are checked on the kept rows; errors name their real file line
        user, sid, item, click = (_numeric(sub[c], path, lines, c) for c in
                                  ("user_id", "search_session_id", "item_id", "click_cnt"))
        ts_ms = _numeric(sub["search_session_timestamp"], path, lines, "search_session_timestamp", integer=False)
        if (click < 0).any():
            i = int(np.flatnonzero(click < 0)[0])
            raise R.bad(path, int(lines[i]), "click_cnt", f"negative click count {click[i]}")
        qids = np.empty(len(sub), np.int64)
        for j, (kw, ln) in enumerate(zip(sub["keyword"].tolist(), lines.tolist())):
            q = kw_cache.get(kw)
            if q is None:
                q = kw_cache[kw] = queries(tuple(R.parse_int_list(kw, path, ln, "keyword")))
            qids[j] = q
        cols["user"].extend(user)
        cols["item"].extend(item)
        cols["ts"].extend(ts_ms // 1000)
        cols["label"].extend((click > 0).astype(np.int64))
        cols["query"].extend(qids)
        cols["rkey"].extend(sid * 2 + 1)  # odd keys: search sessions
        kept += len(sub)
    return {"search_rows": kept, "search_rows_skipped_item_type": skipped}


def _numeric(s, path, lines, name, integer=True) -> np.ndarray:
    """A string column as int64 (floats like '1684742000000.0' are truncated when integer=False)."""
    import pandas as pd

    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    badm = ~np.isfinite(v)
    if integer:
        badm |= np.isfinite(v) & (v != np.round(v))
    if badm.any():
        i = int(np.flatnonzero(badm)[0])
        raise R.bad(path, int(lines[i]), name, f"not {'an integer' if integer else 'a number'}: {s.iloc[i]!r}")
    return v.astype(np.int64)


def read_items(path: Path, item_codes: np.ndarray, chunksize: int, quiet: bool):
    """Features of the items in ``item_codes`` (sorted raw ids), in that order.

    Integer-id attributes come back as int64 arrays (0 = unknown), string attributes
    as lists (None = unknown); duplicate rows of an item keep the first.
    """
    import pandas as pd

    n = len(item_codes)
    found = np.zeros(n, bool)
    raw_attr: Dict[str, object] = {}
    captions: List[List[int]] = [[] for _ in range(n)]
    for line0, df in R.iter_csv_chunks(path, ITEM_COLS, optional=ITEM_OPTIONAL, chunksize=chunksize,
                                       desc="item_features", quiet=quiet):
        if not raw_attr:
            for a, (col, is_id) in ATTRS.items():
                if col in df.columns:
                    raw_attr[a] = np.zeros(n, np.int64) if is_id else [None] * n
        ids = R.column_numbers(df, "item_id", path, line0)
        pos = np.minimum(np.searchsorted(item_codes, ids), n - 1)
        hit = np.flatnonzero(item_codes[pos] == ids)
        if not len(hit):
            continue
        _, first = np.unique(pos[hit], return_index=True)  # first row of each item in this chunk
        hit = np.sort(hit[first])
        hit = hit[~found[pos[hit]]]  # ... and not seen in an earlier chunk
        if not len(hit):
            continue
        k = pos[hit]
        found[k] = True
        sub = df.iloc[hit]
        lines = line0 + hit
        for a, store in raw_attr.items():
            col, is_id = ATTRS[a]
            vals = sub[col].astype(str).str.strip()
            unk = vals.isin(UNKNOWN_STRINGS).to_numpy()
            if is_id:
                num = pd.to_numeric(vals.where(~unk, "0"), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                badm = ~np.isfinite(num) | (num != np.round(num)) | (num < 0)
                if badm.any():
                    i = int(np.flatnonzero(badm)[0])
                    raise R.bad(path, int(lines[i]), col, f"not an integer id: {vals.iloc[i]!r}")
                store[k] = num.astype(np.int64)
            else:
                for kk, v, u in zip(k.tolist(), vals.tolist(), unk.tolist()):
                    store[kk] = None if u else v
        if "caption" in sub.columns:
            for kk, cap, ln in zip(k.tolist(), sub["caption"].astype(str).tolist(), lines.tolist()):
                captions[kk] = R.parse_int_list(cap, path, ln, "caption")
    return found, raw_attr, captions


def _flat(seqs) -> tuple:
    lens = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
    offsets = np.concatenate([[0], np.cumsum(lens)])
    toks = np.fromiter((t for s in seqs for t in s), np.int64, count=int(lens.sum()))
    return toks, offsets


def prepare(raw, out, min_user_interactions: int = 3, token_dim: int = 64, min_attr_count: int = 2,
            search_item_types: Optional[List[str]] = ("VIDEO", "IMAGE_ATLAS"), chunksize: int = 500_000,
            quiet: bool = False) -> Path:
    t0 = time.time()
    raw = Path(raw)
    rec_p = R.find_file(raw, ["rec_inter.csv"], "recommendation log (rec_inter.csv)")
    src_p = R.find_file(raw, ["src_inter.csv"], "search log (src_inter.csv)")
    item_p = R.find_file(raw, ["item_features.csv"], "item features (item_features.csv)")
    cols = {k: C.IntColumn() for k in ("user", "item", "ts", "label", "query", "rkey")}
    queries = C.Interner()
    n_rec = read_rec(rec_p, cols, chunksize, quiet)
    types = set(search_item_types) if search_item_types else None
    src_stats = read_src(src_p, cols, queries, types, chunksize, quiet)
    arr = {k: v.numpy() for k, v in cols.items()}
    del cols
    if (arr["ts"] < 0).any():
        raise DatasetError(f"{rec_p} / {src_p}: negative timestamps")
    events, info = C.finalize_events(arr["user"], arr["ts"], arr["item"], arr["label"], query=arr["query"],
                                     request_key=arr["rkey"], min_user_pos=min_user_interactions)
    del arr
    item_codes = info["maps"]["item"]
    found, raw_attr, captions = read_items(item_p, item_codes, chunksize, quiet)
    n = len(item_codes)

    items = {"item_id": np.arange(1, n + 1, dtype=np.int64)}
    attr_card, attr_src = {}, {}
    for a in ATTRS:
        if a not in raw_attr:
            continue
        vals = raw_attr[a]
        if isinstance(vals, np.ndarray):
            codes, card = C.encode_attr_int(vals, min_count=min_attr_count)
        else:
            codes, card, _ = C.encode_attr(vals, min_count=min_attr_count)
        if card == 0:
            continue  # the column exists but carries nothing for the kept items
        items[a] = codes
        attr_card[a] = card
        attr_src[a] = ATTRS[a][0]
    toks, offs = _flat(captions)
    text = hash_token_ids(toks, offs, token_dim)
    items["text_emb"] = emb_array(text)
    items["raw_item_id"] = np.asarray(item_codes, np.int64)

    qcodes = info["maps"]["query"]
    qtok, qoff = _flat([queries.values[int(c) - 1] for c in qcodes])
    qtext = hash_token_ids(qtok, qoff, token_dim)
    qtable = {"query_id": np.arange(1, len(qcodes) + 1, dtype=np.int64), "text_emb": emb_array(qtext),
              "n_tokens": np.diff(qoff)}
    st = info["stats"]
    st.update(src_stats)
    st.update({"rec_rows": int(n_rec), "items_without_features": int((~found).sum()),
               "items_with_empty_caption": int((np.diff(offs) == 0).sum()),
               "queries_with_no_tokens": int((np.diff(qoff) == 0).sum()),
               "search_events": int((events["query_id"] > 0).sum())})
    hashing = (f"hashed bag of token ids: signed feature hashing (splitmix64) into {token_dim} buckets, "
               "L2-normalised; rows without tokens are zero")
    meta = {
        "name": "kuaisar",
        "source": SOURCE,
        "licence": LICENCE,
        "raw_files": [rec_p.name, src_p.name, item_p.name],
        "n_users": st["n_users"], "n_items": n, "n_queries": int(len(qcodes)), "n_events": st["n_events"],
        "modalities": ["id", "attr", "text", "query"],
        "absent_modalities": {"image": "KuaiSAR ships no item images or image features"},
        "attr_cols": sorted(items_attr for items_attr in attr_card),
        "attr_cardinality": attr_card,
        "attr_rule": (f"raw columns {attr_src}; values seen on fewer than {min_attr_count} kept items, ids 0 and "
                      f"'empty'/'UNKNOWN' -> 0 (unknown); {st['items_without_features']} items have no row in "
                      f"{item_p.name} (all attributes 0, zero text)"),
        "dims": {"text": token_dim, "query": token_dim},
        "text": {"content": "item caption (anonymised token ids)", "encoder": {"name": "hash-token-ids", "kind": hashing}},
        "query_text": {"content": "search keyword (anonymised token ids)",
                       "encoder": {"name": "hash-token-ids", "kind": hashing}},
        "protocols": ["ranking", "ctr"],
        "label_rule": ("recommendation rows: label = click; search rows: label = 1 if click_cnt > 0 else 0; "
                       "histories (both protocols) use the label-1 events"),
        "query_rule": ("search rows carry the session's keyword as query_id (one query per distinct token "
                       "sequence); recommendation rows have query_id 0"),
        "search_item_types": sorted(types) if types else "all",
        "filter_rule": C.filter_rule(min_user_interactions, st),
        "ts_rule": "unix seconds (raw ms // 1000); events sorted by (user, ts, request, file order)",
        "request_rule": ("recommendation: the items delivered to a user at the same millisecond timestamp; "
                         "search: one search_session_id"),
        "split_rule": C.SPLIT_RULE,
        "stats": st,
    }
    return C.write("kuaisar", out, items, events, meta, qtable, t0, quiet)


def main(argv: Optional[List[str]] = None) -> Path:
    ap = argparse.ArgumentParser(prog="seminar-zoo prepare kuaisar",
                                 description="KuaiSAR (rec_inter.csv, src_inter.csv, item_features.csv) -> "
                                             "seminar-zoo dataset folder")
    C.add_common_args(ap, text=False)
    ap.add_argument("--token-dim", type=int, default=64, help="width of the hashed token-id bags (default 64)")
    ap.add_argument("--min-attr-count", type=int, default=2,
                    help="attribute values on fewer kept items become 0 = unknown (default 2)")
    ap.add_argument("--search-item-types", default="VIDEO,IMAGE_ATLAS",
                    help="comma-separated item_type values kept from the search log; 'all' keeps every row "
                         "(default VIDEO,IMAGE_ATLAS, the types the recommendation service shows)")
    ap.add_argument("--chunksize", type=int, default=500_000, help="CSV rows per chunk")
    a = ap.parse_args(argv)
    if a.token_dim < 8:
        ap.error("--token-dim must be >= 8")
    types = None if a.search_item_types.strip().lower() == "all" else [
        t.strip() for t in a.search_item_types.split(",") if t.strip()]
    return prepare(a.raw, a.out, min_user_interactions=a.min_user_interactions, token_dim=a.token_dim,
                   min_attr_count=a.min_attr_count, search_item_types=types, chunksize=a.chunksize, quiet=a.quiet)


if __name__ == "__main__":
    main()
