"""What each training-recipe change bought on ML-100K (issue 12): the shipped recipe against the recipe it
replaced, one change at a time, same split, candidates, seeds and hyper-parameters (ranking protocol, 99
uniform negatives).  Runs through `experiments/real/ml100k.py` (same overrides: lr 0.005, 20% of the training
targets per epoch for target-attention models, early stopping on validation NDCG@10, best checkpoint tested);
SEMINAR's rows (which of its parts carry it) start from its tuned ML-100K overlay instead.

    python experiments/real/ml100k_ablation.py [--seeds 0 1 2] [--rows SASRec SASRec-bce ...]
    python experiments/real/ml100k_ablation.py --protocols full --rows SASRec SASRec-bce SASRec-old HSTU HSTU-positions

Writes experiments/results/ml100k_ablation.{md,json}; resumable (finished runs are kept under --runs).
Each row's change is paired with the shipped row of the same model and seed: delta = row - shipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ml100k", ROOT / "experiments/real/ml100k.py")
ml100k = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ml100k)

SHARE, TOPK = ml100k.SHARE, ml100k.TOPK
# SEMINAR's rows start from its tuned ML-100K values (the overlay goes after lr 0.005, so it wins)
SEMINAR = ["--config", f"{ml100k.TUNED}/seminar.yaml", "--model.init_args.retrieval", "exact", *TOPK, *SHARE]
BCE = ["--model.init_args.loss", "bce"]  # all positions: the model draws one negative item per position
# (label, shipped label it is paired with, config, overrides, what changes)
ROWS = [
    ("SASRec", None, "baselines/sasrec.yaml", [], "shipped: every position a target, full softmax"),
    ("SASRec-bce", "SASRec", "baselines/sasrec.yaml", BCE,
     "loss: BCE with 1 sampled negative per position (the SASRec paper's Eq. 12) instead of the full softmax"),
    ("SASRec-old", "SASRec", "baselines/sasrec.yaml",
     [*BCE, "--data.train_negatives", "1", "--model.init_args.all_positions", "false", "--data.train_stride", "1",
      "--data.train_window", "20"],
     "the replaced recipe: the last 20 targets per user, one forward per target, BCE with 1 negative"),
    ("HSTU", None, "baselines/hstu.yaml", [], "shipped: relative position and time-gap bias"),
    ("HSTU-positions", "HSTU", "baselines/hstu.yaml", ["--model.init_args.time_bias", "false"],
     "relative position bias only (HSTU before the batches carried hist_ts)"),
    ("DIN", None, "baselines/din.yaml", SHARE, "shipped: every training position a target (train_window null)"),
    ("DIN-window20", "DIN", "baselines/din.yaml", [*SHARE, "--data.train_window", "20"],
     "train_window 20: only each user's last 20 training targets (the replaced default)"),
    ("SEMINAR", None, "experiments/seminar.yaml", SEMINAR,
     "shipped, tuned overlay: PSU pretraining (2 epochs), GSU top-20 of 50, GSU scores as ESU bias"),
    ("SEMINAR-no-pretrain", "SEMINAR", "experiments/seminar.yaml",
     [*SEMINAR, "--config", "experiments/ablations/no_pretrain.yaml"],
     "no PSU pretraining: encoders, gamma and attention from scratch"),
    ("SEMINAR-no-gsu-bias", "SEMINAR", "experiments/seminar.yaml", [*SEMINAR, "--model.init_args.gsu_bias", "false"],
     "the ESU without the GSU scores as bias (the GSU then gets no gradient)"),
    ("SEMINAR-top50", "SEMINAR", "experiments/seminar.yaml", [*SEMINAR, "--model.init_args.topk", "50"],
     "topk 50: the ESU attends to the whole history (no search stage)"),
    ("SEMINAR-pretrain6", "SEMINAR", "experiments/seminar.yaml",
     [*SEMINAR, "--model.init_args.pretrain.epochs", "6"], "PSU pretraining 6 epochs instead of 2"),
]
METRICS = {"ranking": ["test/ndcg@10", "test/hr@10", "test/mrr", "test/auc", "epochs", "fit_seconds"],
           # the ranking run's best checkpoint, tested against every unseen item (no refit)
           "full": ["test/ndcg@10", "test/hr@10", "test/ndcg@50", "test/mrr", "test_wall_seconds"]}


def _ms(xs):
    return ml100k._fmt(list(xs))


def table(runs: Path, rows, seeds, proto: str = "ranking"):
    recs = {}
    for label, *_ in rows:
        for s in seeds:
            f = runs / proto / label / f"seed{s}" / "metrics.json"
            if f.exists():
                recs.setdefault(label, {})[s] = json.loads(f.read_text())
    metrics = METRICS[proto]
    lines = ["| row | change | n | " + " | ".join(ml100k.NAMES.get(m, m) for m in metrics)
             + " | Δ NDCG@10 vs shipped (paired) |", "|---|---|---|" + "---|" * (len(metrics) + 1)]
    for label, base, _, _, what in rows:
        r = recs.get(label, {})
        if not r:
            continue
        delta = ""
        if base and recs.get(base):
            pairs = [r[s]["test/ndcg@10"] - recs[base][s]["test/ndcg@10"] for s in r if s in recs[base]]
            delta = f"{_ms(pairs)} (n={len(pairs)})" if pairs else ""
        lines.append(f"| {label} | {what} | {len(r)} | " + " | ".join(_ms(v.get(m) for v in r.values()) for m in metrics)
                     + f" | {delta} |")
    return "\n".join(lines), recs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/real/ml100k_ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--rows", nargs="+", default=None, help="labels to run (default: all)")
    ap.add_argument("--protocols", nargs="+", default=["ranking"], choices=list(METRICS),
                    help="full: test each finished ranking run's best checkpoint under full ranking")
    ap.add_argument("--out", default="experiments/results/ml100k_ablation")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    args.extra = []
    rows = [r for r in ROWS if args.rows is None or r[0] in args.rows]
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    failures, t0 = [], time.time()
    for seed in args.seeds if not args.table_only else []:  # seed-major: a stopped run leaves whole seeds
        for proto in args.protocols:
            for label, _, cfg, extra, _ in rows:
                # lr 0.005 for every row (the recipe's baseline); a row's own overlay in `extra` comes later
                ml100k._run_one(args, proto, ml100k.PROTOCOLS[proto], seed, label, cfg, extra, env, failures,
                                hyper=list(ml100k.COMMON))
    md, recs = table(ROOT / args.runs, ROWS, args.seeds)
    md_full, recs_full = table(ROOT / args.runs, ROWS, args.seeds, "full")
    meta = json.loads((ROOT / ml100k.PROTOCOLS["ranking"]["data"] / "meta.json").read_text())
    enc = meta.get("text", {}).get("encoder", {}).get("name", "?")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seeds": args.seeds, "text_encoder": enc, "failures": failures,
                                                    "runs": {k: list(v.values()) for k, v in recs.items()},
                                                    "full": {k: list(v.values()) for k, v in recs_full.items()}},
                                                   indent=1))
    text = ["# ML-100K: what each recipe change bought", "",
            "Produced by `python experiments/real/ml100k_ablation.py` (trained under the ranking protocol, 99 "
            "uniform negatives, `--protocols full` also tests the selected checkpoints under full ranking; "
            f"seeds {args.seeds}; lr 0.005 (SEMINAR rows: its tuned overlay `experiments/tuned/ml100k/seminar.yaml`, "
            "topk 20), early stopping on validation NDCG@10, best checkpoint tested; DIN and SEMINAR rows train on a "
            "seeded 20% of the targets per epoch). "
            f"Data `runs/data/ml100k`, text encoder `{enc}`: the shipped rows are re-run here on the same data, so "
            "each change is compared with its own baseline, seed by seed (Δ = row - shipped, mean ± std over "
            "seeds).", "", md, ""]
    if recs_full:
        text += ["Full ranking (each target against every item its user never rated; the rows' selected checkpoints "
                 "tested again with `--data.protocol full`):", "", md_full, ""]
    if failures:
        text += ["Failed runs: " + "; ".join(failures) + ".", ""]
    if args.table_only:
        text += ["Tables aggregated from the finished runs (`--table-only`); fit s as each run recorded it "
                 "(2-core machine, two jobs at a time, one thread each: indicative).", ""]
    else:
        text += [f"Load average at the end {os.getloadavg()[0]:.2f} (2-core machine; fit s indicative). "
                 f"Wall time this invocation: {(time.time() - t0) / 60:.1f} min.", ""]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
