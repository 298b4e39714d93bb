"""Shared helpers for the public-dataset preparers (raw files -> dataset contract).

Reading the raw files is :mod:`.readers`; here:

* :class:`Interner` (string ids -> 1..n while streaming), :class:`IntColumn`,
  :func:`encode_attr` (attribute values -> dense codes, rare values -> 0 = unknown);
* :func:`finalize_events`: sorts events by (user, ts, tie-break), drops users with
  fewer than ``min_user_pos`` positive events (a k-core on users only), remaps
  users, items and queries to dense ids and assigns request ids;
* :func:`text_embeddings`: the configured text encoder with its on-disk cache;
* the meta.json rules every preparer states alike (:func:`filter_rule`, :data:`SPLIT_RULE`)
  and :func:`write` (the dataset folder, then the one-line summary);
* the command-line options every preparer shares.

What is kept while streaming is one int64 per field per event.
"""
from __future__ import annotations

import argparse
import sys
import time
from array import array
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..schema import DatasetError, write_dataset


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ids and attributes
class Interner:
    """Hashable raw ids -> 1..n in first-seen order."""

    def __init__(self):
        self.ids: Dict[object, int] = {}
        self.values: List[object] = []

    def __call__(self, key) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.values) + 1
            self.values.append(key)
        return i

    def __len__(self) -> int:
        return len(self.values)


class IntColumn:
    """Append-only int64 column (array('q') while streaming, numpy at the end)."""

    def __init__(self):
        self.a = array("q")

    def append(self, v: int) -> None:
        self.a.append(v)

    def extend(self, vs: Iterable[int]) -> None:
        self.a.extend(vs)

    def numpy(self) -> np.ndarray:
        return np.frombuffer(self.a, dtype=np.int64).copy() if len(self.a) else np.zeros(0, np.int64)


def encode_attr(values: Sequence, min_count: int = 1, unknown=(None, "")) -> Tuple[np.ndarray, int, List]:
    """Values -> codes 1..C by descending frequency (ties by value); unknown / rare -> 0.

    Returns (codes int64, cardinality C, vocabulary where vocab[c-1] is code c).
    """
    from collections import Counter

    unk = set(u for u in unknown if u is not None)
    cnt = Counter(v for v in values if v is not None and v not in unk)
    vocab = sorted((v for v, c in cnt.items() if c >= min_count), key=lambda v: (-cnt[v], str(v)))
    code = {v: i + 1 for i, v in enumerate(vocab)}
    out = np.fromiter((code.get(v, 0) if v is not None else 0 for v in values), np.int64, count=len(values))
    return out, len(vocab), vocab


def encode_attr_int(values: np.ndarray, min_count: int = 1) -> Tuple[np.ndarray, int]:
    """Integer ids (0 = unknown) -> codes 1..C by descending frequency (ties by value); rare -> 0."""
    v = np.asarray(values, np.int64)
    known = v != 0
    uniq, inv, cnt = np.unique(v[known], return_inverse=True, return_counts=True)
    order = np.lexsort((uniq, -cnt))  # frequency desc, then value
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(1, len(uniq) + 1)
    rank[cnt < min_count] = 0
    card = int((cnt >= min_count).sum())
    out = np.zeros(len(v), np.int64)
    out[known] = rank[inv]
    return out, card


def year_bucket(year: Optional[int]) -> int:
    """Release-year bucket: 0 unknown, 1 <1940, 2 1940s ... 6 1980s, 7 1990-94, 8 1995-99, 9 2000s, 10 2010s, 11 >=2020."""
    if year is None:
        return 0
    if year < 1940:
        return 1
    if year < 1990:
        return 2 + (year - 1940) // 10
    if year < 1995:
        return 7
    if year < 2000:
        return 8
    if year < 2010:
        return 9
    if year < 2020:
        return 10
    return 11


N_YEAR_BUCKETS = 11
YEAR_BUCKETS_DOC = "0 unknown, 1 <1940, 2 1940s, 3 1950s, 4 1960s, 5 1970s, 6 1980s, 7 1990-94, 8 1995-99, 9 2000s, 10 2010s, 11 >=2020"


# --------------------------------------------------------------------------- events
def finalize_events(user: np.ndarray, ts: np.ndarray, item: np.ndarray, label: np.ndarray,
                    query: Optional[np.ndarray] = None, tiebreak: Optional[np.ndarray] = None,
                    request_key: Optional[np.ndarray] = None, request_size: Optional[int] = None,
                    min_user_pos: int = 3) -> Tuple[Dict[str, np.ndarray], dict]:
    """Sort, filter and remap raw integer event columns into the contract's events table.

    * order: (user, ts, request_key, tiebreak) -- ties in ts keep the raw file order;
    * users with fewer than ``min_user_pos`` label-1 events are dropped;
    * users, items and queries are remapped to 1..n in increasing raw-code order
      (``maps['user'|'item'|'query'][new_id - 1]`` is the raw code); query 0 stays 0;
    * request ids (globally unique, increasing along the sorted table, each request
      contiguous): with ``request_key``, a request is a run of events of one user with
      the same key; otherwise greedy blocks of at least ``request_size`` consecutive
      events of a user, closed only where ts changes, a short remainder folded into
      the user's previous block (a user with fewer events has one block).
    Returns (events, info) where info has 'maps' and 'stats'.
    """
    n0 = len(user)
    if n0 == 0:
        raise DatasetError("no events were read from the raw files")
    if query is None:
        query = np.zeros(n0, np.int64)
    if tiebreak is None:
        tiebreak = np.arange(n0)
    keys = [tiebreak] + ([request_key] if request_key is not None else []) + [ts, user]
    order = np.lexsort(keys)
    user, ts, item, label, query = user[order], ts[order], item[order], label[order], query[order]
    rkey = request_key[order] if request_key is not None else None

    # k-core on users: positives per user
    uu, uinv = np.unique(user, return_inverse=True)
    pos = np.bincount(uinv, weights=(label == 1), minlength=len(uu))
    keep_user = pos >= max(min_user_pos, 1)
    keep = keep_user[uinv]
    stats = {"raw_events": int(n0), "raw_users": int(len(uu)),
             "users_dropped_min_interactions": int((~keep_user).sum()),
             "events_dropped_with_users": int((~keep).sum())}
    user, ts, item, label, query = user[keep], ts[keep], item[keep], label[keep], query[keep]
    if rkey is not None:
        rkey = rkey[keep]
    if len(user) == 0:
        raise DatasetError(f"no user has at least {min_user_pos} positive interactions; "
                           "lower --min-user-interactions or check the input")

    maps = {}
    maps["user"], user = np.unique(user, return_inverse=True)
    user = user.astype(np.int64) + 1
    maps["item"], item = np.unique(item, return_inverse=True)
    item = item.astype(np.int64) + 1
    qcodes = np.unique(query[query > 0])
    maps["query"] = qcodes
    query = np.where(query > 0, np.searchsorted(qcodes, query) + 1, 0).astype(np.int64)

    n = len(user)
    new_user = np.ones(n, bool)
    new_user[1:] = user[1:] != user[:-1]
    if rkey is not None:
        new_req = new_user.copy()
        new_req[1:] |= rkey[1:] != rkey[:-1]
    else:
        new_ts = new_user.copy()
        new_ts[1:] |= ts[1:] != ts[:-1]
        new_req = _block_starts(new_user, new_ts, max(int(request_size or 1), 1))
    request = np.cumsum(new_req).astype(np.int64)

    events = {"user_id": user, "ts": ts.astype(np.int64), "query_id": query, "item_id": item,
              "label": label.astype(np.int64), "request_id": request}
    stats.update({"n_events": int(n), "n_users": int(user.max()), "n_items": int(len(maps["item"])),
                  "n_positive_events": int((label == 1).sum()), "n_requests": int(request[-1]),
                  "ts_ties_within_user": int((~new_ts[1:] if rkey is None else
                                              ((user[1:] == user[:-1]) & (ts[1:] == ts[:-1]))).sum())})
    return events, {"maps": maps, "stats": stats}


def _block_starts(new_user: np.ndarray, new_ts: np.ndarray, size: int) -> np.ndarray:
    """Greedy blocks of >= ``size`` events over (user, ts) groups; a user's short tail joins its last block."""
    g_start = np.flatnonzero(new_ts)
    g_len = np.diff(np.append(g_start, len(new_ts))).tolist()
    g_user_start = new_user[g_start].tolist()
    out = np.zeros(len(new_ts), bool)
    count = 0
    last_start = -1  # group index that opened the current block
    user_first_block = True
    for gi, (st, ln) in enumerate(zip(g_user_start, g_len)):
        if st:
            count, user_first_block = 0, True
        if count == 0:
            last_start = gi
            out[g_start[gi]] = True
        count += ln
        if count >= size:
            count, user_first_block = 0, False
        end_of_user = gi + 1 == len(g_len) or g_user_start[gi + 1]
        if end_of_user and 0 < count < size and not user_first_block:
            out[g_start[last_start]] = False  # fold the short tail into the previous block
    return out


# --------------------------------------------------------------------------- text + CLI plumbing
def add_common_args(ap: argparse.ArgumentParser, text: bool = True, default_text_dim: int = 256,
                    raw_required: bool = True) -> None:
    ap.add_argument("--raw", required=raw_required, default=None, help="folder with the raw files")
    ap.add_argument("--out", required=True, help="output dataset folder (written atomically)")
    ap.add_argument("--min-user-interactions", type=int, default=3,
                    help="drop users with fewer positive (label-1) interactions (k-core on users; default 3)")
    if text:
        ap.add_argument("--text-encoder", default="minilm",
                        help="item text encoder: minilm (all-MiniLM-L6-v2, needs the 'text' extra) or hash "
                             "(hashed bag of words fallback); default minilm")
        ap.add_argument("--text-dim", type=int, default=default_text_dim,
                        help=f"width of the hash encoder (default {default_text_dim}; minilm is 384)")
        ap.add_argument("--cache-dir", default=None,
                        help="text-embedding cache (default: OUT's parent/.text-cache)")
        ap.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def add_rating_protocol_args(ap: argparse.ArgumentParser, request_size: int) -> None:
    ap.add_argument("--protocol", choices=("ranking", "ctr"), default="ranking",
                    help="ranking: every rating is a positive interaction; ctr: ratings >= "
                         "--positive-threshold are label 1, the rest label 0 (default ranking)")
    ap.add_argument("--positive-threshold", type=float, default=4.0,
                    help="ctr protocol: a rating >= this is label 1 (default 4)")
    ap.add_argument("--request-size", type=int, default=request_size,
                    help=f"events per pseudo-request (default {request_size}); see meta.json request_rule")


def make_encoder(args):
    from ..text_encoders import TextEncoderUnavailable, get_encoder

    try:
        return get_encoder(args.text_encoder, dim=args.text_dim if args.text_encoder == "hash" else None)
    except TextEncoderUnavailable as e:
        raise SystemExit(f"seminar-zoo: error: {e}")


def text_embeddings(encoder, texts: Sequence[str], args) -> np.ndarray:
    """Per-text cached embeddings (``text_cache``); empty texts -> zero rows, never encoded.

    ``args=None`` (library use): no cache, no log.
    """
    from ..text_encoders import encode_cached

    if args is None:
        return encode_cached(encoder, list(texts), None)
    cache = None
    if not getattr(args, "no_cache", False):
        cache = Path(args.cache_dir) if args.cache_dir else Path(args.out).absolute().parent / ".text-cache"
    return encode_cached(encoder, list(texts), cache, progress=not args.quiet,
                         log=None if args.quiet else (lambda m: log(m)))


def summary(name: str, out, events: Dict[str, np.ndarray], meta: dict, seconds: float, quiet: bool) -> None:
    if quiet:
        return
    lab = events["label"]
    log(f"{name}: {meta['n_users']} users, {meta['n_items']} items, {len(lab)} events "
        f"({int(lab.sum())} positive), {meta.get('n_queries', 0)} queries, modalities {meta['modalities']} "
        f"-> {out} ({seconds:.1f}s)")


# --------------------------------------------------------------------------- meta.json rules + writing
SPLIT_RULE = ("per user by time (DataModule): ranking = last behaviour test, the one before val; "
              "ctr = last request test, the one before val")


def filter_rule(min_user_interactions: int, stats: dict, rest: str = "items are those in the kept events") -> str:
    """meta.json ``filter_rule``: the k-core on users of :func:`finalize_events` (its ``stats``), then ``rest``."""
    return (f"users with fewer than {min_user_interactions} label-1 events are dropped "
            f"({stats['users_dropped_min_interactions']} users, {stats['events_dropped_with_users']} events); "
            + rest)


def rating_label_rule(protocol: str, positive_threshold: float, noun: str) -> str:
    """meta.json ``label_rule`` of a ratings / reviews log (``noun``: "rating", "review")."""
    if protocol == "ranking":
        return f"every {noun} is a positive interaction (label 1); negatives are sampled by the DataModule"
    return (f"every {noun} is a labelled impression: label 1 if rating >= {positive_threshold:g}, else 0; "
            "histories use label-1 events only")


def pseudo_request_rule(request_size: int, nouns: str) -> str:
    """meta.json ``request_rule`` of :func:`finalize_events`'s blocks (``nouns``: "ratings", "reviews")."""
    return (f"pseudo-requests: blocks of about {request_size} consecutive {nouns} of a user, closed at a "
            "timestamp change, the remainder folded into the user's last block")


def write(name: str, out, items: Dict, events: Dict[str, np.ndarray], meta: dict, queries: Optional[Dict] = None,
          t0: Optional[float] = None, quiet: bool = False) -> Path:
    """Write the dataset folder (``schema.write_dataset``), then print its summary line; returns its path."""
    path = write_dataset(out, items, events, meta, queries)
    summary(name, path, events, meta, time.time() - (t0 or time.time()), quiet)
    return path
