"""SEMINAR vs. baselines vs. ablations on the embedded synthetic data (issue 4's results table).

Reruns everything: prepares the synthetic dataset, then for every model config x seed runs
``seminar-zoo experiment`` in a subprocess (run dirs under ``--out``; a finished run, i.e. one
with ``metrics.json``, is reused unless ``--force``), and writes the table with mean +- std over
seeds to ``experiments/results/synthetic.md`` and all per-run numbers to ``synthetic.json``.

Models: every ``baselines/*.yaml`` twice, with queries (the default: every baseline gets the fused
(query, item) pair vectors, as SEMINAR does) and without (``NAME-noquery``, label ``NAME (no query)``:
``--model.init_args.use_queries false``; TWIN also drops its query cross features, and QIN keeps its
query-driven first stage, the paper's model, so its row reads ``qin (queries in RSU only)``), then
``experiments/seminar.yaml`` and ``experiments/ablations/*.yaml``. The seed is ``--seed_everything`` (initialisation, dropout);
the data (and so the sampled test negatives) is the same for every seed, so models are compared
on identical test lists.

    python experiments/synthetic_table.py                 # the full table (~25 min on 2 free cores)
    python experiments/synthetic_table.py --only seminar din --seeds 0
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
MAIN = ("test/auc", "test/ndcg@10", "test/hr@10", "test/mrr")
ABLATION_LABELS = {
    "no_pretrain": "SEMINAR w/o pretraining (random init)",
    "no_align": "SEMINAR w/o alignment loss",
    "no_query": "SEMINAR w/o query sequence (lambda=0)",
    "no_gsu": "SEMINAR w/o GSU (ESU on last K)",
    "time_aware": "SEMINAR + time-interval embedding (not in the paper)",
}


# SASRec and HSTU train on every position in one causal pass per history (their shipped recipe,
# README "Training recipe"), so an epoch is one history per user: 4 optimiser steps here against the
# ~63-125 of the other models' epochs. 30 epochs give them about the optimiser steps the others get in 2.
SEQUENTIAL = {"sasrec": ["--trainer.max_epochs", "30"], "hstu": ["--trainer.max_epochs", "30"]}
NO_QUERY = ["--model.init_args.use_queries", "false"]
# per-config extras of the no-query run: what else reads queries besides the pair vectors
NO_QUERY_EXTRA = {"twin": ["--model.init_args.cross_features", "[recency]"]}
NO_QUERY_LABEL = {"qin": "qin (queries in RSU only)"}


class Config(NamedTuple):
    name: str  # run folder name
    path: Path
    kind: str  # baseline | seminar | ablation
    args: List[str]  # extra CLI arguments
    label: str


def configs() -> List[Config]:
    base = sorted(ROOT.glob("baselines/*.yaml"), key=lambda p: (not p.stem.startswith("din"), p.stem))
    out = []
    for p in base:
        seq = SEQUENTIAL.get(p.stem, [])
        out.append(Config(p.stem, p, "baseline", seq, p.stem))
        if "popularity" not in p.read_text().lower():  # nothing to turn off in the no-learning reference
            out.append(Config(f"{p.stem}-noquery", p, "baseline", seq + NO_QUERY + NO_QUERY_EXTRA.get(p.stem, []),
                              NO_QUERY_LABEL.get(p.stem, f"{p.stem} (no query)")))
    out.append(Config("seminar", ROOT / "experiments" / "seminar.yaml", "seminar", [], "seminar"))
    # an ablation is an overlay on seminar.yaml (it holds only what changes): --config seminar.yaml ... --config it
    out += [Config(f"seminar-{p.stem}", ROOT / "experiments" / "seminar.yaml", "ablation", ["--config", str(p)],
                   ABLATION_LABELS.get(p.stem, f"seminar-{p.stem}"))
            for p in sorted((ROOT / "experiments" / "ablations").glob("*.yaml"))]
    return out


def mean_std(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan"), 0
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd, len(xs)


def fmt(ms, digits=4):
    m, sd, n = ms
    if n == 0:
        return "–"
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def run_one(exe, cfg, data, run_dir, name, seed, a, env, extra=()):
    mfile = run_dir / "metrics.json"
    if mfile.exists() and not a.force:
        return json.loads(mfile.read_text()), 0.0
    run_dir.mkdir(parents=True, exist_ok=True)
    # --overwrite: a folder without metrics.json is an interrupted run; start it over (runs are
    # deterministic, so the result is the one the uninterrupted run would have written)
    cmd = exe + ["experiment", "--overwrite", "--config", str(cfg), "--data.path", str(data), "--run_dir", str(run_dir),
                 "--name", name, "--data.max_len", str(a.seq_len), "--trainer.max_epochs", str(a.epochs),
                 "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
                 "--data.eval_batch_size", str(a.eval_batch_size), "--trainer.limit_val_batches", str(a.limit_val_batches),
                 *extra]
    t0 = time.time()
    with open(run_dir / "log.txt", "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0 or not mfile.exists():
        print(f"[table] {name} seed {seed} FAILED (exit {r.returncode}); see {run_dir / 'log.txt'}", flush=True)
        return None, time.time() - t0
    return json.loads(mfile.read_text()), time.time() - t0


def write_tables(rows, a, data, total_s, out_md: Path):
    by = {}
    for r in rows:
        by.setdefault(r["_name"], []).append(r)
    order = [c.name for c in configs() if c.name in by]
    kind = {c.name: c.kind for c in configs()}
    labels = {c.name: c.label for c in configs()}
    L = []
    L.append("# SEMINAR vs. baselines vs. ablations on the synthetic data\n")
    L.append(f"Generated by `python experiments/synthetic_table.py` ({' '.join(sys.argv[1:]) or 'defaults'}); "
             f"total wall time {total_s / 60:.1f} min for the runs it had to do.\n")
    L.append(f"Data: `seminar-zoo prepare synthetic --users {a.users} --items {a.items} --seq-len {a.seq_len} "
             f"--seed 0` (the embedded generator, unchanged). Protocol: ranking (leave-one-out by time; each test "
             f"target ranked against 99 seeded sampled negatives the user never interacted with; train window 20, "
             f"1 sampled negative per training target). History length {a.seq_len}. All models: embed_dim 32, "
             f"{a.epochs} finetuning epochs (SASRec and HSTU: 30 epochs of one all-positions pass per user, "
             f"about the same number of optimiser steps; `SEQUENTIAL` in the script), best epoch by val AUC on {a.limit_val_batches:.0%} of the validation lists, seeds {a.seeds} (`--seed_everything`; same data "
             f"and test lists for every seed). SEMINAR pretrains its PSU first (settings in "
             f"`experiments/seminar.yaml`). Baselines read the fused (query, item) pair vectors with SEMINAR's "
             f"fusion weight lambda_q = 0.5 (query share) for the target and every behaviour; rows marked "
             f"`(no query)` are the same configs with `--model.init_args.use_queries false`. Mean ± std over seeds.\n")
    if a.note:
        L.append(a.note + "\n")
    L.append("## Main table\n")
    L.append("| model | kind | AUC | NDCG@10 | HR@10 | MRR | n seeds |")
    L.append("|---|---|---|---|---|---|---|")
    for n in order:
        rs = by[n]
        L.append(f"| {labels[n]} | {kind[n]} | " + " | ".join(fmt(mean_std([r.get(c) for r in rs])) for c in MAIN)
                 + f" | {len(rs)} |")
    sem = [n for n in order if kind[n] in ("seminar", "ablation")]
    if sem:
        L.append("\n## ID sparsity: AUC on test lists whose target never was a training target\n")
        L.append("Cold targets: items that never appear as a training target (computed from the train split; on "
                 "this data they are the generator's `cold_items` plus warm items that happen not to be drawn).\n")
        L.append("| model | AUC cold targets | AUC warm targets | n cold / n warm test lists |")
        L.append("|---|---|---|---|")
        for n in sem:
            rs = by[n]
            label = labels[n]
            nc = mean_std([r.get("test/n_cold_targets") for r in rs])[0]
            nw = mean_std([r.get("test/n_warm_targets") for r in rs])[0]
            L.append(f"| {label} | {fmt(mean_std([r.get('test/auc_cold_targets') for r in rs]))} | "
                     f"{fmt(mean_std([r.get('test/auc_warm_targets') for r in rs]))} | {nc:.0f} / {nw:.0f} |")
        mods = sorted({k.split("/")[-1] for n in sem for r in by[n] for k in r if k.startswith("test/modality_weight/")},
                      key=lambda m: ["id", "attr", "text", "image", "query"].index(m) if m in
                      ["id", "attr", "text", "image", "query"] else 9)
        L.append("\n## Modality imbalance: share of each modality in the GSU score of the true test targets\n")
        L.append("Share of modality m = |<W_q e_t, W_k G(m) x_l^(m)>| / sum over modalities, averaged over history "
                 "behaviours with the GSU attention weights, then over test targets (`test/modality_weight/<m>`). "
                 "The synthetic image embeddings have ~10x the norm of the text ones.\n")
        L.append("| model | " + " | ".join(mods) + " |")
        L.append("|---|" + "---|" * len(mods))
        for n in sem:
            rs = by[n]
            label = labels[n]
            L.append(f"| {label} | " + " | ".join(fmt(mean_std([r.get(f"test/modality_weight/{m}") for r in rs]), 3)
                                               for m in mods) + " |")
    L.append("\n## Cost\n")
    L.append("| model | fit seconds (incl. pretraining) | train samples/s |")
    L.append("|---|---|---|")
    for n in order:
        rs = by[n]
        L.append(f"| {labels[n]} | {fmt(mean_std([r.get('fit_seconds') for r in rs]), 0)} | "
                 f"{fmt(mean_std([r.get('samples_per_second') for r in rs]), 0)} |")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(L) + "\n")
    out_md.with_suffix(".json").write_text(json.dumps(
        {"settings": {"users": a.users, "items": a.items, "seq_len": a.seq_len, "epochs": a.epochs,
                      "seeds": a.seeds, "data": str(data)},
         "runs": rows}, indent=1, sort_keys=True, default=float))
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/synthetic_table")
    ap.add_argument("--users", type=int, default=800)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--seq-len", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-batch-size", type=int, default=2000)
    ap.add_argument("--limit-val-batches", type=float, default=0.5,
                    help="share of the validation lists used to pick the best epoch (the test uses all)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets cores/jobs threads)")
    ap.add_argument("--only", nargs="*", help="config names to run (e.g. din din-noquery seminar seminar-no_gsu)")
    ap.add_argument("--force", action="store_true", help="rerun finished runs")
    ap.add_argument("--note", default="", help="a paragraph printed under the settings (provenance of the runs)")
    ap.add_argument("--table-only", action="store_true", help="run nothing: write the table from the finished runs")
    ap.add_argument("--results", default=str(ROOT / "experiments" / "results" / "synthetic.md"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    data = out / "data" / f"synthetic-u{a.users}-i{a.items}-l{a.seq_len}-s0"
    exe = [sys.executable, "-m", "seminar_zoo.cli"]
    threads = max(1, (os.cpu_count() or 2) // max(1, a.jobs))
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if not (data / "meta.json").exists():
        subprocess.run(exe + ["prepare", "synthetic", "--out", str(data), "--users", str(a.users), "--items",
                              str(a.items), "--seq-len", str(a.seq_len), "--seed", "0"], check=True, env=env)
    todo = [] if a.table_only else [(c, s) for c in configs() if not a.only or c.name in a.only for s in a.seeds]
    t0 = time.time()

    def job(t):
        c, s = t
        n = c.name
        m, dt = run_one(exe, c.path, data, out / "runs" / n / f"seed{s}", n, s, a, env, c.args)
        if m is not None:
            print(f"[table] {n} seed {s}: AUC {m['test/auc']:.4f} NDCG@10 {m['test/ndcg@10']:.4f} "
                  f"({dt:.0f}s)", flush=True)
            m = {**m, "_name": n, "_seed": s}
        return m

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        rows = [r for r in ex.map(job, todo) if r is not None]
    total = time.time() - t0
    # also pick up finished runs of configs not selected this time, so the table stays complete
    done = {(r["_name"], r["_seed"]) for r in rows}
    for n in (c.name for c in configs()):
        for s in a.seeds:
            f = out / "runs" / n / f"seed{s}" / "metrics.json"
            if (n, s) not in done and f.exists():
                rows.append({**json.loads(f.read_text()), "_name": n, "_seed": s})
    print(write_tables(rows, a, data, total, Path(a.results)))
    if len(rows) < len(todo):
        sys.exit(1)


if __name__ == "__main__":
    main()
