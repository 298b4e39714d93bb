"""Peer parity with RecBole (Zhao et al., CIKM 2021/2022): its GRU4Rec and SASRec on OUR split
and OUR candidates, scored by OUR metrics code.

Why a bridge and not RecBole's own numbers:
- RecBole rounds timestamps to float32, which reorders 149 ML-100K test targets; we feed it
  per-user ranks (0, 1, 2, ...) as timestamps, so its leave-one-out split is ours.
- Its stock ``uni100`` negatives can include the user's own items; we score its trained model
  on our exact candidates instead: the test target against our 99 uniform unseen negatives,
  and against every unseen item (full ranking), from ``full_sort_predict`` on our histories.
RecBole's own full-ranking test numbers are recorded beside ours as a sanity check.

A job interrupted mid-training (`--work`) continues from its last finished epoch (see
``recbole_child.resume_if_interrupted``).

RecBole needs numpy<2 and installs into its own virtual environment (``--setup`` creates
``.venv-recbole``: torch CPU, numpy<2, recbole==1.2.1); the model runs there
(``recbole_child.py``), this script prepares the data and computes the metrics.

Usage:
  python experiments/bench/recbole_parity.py --setup            # once
  python experiments/bench/recbole_parity.py [--data runs/data/ml100k] [--models GRU4Rec SASRec]
         [--seeds 0 1 2] [--epochs 100 --stopping-step 10] [--work DIR [--table-only]]
Writes experiments/results/recbole_parity.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-recbole"
KS = (10, 50)


def setup_venv() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["numpy<2", "recbole==1.2.1"], check=True)


def single_positive_metrics(n_greater: np.ndarray, n_equal: np.ndarray, n_neg: np.ndarray) -> dict:
    """Tie-aware HR@K, NDCG@K, MRR and per-list AUC of one-positive lists from their counts of
    negatives scoring above / equal to the positive: the zoo's own metric code (full-ranking path)."""
    import torch

    from seminar_zoo.metrics import RankingMetrics

    m = RankingMetrics(KS)
    m.update_counts(*(torch.as_tensor(np.asarray(x, np.int64)) for x in (n_greater, n_equal, n_neg)))
    r = m.compute()
    return {k: float(r[k]) for k in (*(f"{n}@{k}" for k in KS for n in ("hr", "ndcg")), "mrr", "auc")}


def prepare_job(args, dm, work: Path):
    """Atomic files with per-user rank timestamps; our test histories and candidates."""
    users, items, offsets = dm.positive_log()
    rank = np.arange(len(users)) - offsets[users]
    d = work / "atomic" / "ours"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "ours.inter", "w") as fh:
        fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
        np.savetxt(fh, np.stack([users, items, rank], 1), fmt="%d", delimiter="\t")
    hist, _, _ = dm.eval_histories("test", args.max_len)
    return {"user": dm.eval_users("test"), "candidates": dm.eval_candidates("test")}, hist


def evaluate(scores: np.ndarray, test, dm) -> dict:
    """Sampled (our 99 negatives) and full (every unseen item) metrics from one score matrix."""
    u = test["user"]
    cand = test["candidates"]
    s_c = scores[np.arange(len(u))[:, None], cand]
    pos = s_c[:, :1]
    sampled = single_positive_metrics((s_c[:, 1:] > pos).sum(1), (s_c[:, 1:] == pos).sum(1),
                                      np.full(len(u), cand.shape[1] - 1))
    _, log_item, offsets = dm.positive_log()
    n_gt, n_eq, n_neg = np.zeros(len(u), np.int64), np.zeros(len(u), np.int64), np.zeros(len(u), np.int64)
    for i, user in enumerate(u):
        items = np.unique(log_item[offsets[user]:offsets[user + 1]])
        mask = np.ones(scores.shape[1], bool)
        mask[0] = False
        mask[items] = False  # every interacted item (the target included) is not a negative
        neg = scores[i, mask]
        p = scores[i, cand[i, 0]]
        n_gt[i], n_eq[i], n_neg[i] = (neg > p).sum(), (neg == p).sum(), mask.sum()
    full = single_positive_metrics(n_gt, n_eq, n_neg)
    return {"sampled": sampled, "full": full}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true", help="create .venv-recbole and exit")
    ap.add_argument("--data", default="runs/data/ml100k", help="a prepared dataset (seminar-zoo prepare movielens)")
    ap.add_argument("--models", nargs="+", default=["GRU4Rec", "SASRec"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--n-eval-negatives", type=int, default=99)
    ap.add_argument("--out", default="experiments/results/recbole_parity")
    ap.add_argument("--table-only", action="store_true", help="only write the tables from the finished jobs of "
                    "--work (n per model as finished; nothing is trained)")
    ap.add_argument("--work", default=None, help="keep each (model, seed) job here and reuse finished ones "
                    "(long runs resume after an interruption); default: a temporary folder")
    args = ap.parse_args(argv)
    if args.setup:
        setup_venv()
        return
    if args.table_only and not args.work:
        print("recbole_parity: --table-only reads the finished jobs of --work DIR; give --work", file=sys.stderr)
        sys.exit(2)
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"recbole_parity: {py} missing; run with --setup first", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(ROOT / "src"))
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    dm = LifelongSequenceDataModule(str(ROOT / args.data), max_len=args.max_len,
                                    n_eval_negatives=args.n_eval_negatives, seed=0)
    dm.setup()
    n_items = int(dm.data_meta["n_items"])
    runs, missing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # --table-only must not rewrite the atomic files a running job may be loading
        test, hist = prepare_job(args, dm, work) if not args.table_only else (None, None)
        for model in args.models:
            for seed in args.seeds:
                job_dir = work / f"{model}-{seed}"
                done = job_dir / "run.json"
                if done.exists():  # finished in an earlier invocation with --work
                    runs.append(json.loads(done.read_text()))
                    continue
                if args.table_only:
                    missing.append(f"{model} seed {seed}")
                    continue
                job = {"data_path": str(work / "atomic"), "dataset": "ours", "model": model, "seed": seed,
                       "epochs": args.epochs, "stopping_step": args.stopping_step, "lr": args.lr,
                       "max_len": args.max_len, "n_items": n_items}
                # an interrupted job of the same settings continues from its last epoch (recbole_child.py)
                resume = (job_dir / "saved" / "last.pth").exists() and (job_dir / "job.json").exists() \
                    and json.loads((job_dir / "job.json").read_text()) == job
                if job_dir.exists() and not resume:
                    import shutil

                    shutil.rmtree(job_dir)
                if resume:
                    print(f"{model} seed {seed}: resuming the interrupted job in {job_dir}", flush=True)
                else:
                    job_dir.mkdir()
                    np.save(job_dir / "histories.npy", hist)
                    (job_dir / "job.json").write_text(json.dumps(job))
                t0 = time.time()
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                with open(job_dir / "child.log", "a" if resume else "w") as log:  # RecBole also writes log/ into its cwd
                    rc = subprocess.run([str(py), str(ROOT / "experiments/bench/recbole_child.py"), str(job_dir)],
                                        env=env, cwd=job_dir, stdout=log, stderr=subprocess.STDOUT).returncode
                if rc:
                    tail = (job_dir / "child.log").read_text().splitlines()[-15:]
                    print(f"{model} seed {seed}: RecBole exited {rc}:\n" + "\n".join(tail), file=sys.stderr)
                    sys.exit(1)
                rb = json.loads((job_dir / "recbole_result.json").read_text())
                res = evaluate(np.load(job_dir / "scores.npy"), test, dm)
                runs.append({"model": model, "seed": seed, **res, "recbole": rb, "wall_s": time.time() - t0,
                             "load_avg": os.getloadavg()})
                done.write_text(json.dumps(runs[-1]))
                print(f"{model} seed {seed}: sampled NDCG@10 {res['sampled']['ndcg@10']:.4f} "
                      f"HR@10 {res['sampled']['hr@10']:.4f} | full NDCG@10 {res['full']['ndcg@10']:.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
    write(args, runs, dm, missing)


def _ms(xs):
    xs = np.asarray(xs, float)
    return f"{xs.mean():.4f} ± {xs.std(ddof=1) if len(xs) > 1 else 0:.4f}"


def write(args, runs, dm, missing=()) -> None:
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"data": args.data, "n_eval_negatives": args.n_eval_negatives, "max_len": args.max_len,
            "epochs": args.epochs, "stopping_step": args.stopping_step, "lr": args.lr, "seeds": args.seeds,
            "n_test_lists": int(dm.split_sizes()["test"]), "load_avg": os.getloadavg(),
            "not_finished": list(missing)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    lines = ["# RecBole 1.2.1 on our split and our candidates", "",
             f"Data `{args.data}` (`seminar-zoo prepare movielens`; the text encoder does not enter RecBole), leave-one-out (our split; RecBole fed per-user ranks as timestamps), "
             f"max_len {args.max_len}, CE loss over all items, Adam lr {args.lr}, up to {args.epochs} epochs with "
             f"early stopping on RecBole's validation NDCG@10 (patience {args.stopping_step}), seeds {args.seeds}. "
             f"Scored by our metrics (tie-aware) on our {meta['n_test_lists']} test targets. "
             "Produced by `python experiments/bench/recbole_parity.py`.", "",
             "| model | n | protocol | NDCG@10 | HR@10 | NDCG@50 | HR@50 | MRR | AUC | RecBole's own full NDCG@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        rs = [r for r in runs if r["model"] == model]
        if not rs:
            continue
        for proto in ("sampled", "full"):
            own = _ms([r["recbole"]["test_recbole_protocol"].get("ndcg@10", float("nan")) for r in rs]) \
                if proto == "full" else ""
            name = f"{args.n_eval_negatives} negatives" if proto == "sampled" else "full ranking"
            lines.append(f"| RecBole {model} | {len(rs)} | {name} | " + " | ".join(
                _ms([r[proto][m] for r in rs]) for m in ("ndcg@10", "hr@10", "ndcg@50", "hr@50", "mrr", "auc"))
                + f" | {own} |")
    lines += ["", "Per run (each to early stopping; RecBole's own best validation NDCG@10 is on its full-ranking "
              "validation split). Fit s is wall time over the resumed pieces of a run, on one or two threads of the "
              "2-core machine beside other jobs: a record of what the run cost, not a speed figure.", "",
              "| model | seed | NDCG@10 (99 neg.) | NDCG@10 (full) | RecBole best valid NDCG@10 | fit s |",
              "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (args.models.index(r["model"]) if r["model"] in args.models else 99,
                                         r["seed"])):
        lines.append(f"| {r['model']} | {r['seed']} | {r['sampled']['ndcg@10']:.4f} | {r['full']['ndcg@10']:.4f} | "
                     f"{r['recbole'].get('best_valid', float('nan')):.4f} | "
                     f"{r['recbole'].get('fit_seconds', float('nan')):.0f} |")
    if missing:
        lines += ["", f"Not finished yet (`--table-only` left them out): {', '.join(missing)}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
