"""SEMINAR's GSU with exact vs. PQ retrieval on the SAME finetuned weights (arXiv 2407.10714, Sec. 3.4).

For every given SEMINAR run folder (``config.yaml`` and a ``metrics.json`` naming ``best_checkpoint``, as
``seminar-zoo experiment`` writes them), the best checkpoint is tested with ``--model.init_args.retrieval
pq`` (faiss fast-scan on CPU, the codebooks fitted at test start from training behaviours) and, unless
``--reuse-exact``, again with ``exact``; both into ``RUN/test_{exact,pq}/``.  Only the GSU's top-K
selection differs between the two, so the differences in AUC / NDCG@10 are what the quantisation costs.

    python experiments/pq_vs_exact.py --runs runs/synthetic_table/runs/seminar/seed* \
        --label synthetic --out experiments/results/pq_vs_exact

Writes OUT.md (per run and mean, the issue-13 bounds |dAUC| <= 0.002, |dNDCG@10| <= 0.005 checked) and
OUT.json; more datasets are added to the same files by further calls with another ``--label``.

``--pq-grid 16x2 16x4 ... 256x8`` (n_centroids x n_sub) is the codebook-size sweep on the fast path: each
size is one more pq test of the same checkpoints (``RUN/test_pq_CxS/``), tabulated over seeds with a plot.
The codebooks do not touch training (the GSU trains with exact scores), so testing one finetuned model per
seed at every size measures what retraining per size would, without the 9x redundant fits.

    python experiments/pq_vs_exact.py --runs .../seminar/seed* --label synthetic \
        --pq-grid 16x2 16x4 16x8 64x2 64x4 64x8 256x2 256x4 256x8 --out experiments/results/codebook_sweep
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

BIN = Path(sys.executable).parent / "seminar-zoo"
BOUNDS = {"test/auc": 0.002, "test/ndcg@10": 0.005}


def _test(run: Path, retrieval: str, extra: List[str], cwd: Path, tag: str = "") -> Dict:
    out = run / f"test_{tag or retrieval}"
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    rec = json.loads((run / "metrics.json").read_text())
    ckpt = rec.get("best_checkpoint") or rec.get("checkpoint")
    if not ckpt or not Path(ckpt).exists():
        raise SystemExit(f"pq_vs_exact: {run / 'metrics.json'} names no existing best_checkpoint ({ckpt!r})")
    cmd = [str(BIN), "test", "--config", str(run / "config.yaml"), "--ckpt_path", ckpt,
           "--model.init_args.retrieval", retrieval, "--trainer.default_root_dir", str(out),
           "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
           "--seed_everything", str(rec.get("seed", 0)), *extra]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out / "log.txt", "w") as log:
        rc = subprocess.call(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if rc or not (out / "metrics.json").exists():
        raise SystemExit(f"pq_vs_exact: `{' '.join(cmd)}` failed (exit {rc}); see {out / 'log.txt'}")
    print(f"  {run} {retrieval}: {time.time() - t0:.0f}s", flush=True)
    return json.loads((out / "metrics.json").read_text())


def _packed_bytes(n_codes, n_centroids: int):
    if n_codes is None:
        return None
    return -(-n_codes * (4 if n_centroids <= 16 else 8) // 8)


def compare(run: Path, label: str, reuse_exact: bool, extra: List[str], cwd: Path, size: str = "") -> Dict:
    ex = json.loads((run / "metrics.json").read_text()) if reuse_exact else _test(run, "exact", extra, cwd)
    if size:
        c, n = size.split("x")
        # the whole `pq` dict (an exact run's config has pq: null, so pq.KEY overrides would have nothing to merge into)
        pq = _test(run, "pq", [*extra, "--model.init_args.pq", json.dumps({"n_centroids": int(c), "n_sub": int(n)})], cwd,
                   tag=f"pq_{size}")
    else:
        pq = _test(run, "pq", extra, cwd)
    k = next((key.rsplit("@", 1)[1] for key in pq if key.startswith("test/gsu/recall@")), "?")
    row = {"dataset": label, "run": str(run), "pq_size": size, "seed": pq.get("seed"), "protocol": pq.get("protocol"),
           "topk": k, "gsu_backend": pq.get("gsu_backend"), "codes_per_behaviour": pq.get("gsu_bytes_per_behaviour"),
           # as the scanner holds them: 4-bit codes two per byte (fast-scan), larger codebooks one byte a code (IndexPQ)
           "bytes_per_behaviour": _packed_bytes(pq.get("gsu_bytes_per_behaviour"), int(size.split("x")[0]) if size else 16),
           "gsu_recall": pq.get(f"test/gsu/recall@{k}"),
           "ms_exact": pq.get("test/gsu/exact_ms_per_request"), "ms_pq": pq.get("test/gsu/ms_per_request")}
    for m in BOUNDS:
        row[f"{m}/exact"], row[f"{m}/pq"] = ex[m], pq[m]
        row[f"{m}/delta"] = pq[m] - ex[m]
    return row


def render(rows: List[Dict]) -> str:
    L = ["# SEMINAR: exact vs PQ GSU retrieval on the same weights", "",
         "Each row tests one finetuned SEMINAR checkpoint twice (`seminar-zoo test --ckpt_path BEST "
         "--model.init_args.retrieval exact|pq`): only the GSU's top-K selection differs. PQ: the checkpoint's "
         "`pq` settings (4-bit codes, faiss fast-scan on CPU), codebooks fitted at test start. `GSU recall` = share "
         "of the exact top-K that PQ selects; `ms` = GSU selection time per scored row (exact scoring + top-K, "
         "or PQ encode + search), measured in the same test run. Bounds (issue 13): |dAUC| <= 0.002, "
         "|dNDCG@10| <= 0.005.", "",
         "| dataset | protocol | seed | K | AUC exact | AUC pq | dAUC | NDCG@10 exact | NDCG@10 pq | dNDCG@10 | "
         "GSU recall@K | B/behaviour | ms exact | ms pq |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x, nd=4):
        return "-" if x is None else f"{x:.{nd}f}"
    for r in rows:
        L.append(f"| {r['dataset']} | {r['protocol']} | {r['seed']} | {r['topk']} | {f(r['test/auc/exact'])} | "
                 f"{f(r['test/auc/pq'])} | {r['test/auc/delta']:+.4f} | {f(r['test/ndcg@10/exact'])} | "
                 f"{f(r['test/ndcg@10/pq'])} | {r['test/ndcg@10/delta']:+.4f} | {f(r['gsu_recall'], 3)} | "
                 f"{r['bytes_per_behaviour']} | {f(r['ms_exact'], 4)} | {f(r['ms_pq'], 4)} |")
    L += ["", "| dataset | protocol | runs | mean dAUC | max abs dAUC | mean dNDCG@10 | max abs dNDCG@10 | "
          "mean GSU recall | within bounds |", "|---|---|---|---|---|---|---|---|---|"]
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["protocol"]), []).append(r)
    for (ds, proto), g in groups.items():
        da, dn = [r["test/auc/delta"] for r in g], [r["test/ndcg@10/delta"] for r in g]
        ok = max(map(abs, da)) <= BOUNDS["test/auc"] and max(map(abs, dn)) <= BOUNDS["test/ndcg@10"]
        rec = [r["gsu_recall"] for r in g if r["gsu_recall"] is not None]
        L.append(f"| {ds} | {proto} | {len(g)} | {statistics.mean(da):+.4f} | {max(map(abs, da)):.4f} | "
                 f"{statistics.mean(dn):+.4f} | {max(map(abs, dn)):.4f} | "
                 f"{statistics.mean(rec) if rec else float('nan'):.3f} | {'yes' if ok else 'NO'} |")
    return "\n".join(L) + "\n"


def _mean_std(xs) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def render_grid(rows: List[Dict]) -> str:
    L = ["# SEMINAR-PQ codebook size (n_centroids x n_sub) on the fast path", "",
         "Each finetuned SEMINAR checkpoint (one per seed) tested with `--model.init_args.retrieval pq` at every "
         "codebook size (`--model.init_args.pq '{\"n_centroids\": C, \"n_sub\": S}'`, other pq settings at their defaults): faiss 4-bit fast-scan "
         "for 16 centroids, faiss 8-bit IndexPQ for 64 and 256 (the `auto` backend on CPU), codebooks fitted at test "
         "start. Deltas are against the same checkpoint tested with exact retrieval. Codes per behaviour = modalities "
         "x n_sub; bytes as the faiss scanner holds them (4-bit codes two per byte for 16 centroids, one byte a code for 64 "
         "and 256). `ms pq` / `ms exact` = GSU selection time per scored row in the same test run "
         "(exact scoring is cheap at these history lengths). Mean ± std over seeds.", "",
         "| n_centroids | n_sub | codes | B/behaviour | n | AUC | NDCG@10 | dAUC | dNDCG@10 | GSU recall@K | ms pq | ms exact |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: Dict[str, List[Dict]] = {}
    for r in rows:
        groups.setdefault(r["pq_size"], []).append(r)
    for size, g in sorted(groups.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("x"))):
        c, n = size.split("x")
        L.append(f"| {c} | {n} | {g[0].get('codes_per_behaviour')} | {g[0]['bytes_per_behaviour']} | {len(g)} | {_mean_std([r['test/auc/pq'] for r in g])} | "
                 f"{_mean_std([r['test/ndcg@10/pq'] for r in g])} | {_mean_std([r['test/auc/delta'] for r in g])} | "
                 f"{_mean_std([r['test/ndcg@10/delta'] for r in g])} | {_mean_std([r['gsu_recall'] for r in g])} | "
                 f"{_mean_std([r['ms_pq'] for r in g])} | {_mean_std([r['ms_exact'] for r in g])} |")
    ex = {r["run"]: r for r in rows}.values()
    L += ["", f"Exact retrieval on the same checkpoints: AUC {_mean_std([r['test/auc/exact'] for r in ex])}, "
              f"NDCG@10 {_mean_std([r['test/ndcg@10/exact'] for r in ex])}.", "",
          "![codebook sweep](./codebook_sweep.png)"]
    return "\n".join(L) + "\n"


def plot_grid(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c in sorted({int(r["pq_size"].split("x")[0]) for r in rows}):
        pts: Dict[int, List[Dict]] = {}
        for r in rows:
            if int(r["pq_size"].split("x")[0]) == c:
                pts.setdefault(r["bytes_per_behaviour"], []).append(r)
        xs = sorted(pts)
        axes[0].plot(xs, [statistics.mean(r["gsu_recall"] for r in pts[x]) for x in xs], "o-", label=f"{c} centroids")
        axes[1].plot(xs, [statistics.mean(r["test/ndcg@10/delta"] for r in pts[x]) for x in xs], "o-", label=f"{c} centroids")
    axes[0].set(xlabel="bytes per behaviour", ylabel="GSU recall@K (share of the exact top-K)", xscale="log")
    axes[1].set(xlabel="bytes per behaviour", ylabel="NDCG@10 pq - exact", xscale="log")
    axes[1].axhline(0, color="grey", lw=0.5)
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="SEMINAR run folders (config.yaml, metrics.json)")
    ap.add_argument("--label", required=True, help="dataset name for the table")
    ap.add_argument("--out", default="experiments/results/pq_vs_exact", help="writes OUT.md and OUT.json")
    ap.add_argument("--cwd", default=".", help="folder the runs' relative data paths resolve from")
    ap.add_argument("--reuse-exact", action="store_true",
                    help="take the exact numbers from RUN/metrics.json (the experiment's own test of the best checkpoint)")
    ap.add_argument("--pq-grid", nargs="*", default=[], help="codebook sizes CxS (n_centroids x n_sub) to sweep")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more arguments for `seminar-zoo test`")
    a = ap.parse_args(argv)
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    for r in a.runs:
        if not (Path(r) / "metrics.json").exists() or not (Path(r) / "config.yaml").exists():
            ap.error(f"--runs: {r} holds no metrics.json and config.yaml of a finished run")
    for size in a.pq_grid:
        if not re.fullmatch(r"\d+x\d+", size):
            ap.error(f"--pq-grid: {size!r} is not CxS (n_centroids x n_sub, e.g. 16x8)")
    out = Path(a.out)
    old = json.loads(out.with_suffix(".json").read_text())["rows"] if out.with_suffix(".json").exists() else []
    new = [compare(Path(r).resolve(), a.label, a.reuse_exact, extra, Path(a.cwd).resolve(), size)
           for size in (a.pq_grid or [""]) for r in a.runs]
    keep = [r for r in old if (r["run"], r.get("pq_size", "")) not in {(n["run"], n["pq_size"]) for n in new}]
    rows = keep + new
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=1))
    text = render_grid(rows) if a.pq_grid else render(rows)
    if a.pq_grid:
        plot_grid(rows, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
