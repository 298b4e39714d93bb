"""A text-embedding cache keyed per text: an append-only parquet store (issue 16 point 3).

SEMINAR's text modality (arXiv 2407.10714, Sec. 3.1) is a frozen encoder's embedding of
each item's (and query's) text; encoding dominates data preparation with a real encoder.
The store keys every row by a content hash of its text, so any overlap between runs
(a subsample of the same users, another protocol, a re-run) is reused and only new
texts reach the encoder.

Layout: ``cache_dir/<encoder.name>-<blake2b(cache_id)>/part-*.parquet``. Each part has
the columns ``hash`` (``fixed_size_binary(16)``: blake2b of the UTF-8 text) and ``emb``
(``fixed_size_list<float32>[dim]``); its schema metadata records the encoder's
``cache_id`` and ``dim``. Writers only ever add a new part (temp file, then
``os.replace``) and never modify one, so concurrent runs cannot corrupt the store: at
worst both encode the same text, and the duplicate is dropped when the parts are
merged (more than ``MAX_PARTS`` parts: one merged part is renamed in, then the merged
parts are deleted). Texts are encoded in chunks of ``CHUNK`` and each chunk is stored
at once, so a stopped run keeps what it encoded.

A part that cannot be read or was written for another encoder (cache_id, dim or schema
differ) is renamed to ``*.bad``, logged, and its texts are encoded again: the cache is
rebuilt, never trusted.

Empty or whitespace-only texts are never encoded: their rows are zero vectors, and
:func:`empty_text_mask` names them so the preparers declare them in meta.json (a
missing modality is declared there, never silently zero: DESIGN.md, dataset contract).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import DatasetError

HASH_BYTES = 16
CHUNK = 4096  # texts per encoder call and per stored part
MAX_PARTS = 32  # merge the parts beyond this many


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=HASH_BYTES).digest()


def empty_text_mask(texts: Sequence[Optional[str]]) -> np.ndarray:
    """True where a text is None, empty or whitespace-only: declared missing, never encoded."""
    return np.fromiter((not t or t.isspace() for t in texts), bool, len(texts))


def store_dir(encoder, cache_dir) -> Path:
    tag = hashlib.blake2b(encoder.cache_id().encode("utf-8"), digest_size=8).hexdigest()
    return Path(cache_dir) / f"{encoder.name}-{tag}"


class TextCache:
    """The parquet parts of one encoder's store (see the module docstring)."""

    def __init__(self, encoder, cache_dir, log: Optional[Callable[[str], None]] = None):
        self.root, self.dim, self.cache_id = store_dir(encoder, cache_dir), int(encoder.dim), encoder.cache_id()
        self.log = log or (lambda m: None)
        self.schema = pa.schema([("hash", pa.binary(HASH_BYTES)), ("emb", pa.list_(pa.float32(), self.dim))],
                                metadata={"cache_id": self.cache_id, "dim": str(self.dim)})
        try:  # fail before minutes of encoding, not after
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unwritable(e) from None

    def parts(self) -> List[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def _read(self, f: Path) -> Optional[pa.Table]:
        """A part's table; None if it vanished (merged away); quarantined if unusable."""
        try:
            t = pq.read_table(f)
            why = None
            if not self._compatible(t.schema):
                meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
                why = (f"written for another encoder or format: columns {dict(zip(t.schema.names, map(str, t.schema.types)))}, "
                       f"metadata {meta}; this store holds {self.cache_id!r}, dim {self.dim}")
            elif t.column("emb").null_count or t.column("hash").null_count:
                why = "null rows"
        except FileNotFoundError:
            return None
        except Exception as e:  # pyarrow raises several types for a corrupt file
            if not f.exists():
                return None
            why = f"unreadable ({type(e).__name__}: {e})"
        if why is None:
            return t
        try:
            os.replace(f, f.with_name(f.name + ".bad"))
        except OSError:
            pass  # another run quarantined it first
        self.log(f"text cache: ignoring {f} ({why}); renamed to {f.name}.bad, its texts are encoded again")
        return None

    def _compatible(self, schema: pa.Schema) -> bool:
        # compare types, not child field names: parquet renames a list's child "item" to "element"
        if schema.names != ["hash", "emb"] or schema.metadata != self.schema.metadata:
            return False
        e = schema.field("emb").type
        return (schema.field("hash").type == pa.binary(HASH_BYTES) and pa.types.is_fixed_size_list(e)
                and e.list_size == self.dim and e.value_type == pa.float32())

    @staticmethod
    def _emb(t: pa.Table, dim: int) -> np.ndarray:
        return t.column("emb").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)

    def lookup(self, hashes: Sequence[bytes]):
        """(found [n] bool, emb [n, dim] float32) for ``hashes`` from every readable part."""
        n = len(hashes)
        found, out = np.zeros(n, bool), np.zeros((n, self.dim), np.float32)
        if not n:
            return found, out
        want = pa.array(hashes, pa.binary(HASH_BYTES))
        for f in self.parts():
            t = self._read(f)
            if t is None or not t.num_rows:
                continue
            idx = pc.index_in(want, value_set=t.column("hash")).to_numpy(zero_copy_only=False)
            hit = ~np.isnan(idx.astype(np.float64)) & ~found
            if hit.any():
                emb = self._emb(t, self.dim)[idx[hit].astype(np.int64)]
                ok = np.isfinite(emb).all(axis=1)  # a non-finite row is not trusted: re-encode it
                rows = np.flatnonzero(hit)[ok]
                out[rows], found[rows] = emb[ok], True
            if found.all():
                break
        return found, out

    def _write(self, table: pa.Table) -> Path:
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.parquet"
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)  # atomic: readers see the whole part or none of it
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise self._unwritable(e) from None
        return final

    def _unwritable(self, e: Exception) -> DatasetError:
        return DatasetError(f"{self.root}: cannot write the text-embedding cache ({e}); "
                            "pass --cache-dir DIR or --no-cache")

    def append(self, hashes: Sequence[bytes], emb: np.ndarray) -> Path:
        emb = np.ascontiguousarray(emb, np.float32).reshape(-1)
        cols = [pa.array(hashes, pa.binary(HASH_BYTES)), pa.FixedSizeListArray.from_arrays(pa.array(emb), self.dim)]
        return self._write(pa.Table.from_arrays(cols, schema=self.schema))

    def compact(self) -> None:
        """Merge all parts into one (duplicates dropped) once there are more than MAX_PARTS."""
        parts = self.parts()
        if len(parts) <= MAX_PARTS:
            return
        read = [(f, t) for f in parts if (t := self._read(f)) is not None]
        if not read:
            return
        t = pa.concat_tables([t for _, t in read]).combine_chunks()
        h = t.column("hash")
        first = pc.index_in(h, value_set=h).to_numpy(zero_copy_only=False) == np.arange(len(h))
        self._write(t.filter(pa.array(first)))
        for f, _ in read:  # only after the merged part is in place
            f.unlink(missing_ok=True)


def encode_cached(encoder, texts: Sequence[Optional[str]], cache_dir, progress: bool = False,
                  log: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Embeddings [n, encoder.dim] float32 of ``texts``, reusing ``cache_dir``'s store per text.

    ``cache_dir=None`` disables the store. Empty texts get zero rows without reaching
    the encoder; each distinct text is encoded once, in order of length (less padding
    for transformer encoders), and rows come back in input order. Logs one line:
    rows encoded / from cache / empty, and texts/s.
    """
    from tqdm.auto import tqdm

    n = len(texts)
    empty = empty_text_mask(texts)
    out = np.zeros((n, encoder.dim), np.float32)
    uniq: Dict[bytes, int] = {}  # hash -> index of the distinct text
    first_row: List[int] = []  # distinct text -> first row holding it
    row_key = np.full(n, -1, np.int64)
    for i in np.flatnonzero(~empty).tolist():
        h = text_hash(texts[i])
        k = uniq.get(h)
        if k is None:
            k = uniq[h] = len(first_row)
            first_row.append(i)
        row_key[i] = k
    hashes = list(uniq)
    store = TextCache(encoder, cache_dir, log) if cache_dir is not None else None
    if store is not None:
        found, emb = store.lookup(hashes)
    else:
        found, emb = np.zeros(len(hashes), bool), np.zeros((len(hashes), encoder.dim), np.float32)
    todo = np.flatnonzero(~found)
    todo = todo[np.argsort([len(texts[first_row[k]]) for k in todo], kind="stable")]
    if len(todo) and hasattr(encoder, "load"):
        encoder.load()  # model loading is not encoding time
    t0 = time.perf_counter()
    with tqdm(total=len(todo), desc=f"{encoder.name} text", disable=not progress or not len(todo),
              mininterval=1.0) as bar:
        for s in range(0, len(todo), CHUNK):
            ks = todo[s:s + CHUNK]
            e = np.asarray(encoder.encode([texts[first_row[k]] for k in ks]), np.float32)
            if e.shape != (len(ks), encoder.dim):
                raise ValueError(f"text encoder {encoder.name!r} returned shape {e.shape}, "
                                 f"expected {(len(ks), encoder.dim)}")
            emb[ks] = e
            if store is not None:
                store.append([hashes[k] for k in ks], e)
            bar.update(len(ks))
    secs = time.perf_counter() - t0
    if store is not None:
        store.compact()
    live = row_key >= 0
    out[live] = emb[row_key[live]]
    if log:
        enc_rows = int(np.isin(row_key[live], todo).sum())
        rate = f"{len(todo) / secs:.1f} texts/s" if len(todo) and secs > 0 else "no encoding"
        log(f"text embeddings ({encoder.name}): {n} rows: {enc_rows} encoded ({len(todo)} distinct texts), "
            f"{int(live.sum()) - enc_rows} from cache, {int(empty.sum())} empty (zero vector); {rate}"
            + (f"; store {store.root}" if store is not None else "; cache off"))
    return out
