"""The dataset contract (DESIGN.md, "Dataset contract") and its validation.

A prepared dataset is a folder with ``items.parquet``, ``events.parquet``,
optional ``queries.parquet`` and ``meta.json``. :func:`validate_dataset` checks
every rule and raises :class:`DatasetError` whose message names the file, the
column and the first bad row, so a user never has to read a torch stack trace
to find out that row 1234 of their events file has a NaN.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
ITEMS, QUERIES, EVENTS, META = "items.parquet", "queries.parquet", "events.parquet", "meta.json"
EVENT_COLUMNS = ("user_id", "ts", "query_id", "item_id", "label", "request_id")
# Modalities a dataset may declare; "query" is the query text, "id"/"attr" always exist.
ALL_MODALITIES = ("id", "attr", "text", "image", "query")


class DatasetError(ValueError):
    """Bad input data. The CLI prints the message and exits with code 2."""


@dataclass
class Tables:
    """Validated numpy views of a dataset folder."""

    meta: dict
    item_attr: np.ndarray  # [N+1, A] int64, row 0 = padding
    item_text: Optional[np.ndarray]  # [N+1, Dt] float32
    item_image: Optional[np.ndarray]  # [N+1, Di] float32
    query_text: Optional[np.ndarray]  # [Q+1, Dq] float32
    events: Dict[str, np.ndarray]  # EVENT_COLUMNS -> int64 arrays, sorted by user, ts

    @property
    def n_items(self) -> int:
        return self.item_attr.shape[0] - 1


def _err(file: str, column: Optional[str], row: Optional[int], msg: str) -> DatasetError:
    where = file
    if column is not None:
        where += f", {'key' if file.endswith(META) else 'column'} '{column}'"
    if row is not None:
        where += f", row {row}"
    return DatasetError(f"{where}: {msg}")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def read_meta(path: Path) -> dict:
    f = Path(path) / META
    if not f.exists():
        raise _err(str(f), None, None, "missing file (every prepared dataset needs meta.json)")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise _err(str(f), None, None, f"not valid JSON ({e})") from None
    for key in ("schema_version", "modalities"):
        if key not in meta:
            raise _err(str(f), key, None, "missing key")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise _err(str(f), "schema_version", None,
                   f"is {meta['schema_version']}, this version of seminar-zoo reads {SCHEMA_VERSION}")
    bad = [m for m in meta["modalities"] if m not in ALL_MODALITIES]
    if bad:
        raise _err(str(f), "modalities", None, f"unknown modalities {bad}; allowed {list(ALL_MODALITIES)}")
    _check_meta_keys(meta, str(f))
    return meta


def _check_meta_keys(meta: dict, f: str) -> None:
    """Keys the models read when they build their tables: present, with the right type."""
    for key in ("n_items", "n_users"):
        if key not in meta:
            raise _err(f, key, None, "missing key")
    for key in ("n_items", "n_users", "n_events", "n_queries"):
        v = meta.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _err(f, key, None, f"must be a non-negative integer, got {v!r}")
    dims = meta.get("dims", {})
    if not isinstance(dims, dict):
        raise _err(f, "dims", None, f"must be an object like {{\"text\": 384}}, got {dims!r}")
    for mod in ("text", "image", "query"):
        if mod in meta["modalities"]:
            d = dims.get(mod)
            if d is None:
                raise _err(f, f"dims.{mod}", None, f"missing key (modality '{mod}' is declared, so its "
                                                   "embedding width is needed)")
            if not isinstance(d, int) or isinstance(d, bool) or d < 1:
                raise _err(f, f"dims.{mod}", None, f"must be a positive integer, got {d!r}")
    cols = meta.get("attr_cols", [])
    card = meta.get("attr_cardinality", {})
    if not isinstance(cols, list) or not isinstance(card, dict):
        raise _err(f, "attr_cols" if not isinstance(cols, list) else "attr_cardinality", None,
                   "attr_cols must be a list and attr_cardinality an object keyed by column")
    for c in cols:
        v = card.get(c)
        if v is None:
            raise _err(f, f"attr_cardinality.{c}", None, "missing key (every attr_cols entry needs a cardinality)")
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _err(f, f"attr_cardinality.{c}", None, f"must be a non-negative integer, got {v!r}")


def _check_count(meta: dict, key: str, actual: int, file: Path, what: str) -> None:
    if key in meta and meta[key] != actual:
        raise _err(str(file.parent / META), key, None, f"is {meta[key]} but {file.name} holds {actual} {what}")


def _read_table(f: Path) -> pa.Table:
    if not f.exists():
        raise _err(str(f), None, None, "missing file")
    try:
        return pq.read_table(f)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise _err(str(f), None, None, f"cannot read parquet ({e})") from None


def _int_column(table: pa.Table, f: Path, col: str) -> np.ndarray:
    if col not in table.column_names:
        raise _err(str(f), col, None, f"missing column (has {table.column_names})")
    arr = table.column(col)
    if not pa.types.is_integer(arr.type):
        raise _err(str(f), col, None, f"wrong dtype {arr.type}, expected int64")
    if arr.null_count:
        raise _err(str(f), col, _first(np.asarray(arr.is_null())), "null value")
    return arr.to_numpy().astype(np.int64, copy=False)


def _emb_column(table: pa.Table, f: Path, col: str, width: Optional[int]) -> np.ndarray:
    if col not in table.column_names:
        raise _err(str(f), col, None, "missing column (declared in meta.json modalities)")
    arr = table.column(col).combine_chunks()
    if not (pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type)) or not pa.types.is_floating(
        arr.type.value_type
    ):
        raise _err(str(f), col, None, f"wrong dtype {arr.type}, expected a fixed-size list of float32")
    if arr.null_count:
        raise _err(str(f), col, _first(np.asarray(arr.is_null())), "null embedding")
    if pa.types.is_fixed_size_list(arr.type):
        w = arr.type.list_size
        mat = arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), w)
    else:
        lens = np.diff(arr.offsets.to_numpy())
        w = int(lens[0]) if len(lens) else 0
        if len(lens) and (lens != w).any():
            r = _first(lens != w)
            raise _err(str(f), col, r, f"embedding has {lens[r]} values, row 0 has {w}")
        mat = arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), w)
    if width is not None and w != width:
        raise _err(str(f), col, None, f"embedding width {w} disagrees with meta.json ({width})")
    mat = mat.astype(np.float32, copy=False)
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        raise _err(str(f), col, _first(~finite), "NaN or inf in embedding")
    return mat


def _dense_ids(ids: np.ndarray, f: Path, col: str) -> None:
    """ids must be exactly 1..n in order so row i of the table is id i."""
    expect = np.arange(1, len(ids) + 1)
    if len(ids) and (ids != expect).any():
        r = _first(ids != expect)
        raise _err(str(f), col, r, f"ids must be 1..{len(ids)} in order (0 is padding); found {ids[r]}")


_LAST: Dict[str, object] = {}  # the last dataset validated: the CLI checks it before Lightning starts


def _fingerprint(path: Path) -> tuple:
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file())


def validate_dataset(path) -> Tables:
    """Load and check a dataset folder; returns numpy tables or raises DatasetError.

    The last result is kept (keyed by the files' sizes and mtimes), so the CLI's check before
    Lightning starts and the DataModule's load read the files once."""
    path = Path(path)
    key = (str(path.resolve()), _fingerprint(path)) if path.is_dir() else None
    if key is not None and _LAST.get("key") == key:
        return _LAST["tables"]
    tables = _validate(path)
    _LAST.update(key=key, tables=tables)
    return tables


def _validate(path: Path) -> Tables:
    if not path.is_dir():
        raise DatasetError(f"{path}: dataset folder does not exist")
    meta = read_meta(path)
    mods = set(meta["modalities"])

    # items
    f = path / ITEMS
    t = _read_table(f)
    item_ids = _int_column(t, f, "item_id")
    _dense_ids(item_ids, f, "item_id")
    attr_cols = sorted(c for c in t.column_names if c.startswith("attr_"))
    if list(meta.get("attr_cols", [])) != attr_cols:
        raise _err(str(f), None, None, f"attribute columns {attr_cols} disagree with meta.json attr_cols "
                                       f"{meta.get('attr_cols', [])}")
    n = len(item_ids)
    _check_count(meta, "n_items", n, f, "items")
    attrs = [np.zeros(n, np.int64)] if not attr_cols else []
    for c in attr_cols:
        a = _int_column(t, f, c)
        if (a < 0).any():
            raise _err(str(f), c, _first(a < 0), f"negative attribute value {a[a < 0][0]} (0 = unknown)")
        card = meta.get("attr_cardinality", {}).get(c)
        if card is not None and (a > card).any():
            r = _first(a > card)
            raise _err(str(f), c, r, f"value {a[r]} out of range 0..{card} (meta.json attr_cardinality)")
        attrs.append(a)
    item_attr = np.concatenate([np.zeros((1, len(attrs)), np.int64), np.stack(attrs, 1)], 0)
    dims = meta.get("dims", {})
    item_text = item_image = query_text = None
    if "text" in mods:
        item_text = _emb_column(t, f, "text_emb", dims.get("text"))
    if "image" in mods:
        item_image = _emb_column(t, f, "image_emb", dims.get("image"))

    # queries
    n_queries = 0
    fq = path / QUERIES
    if "query" in mods or fq.exists():
        tq = _read_table(fq)
        qids = _int_column(tq, fq, "query_id")
        _dense_ids(qids, fq, "query_id")
        n_queries = len(qids)
    if n_queries or "n_queries" in meta:  # the query table is sized by meta.json n_queries (default 0)
        _check_count({"n_queries": 0, **meta}, "n_queries", n_queries, fq, "queries")
        if "query" in mods:
            query_text = _emb_column(tq, fq, "text_emb", dims.get("query"))

    # events
    fe = path / EVENTS
    te = _read_table(fe)
    ev = {c: _int_column(te, fe, c) for c in EVENT_COLUMNS}
    if len(ev["user_id"]) == 0:
        raise _err(str(fe), None, None, "no events")
    _check_count(meta, "n_events", len(ev["user_id"]), fe, "events")
    for col, hi, zero_ok in (("item_id", n, False), ("query_id", n_queries, True), ("user_id", None, False)):
        a = ev[col]
        lo = 0 if zero_ok else 1
        bad = a < lo if hi is None else (a < lo) | (a > hi)
        if bad.any():
            r = _first(bad)
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            why = "is not allowed here (0 is padding)" if a[r] == 0 and not zero_ok else f"is out of range {rng}"
            raise _err(str(fe), col, r, f"id {a[r]} {why}")
    lab = ev["label"]
    if ((lab != 0) & (lab != 1)).any():
        r = _first((lab != 0) & (lab != 1))
        raise _err(str(fe), "label", r, f"label {lab[r]} is not 0/1")
    u, ts = ev["user_id"], ev["ts"]
    order_bad = (np.diff(u) < 0) | ((np.diff(u) == 0) & (np.diff(ts) < 0))
    if order_bad.any():
        r = _first(order_bad) + 1
        col = "user_id" if u[r] < u[r - 1] else "ts"
        raise _err(str(fe), col, r, "events not sorted by user then ts")
    n_users = meta.get("n_users")
    if n_users is not None:
        present = np.zeros(n_users + 1, bool)
        if u.max() > n_users:
            r = _first(u > n_users)
            raise _err(str(fe), "user_id", r, f"id {u[r]} out of range 1..{n_users} (meta.json n_users)")
        present[u] = True
        if not present[1:].all():
            missing = int(np.flatnonzero(~present[1:])[0]) + 1
            raise _err(str(fe), "user_id", None, f"user {missing} has no events (meta.json n_users={n_users})")
    has_event = np.bincount(u) > 0
    has_pos = np.bincount(u[lab == 1], minlength=len(has_event)) > 0
    if (has_event & ~has_pos).any():
        missing = int(np.flatnonzero(has_event & ~has_pos)[0])
        raise _err(str(fe), "user_id", _first(u == missing), f"user {missing} has no positive (label 1) events: empty sequence")
    return Tables(meta, item_attr, _pad(item_text), _pad(item_image), _pad(query_text), ev)


def dataset_fingerprint(meta: dict) -> str:
    """``NAME (U users, I items, E events; HASH)``: what tells two datasets apart in a table. HASH
    covers meta.json's counts, seed, source and generator arguments, not the files' bytes."""
    import hashlib

    keys = ("name", "n_users", "n_items", "n_events", "n_queries", "seed", "source", "generator", "modalities")
    h = hashlib.sha1(json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, default=str).encode()).hexdigest()
    return (f"{meta.get('name', '?')} ({meta.get('n_users', '?')} users, {meta.get('n_items', '?')} items, "
            f"{meta.get('n_events', '?')} events; {h[:6]})")


def _pad(mat: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Prepend the padding row so row i is id i."""
    if mat is None:
        return None
    return np.concatenate([np.zeros((1, mat.shape[1]), np.float32), mat], 0)


def emb_array(mat: np.ndarray) -> pa.Array:
    """A float32 matrix as a pyarrow fixed-size-list column."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])


@contextmanager
def atomic_dataset_dir(out) -> Iterator[Path]:
    """Write a dataset into a temp folder beside ``out``; rename into place only on success."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        validate_dataset(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temp(out: Path) -> List[Path]:
    """Delete ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` folders beside ``out`` left by a killed
    ``prepare`` (its PID is gone); a live writer's folder is kept."""
    removed = []
    for p in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")):
        pid = p.name[len(out.name) + 6:].split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_dataset(out, items: Dict[str, object], events: Dict[str, np.ndarray], meta: dict,
                  queries: Optional[Dict[str, object]] = None) -> Path:
    """Write the contract files atomically. Values may be numpy arrays or pyarrow arrays."""
    meta = {"schema_version": SCHEMA_VERSION, **meta}
    with atomic_dataset_dir(out) as tmp:
        pq.write_table(pa.table(items), tmp / ITEMS)
        if queries is not None:
            pq.write_table(pa.table(queries), tmp / QUERIES)
        pq.write_table(pa.table(events), tmp / EVENTS)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return Path(out)

