"""``seminar-zoo bench retrieval``: approximate GSU retrieval for SEMINAR (arXiv 2407.10714, Sec. 3.4).

Compares, per history length L and on the *same* target and history vectors, how well and how fast
each method finds the exact top-K behaviours by the multi-modal score
q.k = sum_i sum_j <t_i, k_j> (the GSU score with gamma weights and projections G(j) applied upstream):

* ``exact``           per-modality vectors [L, M, d] float32, O(L M d) as in the paper;
* ``exact-fused``     (extra row) the same score on pre-summed keys sum_j k_j [L, d]: valid only when
                      gamma and G(j) are fixed at serving time; O(L d);
* ``mmpq-SxC``        :class:`~seminar_zoo.modules.quantization.MultiModalPQ`, S sub-vectors per modality,
                      C centroids (M*S bytes per behaviour);
* ``mmpq-SxC+rrR``    (extra rows) the same, then the R*K best by PQ re-scored exactly (needs the full
                      vectors of those R*K behaviours: in SEMINAR the embedding tables);
* ``pq-fused-GxC``    (extra rows) our quantizer with M=1 on the pre-summed key, G sub-vectors: what
                      equal bytes buy when the modality weights are frozen;
* ``simhash-B``       SimHash of the pre-summed key (B random hyperplanes, packed into int64 words),
                      top-K by Hamming distance (popcount by SWAR bit operations), as in ETA;
* ``faiss-pq-mxN``    faiss IndexPQ on the concatenated [M*d] vector (query tiled M times), inner product;
* ``hnsw-2stage``     one faiss HNSW (inner product) per modality over the history, top-K each, merged by
                      exact score (the reference evaluation script's two-stage ANN);
* ``faiss-lsh-B``     faiss IndexLSH (random rotation + sign bits) on the pre-summed key.

Vectors are SYNTHETIC.  ``clustered``: every user mixes ~10 of 64 topics; each behaviour's latent
vector is its topic centre plus noise, and each modality is a normalised noisy projection of it
with the per-modality norms of our synthetic dataset (query 1, id 0.5, text 1, image 10: image ~10x
text), the same construction as ``seminar_zoo.data.synthetic``; 30% of behaviours carry the
"no query" vector.  ``isotropic`` (the reference script's setting, L=2048, K=32): every modality is
an independent Gaussian direction scaled to its norm.

Timing: medians of per-request wall times, methods interleaved round by round so that load drift on
a shared machine hits all of them alike; ``--threads`` intra-op threads (torch and faiss).
A batch of 256 requests materialises 256 histories of the method's own storage; where that exceeds
``--mem-mb`` the batch is capped (the row's ``batch_size`` says so).  faiss indices are per history,
so their "batch" is a loop over requests (faiss has no batched search over different per-user
indices).  Recall@K is measured against a float64 exact top-K.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..modules.quantization import MultiModalPQ

MODALITIES = ("query", "id", "text", "image")
NORMS = (1.0, 0.5, 1.0, 10.0)
NOISE = (1.0, 2.0, 1.5, 3.0)  # per-modality noise around the projected latent (cf. data/synthetic.py)
N_TOPICS, LATENT, TOPICS_PER_USER, LATENT_NOISE, NO_QUERY = 64, 16, 10, 0.6, 0.3
ROW_KEYS = ("method", "length", "topk", "recall", "latency_ms_single", "latency_ms_batch256",
            "bytes_per_behaviour", "encode_ms")


# --------------------------------------------------------------------------- synthetic vectors
class VectorWorld:
    """Seeded generator of SYNTHETIC multi-modal behaviour / target vectors (see module docstring)."""

    def __init__(self, kind: str, dim: int, seed: int = 0):
        if kind not in ("clustered", "isotropic"):
            raise ValueError(f"unknown vector kind {kind!r}")
        self.kind, self.dim = kind, dim
        g = torch.Generator().manual_seed(10_000 + seed)
        self.centres = torch.randn(N_TOPICS, LATENT, generator=g)
        self.proj = torch.randn(len(MODALITIES), LATENT, dim, generator=g)
        self.no_query = torch.randn(dim, generator=g)
        self.norms = torch.tensor(NORMS)

    def _vectors(self, topic: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        shape = tuple(topic.shape)
        if self.kind == "isotropic":
            v = torch.randn(*shape, len(MODALITIES), self.dim, generator=g)
        else:
            lat = self.centres[topic] + LATENT_NOISE * torch.randn(*shape, LATENT, generator=g)
            v = torch.einsum("...l,mld->...md", lat, self.proj)
            v = v + torch.tensor(NOISE)[:, None] * torch.randn(*shape, len(MODALITIES), self.dim, generator=g)
            noq = torch.rand(*shape, generator=g) < NO_QUERY
            v[..., 0, :] = torch.where(noq[..., None], self.no_query.expand(*shape, self.dim), v[..., 0, :])
        return self.norms[:, None] * v / v.norm(dim=-1, keepdim=True)

    def users(self, n_users: int, length: int, n_targets: int, seed: int):
        """(targets [U, T, M, d], histories [U, L, M, d]) for U users."""
        g = torch.Generator().manual_seed(seed)
        ut = torch.rand(n_users, N_TOPICS, generator=g).argsort(1)[:, :TOPICS_PER_USER]
        w = torch.rand(n_users, TOPICS_PER_USER, generator=g) ** 2 + 1e-3  # uneven topic mix
        hist_topic = ut.gather(1, torch.multinomial(w, length, replacement=True, generator=g))
        tgt_own = ut.gather(1, torch.multinomial(w, n_targets, replacement=True, generator=g))
        tgt_any = torch.randint(N_TOPICS, (n_users, n_targets), generator=g)
        tgt_topic = torch.where(torch.rand(n_users, n_targets, generator=g) < 0.8, tgt_own, tgt_any)
        return self._vectors(tgt_topic, g), self._vectors(hist_topic, g)


# --------------------------------------------------------------------------- methods
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _popcount64(x: torch.Tensor) -> torch.Tensor:
    """SWAR popcount of int64 words (two's complement wrap-around makes it exact for all 64 bits)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56) & 0xFF


def _hamming(store: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return _popcount64(store ^ q[:, None, :]).sum(-1)


_HAMMING_COMPILED = {}


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """[..., B] bool -> [..., B/64] int64 words."""
    *lead, nb = bits.shape
    w = bits.reshape(*lead, nb // 64, 64).long()
    shifts = torch.arange(64, device=bits.device, dtype=torch.long)
    return (w << shifts).sum(-1)  # bit 63 wraps to the sign bit, as intended


class TorchMethod:
    """A method whose per-history storage is a tensor with a leading history dim (batched search)."""

    looped = False
    family = ""
    fit_s = 0.0

    def __init__(self, name: str, bytes_per_behaviour: float, mem_bytes_per_behaviour: Optional[float] = None):
        self.name, self.bytes_per_behaviour = name, bytes_per_behaviour
        self.mem_bytes = mem_bytes_per_behaviour or bytes_per_behaviour

    def fit(self, train: torch.Tensor) -> None:
        pass

    def encode(self, hist: torch.Tensor):
        raise NotImplementedError

    def rows(self, store, idx: torch.Tensor):
        """The storage of the requests' histories (a real copy for a batch; a view for one row)."""
        if idx.numel() == 1:
            i = int(idx[0])
            return tuple(s[i:i + 1] for s in store) if isinstance(store, tuple) else store[i:i + 1]
        return tuple(s[idx] for s in store) if isinstance(store, tuple) else store[idx]

    def search(self, store, target: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError


class Exact(TorchMethod):
    family = "exact"

    def __init__(self, m: int, d: int, fused: bool = False):
        super().__init__("exact-fused" if fused else "exact", 4 * d * (1 if fused else m))
        self.fused = fused

    def encode(self, hist):
        return hist.sum(2).contiguous() if self.fused else hist.contiguous()

    def search(self, store, target, k):
        q = target.sum(1)  # fold the target modalities: an identity for the double sum
        b, l = store.shape[:2]
        keys = store.reshape(b, -1, store.shape[-1])
        s = torch.bmm(keys, q[:, :, None]).reshape(b, l, -1).sum(-1)
        return s.topk(k, dim=1).indices


class MMPQ(TorchMethod):
    family = "mmpq"

    def __init__(self, m: int, d: int, n_sub: int, n_centroids: int, seed: int, rerank: int = 0,
                 fused: bool = False, backend: str = "eager", lut_dtype: str = "float32"):
        mm = 1 if fused else m
        self.pq = MultiModalPQ(mm, d, n_sub=n_sub, n_centroids=n_centroids, seed=seed, backend=backend,
                               lut_dtype=lut_dtype)
        if fused:
            name = f"pq-fused-{n_sub}x{n_centroids}"
        else:
            name = f"mmpq-{n_sub}x{n_centroids}" + (f"+rr{rerank}" if rerank else "")
        super().__init__(name, mm * n_sub, mm * n_sub + (4 * m * d if rerank else 0))
        self.fused, self.rerank = fused, rerank
        self.family = "pq-fused" if fused else ("mmpq+rerank" if rerank else "mmpq")

    def _prep(self, x):
        return x.sum(-2, keepdim=True) if self.fused else x

    def fit(self, train):
        t0 = time.perf_counter()
        self.pq.fit(self._prep(train))
        self.fit_s = time.perf_counter() - t0

    def encode(self, hist):
        codes = self.pq.encode(self._prep(hist))
        return (codes, hist.contiguous()) if self.rerank else codes

    def search(self, store, target, k):
        codes, full = store if self.rerank else (store, None)
        kk = min(codes.shape[1], k * self.rerank) if self.rerank else k
        _, idx = self.pq.topk(self._prep(target), codes, kk)
        if not self.rerank:
            return idx
        b = idx.shape[0]
        cand = full[torch.arange(b, device=idx.device)[:, None], idx]  # [B, R*K, M, d]
        s = torch.einsum("bd,bkd->bk", target.sum(1), cand.sum(2))
        return idx.gather(1, s.topk(k, dim=1).indices)


class SimHash(TorchMethod):
    family = "simhash"

    def __init__(self, m: int, d: int, bits: int, seed: int, compiled: bool = False):
        if bits % 64:
            raise ValueError(f"simhash bits must be a multiple of 64, got {bits}")
        super().__init__(f"simhash-{bits}", bits // 8)
        g = torch.Generator().manual_seed(seed + 7)
        self.planes = torch.randn(d, bits, generator=g)
        self.compiled = compiled

    def _hash(self, x):  # [..., M, d] -> [..., bits/64]
        return _pack_bits(x.sum(-2) @ self.planes.to(x.device) > 0)

    def encode(self, hist):
        return self._hash(hist)

    def search(self, store, target, k):
        q = self._hash(target)
        fn = _hamming
        if self.compiled:
            if "fn" not in _HAMMING_COMPILED:
                _HAMMING_COMPILED["fn"] = torch.compile(_hamming, dynamic=True)
            fn = _HAMMING_COMPILED["fn"]
        h = fn(store, q)
        return (-h).topk(k, dim=1).indices


class LoopMethod:
    """faiss methods: one index per history; requests are searched one by one."""

    looped = True
    fit_s = 0.0

    def fit(self, train):
        pass

    def rows(self, store, idx):
        return [store[int(i)] for i in idx]

    def search(self, store, target, k):
        t = target.cpu().numpy().astype(np.float32)
        return torch.from_numpy(np.stack([self.search_one(s, t[i], k) for i, s in enumerate(store)]))


class FaissPQ(LoopMethod):
    family = "faiss-pq"

    def __init__(self, faiss, m: int, d: int, n_codes: int, nbits: int = 8):
        self.faiss, self.m, self.d = faiss, m, d
        self.name = f"faiss-pq-{n_codes}x{nbits}"
        self.bytes_per_behaviour = n_codes * nbits / 8
        self.index = faiss.IndexPQ(m * d, n_codes, nbits, faiss.METRIC_INNER_PRODUCT)

    def fit(self, train):
        t0 = time.perf_counter()
        self.index.train(train.reshape(len(train), -1).numpy().astype(np.float32))
        self.fit_s = time.perf_counter() - t0

    def encode(self, hist):
        out = []
        for h in hist:
            ix = self.faiss.clone_index(self.index)
            ix.add(h.reshape(h.shape[0], -1).cpu().numpy().astype(np.float32))
            out.append(ix)
        return out

    def search_one(self, ix, t, k):
        q = np.tile(t.sum(0), self.m)[None].astype(np.float32)  # <tile(q), concat(k)> = sum_j <q, k_j>
        return ix.search(q, k)[1][0]


class FaissLSH(LoopMethod):
    family = "faiss-lsh"

    def __init__(self, faiss, m: int, d: int, bits: int):
        self.faiss, self.name, self.bytes_per_behaviour = faiss, f"faiss-lsh-{bits}", bits / 8
        self.index = faiss.IndexLSH(d, bits, True, False)

    def fit(self, train):
        t0 = time.perf_counter()
        self.index.train(train.sum(1).numpy().astype(np.float32))
        self.fit_s = time.perf_counter() - t0

    def encode(self, hist):
        out = []
        for h in hist:
            ix = self.faiss.clone_index(self.index)
            ix.add(h.sum(1).cpu().numpy().astype(np.float32))
            out.append(ix)
        return out

    def search_one(self, ix, t, k):
        return ix.search(t.sum(0)[None].astype(np.float32), k)[1][0]


class HNSW2Stage(LoopMethod):
    family = "hnsw-2stage"
    name = "hnsw-2stage"

    def __init__(self, faiss, m: int, d: int, hnsw_m: int = 16, ef_search: int = 64):
        self.faiss, self.m, self.d, self.hnsw_m, self.ef = faiss, m, d, hnsw_m, ef_search
        self.bytes_per_behaviour = float("nan")  # measured from the serialized indices at encode

    def encode(self, hist):
        out = []
        for h in hist:
            hn = h.cpu().numpy().astype(np.float32)
            idxs = []
            for j in range(self.m):
                ix = self.faiss.IndexHNSWFlat(self.d, self.hnsw_m, self.faiss.METRIC_INNER_PRODUCT)
                ix.hnsw.efSearch = self.ef
                ix.add(np.ascontiguousarray(hn[:, j]))
                idxs.append(ix)
            if math.isnan(self.bytes_per_behaviour):
                self.bytes_per_behaviour = sum(self.faiss.serialize_index(ix).nbytes for ix in idxs) / len(hn)
            out.append((idxs, hn))
        return out

    def search_one(self, store, t, k):
        idxs, hn = store
        q = t.sum(0)[None].astype(np.float32)
        self.ef = max(self.ef, k)
        cand = np.unique(np.concatenate([ix.search(q, k)[1][0] for ix in idxs]))
        cand = cand[cand >= 0]
        s = hn[cand].sum(1) @ q[0]
        top = np.argsort(-s)[:k]
        out = np.full(k, -1, dtype=np.int64)
        out[:len(top)] = cand[top]
        return out


# --------------------------------------------------------------------------- timing helpers
class CacheFlusher:
    """Touches a buffer larger than the last-level cache so each timed request starts cache-cold
    (a served user's history is not in cache; without this, small histories would be timed warm)."""

    def __init__(self, mb: int):
        self.buf = torch.ones(max(1, mb) * 2**18) if mb > 0 else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.sum()  # read-only: evicts the caches without leaving dirty lines to write back


def _median_ms(ts: List[float]) -> float:
    return statistics.median(ts) * 1e3 if ts else float("nan")


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    k = truth.shape[1]
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth)) / (k * truth.shape[0])


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- one setting
def run_setting(methods, world: VectorWorld, length: int, k: int, args, device, log) -> List[dict]:
    n_hist = args.histories or max(1, min(8, 200_000 // length))
    n_single = args.requests
    n_tgt = max(n_single, math.ceil(256 / n_hist))
    targets, hist = world.users(n_hist, length, n_tgt, seed=args.seed * 1000 + length)
    m, d = hist.shape[-2:]
    # requests: history p with its targets; the first n_single per history are timed one by one
    req_hist = torch.arange(n_hist).repeat_interleave(n_single)
    req_tgt = targets[:, :n_single].reshape(-1, m, d)
    truth = torch.einsum("rd,rld->rl", req_tgt.double().sum(1),
                         hist[req_hist].double().sum(2)).topk(k, dim=1).indices
    batch_hist = torch.arange(256) % n_hist
    batch_tgt = targets.permute(1, 0, 2, 3).reshape(-1, m, d)[:256]  # request r -> history r % n_hist
    hist_dev, req_tgt_dev, batch_tgt_dev = hist.to(device), req_tgt.to(device), batch_tgt.to(device)

    stores, enc = {}, {}
    for meth in methods:
        ts = []
        parts = []
        for p in range(n_hist):
            h = hist_dev[p:p + 1] if not meth.looped else hist[p:p + 1]
            _sync(device)
            t0 = time.perf_counter()
            parts.append(meth.encode(h))
            _sync(device)
            ts.append(time.perf_counter() - t0)
        if meth.looped:
            stores[meth.name] = [x for part in parts for x in part]
        elif isinstance(parts[0], tuple):
            stores[meth.name] = tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
        else:
            stores[meth.name] = torch.cat(parts)
        enc[meth.name] = _median_ms(ts)
    log(f"  L={length}: {n_hist} histories x {n_single} timed requests; encoded all methods")

    # single requests: rounds over methods, so load drift hits all of them alike
    single = {mt.name: [] for mt in methods}
    found = {mt.name: [None] * len(req_hist) for mt in methods}
    one_rows = {mt.name: [mt.rows(stores[mt.name], req_hist[r:r + 1]) for r in range(len(req_hist))]
                for mt in methods}
    flush = CacheFlusher(args.flush_mb if device.type == "cpu" else 0)
    for rep in range(args.reps + 1):
        for mt in methods:
            for r in range(len(req_hist)):
                tg = req_tgt_dev[r:r + 1]
                flush()
                _sync(device)
                t0 = time.perf_counter()
                idx = mt.search(one_rows[mt.name][r], tg, k)
                _sync(device)
                dt = time.perf_counter() - t0
                if rep == 0:
                    found[mt.name][r] = idx.reshape(-1).cpu()
                else:  # rep 0 is the warm-up (and gives the results)
                    single[mt.name].append(dt)

    rows = []
    for mt in methods:
        # batch: up to 256 requests at once, capped by the memory budget of the method's storage
        if mt.looped:
            bsz = 256
        else:
            bsz = int(max(1, min(256, args.mem_mb * 2**20 // max(1.0, mt.mem_bytes * length))))
        bstore = mt.rows(stores[mt.name], batch_hist[:bsz])
        btg = batch_tgt_dev[:bsz]
        bt = []
        for rep in range(args.batch_reps + 1):
            flush()
            _sync(device)
            t0 = time.perf_counter()
            mt.search(bstore, btg, k)
            _sync(device)
            if rep:
                bt.append(time.perf_counter() - t0)
        del bstore
        batch_ms = _median_ms(bt)
        rec = _recall(torch.stack(found[mt.name]), truth)
        rows.append({
            "method": mt.name, "length": length, "topk": k, "recall": round(rec, 4),
            "latency_ms_single": round(_median_ms(single[mt.name]), 4),
            "latency_ms_batch256": round(batch_ms / bsz, 4),
            "bytes_per_behaviour": float(mt.bytes_per_behaviour),
            "encode_ms": round(enc[mt.name], 3),
            "batch_size": bsz, "batch_ms": round(batch_ms, 3),
            "family": mt.family, "data": world.kind, "fit_s": round(mt.fit_s, 2),
            "device": str(device) if not mt.looped else "cpu", "threads": args.threads,
            "n_requests": int(len(req_hist)), "n_histories": n_hist,
        })
    ex = next((r for r in rows if r["method"] == "exact"), None)
    for r in rows:
        r["speedup_vs_exact"] = round(ex["latency_ms_single"] / r["latency_ms_single"], 2) if ex else None
    return rows


# --------------------------------------------------------------------------- levers
def measure_levers(world, length, k, configs, backends, args, device, log) -> List[dict]:
    """MMPQ scoring+top-K latency per (backend, LUT dtype) for one request at ``length``."""
    targets, hist = world.users(2, length, 2, seed=args.seed * 1000 + 7 + length)
    _, train = world.users(16, 256, 1, seed=args.seed + 99)
    out = []
    for (s, c) in configs:
        pq = MultiModalPQ(hist.shape[2], hist.shape[3], s, c, seed=args.seed, n_iter=3).fit(
            train.reshape(-1, *hist.shape[2:]))
        pq = pq.to(device)
        codes = pq.encode(hist.to(device))[:1]
        tg = targets[:1, 0].to(device)
        ts = {}
        variants = [(b, dt) for b in backends for dt in ("float32", "float16", "int16")]
        for b, dt in variants:
            ts[(b, dt)] = []
        flush = CacheFlusher(args.flush_mb if device.type == "cpu" else 0)
        for rep in range(args.reps * 4 + 2):
            for b, dt in variants:
                pq.backend, pq.lut_dtype, pq._compile_failed = b, dt, False
                try:
                    flush()
                    _sync(device)
                    t0 = time.perf_counter()
                    pq.topk(tg, codes, k)
                    _sync(device)
                    if rep >= 2:
                        ts[(b, dt)].append(time.perf_counter() - t0)
                except Exception as e:  # a backend that breaks here is reported, not fatal
                    ts[(b, dt)] = None
                    log(f"  lever {b}/{dt} failed: {type(e).__name__}: {e}")
        for (b, dt), v in ts.items():
            if v is not None and not (b == "compile" and pq._compile_failed):
                out.append({"config": f"mmpq-{s}x{c}", "length": length, "backend": b, "lut_dtype": dt,
                            "latency_ms_single": round(_median_ms(v), 4)})
    return out


# --------------------------------------------------------------------------- reporting
def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: List[dict]) -> str:
    head = ("| method | recall@K | ms / request (1) | ms / request (batch) | batch | bytes / behaviour "
            "| encode ms / history | speed-up vs exact |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['method']} | {r['recall']:.3f} | {_fmt(r['latency_ms_single'])} | "
                     f"{_fmt(r['latency_ms_batch256'], 4)} | {r['batch_size']} | {_fmt(r['bytes_per_behaviour'], 0)} | "
                     f"{_fmt(r['encode_ms'], 1)} | {_fmt(r.get('speedup_vs_exact'), 2)} |")
    return "\n".join(lines)


def target_checks(rows: List[dict]) -> List[str]:
    """The issue's targets, evaluated on the measured rows (clustered data)."""
    out = []
    by = {}
    for r in rows:
        by.setdefault((r["data"], r["length"], r["topk"]), []).append(r)
    for (data, length, k), rs in sorted(by.items()):
        if data != "clustered":
            continue
        mm = [r for r in rs if r["family"] == "mmpq"]
        ex = next((r for r in rs if r["method"] == "exact"), None)
        exf = next((r for r in rs if r["method"] == "exact-fused"), None)
        if length == 10_000 and ex:
            for r in mm + [r for r in rs if r["family"] == "mmpq+rerank"]:
                ok = r["recall"] >= 0.90 and r["speedup_vs_exact"] >= 5
                extra = (f", {exf['latency_ms_single'] / r['latency_ms_single']:.2f}x vs exact-fused"
                         if exf else "")
                out.append(f"- L=10,000, K={k}, one request: {r['method']} recall {r['recall']:.3f}, "
                           f"{r['speedup_vs_exact']:.2f}x faster than exact{extra} -> "
                           f"{'MET' if ok else 'not met'} (target: recall >= 0.90 and >= 5x)")
        for r in mm:
            peers = [p for p in rs if p["bytes_per_behaviour"] == r["bytes_per_behaviour"]
                     and p["family"] in ("simhash", "faiss-pq", "faiss-lsh")]
            if peers:
                cmp = ", ".join(f"{p['method']} {p['recall']:.3f}" for p in peers)
                # the bar: above SimHash, at least faiss IndexPQ (within 0.01); IndexLSH is listed only
                ok = all(r["recall"] > p["recall"] if p["family"] == "simhash" else r["recall"] >= p["recall"] - 0.01
                         for p in peers if p["family"] != "faiss-lsh")
                out.append(f"- L={length:,}: {r['method']} ({r['bytes_per_behaviour']:.0f} B) recall "
                           f"{r['recall']:.3f} vs {cmp} -> {'MET' if ok else 'not met'}")
        hn = next((r for r in rs if r["method"] == "hnsw-2stage"), None)
        if hn:
            cand = [r for r in rs if r["family"] in ("mmpq", "mmpq+rerank") and r["recall"] >= hn["recall"]]
            if cand:
                best = min(cand, key=lambda r: r["latency_ms_single"])
                ok = best["latency_ms_single"] < hn["latency_ms_single"]
                out.append(f"- L={length:,}: hnsw-2stage recall {hn['recall']:.3f} at {hn['latency_ms_single']:.3f} ms; "
                           f"fastest MMPQ row with >= its recall: {best['method']} at {best['latency_ms_single']:.3f} ms "
                           f"-> {'MET' if ok else 'not met'}")
            else:
                out.append(f"- L={length:,}: hnsw-2stage recall {hn['recall']:.3f}: no MMPQ row reaches it -> not met")
        if length == 100_000:
            for r in mm + [r for r in rs if r["family"] == "mmpq+rerank"]:
                out.append(f"- L=100,000: {r['method']} whole request {r['latency_ms_single']:.2f} ms -> "
                           f"{'MET' if r['latency_ms_single'] < 10 else 'not met'} (target < 10 ms)")
    return out


def limits_section(rows: List[dict]) -> List[str]:
    """What limits plain MMPQ, stated with this run's own rows (clustered data, each length)."""
    out = []
    for length in sorted({r["length"] for r in rows if r["data"] == "clustered"}):
        rs = {r["method"]: r for r in rows if r["data"] == "clustered" and r["length"] == length}
        ex = rs.get("exact")
        pairs = []
        for name, r in rs.items():
            if r["family"] != "mmpq":
                continue
            fused = [f for f in rs.values() if f["family"] == "pq-fused"
                     and f["bytes_per_behaviour"] == r["bytes_per_behaviour"]]
            if fused:
                pairs.append(f"{name} {r['recall']:.3f} vs {fused[0]['method']} {fused[0]['recall']:.3f} "
                             f"at {r['bytes_per_behaviour']:.0f} B")
        if pairs:
            out.append(f"- L={length:,}, bit allocation: " + "; ".join(pairs) + ".")
        if ex:
            mm = sorted((r for r in rs.values() if r["family"] == "mmpq"), key=lambda r: r["bytes_per_behaviour"])
            if mm:
                out.append(f"- L={length:,}, gather vs stream: exact {ex['latency_ms_single']:.3f} ms reads "
                           f"{ex['bytes_per_behaviour'] * length / 2**20:.1f} MB; " + "; ".join(
                               f"{r['method']} {r['latency_ms_single']:.3f} ms reads "
                               f"{r['bytes_per_behaviour'] * length / 2**20:.2f} MB" for r in mm) + ".")
    return out


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["data"], r["length"], r["topk"]) for r in rows}, key=lambda s: (s[0] != "clustered", s[1]))
    n = len(settings)
    cols = min(n, 3)
    rws = math.ceil(n / cols)
    fig, axes = plt.subplots(rws, cols, figsize=(6.2 * cols, 4.6 * rws), squeeze=False)
    fams = ["exact", "mmpq", "mmpq+rerank", "pq-fused", "simhash", "faiss-pq", "hnsw-2stage", "faiss-lsh"]
    colors = dict(zip(fams, ["black", "tab:red", "tab:orange", "tab:pink", "tab:blue", "tab:green",
                             "tab:purple", "tab:cyan"]))
    markers = "osD^v<>pPX*h"
    handles = {}
    for ax, (data, length, k) in zip(axes.flat, settings):
        rs = [r for r in rows if (r["data"], r["length"], r["topk"]) == (data, length, k)]
        seen = {}
        for r in rs:
            f = r["family"]
            i = seen.get(f, 0)
            seen[f] = i + 1
            h = ax.scatter(r["latency_ms_single"], r["recall"], color=colors.get(f, "gray"),
                           marker=markers[i % len(markers)], s=55, edgecolor="k", linewidth=0.4)
            ax.annotate(r["method"], (r["latency_ms_single"], r["recall"]), fontsize=6.5,
                        xytext=(3, 3), textcoords="offset points")
            handles.setdefault(f, h)
        ax.set_xscale("log")
        ax.set_xlabel("median latency per request, one request (ms, log scale)")
        ax.set_ylabel(f"recall@{k} of exact top-{k}")
        ax.set_ylim(-0.03, 1.05)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"L={length:,}, K={k}, {data} SYNTHETIC vectors", fontsize=10)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle("GSU retrieval: recall vs latency (CPU)" if rows and rows[0]["device"] == "cpu"
                 else "GSU retrieval: recall vs latency", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def _pairs(s: str):
    out = []
    for p in filter(None, s.split(",")):
        try:
            a, b = p.lower().split("x")
            out.append((int(a), int(b)))
        except ValueError:
            raise SystemExit(f"bench retrieval: bad codebook size {p!r}; expected e.g. 8x256")
    return out


def _ints(s: str, what: str):
    try:
        return [int(x) for x in filter(None, s.split(","))]
    except ValueError:
        raise SystemExit(f"bench retrieval: {what} must be comma-separated integers, got {s!r}")


def build_parser():
    ap = argparse.ArgumentParser(prog="seminar-zoo bench retrieval",
                                 description="Approximate GSU retrieval benchmark (SYNTHETIC vectors); see the module doc.")
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--topk", type=int, default=50)
    ap.add_argument("--reference", dest="reference", action="store_true", default=True,
                    help="also run the reference script's setting: L=2048, K=32, isotropic (default on)")
    ap.add_argument("--no-reference", dest="reference", action="store_false")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--md", default=None, help="write a markdown report here")
    ap.add_argument("--png", default=None, help="write the recall-vs-latency plot here")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and faiss (default 1)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--mmpq", default="4x256,8x256,16x256,16x16", help="MMPQ codebook sizes n_subxn_centroids")
    ap.add_argument("--rerank", default="8x256,16x256", help="MMPQ sizes also run with exact re-scoring of the top R*K")
    ap.add_argument("--rerank-factor", type=int, default=4)
    ap.add_argument("--fused-pq", default="16x256,32x256", help="pq-fused sizes (sub-vectors of the summed key)")
    ap.add_argument("--simhash-bits", default="64,128,256,512")
    ap.add_argument("--lsh-bits", default="128,512")
    ap.add_argument("--no-faiss", action="store_true", help="skip the faiss rows")
    ap.add_argument("--backends", default="eager,compile",
                    help="MMPQ scoring backends to try in the lever table; the fastest is used for the main rows")
    ap.add_argument("--histories", type=int, default=0, help="distinct histories per length (0 = auto)")
    ap.add_argument("--requests", type=int, default=4, help="timed requests per history")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-reps", type=int, default=3)
    ap.add_argument("--mem-mb", type=int, default=1024, help="memory cap for one batch's storage")
    ap.add_argument("--flush-mb", type=int, default=64,
                    help="touch this many MB before each timed call so it starts cache-cold (0 = off)")
    ap.add_argument("--train-users", type=int, default=64)
    ap.add_argument("--train-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = build_parser().parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    lengths = _ints(args.lengths, "--lengths")
    if not lengths or min(lengths) < 2:
        raise SystemExit("bench retrieval: --lengths needs at least one length >= 2")
    if args.topk < 1 or args.topk > min(lengths):
        raise SystemExit(f"bench retrieval: --topk must be in [1, min(lengths)={min(lengths)}], got {args.topk}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench retrieval: --device cuda requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    import torch._dynamo as dynamo

    # compiled MMPQ scoring specialises on (B, L): allow one graph per shape this bench uses
    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        faiss_msg = f"faiss {faiss.__version__}"
    except ImportError:
        faiss = None
        faiss_msg = ("faiss is not installed: faiss-pq / hnsw-2stage / faiss-lsh rows SKIPPED "
                     "(pip install --no-deps faiss-cpu, or the package's `peers` extra)")
    if args.no_faiss:
        faiss, faiss_msg = None, "faiss rows skipped (--no-faiss)"
    log(f"bench retrieval: {faiss_msg}; threads={args.threads}; device={device}; load {_load()}")
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("eager", "compile"):
            raise SystemExit(f"bench retrieval: unknown backend {b!r} (eager, compile)")

    mm_cfg, rr_cfg, fused_cfg = _pairs(args.mmpq), _pairs(args.rerank), _pairs(args.fused_pq)
    sh_bits, lsh_bits = _ints(args.simhash_bits, "--simhash-bits"), _ints(args.lsh_bits, "--lsh-bits")
    m, d = len(MODALITIES), args.dim
    t_start = time.time()
    load_before = _load()

    settings = [("clustered", L, args.topk) for L in lengths]
    if args.reference:
        settings.append(("isotropic", 2048, 32))

    # levers: pick the scoring backend / table dtype on the clustered data
    lever_len = max([L for L in lengths if L <= 10_000] or [min(lengths)])
    lever_rows = measure_levers(VectorWorld("clustered", d, args.seed), lever_len, args.topk,
                                mm_cfg[:1] + mm_cfg[-2:-1] if len(mm_cfg) > 1 else mm_cfg, backends, args, device, log)
    best = {}
    for r in lever_rows:
        if r["lut_dtype"] == "float16":
            # reported, never chosen: fp16's 11-bit mantissa rounds entries of magnitude ~100 (image x image)
            # by ~0.05, the size of the score gaps at the top-K boundary; it lowers recall
            continue
        best.setdefault((r["backend"], r["lut_dtype"]), []).append(r["latency_ms_single"])
    choice = min(best, key=lambda kv: sum(best[kv])) if best else ("eager", "float32")
    log(f"  levers at L={lever_len}: " + ", ".join(f"{b}/{dt}={sum(v):.3f}" for (b, dt), v in best.items())
        + f" -> using {choice[0]}/{choice[1]}")

    rows: List[dict] = []
    for kind in dict.fromkeys(s[0] for s in settings):
        world = VectorWorld(kind, d, args.seed)
        _, train = world.users(args.train_users, args.train_len, 1, seed=args.seed + 1)
        train = train.reshape(-1, m, d)
        methods = [Exact(m, d), Exact(m, d, fused=True)]
        for s, c in mm_cfg:
            methods.append(MMPQ(m, d, s, c, args.seed, backend=choice[0], lut_dtype=choice[1]))
        for s, c in rr_cfg:
            methods.append(MMPQ(m, d, s, c, args.seed, rerank=args.rerank_factor, backend=choice[0], lut_dtype=choice[1]))
        for s, c in fused_cfg:
            methods.append(MMPQ(m, d, s, c, args.seed, fused=True, backend=choice[0], lut_dtype=choice[1]))
        for b in sh_bits:
            methods.append(SimHash(m, d, b, args.seed))  # eager SWAR: faster than compiled per call here
        if faiss is not None:
            for s, c in mm_cfg:
                if c == 256:
                    methods.append(FaissPQ(faiss, m, d, m * s, 8))
            methods.append(HNSW2Stage(faiss, m, d))
            for b in lsh_bits:
                methods.append(FaissLSH(faiss, m, d, b))
        # identical-codebook rows share one fit (an MMPQ with re-ranking reuses the plain one's codebooks)
        fitted = {}
        for mt in methods:
            if isinstance(mt, MMPQ) and not mt.fused and (mt.pq.n_sub, mt.pq.n_centroids) in fitted:
                src = fitted[(mt.pq.n_sub, mt.pq.n_centroids)]
                mt.pq.load_state_dict(src.pq.state_dict())
                mt.fit_s = src.fit_s
                continue
            mt.fit(train)
            if isinstance(mt, MMPQ) and not mt.fused:
                fitted[(mt.pq.n_sub, mt.pq.n_centroids)] = mt
            log(f"  fitted {mt.name} ({kind}) in {mt.fit_s:.1f} s")
        for mt in methods:
            if isinstance(mt, MMPQ):
                mt.pq.to(device)
        for (kd, L, k) in settings:
            if kd != kind:
                continue
            rs = run_setting(methods, world, L, k, args, device, log)
            rows.extend(rs)
            print(f"\n### L={L:,}, K={k}, {kind} SYNTHETIC vectors\n\n{markdown_table(rs)}\n", flush=True)

    checks = target_checks(rows)
    print("\n".join(["Targets (clustered data):"] + checks))
    meta = {
        "command": "seminar-zoo bench retrieval " + " ".join(argv if argv is not None else sys.argv[3:]),
        "faiss": faiss_msg, "threads": args.threads, "device": str(device),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "load_before": load_before, "load_after": _load(), "minutes": round((time.time() - t_start) / 60, 1),
        "scoring_backend": f"{choice[0]}/{choice[1]}",
    }
    if args.json:
        p = Path(args.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(rows, indent=1))
    if args.png:
        p = Path(args.png)
        p.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, p)
    if args.md:
        p = Path(args.md)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(render_md(rows, lever_rows, checks, meta, args))
    return rows


def render_md(rows, lever_rows, checks, meta, args) -> str:
    gpu = torch.cuda.is_available()
    out = [
        "# GSU retrieval benchmark: multi-modal PQ vs exact, SimHash, faiss",
        "",
        "Generated by `seminar_zoo.bench.retrieval` (do not edit by hand; rerun the command):",
        "",
        f"```\n{meta['command']}\n```",
        "",
        "**Vectors are SYNTHETIC** (no trained model involved): four modalities (query, id, text, image) of "
        f"width d={args.dim} with per-modality norms {dict(zip(MODALITIES, NORMS))} (image ~10x text, as in "
        "`seminar_zoo.data.synthetic`). `clustered`: each user mixes 10 of 64 topics; every behaviour is a "
        "normalised noisy projection of its topic's latent vector (mixture of topics, not isotropic noise). "
        "`isotropic`: the reference script's setting (L=2048, K=32, independent Gaussian directions with "
        "different norms per modality). The target is folded (sum over its modalities) before scoring: an "
        "identity for the double sum over modality pairs.",
        "",
        f"Machine: {meta['cpu']}, {os.cpu_count()} cores shared with other jobs (load average "
        f"before/after: {meta['load_before']} / {meta['load_after']}); torch {meta['torch']}, {meta['faiss']}; "
        f"{meta['threads']} intra-op thread(s); device `{meta['device']}`; run took {meta['minutes']} min. "
        + ("A GPU is visible but this table is the CPU run." if gpu and meta["device"] == "cpu" else
           "" if gpu else "**No GPU was available in this session** (`torch.cuda.is_available()` is False), so "
           "the `--device cuda` table could not be produced."),
        "",
        "Columns: recall@K of the exact (float64) top-K, averaged over the timed requests; median wall time per "
        f"request of one request at a time, each started cache-cold ({args.flush_mb} MB touched before it); per-request time inside a batch (`batch` requests at once, 256 "
        f"unless the method's storage for 256 histories exceeds {args.mem_mb} MB; faiss rows loop over "
        "requests because their indices are per history); bytes stored per behaviour; median time to encode "
        "one history of L behaviours (exact: copying; HNSW: building the per-modality graphs). "
        f"MMPQ rows score with the `{meta['scoring_backend']}` backend/table type, the fastest in the lever "
        "table below. Extra rows beyond the issue's list: `exact-fused` (keys pre-summed over modalities, "
        "valid when gamma and G(j) are frozen), `mmpq-SxC+rrR` (PQ top R*K re-scored exactly; needs the full "
        "vectors of those R*K behaviours, in SEMINAR the embedding tables), `pq-fused-GxC` (our quantizer on "
        "the pre-summed key).",
        "",
    ]
    settings = sorted({(r["data"], r["length"], r["topk"]) for r in rows}, key=lambda s: (s[0] != "clustered", s[1]))
    for data, length, k in settings:
        rs = [r for r in rows if (r["data"], r["length"], r["topk"]) == (data, length, k)]
        title = "reference script's setting, " if data == "isotropic" else ""
        out += [f"## L={length:,}, K={k} ({title}{data} SYNTHETIC vectors)", "", markdown_table(rs), ""]
    if args.png:
        out += [f"![recall vs latency]({Path(args.png).name})", ""]
    out += ["## Targets of issue 5, evaluated on these rows", ""] + (checks or ["- (no clustered rows)"]) + [""]
    out += ["## What limits plain MMPQ here", "",
            "1. **Bits go where the score is not.** The score is dominated by the image modality (norm 10 vs "
            "<= 1), but MMPQ gives every modality the same `n_sub` one-byte codes, so 3/4 of its bytes quantize "
            "modalities that barely move the score. Our own quantizer on the pre-summed key (`pq-fused`, only "
            "valid when gamma and G(j) are frozen) spends the same bytes on the sum and ranks far better; faiss "
            "IndexPQ on the concatenated vector uses the same sub-space partition as MMPQ and lands at the same "
            "recall. The per-modality form pays this price for one thing: per-request modality weights "
            "(`MultiModalPQ.lut(..., weights=)`) without re-encoding.",
            "2. **Top-K of a long history is a fine ranking problem.** The K best of L=10,000 come from the "
            "target's topic (~1,000 behaviours); their order is set by within-topic noise, which is isotropic "
            "in the sub-spaces and the hardest case for PQ. Re-scoring the PQ top R*K exactly (`+rrR` rows) "
            "recovers most of the recall (the R*K exact re-scores are cheap; the extra latency in the rows is "
            "mostly the noise of a loaded machine).",
            "3. **A gather is not cheaper than a streamed dot product on this CPU.** Exact scoring streams "
            "contiguous float32 with SIMD FMAs at memory bandwidth; MMPQ does M*n_sub dependent table look-ups "
            "per behaviour. torch has no in-register table shuffle (faiss' fast-scan PQ uses pshufb on 4-bit "
            "codes), so even the compiled int16 gather is latency-bound, and per-call overhead (LUT, dispatch, "
            "top-K) dominates short histories. The byte savings show up in the batch column and at L=100,000, "
            "where the exact vectors no longer fit in cache.",
            ""] + limits_section(rows) + [""]
    if lever_rows:
        out += ["## Speed levers for the MMPQ gather (one request, score + top-K)", "",
                "| config | L | backend | table dtype | ms |", "|---|---|---|---|---|"]
        out += [f"| {r['config']} | {r['length']:,} | {r['backend']} | {r['lut_dtype']} | {r['latency_ms_single']:.3f} |"
                for r in lever_rows]
        out += ["", "`eager` = one batched `torch.gather` over a flattened (modality, sub-space, centroid) index "
                "then a sum; `compile` = `torch.compile` of the same function (one fused loop that reads the uint8 "
                "codes directly, no int64 index tensor); `int16` tables are scaled per request and summed in int32. "
                "float16 tables are measured but never chosen: their rounding (~0.05 on entries of magnitude ~100) "
                "is the size of the score gaps at the top-K boundary and lowers recall.",
                ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
