"""Scorers behind :class:`~seminar_zoo.modules.quantization.MultiModalPQ` (arXiv 2407.10714, Sec. 3.4).

A PQ score is a sum of look-up-table entries, ``s_l = sum_g LUT[g, code_{l,g}]`` over the
G = M * n_sub (modality, sub-space) codebooks.  Three ways to compute it:

* ``torch``: batched ``torch.gather`` of the tables (the reference; runs on any device), optionally
  ``torch.compile``'d into one fused loop (``compile``).
* ``faiss4``: faiss 4-bit fast-scan (André et al., "Quicker ADC", 2019): codes in blocks of 32, uint8
  tables in SIMD registers.  A sum of table entries is a PQ inner product on one-hot codebooks
  (centroid k of sub-space g is e_k, dimension 16 G), so our own table is passed as the query of an
  ``IndexPQ`` whose codes are loaded with ``add_sa_codes`` and converted to ``IndexPQFastScan``.
  Fast-scan quantises the tables to uint8 with one step for all sub-spaces (the largest span / 255),
  so a score is off by at most about G such steps (:func:`fastscan_error_bound`).
* ``faiss8``: 8-bit ``IndexPQ`` scanning float tables (exact up to float rounding).  Given a table
  it uses the same one-hot trick (dimension 256 G: faiss spends O(G 256^2) to rebuild the table, so
  this path is for correctness); given the fused *target* it loads our codebooks into faiss (the
  query tiled over modalities), which builds the table in O(G K s) like the torch path.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

FAISS_BACKENDS = ("faiss4", "faiss8")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- torch reference
def gather_sum(lut_flat: torch.Tensor, codes: torch.Tensor, offsets: torch.Tensor, table: str = "float32") -> torch.Tensor:
    """[B, G*K] float tables, [B, L, G] uint8 codes, [G] offsets (g*K) -> [B, L] float32 sums of the
    gathered entries.  ``table`` converts the tables first: ``float16``, or ``int16`` (scaled per request
    so the largest entry is 32767, summed in int32, scaled back)."""
    b, l, g = codes.shape
    scale = None
    if table == "float16":
        lut_flat = lut_flat.half()
    elif table == "int16":
        scale = lut_flat.abs().amax(1, keepdim=True).clamp_min(1e-30) / 32767.0
        lut_flat = torch.round(lut_flat / scale).to(torch.int16)
    idx = (codes.long() + offsets).reshape(b, l * g)
    vals = torch.gather(lut_flat, 1, idx).reshape(b, l, g)
    out = vals.sum(-1, dtype=torch.float32 if vals.is_floating_point() else torch.int32).float()
    return out if scale is None else out * scale


_COMPILED = {}


def compiled_gather_sum():
    """torch.compile'd :func:`gather_sum` (shapes specialised; dynamo falls back to eager past its cache)."""
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(gather_sum, dynamic=False)
    return _COMPILED["fn"]


# --------------------------------------------------------------------------- faiss
def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """[L, G] uint8 codes -> faiss' ``sa_encode`` layout: 8-bit as is, 4-bit two per byte, low nibble first."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if nbits == 8:
        return codes
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((codes.shape[0], 1), np.uint8)], 1)
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))


def fastscan_error_bound(lut: torch.Tensor) -> torch.Tensor:
    """Worst-case |fast-scan score - float score| for tables ``[..., G, 16]``: faiss shifts every sub-table
    by its min and rounds it with one shared step, the largest span / 255 (half a step of error each);
    we allow one full step per sub-table."""
    span = lut.amax(-1) - lut.amin(-1)
    return span.amax(-1) / 255.0 * lut.shape[-2]


class FaissScanner:
    """One history's codes ``[L, G]`` in a faiss index, searched with per-request tables.

    ``nbits`` 4 (fast-scan, K = 16) or 8 (IndexPQ, K <= 256).  ``codebooks`` ([G, K, s], optional)
    makes :meth:`search_query` available: faiss builds the table itself from a query ``[G * s]``.
    ``packed=True``: ``codes`` are already in :func:`pack_codes` layout (``[L, G * nbits / 8]``).
    ``bbs``: fast-scan's block of codes per SIMD pass (faiss' default 32); 96 scans L = 10k, 96 sub-spaces in
    23.5 us instead of 26.0 (fewer table reloads per code; experiments/results/retrieval.md).
    """

    BBS_CHOICES = (32, 64, 96, 128)  # the block sizes faiss instantiates for one query

    def __init__(self, codes: np.ndarray, nbits: int, codebooks: Optional[np.ndarray] = None, packed: bool = False,
                 bbs: int = 96):
        import faiss

        if nbits not in (4, 8):
            raise ValueError(f"FaissScanner: nbits must be 4 or 8, got {nbits}")
        if bbs not in self.BBS_CHOICES:
            raise ValueError(f"FaissScanner: bbs must be one of {self.BBS_CHOICES}, got {bbs}")
        self.bbs = bbs
        codes = np.asarray(codes, dtype=np.uint8)
        self.n, self.g = codes.shape[0], codes.shape[1] * (8 // nbits if packed else 1)
        self.nbits, self.k = nbits, 1 << nbits
        self.packed = packed = np.ascontiguousarray(codes) if packed else pack_codes(codes, nbits)
        g_pad = self.g + (self.g % 2 if nbits == 4 else 0)  # fast-scan wants an even number of sub-spaces
        self.g_pad, self.lut_index, self.query_index = g_pad, None, None
        self._swig_ptr = faiss.swig_ptr
        if codebooks is not None:
            cb = np.zeros((g_pad, self.k, codebooks.shape[-1]), np.float32)
            cb[: len(codebooks), : codebooks.shape[1]] = codebooks
            self.query_index = self._index(faiss, cb, packed, fastscan=nbits == 4, bbs=bbs)
            self.query_dim = self.query_index.d  # a SWIG attribute read costs as much as a numpy call

    @staticmethod
    def _index(faiss, centroids: np.ndarray, packed: np.ndarray, fastscan: bool, bbs: int = 32):
        g, k, s = centroids.shape
        idx = faiss.IndexPQ(g * s, g, int(np.log2(k)), faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), idx.pq.centroids)
        idx.is_trained = True
        if len(packed):
            idx.add_sa_codes(packed)
        return faiss.IndexPQFastScan(idx, bbs) if fastscan else idx

    def _search(self, index, query: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """One query ``[D]`` -> ([k], [k]); a batch ``[n, D]`` -> ([n, k], [n, k]) in one faiss call."""
        k = min(k, self.n)
        if query.ndim == 1:  # one request (serving): no reshape or row views; the Python around the scan is ~3 us
            shape = (k,)     # of a ~25 us scan at L = 10k, as much as faiss' own table building
            q = query if query.dtype == np.float32 and query.flags.c_contiguous else \
                np.ascontiguousarray(query, dtype=np.float32)
        else:
            q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1, index.d)
            shape = (len(q), k)
        d, i = np.empty(shape, np.float32), np.empty(shape, np.int64)
        if k:  # the SWIG call itself: faiss' Python wrapper re-checks and re-allocates
            ptr = self._swig_ptr
            index.search_c(len(q) if q.ndim == 2 else 1, ptr(q), k, ptr(d), ptr(i))
        return d, i

    def search(self, lut: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Tables ``[G, K']`` (K' <= 2^nbits; missing entries are never addressed) -> top-k (scores, rows)."""
        if self.lut_index is None:  # built on first use: faiss8's one-hot index is 256 G wide
            import faiss

            onehot = np.broadcast_to(np.eye(self.k, dtype=np.float32), (self.g_pad, self.k, self.k))
            self.lut_index = self._index(faiss, onehot, self.packed, fastscan=self.nbits == 4, bbs=self.bbs)
        q = np.zeros((self.g_pad, self.k), np.float32)
        q[: self.g, : lut.shape[1]] = lut
        return self._search(self.lut_index, q.ravel(), k)

    def search_query(self, query: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Query ``[G * s]`` (or a batch ``[n, G * s]``) against the loaded codebooks -> top-k (scores, rows)."""
        if self.query_index is None:
            raise RuntimeError("FaissScanner.search_query needs codebooks at construction")
        query = np.asarray(query, np.float32)
        if query.shape[-1] == self.query_dim:  # no padding needed: skip the copy (serving latency)
            return self._search(self.query_index, query, k)
        q = np.zeros((*query.shape[:-1], self.query_dim), np.float32)
        q[..., : query.shape[-1]] = query
        return self._search(self.query_index, q, k)

    def scores(self, lut: np.ndarray) -> np.ndarray:
        """All ``L`` scores (the search with k = L, scattered back to row order)."""
        d, i = self.search(lut, self.n)
        out = np.empty(self.n, np.float32)
        out[i] = d
        return out


def _top_rows(s: np.ndarray, cand: np.ndarray, k: int, order: str = "score") -> np.ndarray:
    """The ``k`` candidates with the largest scores ``s``: best first (``order="score"``, stable on ties) or by
    ascending row, i.e. chronologically (``"time"``, what the GSU hands the ESU, cf. ``ops.masked_topk``)."""
    if order not in ("score", "time"):
        raise ValueError(f"order must be 'score' or 'time', got {order!r}")
    if len(cand) <= k:
        return cand[np.argsort(-s, kind="stable")] if order == "score" else np.sort(cand)
    if len(cand) <= 256:  # one sort of a small pool beats partition + sort (2.8 vs 4.2 us at 100 -> 50)
        top = np.argsort(-s, kind="stable")[:k]
        return cand[top] if order == "score" else np.sort(cand[top])
    top = np.argpartition(s, len(s) - k)[len(s) - k:]
    return cand[top[np.argsort(-s[top], kind="stable")]] if order == "score" else np.sort(cand[top])


class ByIdReranker:
    """The exact second stage of the GSU (Sec. 3.4: PQ top R*K, then exact scores) for serving.

    A behaviour's fused key is a sum of per-id keys (item, query, ...): the tables are stacked once into one
    float32 matrix, and a history becomes a row map ``[L, P]`` (:meth:`rows`, kept with the history's fast-scan
    index like the codes).  A request is then one gather of row ids, one faiss by-id inner-product call over the
    C * P rows (no gathered copy of the keys) and one sort of the pool: ~8 us for C = 100 at d = 64, where
    one call per table spent ~11 us (experiments/results/retrieval.md).
    Without faiss, numpy gathers and multiplies (same answer)."""

    def __init__(self, tables):
        tables = [np.asarray(t, dtype=np.float32) for t in tables]
        if not tables or any(t.ndim != 2 or t.shape[1] != tables[0].shape[1] for t in tables):
            raise ValueError(f"ByIdReranker: tables must be [N_p, d] with one d, got {[t.shape for t in tables]}")
        self.d, self.n_parts = tables[0].shape[1], len(tables)
        self.offsets = np.cumsum([0] + [len(t) for t in tables[:-1]]).astype(np.int64)
        self.table = np.ascontiguousarray(np.concatenate(tables))
        try:
            import faiss

            self._faiss, self._table_ptr = faiss, faiss.swig_ptr(self.table)
        except ImportError:
            self._faiss = None

    def rows(self, *ids) -> np.ndarray:
        """A history's ids, one array ``[L]`` per table -> its row map ``[L, P]`` into the stacked table."""
        if len(ids) != self.n_parts:
            raise ValueError(f"ByIdReranker.rows: {self.n_parts} id arrays expected (one per table), got {len(ids)}")
        return np.ascontiguousarray(np.stack([np.asarray(i, np.int64) + o for i, o in zip(ids, self.offsets)], 1))

    def topk(self, query: np.ndarray, rows: np.ndarray, cand: np.ndarray, k: int, order: str = "score") -> np.ndarray:
        """Fused query ``[d]``, a history's row map, candidate rows ``[C]`` -> the top-``k`` candidates by exact
        score, best first (``order="score"``) or chronologically (``"time"``: the GSU's own order)."""
        r, query = rows.take(cand, axis=0), np.ascontiguousarray(query, dtype=np.float32)  # r: [C, P], contiguous
        if self._faiss is None:
            s = (self.table[r.ravel()] @ query).reshape(r.shape).sum(1)
        else:
            f, ip = self._faiss, np.empty(r.size, np.float32)
            f.fvec_inner_products_by_idx(f.swig_ptr(ip), f.swig_ptr(query), self._table_ptr, f.swig_ptr(r),
                                         self.d, 1, r.size)
            s = ip[0::2] + ip[1::2] if self.n_parts == 2 else ip.reshape(r.shape).sum(1)
        return _top_rows(s, np.asarray(cand), k, order)


def allocate_subspaces(shares, total: int, dim: int) -> list:
    """Sub-spaces per modality for ``total`` codes in all, by each modality's share of the score variance
    (issue 13 item 3; cf. bit allocation in transform coding): start every modality at 1 and repeatedly
    double the one with the largest share per sub-space while the budget lasts.  Counts divide ``dim``."""
    shares = [max(float(s), 0.0) for s in shares]
    n = [1] * len(shares)
    if total < len(n):
        raise ValueError(f"allocate_subspaces: total={total} is below one sub-space per modality ({len(n)})")
    while True:
        order = sorted(range(len(n)), key=lambda j: -shares[j] / n[j])
        grow = next((j for j in order if 2 * n[j] <= dim and dim % (2 * n[j]) == 0 and sum(n) + n[j] <= total), None)
        if grow is None:
            return n
        n[grow] *= 2
