"""Shared helpers for the public-dataset preparers (raw files -> dataset contract).

* streaming readers with a byte-based tqdm progress bar: :func:`iter_lines`
  (plain or ``.gz``), :func:`iter_jsonl`, :func:`read_atomic` (RecBole atomic
  files), :func:`iter_csv_chunks` (pandas, chunked);
* :func:`bad` builds the :class:`DatasetError` every reader raises: it names the
  file, the line and the field;
* :class:`Interner` (string ids -> 1..n while streaming), :func:`encode_attr`
  (attribute values -> dense codes, rare values -> 0 = unknown);
* :func:`finalize_events`: sorts events by (user, ts, tie-break), drops users with
  fewer than ``min_user_pos`` positive events (a k-core on users only), remaps
  users, items and queries to dense ids and assigns request ids;
* :func:`text_embeddings`: the configured text encoder with its on-disk cache.

Nothing here loads a whole raw file into memory at once; what is kept is one
int64 per field per event.
"""
from __future__ import annotations

import argparse
import ast
import csv
import gzip
import io
import json
import sys
import zlib
from array import array
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..schema import DatasetError

UPDATE_EVERY = 4096  # lines between progress-bar updates


def bad(file, line: Optional[int], field: Optional[str], msg: str) -> DatasetError:
    where = str(file)
    if line is not None:
        where += f", line {line}"
    if field is not None:
        where += f", field '{field}'"
    return DatasetError(f"{where}: {msg}")


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def progress_bar(total=None, desc: str = "", unit: str = "it", quiet: bool = False, unit_scale: bool = False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=quiet, mininterval=0.5,
                dynamic_ncols=True, leave=False)


def require_file(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: missing file")
    return p


def find_file(raw_dir, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` (also tried with ``.gz``) that exists under ``raw_dir``."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir}: raw data folder does not exist")
    for n in names:
        for cand in (raw_dir / n, raw_dir / f"{n}.gz"):
            if cand.is_file():
                return cand
    raise DatasetError(f"{raw_dir}: no {what} file (looked for {', '.join(names)}, also .gz)")


class _CountingReader(io.RawIOBase):
    """A binary reader that reports bytes read to a progress bar (for pandas / gzip)."""

    def __init__(self, raw, bar):
        self.raw, self.bar = raw, bar

    def readable(self):
        return True

    def readinto(self, b):
        n = self.raw.readinto(b)
        if n:
            self.bar.update(n)
        return n


def _open_binary(path: Path, bar):
    """(file object to read, closer). Progress counts compressed bytes for .gz."""
    raw = open(path, "rb")
    counted = io.BufferedReader(_CountingReader(raw, bar), buffer_size=1 << 20)
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=counted), raw
    return counted, raw


def iter_lines(path, desc: Optional[str] = None, quiet: bool = False) -> Iterator[Tuple[int, str]]:
    """Yield (1-based line number, line without newline) of a UTF-8 text file, plain or .gz."""
    path = require_file(path)
    with progress_bar(path.stat().st_size, desc or path.name, "B", quiet, unit_scale=True) as bar:
        fh, raw = _open_binary(path, bar)
        n = 0
        try:
            for n, b in enumerate(fh, 1):
                try:
                    s = b.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise bad(path, n, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
                yield n, s.rstrip("\r\n")
        except (OSError, EOFError, zlib.error) as e:
            raise bad(path, n + 1, None, f"cannot read ({e}); is the .gz file truncated?") from None
        finally:
            raw.close()


def iter_jsonl(path, desc: Optional[str] = None, quiet: bool = False,
               python_literals: bool = False) -> Iterator[Tuple[int, dict]]:
    """Yield (line number, object) of a JSON-lines file; blank lines are skipped.

    ``python_literals``: also accept Python dict literals (the 2014 Amazon metadata
    files were written with ``str(dict)``), parsed safely with ``ast.literal_eval``.
    """
    for n, line in iter_lines(path, desc, quiet):
        s = line.strip()
        if not s:
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            obj = None
            if python_literals and s.startswith("{"):
                try:
                    obj = ast.literal_eval(s)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    obj = None
            if obj is None:
                raise bad(path, n, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise bad(path, n, None, f"expected a JSON object per line, got {type(obj).__name__}")
        yield n, obj


# --------------------------------------------------------------------------- RecBole atomic files
class AtomicFile:
    """A RecBole atomic file: tab-separated, header ``name:type`` (token, token_seq, float, float_seq)."""

    TYPES = ("token", "token_seq", "float", "float_seq")

    def __init__(self, path, required: Sequence[str], quiet: bool = False):
        self.path = require_file(path)
        self.quiet = quiet
        with open(self.path, "rb") as fh:
            head = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        if not head:
            raise bad(self.path, 1, None, "empty file (expected a header row of name:type fields)")
        self.names: List[str] = []
        self.types: List[str] = []
        for col in head.split("\t"):
            name, sep, typ = col.partition(":")
            if not sep or typ not in self.TYPES:
                raise bad(self.path, 1, col, f"header field must be name:type with type in {self.TYPES} "
                                             "(RecBole atomic file)")
            self.names.append(name)
            self.types.append(typ)
        missing = [r for r in required if r not in self.names]
        if missing:
            raise bad(self.path, 1, None, f"missing column(s) {missing}; header has {self.names}")
        self.index = {n: i for i, n in enumerate(self.names)}

    def rows(self, desc: Optional[str] = None) -> Iterator[Tuple[int, List[str]]]:
        width = len(self.names)
        for n, line in iter_lines(self.path, desc, self.quiet):
            if n == 1 or not line:
                continue
            parts = line.split("\t")
            if len(parts) != width:
                raise bad(self.path, n, None, f"has {len(parts)} tab-separated fields, header has {width}")
            yield n, parts

    def number(self, parts: List[str], name: str, line: int, integer: bool = False):
        s = parts[self.index[name]].strip()
        try:
            v = float(s)
        except ValueError:
            raise bad(self.path, line, name, f"not a number: {s!r}") from None
        if not np.isfinite(v):
            raise bad(self.path, line, name, f"not a finite number: {s!r}")
        if integer:
            if v != int(v):
                raise bad(self.path, line, name, f"not an integer: {s!r}")
            return int(v)
        return v


# --------------------------------------------------------------------------- CSV (pandas, chunked)
def csv_header(path) -> List[str]:
    path = require_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise bad(path, 1, None, f"cannot read the header ({e})") from None


def iter_csv_chunks(path, required: Sequence[str], optional: Sequence[str] = (), chunksize: int = 500_000,
                    desc: Optional[str] = None, quiet: bool = False):
    """Yield (file line number of the chunk's first row, DataFrame) with the named columns.

    Assumes one record per line (no quoted newlines), which holds for the KuaiSAR CSVs;
    columns are read as strings so a bad value is reported, not silently coerced.
    """
    import pandas as pd

    path = require_file(path)
    header = csv_header(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise bad(path, 1, None, f"missing column(s) {missing}; header has {header}")
    cols = list(required) + [c for c in optional if c in header and c not in required]
    with progress_bar(path.stat().st_size, desc or path.name, "B", quiet, unit_scale=True) as bar:
        fh, raw = _open_binary(path, bar)
        try:
            line = 2
            reader = pd.read_csv(fh, usecols=cols, dtype=str, keep_default_na=False, chunksize=chunksize,
                                 encoding="utf-8")
            for df in reader:
                yield line, df
                line += len(df)
        except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, zlib.error) as e:
            raise bad(path, None, None, f"cannot parse CSV ({e})") from None
        finally:
            raw.close()


def column_numbers(df, col: str, path, first_line: int, integer: bool = True, allow_empty: bool = False,
                   fill=0) -> np.ndarray:
    """A CSV column as int64 (or float64); a bad value raises naming file, line and field."""
    import pandas as pd

    s = df[col]
    num = pd.to_numeric(s, errors="coerce")
    vals = num.to_numpy(dtype=np.float64, na_value=np.nan)
    badm = ~np.isfinite(vals)
    if allow_empty:
        empty = (s.str.strip() == "").to_numpy()
        vals = np.where(empty, fill, vals)
        badm &= ~empty
    if badm.any():
        i = int(np.flatnonzero(badm)[0])
        raise bad(path, first_line + i, col, f"not a number: {s.iloc[i]!r}")
    if integer:
        iv = vals.astype(np.int64)
        frac = iv != vals
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise bad(path, first_line + i, col, f"not an integer: {s.iloc[i]!r}")
        return iv
    return vals


def parse_int_list(s: str, path, line: int, field: str) -> List[int]:
    """``"[20, 34, 3]"`` -> [20, 34, 3]; empty / ``[]`` / ``nan`` -> []."""
    t = s.strip()
    if t in ("", "[]", "nan", "NaN", "None"):
        return []
    if t[0] == "[" and t[-1] == "]":
        t = t[1:-1]
    try:
        return [int(float(x)) for x in t.replace(" ", "").split(",") if x]
    except ValueError:
        raise bad(path, line, field, f"expected a list of integer token ids like [20, 34, 3], got {s!r}") from None


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
