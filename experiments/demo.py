"""`make demo`: prepare the embedded synthetic dataset, run every model the zoo has, print a table.

Models are discovered from the configs: baselines/*.yaml, then experiments/seminar.yaml and
experiments/seminar_pq.yaml when they exist. Each runs as `seminar-zoo experiment` in its own
run dir under --out; a finished run (metrics.json present) is reused unless --force.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("test/auc", "test/ndcg@10", "test/hr@10", "test/mrr")


def discover_configs():
    base = sorted(ROOT.glob("baselines/*.yaml"), key=lambda p: (not p.stem.startswith("din"), p.stem))
    extra = [ROOT / "experiments" / f for f in ("seminar.yaml", "seminar_pq.yaml")]
    return [p for p in base + extra if p.exists()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--items", type=int, default=800)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="config stems to run (default: all)")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    data = out / "data" / f"synthetic-u{a.users}-i{a.items}-l{a.seq_len}-s{a.seed}"
    exe = [sys.executable, "-m", "seminar_zoo.cli"]
    if not (data / "meta.json").exists():
        subprocess.run(exe + ["prepare", "synthetic", "--out", str(data), "--users", str(a.users),
                              "--items", str(a.items), "--seq-len", str(a.seq_len), "--seed", str(a.seed)], check=True)
    configs = [c for c in discover_configs() if not a.only or c.stem in a.only]
    rows, t0 = [], time.time()
    bar = tqdm(configs, desc="models", unit="model")
    for cfg in bar:
        name = cfg.stem
        bar.set_postfix_str(name)
        run_dir = out / "runs" / name
        mfile = run_dir / "metrics.json"
        if a.force or not mfile.exists():
            cmd = exe + ["experiment", "--config", str(cfg), "--data.path", str(data), "--run_dir", str(run_dir),
                         "--name", name, "--data.max_len", str(a.seq_len), "--trainer.max_epochs", str(a.epochs),
                         "--seed_everything", str(a.seed), "--trainer.enable_progress_bar", "false"]
            log = run_dir.parent / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as f:
                r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
            if r.returncode != 0:
                tqdm.write(f"[demo] {name} failed (exit {r.returncode}); see {log}")
                continue
        m = json.loads(mfile.read_text())
        rows.append(m)
        tqdm.write(f"[demo] {name}: test AUC {m['test/auc']:.4f}  NDCG@10 {m['test/ndcg@10']:.4f}  "
                   f"({m['fit_seconds']:.0f}s)")
    print(f"\nSynthetic data: {a.users} users, {a.items} items, {a.seq_len} behaviours each; ranking protocol, "
          f"target vs 99 sampled negatives; {a.epochs} epochs, seed {a.seed}; total {time.time() - t0:.0f}s\n")
    print("| model | " + " | ".join(c.replace("test/", "") for c in COLUMNS) + " | fit s |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for m in rows:
        print(f"| {m['name']} | " + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in COLUMNS)
              + f" | {m['fit_seconds']:.0f} |")
    if len(rows) < len(configs):
        sys.exit(1)


if __name__ == "__main__":
    main()
