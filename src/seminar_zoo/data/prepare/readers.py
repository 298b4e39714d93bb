"""Streaming readers of raw dataset files for the preparers; every bad input is a ``DatasetError``
naming the file, the line and the field (:func:`bad`).

* :func:`iter_lines` (plain or ``.gz``, with a byte-based tqdm progress bar) and
  :func:`iter_jsonl` (JSON lines, optionally Python dict literals);
* :class:`AtomicFile`: RecBole atomic files (tab-separated, ``name:type`` header);
* :func:`iter_csv_chunks` (pandas, chunked, every column read as text),
  :func:`column_numbers` and :func:`parse_int_list` to check and convert its values;
* :func:`require_file` / :func:`find_file`: the raw files a preparer needs.

Nothing here loads a whole raw file into memory at once.
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..schema import DatasetError


def bad(file, line: Optional[int], field: Optional[str], msg: str) -> DatasetError:
    where = str(file)
    if line is not None:
        where += f", line {line}"
    if field is not None:
        where += f", field '{field}'"
    return DatasetError(f"{where}: {msg}")


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

