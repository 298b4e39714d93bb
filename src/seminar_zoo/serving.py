"""Serving path of a finetuned SEMINAR (arXiv 2407.10714, Sec. 3.4): ``seminar-zoo export`` and ``serve-bench``.

Every per-behaviour quantity SEMINAR needs is a function of one id: modality j of a (query, item) pair
depends on the item (id, attributes) or on the query only, so ``export`` writes per-id tables:

* ``gsu_q_{item,query}.npy`` [N, M_x, d]: the target side of the GSU score (gamma/lambda-weighted,
  G(j)-projected, through W_q and the 1/sqrt(d) scale), one row per id;
* ``codes_{item,query}.npy`` [N, M_x, n_sub] uint8 and ``codebooks.npy`` [M, n_sub, C, d/n_sub]: the
  MultiModalPQ codes of the GSU keys W_k G(j) x_j, per item and per query;
* ``pair_{item,query}.npy`` [N, d]: the fused pair vectors e = sum_j G(j) x_j of each side;
* ``esu_tower.pt``: TorchScript of exact re-rank -> top-K -> ESU (target attention with the GSU
  bias) -> tower, loadable with plain ``torch.jit.load``.

A request is (history item ids, history query ids, target item id, target query id): PQ top R*K over
the gathered codes (faiss fast-scan or torch), then the scripted module.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .modules.pq_backends import FAISS_BACKENDS
from .modules.quantization import MultiModalPQ

FILES = ("gsu_q_item", "gsu_q_query", "codes_item", "codes_query", "pair_item", "pair_query", "codebooks")


class RerankEsuTower(nn.Module):
    """(target pair [B, d], candidate pairs [B, C, d], candidate mask [B, C]) -> CTR logits [B]: exact GSU
    scores of the candidates, top-K, ESU with the GSU bias (Sec. 3.3), tower on [t, u, t*u]."""

    def __init__(self, model, topk: int):
        super().__init__()
        self.attn_q, self.attn_k, self.scale = model.gsu.attn.q, model.gsu.attn.k, float(model.gsu.scale)
        self.esu, self.tower, self.topk = model.esu, model.tower, int(topk)
        self.use_bias = bool(model.hparams.gsu_bias)

    def forward(self, target: torch.Tensor, cand: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = torch.einsum("bd,bcd->bc", self.attn_q(target) * self.scale, self.attn_k(cand))
        s = s.masked_fill(~mask, float("-inf"))
        top, idx = s.topk(min(self.topk, s.shape[1]), dim=1)
        sel = mask.gather(1, idx)
        keys = cand.gather(1, idx.unsqueeze(-1).expand(-1, -1, cand.shape[-1]))
        bias = top.masked_fill(~sel, 0.0) if self.use_bias else torch.zeros_like(top)
        u = self.esu(target, keys, sel, bias=bias)
        return self.tower(torch.cat([target, u, target * u], -1))


@torch.no_grad()
def export_model(model, out: str, n_sub: int = 8, n_centroids: int = 16, fit_rows: int = 20000,
                 rerank_factor: int = 10, seed: int = 0) -> Path:
    """Write the per-id tables, PQ codes/codebooks and the TorchScript module of ``model`` (a SEMINAR) to ``out``."""
    if getattr(model, "short_term", None) is not None or not model.hparams.use_gsu:
        raise ValueError("export: needs a SEMINAR with use_gsu=True and no short-term attention")
    if getattr(model, "time_emb", None) is not None:  # the exported ESU reads no timestamps
        raise ValueError("export: a SEMINAR with time_embedding=True is not supported (the serving path has no "
                         "behaviour timestamps)")
    model = model.eval().cpu()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_i = len(model.pair.item_modalities)
    has_q = model.pair.use_query
    meta = model.hparams.data_meta
    items = torch.arange(int(meta["n_items"]) + 1)
    queries = torch.arange(int(meta.get("n_queries", 0)) + 1) if has_q else torch.zeros(1, dtype=torch.long)
    gsu = model.gsu

    def side(ids_item, ids_query, sl):
        p = gsu.proj(model.modal(ids_item, ids_query))  # [N, M, d]
        return (gsu.attn.q(p) * gsu.scale)[:, sl], gsu.attn.k(p)[:, sl], p[:, sl].sum(1)

    qi, ki, pi = side(items, torch.zeros_like(items), slice(0, n_i))
    qq, kq, pq_ = side(torch.zeros_like(queries), queries, slice(n_i, None))
    m = n_i + (1 if has_q else 0)
    g = torch.Generator().manual_seed(seed)
    n = min(fit_rows, len(items))
    rows_i, rows_q = torch.randint(1, len(items), (n,), generator=g), torch.randint(len(queries), (n,), generator=g)
    train = torch.cat([ki[rows_i], kq[rows_q]], 1)
    pq = MultiModalPQ(m, ki.shape[-1], n_sub=n_sub, n_centroids=n_centroids, seed=seed).fit(train)
    codes_i = pq.encode(torch.cat([ki, kq[:1].expand(len(ki), -1, -1)], 1))[:, :n_i]
    codes_q = pq.encode(torch.cat([ki[:1].expand(len(kq), -1, -1), kq], 1))[:, n_i:]
    arrays = dict(zip(FILES, (qi, qq, codes_i, codes_q, pi, pq_, pq.codebooks)))
    for name, a in arrays.items():
        np.save(out_dir / f"{name}.npy", a.contiguous().numpy())
    mod = RerankEsuTower(model, model.hparams.topk).eval()
    d = pi.shape[-1]
    c = rerank_factor * model.hparams.topk
    example = (torch.randn(2, d), torch.randn(2, c, d), torch.ones(2, c, dtype=torch.bool))
    with warnings.catch_warnings():  # shapes baked into the trace (K, head width) are constants of the model
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(mod, example, check_trace=False)
    torch.jit.save(traced, str(out_dir / "esu_tower.pt"))
    (out_dir / "export.json").write_text(json.dumps({"topk": int(model.hparams.topk), "rerank_factor": rerank_factor,
                                                      "n_sub": n_sub, "n_centroids": n_centroids, "modalities": m}))
    return out_dir


class Server:
    """Replays requests through an export: PQ top R*K -> exact re-rank -> ESU -> tower.

    With ``user=`` a request reuses that user's fast-scan index while the history is unchanged (an LRU of
    ``cache_users`` users): building the index costs more than scanning it (experiments/results/retrieval.md).
    """

    def __init__(self, export_dir: str, backend: str = "auto", cache_users: int = 10000):
        d = Path(export_dir)
        missing = [f for f in FILES if not (d / f"{f}.npy").exists()] + \
            [f for f in ("esu_tower.pt", "export.json") if not (d / f).exists()]
        if missing:
            raise FileNotFoundError(f"serve: {d} is not an export (missing {', '.join(missing)}); "
                                    f"run seminar-zoo export first")
        self.t = {f: torch.from_numpy(np.load(d / f"{f}.npy")) for f in FILES}
        self.cfg = json.loads((d / "export.json").read_text())
        cb = self.t["codebooks"]
        self.pq = MultiModalPQ(cb.shape[0], cb.shape[1] * cb.shape[3], n_sub=cb.shape[1], n_centroids=cb.shape[2],
                               backend=backend)
        self.pq.codebooks.copy_(cb)
        self.pq.is_fitted.fill_(True)
        self.module = torch.jit.load(str(d / "esu_tower.pt"))
        self.cache: "OrderedDict[int, tuple]" = OrderedDict()
        self.cache_users, self.cache_hits = cache_users, 0

    @staticmethod
    def _rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return table.reshape(len(table), -1).index_select(0, ids).reshape(len(ids), *table.shape[1:])

    def _codes(self, hist_item: torch.Tensor, hist_query: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._rows(self.t["codes_item"], hist_item), self._rows(self.t["codes_query"], hist_query)], 1)

    def _candidates(self, hist_item, hist_query, target_gsu, k: int, user: Optional[int]) -> torch.Tensor:
        backend = self.pq.resolved_backend(torch.device("cpu"), for_topk=True)
        if user is None or backend not in FAISS_BACKENDS:
            return self.pq.topk(target_gsu, self._codes(hist_item, hist_query)[None], k)[1][0]
        hit = self.cache.get(user)
        if hit is not None and torch.equal(hit[0], hist_item) and torch.equal(hit[1], hist_query):
            self.cache.move_to_end(user)
            self.cache_hits += 1
        else:
            hit = (hist_item.clone(), hist_query.clone(), self.pq.scanner(self._codes(hist_item, hist_query), backend))
            self.cache[user] = hit
            if len(self.cache) > self.cache_users:
                self.cache.popitem(last=False)
        query = target_gsu.sum(1).repeat(1, self.pq.n_modalities).numpy()
        return torch.from_numpy(hit[2].search_query(query, k)[1][0])

    @torch.no_grad()
    def logit(self, hist_item: torch.Tensor, hist_query: torch.Tensor, item: int, query: int,
              user: Optional[int] = None, exact: bool = False) -> float:
        """One request: real (unpadded) history ids [L] and the target's ids (``user``: cache its index).
        ``exact``: no PQ stage, the scripted module scores all L behaviours exactly (the reference path)."""
        t, r = self.t, self._rows
        it, qt = torch.tensor([item]), torch.tensor([query])
        if exact:
            cand = torch.arange(len(hist_item))
        else:
            target_gsu = torch.cat([r(t["gsu_q_item"], it), r(t["gsu_q_query"], qt)], 1)  # [1, M, d]
            cand = self._candidates(hist_item, hist_query, target_gsu, self.cfg["rerank_factor"] * self.cfg["topk"],
                                    user)
        pair = r(t["pair_item"], hist_item[cand]) + r(t["pair_query"], hist_query[cand])
        mask = torch.ones(len(cand), dtype=torch.bool)
        short = self.cfg["topk"] - len(cand)
        if short > 0:  # the traced top-K is fixed: pad a short history with masked rows
            pair = torch.cat([pair, pair.new_zeros(short, pair.shape[1])])
            mask = torch.cat([mask, mask.new_zeros(short)])
        target = r(t["pair_item"], it) + r(t["pair_query"], qt)
        return float(self.module(target, pair[None], mask[None])[0])


@torch.no_grad()
def replay(server: Server, model, dm, n_requests: int) -> Dict[str, float]:
    """Replay the first ``n_requests`` test requests (target + negatives, one history) through ``server`` and
    the in-process ``model``: mean per-request AUC of each, the largest logit gap, p50/p99 ms per row."""
    from torchmetrics.functional.classification import binary_auroc

    b = dm.eval_lists("test", n_requests)
    served, ts = [], []
    for i in range(len(b["label"])):
        m = b["hist_mask"][i]
        t0 = time.perf_counter()
        served.append(server.logit(b["hist_item_id"][i][m], b["hist_query_id"][i][m], int(b["item_id"][i]),
                                   int(b["query_id"][i]), user=int(b["request_id"][i])))
        ts.append(1e3 * (time.perf_counter() - t0))
    served, ref, y = torch.tensor(served), model.eval()(b).float(), b["label"].long()
    aucs = [[float(binary_auroc(x[g], y[g])) for g in (b["request_id"] == r for r in b["request_id"].unique())
             if 0 < int(y[g].sum()) < int(g.sum())] for x in (served, ref)]
    return {"requests": float(len(aucs[0])), "auc_served": float(np.mean(aucs[0])), "auc_model": float(np.mean(aucs[1])),
            "max_abs_logit_diff": float((served - ref).abs().max()), "p50_ms": float(np.percentile(ts, 50)),
            "p99_ms": float(np.percentile(ts, 99)), "cache_hits": float(server.cache_hits)}


def export_main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="seminar-zoo export", description="export a finetuned SEMINAR for serving")
    ap.add_argument("--ckpt_path", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n_sub", type=int, default=8)
    ap.add_argument("--n_centroids", type=int, default=16)
    ap.add_argument("--rerank_factor", type=int, default=10)
    a = ap.parse_args(argv)
    if not Path(a.ckpt_path).is_file():
        ap.error(f"--ckpt_path {a.ckpt_path} does not exist")
    from .models.seminar import SEMINAR

    model = SEMINAR.load_from_checkpoint(a.ckpt_path, map_location="cpu")
    print(export_model(model, a.out, a.n_sub, a.n_centroids, rerank_factor=a.rerank_factor))


def serve_bench_main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    """p50/p99 latency per request on synthetic histories of each length (ids drawn from the export's tables),
    ``--users`` histories each served ``--requests / --users`` targets: the first request of a user builds its
    fast-scan index (``build_ms``), the rest reuse it, as a server keeping a user's index between requests does.
    With --ckpt_path and --data, also replays test requests and compares the AUC with the in-process model."""
    ap = argparse.ArgumentParser(prog="seminar-zoo serve-bench", description=serve_bench_main.__doc__)
    ap.add_argument("--export", required=True)
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--users", type=int, default=5, help="distinct histories per length (requests split over them)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--ckpt_path", default=None, help="the exported SEMINAR checkpoint (in-process reference)")
    ap.add_argument("--data", default=None, help="dataset folder whose test requests are replayed")
    ap.add_argument("--max_len", type=int, default=200, help="history length of the replayed requests")
    ap.add_argument("--replay", type=int, default=50, help="test requests to replay")
    ap.add_argument("--out", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    try:
        server = Server(a.export, a.backend)
        lengths = [int(x) for x in a.lengths.split(",") if x]
        if (lengths and min(lengths) < 1) or a.users < 1 or a.requests < 1:
            raise ValueError(f"--lengths must be positive integers, --requests and --users at least 1 (got "
                             f"{a.lengths!r}, {a.requests}, {a.users})")
        a.users = min(a.users, a.requests)
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    if (a.ckpt_path is None) != (a.data is None):
        ap.error("--ckpt_path and --data go together (replay test requests against the in-process model)")
    if a.ckpt_path is not None and not Path(a.ckpt_path).is_file():
        ap.error(f"--ckpt_path {a.ckpt_path} does not exist")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n_i, n_q = len(server.t["pair_item"]), len(server.t["pair_query"])
    res: Dict[str, float] = {"load_average": os.getloadavg()[0]}
    for length in lengths:
        ts, builds, ex = [], [], []
        for u in range(a.users):
            h = torch.randint(1, n_i, (length,), generator=g)
            q = torch.randint(n_q, (length,), generator=g)
            for r in range(a.requests // a.users):
                item, query = int(torch.randint(1, n_i, (1,), generator=g)), int(torch.randint(n_q, (1,), generator=g))
                t0 = time.perf_counter()
                server.logit(h, q, item, query, user=length * a.users + u)
                (ts if r else builds).append(1e3 * (time.perf_counter() - t0))
            for _ in range(max(1, a.requests // a.users // 2)):  # the exact path on the same history
                t0 = time.perf_counter()
                server.logit(h, q, item, query, exact=True)
                ex.append(1e3 * (time.perf_counter() - t0))
        ts = ts or builds
        res[f"p50_ms@{length}"], res[f"p99_ms@{length}"] = float(np.percentile(ts, 50)), float(np.percentile(ts, 99))
        res[f"build_ms@{length}"] = float(np.median(builds))
        res[f"exact_p50_ms@{length}"] = float(np.percentile(ex, 50))
        print(f"L={length}: p50 {res[f'p50_ms@{length}']:.3f} ms, p99 {res[f'p99_ms@{length}']:.3f} ms per request "
              f"(user's index cached); first request of a user (index build) {res[f'build_ms@{length}']:.3f} ms; "
              f"exact GSU over all L (no PQ) p50 {res[f'exact_p50_ms@{length}']:.3f} ms", flush=True)
    if a.ckpt_path:
        from .data.datamodule import LifelongSequenceDataModule
        from .models.seminar import SEMINAR

        dm = LifelongSequenceDataModule(a.data, max_len=a.max_len)
        dm.setup()
        model = SEMINAR.load_from_checkpoint(a.ckpt_path, map_location="cpu", psu_ckpt=None)
        model.load_tables(dm.feature_tables())
        rep = replay(server, model, dm, a.replay)
        res.update({f"replay/{k}": v for k, v in rep.items()})
        print(f"replayed {rep['requests']:.0f} test requests: AUC served {rep['auc_served']:.4f} vs in-process "
              f"{rep['auc_model']:.4f}, max |logit diff| {rep['max_abs_logit_diff']:.2e}, p50 {rep['p50_ms']:.3f} ms, "
              f"p99 {rep['p99_ms']:.3f} ms per row, {rep['cache_hits']:.0f} cached-index hits", flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    return res
