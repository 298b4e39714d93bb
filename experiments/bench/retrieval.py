"""``seminar-zoo bench retrieval``: GSU retrieval for SEMINAR in the serving-shaped setting (arXiv 2407.10714, Sec. 3.4).

A behaviour's GSU key is a function of its (query_id, item_id): per-modality keys k_j (gamma-weighted,
projected) live in an item table [N_items, 3, d] (id, text, image) and a query table [N_queries, 1, d];
a history is its L (query_id, item_id) pairs.  The score is <sum_i t_i, sum_j k_j>.  Per request, one
thread, on the same SYNTHETIC vectors (topic-clustered; modality norms query 1, id 0.5, text 1,
image 10), each method returns its top-K and is timed end to end:

* ``exact``            gather the [L, M, d] keys from the tables, score, top-K;
* ``exact-fused``      gather per-id pre-summed keys (item modalities summed, [N, d]) and score (torch);
* ``exact-fused-byid`` the same scores from faiss' inner products by id (no gathered copy of the keys);
* ``pq-torch-SxC``     MultiModalPQ codes per item / per query ([N, M, S] uint8), gathered by id, torch LUT gather;
* ``pq-faiss4-Sx16``   the same codes through faiss 4-bit fast-scan (gather + pack + scan, all per request);
* ``pq-faiss4-Sx16-cached``  the fast-scan index kept per history (a user's history between requests), our
  codebooks loaded into faiss so that faiss builds the table from the target (``search_query``);
* ``pq-faiss8-Sx256``  8-bit IndexPQ with our codebooks (gather + scan);
* ``...+rrR``          the PQ top R*K re-scored exactly from the per-id fused keys (faiss inner products by id; every R of
  ``--rerank-factor`` for cached indexes, the largest for the others);
* ``pq-allocG-a-b-c-dx16-cached``  G 4-bit sub-spaces split over the modalities by their share of the score
  variance (``allocate_subspaces``) inside one MultiModalPQ (``n_sub`` per modality), index kept per history;
* ``...-anisoE``       the same codes fitted and encoded with the score-aware loss (``aniso_eta`` E, ScaNN);
* ``faiss-fastscan-native``  faiss' own PQ fast-scan on the fused keys, at the same bytes per behaviour
  (index cached; the anchor for "within 2x of fast-scan");
* ``faiss-flat``       IndexFlatIP on the fused keys (index cached);
* ``hnsw-2stage``      one HNSW per modality (index cached), top-K each, merged by exact score;
* ``simhash-B``        modules/hashing.SimHash signatures of the fused keys (cached), Hamming top-K.

Recall@K is against the float64 exact top-K.  Conclusions: experiments/results/retrieval.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from seminar_zoo.modules.hashing import SimHash, hamming
from seminar_zoo.modules.pq_backends import (ByIdReranker, FaissScanner, allocate_subspaces, faiss_available,
                                             pack_codes)
from seminar_zoo.modules.quantization import MultiModalPQ

NORMS = (1.0, 0.5, 1.0, 10.0)  # query, id, text, image
N_TOPICS, TOPICS_PER_USER = 64, 10
CONCLUSIONS = "## Conclusions"
ROW_KEYS = ("method", "length", "topk", "recall", "ms_per_request", "bytes_per_behaviour")


class World:
    """SYNTHETIC per-id key tables: item [N, 3, d] and query [Q, 1, d], topic-clustered."""

    def __init__(self, n_items: int, n_queries: int, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        lat = torch.randn(N_TOPICS, 16, generator=g)
        proj = torch.randn(4, 16, dim, generator=g)
        self.item_topic = torch.randint(N_TOPICS, (n_items,), generator=g)
        self.query_topic = torch.randint(N_TOPICS, (n_queries,), generator=g)

        def keys(topic, mods):
            v = torch.einsum("nl,mld->nmd", lat[topic] + 0.6 * torch.randn(len(topic), 16, generator=g), proj[mods])
            v = v + 2.0 * torch.randn(v.shape, generator=g)
            return torch.tensor(NORMS)[mods][:, None] * v / v.norm(dim=-1, keepdim=True)

        self.item, self.query = keys(self.item_topic, [1, 2, 3]), keys(self.query_topic, [0])
        self.item_fused, self.query_fused = self.item.sum(1), self.query[:, 0].contiguous()
        self.item_fused_np, self.query_fused_np = self.item_fused.numpy(), self.query_fused.numpy()
        self.reranker = ByIdReranker([self.item_fused_np, self.query_fused_np])
        self.by_topic = [torch.nonzero(self.item_topic == t).squeeze(1) for t in range(N_TOPICS)]
        self.g = g

    def request(self, length: int):
        """(item ids [L], query ids [L], target [4, d]) of one user mixing TOPICS_PER_USER topics."""
        g = self.g
        topics = torch.randperm(N_TOPICS, generator=g)[:TOPICS_PER_USER]
        t = topics[torch.randint(TOPICS_PER_USER, (length,), generator=g)]
        pools = [self.by_topic[int(x)] for x in topics]
        ids = torch.empty(length, dtype=torch.long)
        for j, p in enumerate(pools):
            sel = t == topics[j]
            ids[sel] = p[torch.randint(len(p), (int(sel.sum()),), generator=g)]
        qids = torch.randint(len(self.query), (length,), generator=g)
        ti = int(pools[0][torch.randint(len(pools[0]), (1,), generator=g)])
        target = torch.cat([self.query[int(qids[0])], self.item[ti]])  # a target from the user's own topics
        return ids, qids, target


def rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] through index_select on the flattened rows (torch's advanced indexing is ~10-25x slower here)."""
    return table.reshape(len(table), -1).index_select(0, ids).reshape(len(ids), *table.shape[1:])


# Every method gets the request's fused target ``tf`` = sum_i t_i [d] (computed once per request, outside the
# timer, as the PQ paths get their per-group query): a request times retrieval, not target preparation.
def exact_topk(world: World, ids, qids, tf, k):
    keys = torch.cat([rows(world.query, qids), rows(world.item, ids)], 1)  # [L, M, d]
    return torch.einsum("d,lmd->l", tf, keys).topk(k).indices


def exact_fused_topk(world: World, ids, qids, tf, k):
    return (rows(world.item_fused, ids) @ tf + rows(world.query_fused, qids) @ tf).topk(k).indices


def rerank(world: World, ids, qids, tf, cand, k: int, hist_rows: Optional[np.ndarray] = None):
    """Exact scores of the candidates ``cand`` (rows of the history) from the per-id fused keys -> the top-``k``
    rows, best first (``pq_backends.ByIdReranker``: one faiss by-id inner-product call, no gathered copy of the
    keys).  ``hist_rows``: the history's row map, kept with its cached index; None: built in the request."""
    if hist_rows is None:
        hist_rows = world.reranker.rows(_np(ids), _np(qids))
    return world.reranker.topk(_np(tf), hist_rows, _np(cand), k)


def _np(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


class PQTables:
    """MultiModalPQ codes per item ([N, 3, S]) and per query ([Q, 1, S]); a history's codes are gathered by id."""

    def __init__(self, world: World, n_sub, n_centroids: int, fit_rows: int, seed: int = 0, aniso_eta: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        n = min(fit_rows, len(world.item))
        ii, qq = torch.randint(len(world.item), (n,), generator=g), torch.randint(len(world.query), (n,), generator=g)
        train = torch.cat([world.query[qq], world.item[ii]], 1)
        self.pq = MultiModalPQ(4, world.item.shape[-1], n_sub=n_sub, n_centroids=n_centroids, seed=seed,
                               aniso_eta=aniso_eta).fit(train)
        # encoding is per (modality, sub-space): encode item rows beside query 0 and keep their own groups
        self.nq = self.pq.n_subs[0]  # the query's codes (its groups come first)
        nq = self.nq if isinstance(n_sub, list) else 1  # flat [G] codes vs [M, n_sub]
        self.item = self.pq.encode(torch.cat([world.query[:1].expand(len(world.item), 1, -1), world.item], 1))[:, nq:]
        self.query = self.pq.encode(torch.cat([world.query, world.item[:1].expand(len(world.query), 3, -1)], 1))[:, :nq]
        self.item, self.query = self.item.contiguous(), self.query.contiguous()
        if n_centroids <= 16:  # 4-bit codes packed once per id: a history's packed codes are a gather away
            self.item4 = torch.from_numpy(pack_codes(self.item.reshape(len(self.item), -1).numpy(), 4))
            self.query4 = torch.from_numpy(pack_codes(self.query.reshape(len(self.query), -1).numpy(), 4))
        self.bytes = self.pq.n_groups * (4 if n_centroids <= 16 else 8) // 8

    def packed4(self, ids, qids) -> np.ndarray:
        return torch.cat([rows(self.query4, qids), rows(self.item4, ids)], 1).numpy()

    def codes(self, ids, qids):
        return torch.cat([rows(self.query, qids), rows(self.item, ids)], 1)  # [L, M, S]


class AllocPQ(PQTables):
    """MultiModalPQ with 16 centroids and n_sub per modality by score-variance share (allocate_subspaces)."""

    def __init__(self, world: World, total: int, fit_rows: int, seed: int = 0, aniso_eta: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        n = min(fit_rows, len(world.item))
        keys = torch.cat([world.query[torch.randint(len(world.query), (n,), generator=g)],
                          world.item[torch.randint(len(world.item), (n,), generator=g)]], 1)  # [n, 4, d]
        tf = keys[torch.randperm(n, generator=g)].sum(1)  # targets drawn like behaviours
        shares = torch.einsum("nd,nmd->nm", tf, keys).var(0)
        self.shares = (shares / shares.sum()).tolist()
        self.n_sub = allocate_subspaces(self.shares, total, keys.shape[-1])
        super().__init__(world, self.n_sub, 16, fit_rows, seed, aniso_eta)
        self.bytes = total // 2


def _time(fn: Callable, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def _faiss_native(world: World, n_bytes: int, fit_rows: int, seed: int):
    """faiss' own PQ fast-scan (2 * n_bytes 4-bit sub-quantizers), trained on fused keys of random (query, item) pairs."""
    import faiss

    g = torch.Generator().manual_seed(seed)
    n = min(fit_rows, len(world.item))
    train = world.item_fused[torch.randint(len(world.item), (n,), generator=g)] + \
        world.query_fused[torch.randint(len(world.query), (n,), generator=g)]
    idx = faiss.IndexPQFastScan(world.item.shape[-1], 2 * n_bytes, 4, faiss.METRIC_INNER_PRODUCT)
    idx.train(train.numpy())
    return idx


def _hnsw_2stage(keys: np.ndarray):
    import faiss

    out = []
    for j in range(keys.shape[1]):
        h = faiss.IndexHNSWFlat(keys.shape[2], 16, faiss.METRIC_INNER_PRODUCT)
        h.add(np.ascontiguousarray(keys[:, j]))
        out.append(h)
    return out


def methods_for(world: World, pqs: Dict[str, PQTables], ids, qids, t, args, native, allocs=None) -> Dict[str, tuple]:
    """name -> (per-request callable returning top-K indices, bytes per behaviour, index cached per history?)."""
    k, d = args.topk, world.item.shape[-1]
    rrs, rr = args.rerank_factor, max(args.rerank_factor)  # cached indexes get every factor, per-request ones the largest
    tf = t.sum(0)
    tfn, every = tf.numpy(), np.arange(len(ids))
    hist_rows = world.reranker.rows(ids.numpy(), qids.numpy())  # kept per history, like the cached indexes
    m: Dict[str, tuple] = {
        "exact": (lambda: exact_topk(world, ids, qids, tf, k), 4 * 4 * d),
        "exact-fused": (lambda: exact_fused_topk(world, ids, qids, tf, k), 2 * 4 * d),
        # the same scores through faiss' inner products by id (no gathered copy): the fastest exact scorer here
        "exact-fused-byid": (lambda: rerank(world, ids, qids, tfn, every, k, hist_rows), 2 * 4 * d),
    }
    for name, tab in pqs.items():
        m[f"pq-torch-{name}"] = (lambda tab=tab: tab.pq.score(tab.pq.lut(tf[None]), tab.codes(ids, qids)[None])[0].topk(k).indices,
                                 tab.bytes)
        if native is None:
            continue
        if tab.pq.n_centroids <= 16:
            def f4(tab=tab, kk=k):
                sc = FaissScanner(tab.packed4(ids, qids), 4, packed=True)
                return torch.from_numpy(sc.search(tab.pq.lut(tf[None])[0].reshape(-1, 16).numpy(), kk)[1])
            cb = tab.pq.codebooks.reshape(tab.pq.n_groups, 16, -1).numpy()
            cached = FaissScanner(tab.packed4(ids, qids), 4, codebooks=cb, packed=True)
            q4 = tf.repeat(4).numpy()  # faiss builds the table from the target tiled over the modalities

            def f4c(c=cached, kk=k):
                return c.search_query(q4, kk)[1]
            m[f"pq-faiss4-{name}"] = (f4, tab.bytes)
            m[f"pq-faiss4-{name}-cached"] = (f4c, tab.bytes)
            for r in rrs:
                m[f"pq-faiss4-{name}-cached+rr{r}"] = (
                    lambda f4c=f4c, r=r: rerank(world, ids, qids, tfn, f4c(kk=r * k), k, hist_rows), tab.bytes)
            m[f"pq-faiss4-{name}+rr{rr}"] = (lambda f4=f4: rerank(world, ids, qids, tfn, f4(kk=rr * k), k), tab.bytes)
        else:
            q = tf.repeat(4).numpy()

            def f8(tab=tab, kk=k):
                sc = tab.pq.scanner(tab.codes(ids, qids), "faiss8")
                return torch.from_numpy(sc.search_query(q, kk)[1])
            m[f"pq-faiss8-{name}"] = (f8, tab.bytes)
            m[f"pq-faiss8-{name}+rr{rr}"] = (lambda f8=f8: rerank(world, ids, qids, tfn, f8(kk=rr * k), k), tab.bytes)
    for name, alloc in (allocs or {}).items():  # allocated / score-aware MultiModalPQ, index cached per history
        cb = alloc.pq.codebooks.reshape(alloc.pq.n_groups, 16, -1)
        qa = alloc.pq._split(tf[None, None].expand(1, 4, -1))[0]  # [G, s]: the target's sub-vector per group
        if alloc.nq % 2:  # an odd number of query codes was packed with a pad nibble: a zero codebook there
            cb = torch.cat([cb[:alloc.nq], cb.new_zeros(1, *cb.shape[1:]), cb[alloc.nq:]])
            qa = torch.cat([qa[:alloc.nq], qa.new_zeros(1, qa.shape[1]), qa[alloc.nq:]])
        sc = FaissScanner(alloc.packed4(ids, qids), 4, codebooks=cb.numpy(), packed=True)
        qa = qa.reshape(-1).numpy()
        fa = (lambda sc=sc, qa=qa, kk=k: sc.search_query(qa, kk)[1])
        m[name] = (fa, alloc.bytes)
        for r in rrs:
            m[f"{name}+rr{r}"] = (lambda fa=fa, r=r: rerank(world, ids, qids, tfn, fa(kk=r * k), k, hist_rows),
                                  alloc.bytes)
    fused = (world.item_fused[ids] + world.query_fused[qids]).numpy()
    sh = SimHash(d, args.simhash_bits, seed=0)
    sig = sh.signature(torch.from_numpy(fused))
    m[f"simhash-{args.simhash_bits}"] = (lambda: (-hamming(sh.signature(tf[None]), sig)).topk(k).indices,
                                         args.simhash_bits // 8)
    if native is not None:
        import faiss

        nat = native
        nat.reset()
        nat.add(fused)
        qf = tf[None].numpy()
        m["faiss-fastscan-native"] = (lambda: torch.from_numpy(nat.search(qf, k)[1][0]), args.native_bytes)
        flat = faiss.IndexFlatIP(d)
        flat.add(fused)
        m["faiss-flat"] = (lambda: torch.from_numpy(flat.search(qf, k)[1][0]), 4 * d)
        if len(ids) <= args.hnsw_max_len:
            keys = torch.cat([world.query[qids], world.item[ids]], 1).numpy()
            hn = _hnsw_2stage(keys)

            def h2():
                cand = np.unique(np.concatenate([h.search(np.ascontiguousarray(qf), k)[1][0] for h in hn]))
                return rerank(world, ids, qids, tfn, torch.from_numpy(cand[cand >= 0]), k)
            m["hnsw-2stage"] = (h2, 4 * 4 * d)
    return m


def run(args) -> List[dict]:
    torch.set_num_threads(args.threads)
    try:  # numpy's BLAS (the re-rank's matvec) on as many threads as torch and faiss
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    use_faiss = faiss_available() and not args.no_faiss
    if use_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    world = World(args.items, args.queries, args.dim, seed=args.seed)
    native = _faiss_native(world, args.native_bytes, args.fit_rows, args.seed) if use_faiss else None
    allocs = {}
    for n in args.alloc if use_faiss else []:
        for eta in (1.0, args.aniso_eta):
            a = AllocPQ(world, n, args.fit_rows, args.seed, eta)
            allocs[f"pq-alloc{n}-" + "-".join(map(str, a.n_sub)) + "x16" + ("" if eta == 1 else f"-aniso{eta:g}")
                   + "-cached"] = a
            print(f"alloc {n}: score-variance shares (query, id, text, image) {[round(x, 3) for x in a.shares]} "
                  f"-> sub-spaces {a.n_sub}", flush=True)
    for spec in args.pq.split(",") if use_faiss and args.aniso_eta != 1 else []:  # score-aware, equal split
        s, c = (int(x) for x in spec.split("x"))
        if c <= 16:
            allocs[f"pq-faiss4-{spec}-aniso{args.aniso_eta:g}-cached"] = PQTables(world, s, c, args.fit_rows, args.seed,
                                                                                 args.aniso_eta)
    pqs = {}
    for spec in args.pq.split(","):
        s, c = (int(x) for x in spec.split("x"))
        pqs[spec] = PQTables(world, s, c, args.fit_rows, seed=args.seed)
    rows = []
    for length in args.lengths:
        acc: Dict[str, list] = {}
        for r in range(args.requests):
            ids, qids, t = world.request(length)
            truth = set(torch.einsum("d,lmd->l", t.sum(0).double(),
                                     torch.cat([world.query[qids], world.item[ids]], 1).double()).topk(args.topk).indices.tolist())
            meths = methods_for(world, pqs, ids, qids, t, args, native, allocs)
            for name, (fn, nbytes) in meths.items():
                found = set(fn().tolist())
                ms = _time(fn, args.reps)
                acc.setdefault(name, []).append((len(found & truth) / args.topk, ms, nbytes))
        for name, v in acc.items():
            rows.append({"method": name, "length": length, "topk": args.topk,
                         "recall": float(np.mean([x[0] for x in v])),
                         "ms_per_request": float(statistics.median([x[1] for x in v])),
                         "bytes_per_behaviour": int(v[0][2])})
            if not args.quiet:
                r = rows[-1]
                print(f"L={length:>7} {name:<28} recall@{args.topk}={r['recall']:.3f} {r['ms_per_request']:9.3f} ms"
                      f" {r['bytes_per_behaviour']:>5} B", flush=True)
    return rows


def render_md(rows: List[dict], meta: dict) -> str:
    lines = ["# GSU retrieval benchmark (SYNTHETIC vectors, serving-shaped: codes per item / per query)", "",
             f"Command: `seminar-zoo bench retrieval {' '.join(meta['argv'])}`; one request at a time, "
             f"{meta['threads']} thread(s); load average at start {meta['load_start']}, at end {meta['load_end']}. "
             "Times are medians per request; compare within one run only.", "",
             "| method | L | recall@K | ms/request | x exact-fused | bytes/behaviour |", "|---|---|---|---|---|---|"]
    for r in rows:
        ef = next(x for x in rows if x["method"] == "exact-fused" and x["length"] == r["length"])
        lines.append(f"| {r['method']} | {r['length']} | {r['recall']:.3f} | {r['ms_per_request']:.3f} | "
                     f"{ef['ms_per_request'] / max(r['ms_per_request'], 1e-9):.1f} | {r['bytes_per_behaviour']} |")
    if not any(r["method"].startswith("faiss") for r in rows):
        lines += ["", "faiss rows skipped (faiss not installed or --no-faiss)."]
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for r in (x for x in rows if x["length"] == length):
            ax.scatter(r["ms_per_request"], r["recall"])
            ax.annotate(r["method"], (r["ms_per_request"], r["recall"]), fontsize=6)
        ax.set_xscale("log")
        ax.set(title=f"L={length}", xlabel="ms per request (log)", ylabel="recall@K")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="seminar-zoo bench retrieval", description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--topk", type=int, default=50)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--pq", default="8x16,16x16,4x256,8x256", help="MultiModalPQ sizes n_subxn_centroids")
    ap.add_argument("--alloc", default="32,64,88,96", help="total 4-bit sub-spaces split by score-variance share")
    ap.add_argument("--aniso-eta", type=float, default=4.0, help="score-aware rows' aniso_eta (1: none)")
    ap.add_argument("--fit-rows", type=int, default=20_000)
    ap.add_argument("--rerank-factor", default="2,3,4,6,10",
                    help="re-rank pools R (the PQ top R*K is re-scored exactly); comma-separated")
    ap.add_argument("--native-bytes", type=int, default=16, help="bytes per behaviour of faiss' own fast-scan")
    ap.add_argument("--simhash-bits", type=int, default=256)
    ap.add_argument("--hnsw-max-len", type=int, default=10_000, help="skip HNSW (slow to build) above this L")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    ap.add_argument("--out", default="experiments/results/retrieval", help="writes OUT.json, OUT.md, OUT.png")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv: Optional[List[str]] = None) -> List[dict]:
    ap = build_parser()
    argv = list(argv or [])
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.items, args.queries, args.fit_rows = "300,600", 3000, 200, 3000
        args.pq, args.topk, args.requests, args.reps, args.dim, args.rerank_factor = "4x16,2x256", 10, 2, 1, 16, "2,4"
        args.hnsw_max_len, args.native_bytes, args.simhash_bits, args.alloc = 600, 4, 64, "8"
    try:
        args.lengths = [int(x) for x in str(args.lengths).split(",")]
        for spec in args.pq.split(","):
            s, c = (int(x) for x in spec.split("x"))
        args.alloc = [int(x) for x in str(args.alloc).split(",") if x]
        args.rerank_factor = sorted({int(x) for x in str(args.rerank_factor).split(",") if x})
        if not args.rerank_factor or min(args.rerank_factor) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--lengths and --rerank-factor must be positive integers, --pq sizes like 8x16 "
                 f"(got {args.lengths!r}, {args.rerank_factor!r}, {args.pq!r})")
    if min(args.lengths) < args.topk * max(args.rerank_factor):
        ap.error(f"--topk {args.topk} x --rerank-factor {max(args.rerank_factor)} must not exceed the shortest length")
    meta = {"argv": argv, "threads": args.threads, "load_start": os.getloadavg()[0]}
    rows = run(args)
    meta["load_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md, old = out.with_suffix(".md"), ""
    if md.exists() and CONCLUSIONS in md.read_text():  # hand-written conclusions survive a rerun
        old = "\n" + md.read_text()[md.read_text().index(CONCLUSIONS):]
    md.write_text(render_md(rows, meta) + old)
    plot(rows, out.with_suffix(".png"))
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
