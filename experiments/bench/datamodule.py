"""Scale benchmark of LifelongSequenceDataModule (issue: foundation, item 8).

Builds a dataset of --users users and --events events (per-user lengths log-normal, so a
few users have lifelong histories of thousands of behaviours), then reports:
the time to generate+validate, the DataModule build time (validate + index), peak RSS,
and batch-assembly samples/s of the training loader with 0 and 2 workers at max_len 2000.

    python experiments/bench/datamodule.py --users 100000 --events 10000000 --max-len 2000 \
        --json experiments/results/datamodule_bench.json
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_dataset(out: Path, users: int, events: int, items: int, seed: int) -> Path:
    from seminar_zoo.data.schema import write_dataset

    rng = np.random.default_rng(seed)
    lens = np.maximum(3, rng.lognormal(0, 1.0, users))
    lens = np.maximum(3, np.round(lens / lens.sum() * events)).astype(np.int64)
    n = int(lens.sum())
    user = np.repeat(np.arange(1, users + 1), lens)
    gaps = rng.integers(1, 3600, n)
    start = np.repeat(np.cumsum(lens) - lens, lens)
    cs = np.cumsum(gaps)
    ts = 1_600_000_000 + cs - np.repeat(cs[np.cumsum(lens) - lens], lens) + np.repeat(rng.integers(0, 10**6, users), lens)
    del start
    ev = {"user_id": user, "ts": ts.astype(np.int64), "query_id": np.zeros(n, np.int64),
          "item_id": rng.integers(1, items + 1, n), "label": np.ones(n, np.int64),
          "request_id": np.arange(1, n + 1, dtype=np.int64)}
    it = {"item_id": np.arange(1, items + 1, dtype=np.int64), "attr_category": rng.integers(1, 50, items)}
    meta = {"name": "bench", "n_users": users, "n_items": items, "n_queries": 0, "n_events": n,
            "modalities": ["id", "attr"], "attr_cols": ["attr_category"], "attr_cardinality": {"attr_category": 50},
            "dims": {}, "protocols": ["ranking"], "source": "experiments/bench/datamodule.py", "licence": "generated"}
    return write_dataset(out, it, ev, meta)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--max-len", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    tmp = Path(tempfile.mkdtemp(prefix="dm-bench-"))
    try:
        t0 = time.time()
        path = make_dataset(tmp / "ds", a.users, a.events, a.items, a.seed)
        gen_s = time.time() - t0
        rss_before = rss_mb()
        t0 = time.time()
        dm = LifelongSequenceDataModule(str(path), max_len=a.max_len, batch_size=a.batch_size, train_window=None)
        dm.setup()
        build_s = time.time() - t0
        stats = dm.stats
        rows = {}
        for nw in [int(x) for x in a.workers.split(",")]:
            dm.hparams.num_workers = nw
            loader = dm.train_dataloader()
            it = iter(loader)
            next(it)  # worker start-up is not batch assembly
            t0, n = time.time(), 0
            for _ in range(a.batches):
                b = next(it)
                n += b["label"].shape[0]
            rows[nw] = n / (time.time() - t0)
            del it
        res = {"users": a.users, "events": int(dm.meta["n_events"]), "max_len": a.max_len,
               "batch_size": a.batch_size, "generate_s": gen_s, "build_s": build_s,
               "peak_rss_mb": rss_mb(), "rss_before_build_mb": rss_before,
               "train_samples": stats["train"]["samples"], "avg_hist_len": stats["train"]["avg_hist_len"],
               "max_hist_len": stats["train"]["max_hist_len"],
               "samples_per_s": {f"workers={k}": v for k, v in rows.items()}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| users | events | max_len | build s | peak RSS MB | " + " | ".join(f"samples/s ({k})" for k in res["samples_per_s"]) + " |")
    print("|---" * (5 + len(rows)) + "|")
    print(f"| {res['users']} | {res['events']} | {a.max_len} | {build_s:.1f} | {res['peak_rss_mb']:.0f} | "
          + " | ".join(f"{v:,.0f}" for v in res["samples_per_s"].values()) + " |")
    print(f"train samples {res['train_samples']}, history length avg {res['avg_hist_len']:.1f} max {res['max_hist_len']}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
