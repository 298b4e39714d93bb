"""``seminar-zoo prepare amazon``: Amazon Reviews JSON-lines files -> dataset contract.

SEMINAR (arXiv 2407.10714, Sec. 4.1) evaluates on Amazon Movies & TV. Input: one
review file and one metadata file, JSON lines, plain or ``.gz`` (``--raw DIR`` finds
``meta_*`` as metadata and the other ``*.json``/``*.jsonl`` file as reviews, or pass
``--reviews`` / ``--meta``). Field names of the releases:

* 2018 (J. Ni et al., EMNLP 2019; also the 2014 "5-core" files of J. McAuley):
  reviews ``reviewerID, asin, overall, unixReviewTime`` (seconds); metadata
  ``asin, title, description (list or string), category (list; 2014: categories,
  a list of lists), brand``. 2014 metadata lines are Python dict literals, parsed
  with ``ast.literal_eval``.
* 2023 (Y. Hou et al., 2024): reviews ``user_id, parent_asin, rating, timestamp``
  (ms); metadata ``parent_asin, title, description (list), categories (list),
  main_category, store``. Items are keyed by parent_asin.

What we build:

* ``--protocol ranking`` (default): every review is a positive interaction;
  ``--protocol ctr``: rating >= ``--positive-threshold`` (4) is label 1, else 0.
  One folder serves one protocol; meta.json ``protocols`` says which.
* exact duplicate reviews (same user, item and time) are kept once.
* items: text = "title. description" (HTML tags stripped) embedded by the text
  encoder (``--text-encoder minilm|hash``); items without metadata or text get a
  zero text vector (counted in meta.json). Attributes: the first two category levels
  below the root (``attr_cat1``, ``attr_cat2``) and the brand (2023: store); values
  on fewer than ``--min-attr-count`` kept items -> 0.
* queries: Amazon reviews have no search queries, so by default the query modality
  is absent. SEMINAR's reference preprocessing used a dummy query made of the first
  words of the item's description; ``--dummy-queries-from-description N`` reproduces
  that as an explicit opt-in, labelled in meta.json: such a query is derived from the
  target item itself, so it leaks target information and is not a real search.
* request ids: blocks of about ``--request-size`` consecutive reviews of a user,
  closed at a timestamp change (reviews have no impressions).
"""
from __future__ import annotations

import argparse
import html
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..schema import DatasetError, emb_array
from ..text_cache import empty_text_mask
from . import common as C
from . import readers as R

SOURCE = ("Amazon Reviews (2018: J. Ni, J. Li, J. McAuley, EMNLP 2019, https://nijianmo.github.io/amazon/; "
          "2023: Y. Hou et al., arXiv 2403.03952, https://amazon-reviews-2023.github.io/)")
LICENCE = "research use only, per the dataset publishers' terms; do not redistribute"
_TAG = re.compile(r"<[^>]+>")
_WS = re.compile(r"\s+")
MAX_TEXT_CHARS = 2000


def clean_text(x) -> str:
    if x is None:
        return ""
    if isinstance(x, (list, tuple)):
        x = " ".join(clean_text(v) for v in x)
    s = html.unescape(_TAG.sub(" ", str(x)))
    return _WS.sub(" ", s).strip()


def _find_files(raw: Optional[str], reviews: Optional[str], meta: Optional[str]):
    if reviews and meta:
        return R.require_file(reviews), R.require_file(meta)
    if not raw:
        raise DatasetError("pass --raw DIR, or both --reviews FILE and --meta FILE")
    d = Path(raw)
    if not d.is_dir():
        raise DatasetError(f"{d}: raw data folder does not exist")
    js = [p for p in sorted(d.iterdir()) if p.is_file() and re.search(r"\.jsonl?(\.gz)?$", p.name)]
    metas = [p for p in js if p.name.startswith("meta")]
    revs = [p for p in js if not p.name.startswith("meta")]
    m = R.require_file(meta) if meta else (metas[0] if len(metas) == 1 else None)
    r = R.require_file(reviews) if reviews else (revs[0] if len(revs) == 1 else None)
    if m is None or r is None:
        raise DatasetError(f"{d}: expected one review file and one meta_* file (*.json, *.jsonl, optionally .gz); "
                           f"found reviews {[p.name for p in revs]}, metadata {[p.name for p in metas]}; "
                           "pass --reviews and --meta")
    return r, m


def _field(obj: dict, names, path, line, what: str):
    for n in names:
        v = obj.get(n)
        if v is not None and v != "":
            return n, v
    raise R.bad(path, line, "/".join(names), f"missing {what} (a review needs one of {list(names)})")


def read_reviews(path: Path, quiet: bool):
    users, items = C.Interner(), C.Interner()
    u, i, t, line = (C.IntColumn() for _ in range(4))
    r = []
    fmt = None
    for n, obj in R.iter_jsonl(path, "reviews", quiet):
        _, user = _field(obj, ("reviewerID", "user_id"), path, n, "user id")
        iname, item = _field(obj, ("parent_asin", "asin"), path, n, "item id")
        rname, rating = _field(obj, ("overall", "rating"), path, n, "rating")
        tname, ts = _field(obj, ("unixReviewTime", "timestamp"), path, n, "time")
        try:
            rating = float(rating)
        except (TypeError, ValueError):
            raise R.bad(path, n, rname, f"rating is not a number: {rating!r}") from None
        try:
            ts = int(float(ts))
        except (TypeError, ValueError):
            raise R.bad(path, n, tname, f"time is not a number: {ts!r}") from None
        if tname == "timestamp":
            ts //= 1000  # 2023 release: milliseconds
        if ts < 0:
            raise R.bad(path, n, tname, f"negative time {ts}")
        fmt = fmt or ("2023" if tname == "timestamp" else "2018")
        u.append(users(str(user)))
        i.append(items(str(item)))
        t.append(ts)
        line.append(n)
        r.append(rating)
    if not len(users):
        raise DatasetError(f"{path}: no reviews")
    return users, items, u.numpy(), i.numpy(), np.asarray(r, np.float64), t.numpy(), line.numpy(), fmt


def read_meta(path: Path, wanted: Dict[str, int], quiet: bool):
    """title/description text, categories and brand for the asins in ``wanted`` (asin -> row)."""
    n = len(wanted)
    text = [""] * n
    descs = [""] * n
    cats: List[List[str]] = [[] for _ in range(n)]
    brand: List[Optional[str]] = [None] * n
    found = np.zeros(n, bool)
    for ln, obj in R.iter_jsonl(path, "metadata", quiet, python_literals=True):
        key = obj.get("parent_asin") or obj.get("asin")
        if key is None:
            raise R.bad(path, ln, "asin/parent_asin", "missing item id")
        k = wanted.get(str(key))
        if k is None or found[k]:
            continue
        found[k] = True
        title, desc = clean_text(obj.get("title")), clean_text(obj.get("description"))
        text[k] = (f"{title}. {desc}" if title and desc else title or desc)[:MAX_TEXT_CHARS]
        descs[k] = desc[:MAX_TEXT_CHARS]
        c = obj.get("category")
        if c is None:
            c = obj.get("categories")
        if isinstance(c, list) and c and isinstance(c[0], list):
            c = c[0]  # 2014: list of category paths; take the first
        if isinstance(c, list):
            c = [clean_text(x) for x in c if clean_text(x)]
            cats[k] = c[1:] if len(c) > 1 else c  # drop the store root ("Movies & TV")
        b = obj.get("brand") or obj.get("store")
        if not b and isinstance(obj.get("details"), dict):
            b = obj["details"].get("Brand")
        brand[k] = clean_text(b) or None
    return text, descs, cats, brand, found


def _first_words(desc_text: str, n: int) -> str:
    return " ".join(desc_text.split()[:n])


def prepare(reviews, meta_file, out, protocol="ranking", positive_threshold=4.0, min_user_interactions=3,
            request_size=5, min_attr_count=2, dummy_query_words=0, encoder=None, args=None,
            quiet=False) -> Path:
    t0 = time.time()
    reviews, meta_file = Path(reviews), Path(meta_file)
    users, items_i, user, item, rating, ts, line, fmt = read_reviews(reviews, quiet)
    # exact duplicates (same user, item, time): keep the first
    key = np.stack([user, item, ts], 1)
    _, first = np.unique(key, axis=0, return_index=True)
    keep = np.zeros(len(user), bool)
    keep[first] = True
    n_dup = int((~keep).sum())
    user, item, rating, ts, line = user[keep], item[keep], rating[keep], ts[keep], line[keep]
    label = np.ones(len(user), np.int64) if protocol == "ranking" else (rating >= positive_threshold).astype(np.int64)
    events, info = C.finalize_events(user, ts, item, label, tiebreak=line, request_size=request_size,
                                     min_user_pos=min_user_interactions)
    icodes = info["maps"]["item"]
    asins = [items_i.values[int(c) - 1] for c in icodes]
    n = len(asins)
    text, descs, cats, brand, found = read_meta(meta_file, {a: k for k, a in enumerate(asins)}, quiet)

    if encoder is None:
        from ..text_encoders import HashEncoder

        encoder = HashEncoder()
    emb = C.text_embeddings(encoder, text, args)  # empty text -> zero row, never encoded
    empty = empty_text_mask(text)  # counted in meta.json (items_without_text)

    cols = {"item_id": np.arange(1, n + 1, dtype=np.int64)}
    card = {}
    for name, vals in (("attr_brand", brand), ("attr_cat1", [c[0] if c else None for c in cats]),
                       ("attr_cat2", [c[1] if len(c) > 1 else None for c in cats])):
        codes, cd, _ = C.encode_attr(vals, min_count=min_attr_count)
        if cd:
            cols[name], card[name] = codes, cd
    cols["text_emb"] = emb_array(emb)
    cols["raw_item_id"] = asins

    modalities = ["id", "attr", "text"]
    queries = None
    st = info["stats"]
    st.update({"duplicate_reviews_dropped": n_dup, "items_without_meta": int((~found).sum()),
               "items_without_text": int(empty.sum()), "review_format": fmt})
    dims = {"text": int(emb.shape[1])}
    meta_extra = {}
    if dummy_query_words > 0:
        # SEMINAR reference preprocessing: query = first words of the item's description
        qint = C.Interner()
        item_q = np.zeros(n + 1, np.int64)
        for k, d in enumerate(descs):
            q = _first_words(d, dummy_query_words)
            item_q[k + 1] = qint(q) if q else 0
        events["query_id"] = item_q[events["item_id"]]
        qemb = C.text_embeddings(encoder, list(qint.values), args)
        queries = {"query_id": np.arange(1, len(qint) + 1, dtype=np.int64), "text_emb": emb_array(qemb),
                   "text": list(qint.values)}
        modalities.append("query")
        dims["query"] = int(qemb.shape[1])
        meta_extra = {
            "n_queries": len(qint),
            "queries_are_synthetic": True,
            "query_rule": (f"DUMMY queries (opt-in --dummy-queries-from-description {dummy_query_words}): each event's "
                           f"query is the first {dummy_query_words} words of the interacted item's description, as in "
                           "SEMINAR's reference preprocessing for Amazon. These are NOT real search queries and they "
                           "carry information about the target item itself (leakage); events of items without a "
                           "description have query_id 0"),
            "absent_modalities": {"image": "item images are not downloaded or embedded by this preparer"},
        }
    else:
        meta_extra = {
            "n_queries": 0,
            "absent_modalities": {
                "query": "Amazon reviews have no search queries: every event has query_id 0 and there is no "
                         "queries.parquet (dummy queries are available only as the explicit opt-in "
                         "--dummy-queries-from-description N)",
                "image": "item images are not downloaded or embedded by this preparer"},
        }
    meta = {
        "name": "amazon",
        "source": SOURCE,
        "licence": LICENCE,
        "raw_files": [reviews.name, meta_file.name],
        "n_users": st["n_users"], "n_items": n, "n_events": st["n_events"],
        "modalities": modalities,
        "attr_cols": sorted(card),
        "attr_cardinality": card,
        "attr_rule": (f"attr_cat1/attr_cat2: first two category levels below the root; attr_brand: brand (2023: "
                      f"store); values on fewer than {min_attr_count} kept items -> 0; {st['items_without_meta']} "
                      "items have no metadata row (attributes 0, zero text)"),
        "dims": dims,
        "text": {"content": "'<title>. <description>' (HTML stripped, first 2000 characters)",
                 "encoder": encoder.describe()},
        "protocol": protocol,
        "protocols": [protocol],
        "label_rule": C.rating_label_rule(protocol, positive_threshold, "review"),
        "positive_threshold": positive_threshold if protocol == "ctr" else None,
        "filter_rule": C.filter_rule(min_user_interactions, st,
                                     f"{n_dup} exact duplicate reviews dropped; items are those in the kept events"),
        "ts_rule": "unix seconds (2023 release: ms // 1000); events sorted by (user, ts, raw line)",
        "request_rule": C.pseudo_request_rule(request_size, "reviews"),
        "split_rule": C.SPLIT_RULE,
        "stats": st,
        **meta_extra,
    }
    return C.write("amazon", out, cols, events, meta, queries, t0, quiet)


def main(argv: Optional[List[str]] = None) -> Path:
    ap = argparse.ArgumentParser(prog="seminar-zoo prepare amazon",
                                 description="Amazon Reviews (2014/2018/2023 JSON lines) -> seminar-zoo dataset folder")
    C.add_common_args(ap, raw_required=False)
    ap.add_argument("--reviews", default=None, help="review file (default: found in --raw)")
    ap.add_argument("--meta", default=None, help="metadata file (default: the meta_* file in --raw)")
    C.add_rating_protocol_args(ap, request_size=5)
    ap.add_argument("--min-attr-count", type=int, default=2,
                    help="attribute values on fewer kept items become 0 = unknown (default 2)")
    ap.add_argument("--dummy-queries-from-description", type=int, default=0, metavar="N",
                    help="OPT-IN, off by default: give every event a DUMMY query made of the first N words of the "
                         "item's description (SEMINAR's reference preprocessing); labelled as synthetic in meta.json")
    a = ap.parse_args(argv)
    if a.dummy_queries_from_description < 0:
        ap.error("--dummy-queries-from-description must be >= 0")
    rev, meta = _find_files(a.raw, a.reviews, a.meta)
    enc = C.make_encoder(a)
    return prepare(rev, meta, a.out, protocol=a.protocol, positive_threshold=a.positive_threshold,
                   min_user_interactions=a.min_user_interactions, request_size=a.request_size,
                   min_attr_count=a.min_attr_count, dummy_query_words=a.dummy_queries_from_description,
                   encoder=enc, args=a, quiet=a.quiet)


if __name__ == "__main__":
    main()
