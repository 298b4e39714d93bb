"""MovieLens-100K comparison: every available model x 3 seeds x {ranking, ctr} -> experiments/results/ml100k.md.

Run through ``experiments/real/ml100k.sh`` (or ``python experiments/real/ml100k.py``) from the
repository root. Steps:

1. prepare ``runs/data/ml100k`` (ranking: every rating is an interaction) and
   ``runs/data/ml100k_ctr`` (ctr: rating >= 4 -> 1, else 0) from ``--raw``
   (default ``../shared/data/ml-100k``) with the text encoder (default minilm when the
   ``text`` extra is installed, else hash -- the table says which);
2. for each model config that exists at run time (DIN, SIM hard/soft, ETA, SDIM, TWIN,
   SEMINAR exact, SEMINAR pq) and each seed, ``seminar-zoo experiment`` with
   ``experiments/datasets/ml100k.yaml`` merged after the model config; a run whose
   ``metrics.json`` exists is skipped, so the script resumes after an interruption;
3. aggregates with ``seminar-zoo compare`` when it exists (else a built-in mean/std) and
   writes the markdown table with the protocol, negatives, seeds and settings in its header.

Seeds vary ``seed_everything`` (model initialisation, dropout); the DataModule seed is
fixed at 0, so every run sees the same training negatives and the same 99 evaluation
negatives per target (paired comparison across models).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "seminar-zoo"

# label, config path, extra overrides (dataset-specific attribute names etc.)
# Two-stage models retrieve TOPK of the max_len (50) behaviours; with their default topk 50 the
# search stage would keep the whole history and the comparison would not test retrieval at all.
TOPK = ["--model.init_args.topk", "20"]
# Every model: lr 0.005 instead of the configs' 0.001 (each item embedding gets few sparse updates
# on this small dataset; the tuning sweep experiments/sweeps/ml100k_tune.yaml searches around it).
COMMON = ["--model.init_args.lr", "0.005"]
# ... unless the tuning sweep has picked the model's lr / embed_dim / dropout on validation: then its overlay
# (experiments/real/ml100k_tune_report.py --write-configs) replaces COMMON under the ranking protocol (and so
# for the full-ranking test of the same checkpoints); the CTR protocol keeps COMMON (it was not tuned).
TUNED = "experiments/tuned/ml100k"
TUNED_NAME = {"SASRec": "sasrec", "HSTU": "hstu", "DIN": "din", "SEMINAR": "seminar", "SEMINAR-pq": "seminar",
              "SIM": "sim", "SIM-soft": "sim_soft", "ETA": "eta", "TWIN": "twin", "SDIM": "sdim"}

# Target-attention models score each (history, target) pair, so an epoch over all ~97k training
# targets costs 30-200 s on 2 CPU cores; each of their epochs is a fresh seeded random 20% of the
# targets (Lightning's limit_train_batches over the shuffled sampler), so early stopping gets a
# validation point every 20% of the data and every position is still seen over the epochs.
SHARE = ["--trainer.limit_train_batches", "0.2"]
MODELS = [
    ("Popularity", "baselines/popularity.yaml", ["--trainer.max_epochs", "1"]),
    ("SASRec", "baselines/sasrec.yaml", []),
    ("HSTU", "baselines/hstu.yaml", []),
    ("DIN", "baselines/din.yaml", SHARE),
    ("SEMINAR", "experiments/seminar.yaml", ["--model.init_args.retrieval", "exact", *TOPK, *SHARE]),
    ("SEMINAR-pq", "experiments/seminar.yaml", ["--config", "experiments/seminar_pq.yaml", *TOPK, *SHARE]),
    # a film has up to 3 genres: the hard search keeps behaviours sharing any of them with the target
    # (the first genre alone kept 12 of ~44 behaviours per test target and put SIM below Popularity under full ranking)
    ("SIM", "baselines/sim_hard.yaml", ["--model.init_args.category_attr", "[attr_genre1,attr_genre2,attr_genre3]",
                                        *TOPK, *SHARE]),
    # the paper's other search: top-k by <W_a e_t, W_b e_l>, trained by its auxiliary CTR loss (no category needed)
    ("SIM-soft", "baselines/sim_soft.yaml", [*TOPK, *SHARE]),
    ("ETA", "baselines/eta.yaml", [*TOPK, *SHARE]),
    ("TWIN", "baselines/twin.yaml", [*TOPK, *SHARE]),
    ("SDIM", "baselines/sdim.yaml", SHARE),
]
# SASRec and HSTU train on history windows that tile the log (train_stride max_len), each window up to 50
# targets, so the data YAML's 256 per batch would be ~12.8k targets and ~10 optimizer steps an epoch (the best
# epoch was the 5th-10th, after 50-100 steps). 32 windows (~1.6k targets, ~80 steps an epoch) and validation on
# every validation user (one causal pass per history: cheap for them, and a quarter of the users made early
# stopping noisy) bought +0.028 NDCG@10 on SASRec seed 0 (0.4206 -> 0.4490), level with RecBole's SASRec.
RANKING_EXTRA = {m: ["--data.batch_size", "32", "--trainer.limit_val_batches", "1.0"] for m in ("SASRec", "HSTU")}
# Under ctr the label of each impression is the target: the sequence models train per sample with
# binary cross-entropy there (their all-positions full softmax needs next-item targets).
CTR_EXTRA = {m: ["--model.init_args.loss", "bce", "--model.init_args.all_positions", "false",
                 "--data.train_stride", "1"] for m in ("SASRec", "HSTU")}
WANTED = ["DIN", "SIM", "SIM-soft", "ETA", "SDIM", "TWIN", "SEMINAR (exact)", "SEMINAR (pq)"]
PROTOCOLS = {
    "ranking": {"metrics": ["test/ndcg@10", "test/hr@10", "test/mrr", "test/auc", "epochs", "fit_seconds"],
                "data": "runs/data/ml100k", "configs": []},
    # full ranking: the ranking run's best checkpoint (trained and selected on the same 99-negative
    # validation lists), tested with each target ranked against every item its user never rated
    "full": {"metrics": ["test/ndcg@10", "test/hr@10", "test/ndcg@50", "test/hr@50", "test/mrr", "test_wall_seconds"],
             "data": "runs/data/ml100k", "configs": []},
    "ctr": {"metrics": ["test/auc", "test/gauc", "epochs", "fit_seconds"], "data": "runs/data/ml100k_ctr",
            "configs": ["--config", "experiments/datasets/ml100k_ctr.yaml"]},
}
NAMES = {"test/ndcg@10": "NDCG@10", "test/hr@10": "HR@10", "test/ndcg@50": "NDCG@50", "test/hr@50": "HR@50",
         "test/mrr": "MRR", "test/auc": "AUC", "test/gauc": "GAUC", "fit_seconds": "fit s", "test_seconds": "test s", "epochs": "epochs", "test_wall_seconds": "test wall s"}


def sh(cmd, log=None, env=None):
    print("+", " ".join(map(str, cmd)), flush=True)
    if log is None:
        return subprocess.run(list(map(str, cmd)), cwd=ROOT, env=env).returncode
    with open(log, "w") as fh:
        return subprocess.run(list(map(str, cmd)), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode


def prepare(args) -> str:
    enc = args.text_encoder
    if enc == "auto":
        sys.path.insert(0, str(ROOT / "src"))
        from seminar_zoo.data.text_encoders import minilm_available

        enc = "minilm" if minilm_available() else "hash"
    for proto, spec in PROTOCOLS.items():
        if proto == "full":
            continue  # same folder as ranking
        out = ROOT / spec["data"]
        meta = out / "meta.json"
        if meta.exists() and not args.force_prepare:
            m = json.loads(meta.read_text())
            if m.get("text", {}).get("encoder", {}).get("name") == enc:
                continue
        rc = sh([BIN, "prepare", "movielens", "--raw", args.raw, "--out", out, "--protocol", proto,
                 "--text-encoder", enc])
        if rc:
            raise SystemExit(f"prepare movielens --protocol {proto} failed (exit {rc})")
    return enc


def _run_one(args, proto, spec, seed, label, cfg, extra, env, failures, hyper=None):
    """One run (skipped if its metrics.json exists); ``hyper``: the lr/embed_dim/dropout overrides (default:
    :func:`hyper_overrides`, the tuned overlay where one exists)."""
    run = ROOT / args.runs / proto / label / f"seed{seed}"
    if (run / "metrics.json").exists():
        return
    run.mkdir(parents=True, exist_ok=True)
    extra = list(extra)
    if proto == "full":
        # no refit: test the ranking run's selected checkpoint under full ranking
        src = ROOT / args.runs / "ranking" / label / f"seed{seed}"
        rec = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").exists() else {}
        ckpt = rec.get("best_checkpoint") or ""
        if not ckpt or not Path(ckpt).exists():
            failures.append(f"{label} (full, seed {seed}): no ranking checkpoint in {src}")
            return
        cmd = [BIN, "test", "--config", str(src / "config.yaml"), "--ckpt_path", ckpt, "--data.protocol", "full",
               "--trainer.default_root_dir", run, "--trainer.enable_progress_bar", "false",
               "--trainer.logger", "false", "--seed_everything", seed]
    else:
        psu = ROOT / args.runs / proto / "SEMINAR" / f"seed{seed}" / "psu" / "psu.ckpt"
        if label == "SEMINAR-pq" and psu.exists():
            # same pretrained PSU as the exact run of this seed: exact vs pq differ only in retrieval
            extra += ["--model.init_args.psu_ckpt", str(psu)]
        if proto == "ctr":
            extra += CTR_EXTRA.get(label, [])
        else:
            extra += RANKING_EXTRA.get(label, [])
        # --overwrite: a folder without metrics.json is an interrupted run; start it over
        cmd = [BIN, "experiment", "--overwrite", "--config", cfg, "--config", "experiments/datasets/ml100k.yaml",
               *spec["configs"], "--data.path", spec["data"],
               *(hyper_overrides(label, proto) if hyper is None else hyper),
               "--run_dir", run, "--name", label, "--seed_everything", seed,
               "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", args.epochs, *extra,
               *args.extra]
    t0 = time.time()
    rc = sh(cmd, log=run / "log.txt", env=env)
    print(f"  {proto} {label} seed {seed}: exit {rc} in {time.time() - t0:.0f}s", flush=True)
    if proto == "full" and rc == 0:  # `test` records no stage time: keep the command's wall time
        rec = json.loads((run / "metrics.json").read_text())
        rec["test_wall_seconds"] = time.time() - t0
        rec["name"] = label  # `test` names the run by its class (SIM-soft would group with SIM)
        (run / "metrics.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
    if rc:
        tail = (run / "log.txt").read_text().strip().splitlines()[-1:] or [""]
        failures.append(f"{label} ({proto}, seed {seed}): exit {rc}: {tail[0][:200]}")


def tuned_overlay(label: str):
    """``label``'s tuned overlay (repo-relative) if the tuning report wrote one, else None."""
    name = TUNED_NAME.get(label)
    return f"{TUNED}/{name}.yaml" if name and (ROOT / TUNED / f"{name}.yaml").exists() else None


def hyper_overrides(label: str, proto: str) -> list:
    """The tuned overlay of ``label`` under the ranking protocol if one exists, else COMMON."""
    overlay = tuned_overlay(label) if proto == "ranking" else None
    return ["--config", overlay] if overlay else list(COMMON)


def hyper_text() -> str:
    tuned = sorted(lab for lab in TUNED_NAME if tuned_overlay(lab))
    if not tuned:
        return "Model hyper-parameters: each model's own YAML, except lr = 0.005 for every model,"
    return (f"Model hyper-parameters: lr, embed_dim and dropout picked on validation by the tuning sweep, the same "
            f"budget for every model (`experiments/results/ml100k_tune.md`; overlays `{TUNED}/<model>.yaml`) for "
            f"{', '.join(tuned)} under the ranking protocol; otherwise (and under CTR) each model's own YAML with "
            "lr = 0.005;")


# Rough cost of one seed of a model on 2 CPU cores (ranking fit + full-ranking test + ctr fit, seconds, from
# the table's own fit and test times); only used to balance --jobs. SEMINAR-pq stays with SEMINAR (it
# restores the PSU that SEMINAR's run of the same seed pretrained).
COST = {"DIN": 820, "TWIN": 760, "SEMINAR": 250, "SEMINAR-pq": 280, "ETA": 290, "SDIM": 280, "HSTU": 320,
        "SIM": 210, "SIM-soft": 230, "SASRec": 300, "Popularity": 20}


def shard_models(labels, n: int):
    """Split model labels into n groups of similar total COST (longest first, each to the lightest group);
    SEMINAR and SEMINAR-pq form one unit (each group keeps the order of ``labels``: MODELS runs SEMINAR first)."""
    units = {}
    for lab in labels:
        units.setdefault("SEMINAR" if lab == "SEMINAR-pq" else lab, []).append(lab)
    groups, load = [[] for _ in range(n)], [0] * n
    for unit in sorted(units.values(), key=lambda u: -sum(COST.get(x, 300) for x in u)):
        i = load.index(min(load))
        groups[i] += unit
        load[i] += sum(COST.get(x, 300) for x in unit)
    return [[lab for lab in labels if lab in g] for g in groups]  # each group in the table's order


def worker_argv(argv):
    """The parent's arguments for a --jobs worker: without --jobs, --models (the worker gets its group) and
    --force-prepare (the parent has prepared); --extra and what follows it are passed through untouched."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--extra":
            return out + argv[i:]
        if a == "--jobs":
            i += 2
            continue
        if a == "--models":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
            continue
        i += 1
        if a.startswith(("--jobs=", "--models=")) or a == "--force-prepare":
            continue
        out.append(a)
    return out


def run_sharded(args, argv, models):
    """--jobs N: N copies of this script on disjoint model groups (one thread each), all seeds and protocols;
    each records its failures beside the runs; the table is written here afterwards."""
    groups = [g for g in shard_models([m[0] for m in models], args.jobs) if g]
    rest = worker_argv(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for k, g in enumerate(groups):
        fail = ROOT / args.runs / f"failures-shard{k}.json"
        fail.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--models", *g, "--shard-failures", str(fail), *rest]
        print(f"[jobs] shard {k}: {' '.join(g)}", flush=True)
        procs.append((subprocess.Popen(cmd, env=env), fail, g))
    failures = []
    for proc, fail, g in procs:
        rc = proc.wait()
        if fail.exists():
            failures += json.loads(fail.read_text())
        elif rc:
            failures.append(f"shard {' '.join(g)}: exit {rc}")
    return failures


def run_all(args, models):
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    failures = []
    # seed, then protocol, then model: wherever the script is stopped, the finished seeds are complete
    for seed in args.seeds:
        for proto, spec in PROTOCOLS.items():
            if proto not in args.protocols:
                continue
            for label, cfg, extra in models:
                _run_one(args, proto, spec, seed, label, cfg, extra, env, failures)
    return failures


def _fmt(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    m = sum(xs) / len(xs)
    s = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}" if abs(m) >= 10 else f"{m:.4f} ± {s:.4f}"


def builtin_table(proto_dir: Path, metrics, order):
    rows = {}
    for f in sorted(proto_dir.glob("*/seed*/metrics.json")):
        d = json.loads(f.read_text())
        rows.setdefault(d.get("name") or d["model"], []).append(d)
    lines = ["| model | n | " + " | ".join(NAMES.get(m, m) for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for label in sorted(rows, key=lambda k: order.index(k) if k in order else 99):
        rs = rows[label]
        lines.append(f"| {label} | {len(rs)} | " + " | ".join(_fmt([r.get(m) for r in rs]) for m in metrics) + " |")
    return "\n".join(lines), sum(len(v) for v in rows.values())


def compare_table(proto_dir: Path, metrics, out: Path):
    rc = sh([BIN, "compare", proto_dir, "--out", out, "--metrics", *metrics], log=out.parent / f"{out.name}.log")
    f = out / "table.md"
    return f.read_text().strip() if rc == 0 and f.exists() else None


def peer_rows(peer: dict, proto: str) -> str:
    """The RecBole rows (experiments/bench/recbole_parity.py) on the same split and candidates."""
    key = "sampled" if proto == "ranking" else "full"
    cols = ["ndcg@10", "hr@10", "mrr", "auc"] if proto == "ranking" else ["ndcg@10", "hr@10", "ndcg@50", "hr@50", "mrr"]
    m = peer["meta"]
    lines = [f"Peer on the same split and candidates (`experiments/results/recbole_parity.md`; RecBole 1.2.1, CE "
             f"loss, up to {m['epochs']} epochs, converged by early stopping on its validation NDCG@10 (patience "
             f"{m.get('stopping_step', '?')}), seeds {m['seeds']}"
             + (f"; not finished yet: {', '.join(m['not_finished'])}" if m.get("not_finished") else "") + "):", "",
             "| peer | n | " + " | ".join(c.upper().replace("HR", "HR").replace("NDCG", "NDCG") for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for model in sorted({r["model"] for r in peer["runs"]}):
        rs = [r for r in peer["runs"] if r["model"] == model]
        lines.append(f"| RecBole {model} | {len(rs)} | " + " | ".join(_fmt([r[key][c] for r in rs]) for c in cols) + " |")
    return "\n".join(lines)


def ablation_section(path: Path = ROOT / "experiments/results/ml100k_ablation.md") -> list:
    """The recipe ablations (experiments/real/ml100k_ablation.py), quoted under their own heading."""
    if not path.exists():
        return []
    body = path.read_text().strip().splitlines()[1:]  # its own title becomes this section's heading
    return ["## Recipe ablations: what each training change bought (`experiments/results/ml100k_ablation.md`)",
            *body, ""]


def splice_ablations(md: Path) -> None:
    """Replace (or insert before "## Coverage") the ablation section of an existing ml100k.md, without
    re-running or re-aggregating anything (the runs behind the other sections may be gone)."""
    text = md.read_text()
    head = "## Recipe ablations"
    if head in text:
        start = text.index(head)
        end = text.index("\n## ", start + 1) + 1
    else:
        start = end = text.index("## Coverage")
    md.write_text(text[:start] + "\n".join(ablation_section()) + "\n" + text[end:])


def splice_peers(md: Path, peer_json: Path = ROOT / "experiments/results/recbole_parity.json") -> None:
    """Regenerate the peer blocks of an existing ml100k.md (ranking, then full) from recbole_parity.json, leaving
    every other line as it is (the runs behind the zoo's rows may be gone)."""
    peer = json.loads(peer_json.read_text())
    lines, out, k = md.read_text().split("\n"), [], 0
    protos = ["ranking", "full"]
    i = 0
    while i < len(lines):
        if lines[i].startswith("Peer on the same split") and k < len(protos):
            j = i + 2  # the paragraph, a blank line, then the table up to the next blank line
            while j < len(lines) and lines[j].strip():
                j += 1
            out += peer_rows(peer, protos[k]).split("\n")
            k, i = k + 1, j
            continue
        out.append(lines[i])
        i += 1
    if k != len(protos):
        raise ValueError(f"splice_peers: {md} has {k} peer blocks, expected {len(protos)}")
    for i, line in enumerate(out):  # the Reading's zoo-vs-peer sentence, from the zoo's best as printed there
        proto = next((p for p in protos if line.startswith(f"- {p} (")), None)
        m = re.search(r" The zoo's best, (\S+) ([0-9.]+) ± ([0-9.]+), is .*$", line) if proto else None
        if m:
            out[i] = line[:m.start()] + peer_clause(peer, proto, m[1], float(m[2]), float(m[3]))
    md.write_text("\n".join(out))


def peer_clause(peer: dict, proto: str, best: str, mean: float, sd: float) -> str:
    """The Reading's sentence putting the zoo's best model beside RecBole's best on the same candidates
    ("" under CTR or without peer runs)."""
    pkey = {"ranking": "sampled", "full": "full"}.get(proto)
    prs = {}
    for r in peer["runs"] if pkey else []:
        prs.setdefault(r["model"], []).append(r[pkey]["ndcg@10"])
    if not prs:
        return ""
    pbest = max(prs, key=lambda m: sum(prs[m]) / len(prs[m]))
    pv = prs[pbest]
    return (f" The zoo's best, {best} {mean:.4f} ± {sd:.4f}, is "
            f"{'at or above' if mean >= sum(pv) / len(pv) else 'below'} RecBole's best of the models "
            f"run ({', '.join(sorted(prs))}), {pbest} {sum(pv) / len(pv):.4f}"
            f"{f' ± {statistics.stdev(pv):.4f}' if len(pv) > 1 else ''} (n={len(pv)}), on the same candidates.")


def reading(runs: Path, peer_json: Path = ROOT / "experiments/results/recbole_parity.json"):
    """Per protocol: models ordered by their mean headline metric, SEMINAR's place among the learned
    models, which models are not above Popularity (the no-learning reference) or above it by less than
    their own seed spread, and the zoo's best model against RecBole's best on the same candidates."""
    out = []
    peer = json.loads(peer_json.read_text()) if peer_json.exists() else {"runs": []}
    for proto, key in (("ranking", "test/ndcg@10"), ("full", "test/ndcg@10"), ("ctr", "test/auc")):
        means = {}
        for f in sorted((runs / proto).glob("*/seed*/metrics.json")):
            d = json.loads(f.read_text())
            if d.get(key) is not None:
                means.setdefault(f.parent.parent.name, []).append(float(d[key]))
        if "Popularity" not in means:
            continue
        avg = {k: sum(v) / len(v) for k, v in means.items()}
        sd = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in means.items()}
        pop = avg["Popularity"]
        order = sorted(avg, key=avg.get, reverse=True)
        learned = [m for m in order if m != "Popularity"]
        below = [m for m in learned if avg[m] <= pop]
        close = [f"{m} (+{avg[m] - pop:.4f}, seed std {sd[m]:.4f})" for m in learned
                 if m not in below and avg[m] - pop <= sd[m]]
        sem = f"SEMINAR is {learned.index('SEMINAR') + 1} of {len(learned)} learned models" if "SEMINAR" in learned else ""
        line = (f"- {proto} ({NAMES.get(key, key)}, mean over seeds): " + " > ".join(
            f"{m} {avg[m]:.4f}" for m in order) + f". {sem}; "
            + ("every learned model is above Popularity" if not below else
               f"not above Popularity: {', '.join(below)}")
            + (f"; above it by no more than its own seed spread: {', '.join(close)}." if close else "."))
        if learned:
            line += peer_clause(peer, proto, learned[0], avg[learned[0]], sd[learned[0]])
        out.append(line)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    ap.add_argument("--runs", default="runs/real/ml100k", help="run folders (relative to the repo root)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40, help="at most; early stopping on validation NDCG@10 (AUC under ctr)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="further `seminar-zoo experiment` overrides, passed to every run (must come last)")
    ap.add_argument("--protocols", nargs="+", default=["ranking", "full", "ctr"], choices=list(PROTOCOLS))
    ap.add_argument("--models", nargs="+", default=None, help="labels to run (default: all whose config exists)")
    ap.add_argument("--text-encoder", default="auto", choices=["auto", "minilm", "hash"])
    ap.add_argument("--force-prepare", action="store_true")
    ap.add_argument("--out", default="experiments/results/ml100k.md")
    ap.add_argument("--table-only", action="store_true", help="only aggregate existing runs")
    ap.add_argument("--jobs", type=int, default=1, help="run the models in N parallel processes of one thread "
                    "each (disjoint model groups balanced by cost; 2 on a 2-core machine), then write the table")
    ap.add_argument("--shard-failures", default=None, help=argparse.SUPPRESS)  # set by --jobs for its workers
    ap.add_argument("--splice-ablations", action="store_true",
                    help="only refresh the recipe-ablation section of --out from experiments/results/ml100k_ablation.md")
    ap.add_argument("--splice-peers", action="store_true",
                    help="only refresh the RecBole peer tables of --out from experiments/results/recbole_parity.json")
    args = ap.parse_args(argv)
    if args.splice_ablations:
        splice_ablations(ROOT / args.out)
        return 0
    if args.splice_peers:
        splice_peers(ROOT / args.out)
        return 0

    models = [m for m in MODELS if (ROOT / m[1]).exists() and (args.models is None or m[0] in args.models)]
    missing = [m[0] for m in MODELS if not (ROOT / m[1]).exists()]
    if args.jobs < 1:
        print(f"ml100k.py: --jobs must be >= 1 (got {args.jobs})", file=sys.stderr)
        return 2
    t0 = time.time()
    enc = prepare(args) if not args.table_only else "see meta.json"
    if args.shard_failures:  # a --jobs worker: its runs only, the parent writes the table
        failures = run_all(args, models)
        Path(args.shard_failures).parent.mkdir(parents=True, exist_ok=True)
        Path(args.shard_failures).write_text(json.dumps(failures))
        return 1 if failures else 0
    if args.table_only:
        failures = []
    elif args.jobs > 1:
        failures = run_sharded(args, list(sys.argv[1:] if argv is None else argv), models)
    else:
        failures = run_all(args, models)
    wall = time.time() - t0

    metas = {p: json.loads((ROOT / s["data"] / "meta.json").read_text()) for p, s in PROTOCOLS.items()
             if (ROOT / s["data"] / "meta.json").exists()}
    has_compare = importlib.util.find_spec("seminar_zoo.compare") is not None
    import yaml

    ycfg = yaml.safe_load((ROOT / "experiments/datasets/ml100k.yaml").read_text())
    dcfg, tcfg = ycfg.get("data", {}), ycfg.get("trainer", {})
    order = [m[0] for m in MODELS]
    parts = [f"# MovieLens-100K: all models, {len(args.seeds)} seeds", "",
             "Produced by `experiments/real/ml100k.sh` (numbers are written by the script; do not edit by hand).",
             ""]
    m = metas.get("ranking", {})
    parts += [f"Data: ML-100K (GroupLens; RecBole atomic files), {m.get('n_users')} users, {m.get('n_items')} items, "
              f"{m.get('n_events')} ratings. Item modalities: id, attr (genres x3, release-year bucket), text "
              f"(title + genres, encoder `{m.get('text', {}).get('encoder', {}).get('name', enc)}`). "
              "No queries and no images (meta.json `absent_modalities`): SEMINAR's query fusion has nothing to "
              "act on here.",
              f"Settings: `experiments/datasets/ml100k.yaml` (max_len {dcfg.get('max_len')}, {dcfg.get('batch_size')} "
              f"training targets per batch, validation on the first {tcfg.get('limit_val_batches', 1.0):.0%} of the "
              f"validation users), seeds {args.seeds} (`seed_everything`; DataModule seed fixed at 0, so every model "
              "sees the same candidates). **Training recipe** (README \"Training recipe\"): every training position "
              f"is a target (train_window null); at most {args.epochs} epochs with early stopping (patience 5) on "
              "validation NDCG@10, and the best-validation checkpoint is tested. SASRec and HSTU: one causal pass "
              "per history with a loss term at every position, cross-entropy over the whole catalogue "
              "(`all_positions`, `loss: full_softmax`, `train_stride: max_len`), 32 history windows per batch (up to "
              "50 targets each) and validation on every validation user. Target-attention models (DIN, SIM, "
              "ETA, SDIM, TWIN, SEMINAR): binary cross-entropy against 1 sampled unseen negative per target, each "
              "epoch a seeded random 20% of the ~97k training targets (`--trainer.limit_train_batches 0.2`). "
              + hyper_text() + " topk = 20 for the "
              "two-stage models (SIM, SIM-soft, ETA, TWIN, SEMINAR) so that their search stage keeps 20 of the 50 behaviours, "
              "SIM is the paper's hard search, which keeps the behaviours sharing any of the target's genres "
              "(attr_genre1..3); SIM-soft its soft search (projected inner product, auxiliary CTR loss). SIM, "
              "SIM-soft and ETA add to each selected behaviour an embedding of its time interval (their papers' "
              "side information; TWIN has its recency cross feature; DIN, SDIM and SEMINAR are time-blind, as in "
              "their papers). SEMINAR-pq "
              "restores the PSU that the "
              "SEMINAR (exact) run of the same seed pretrained, then finetunes like it; only the test-time GSU "
              "scorer differs. `epochs` = epochs run before early stopping. Mean ± sample std over seeds.", ""]
    for proto, spec in PROTOCOLS.items():
        d = ROOT / args.runs / proto
        if proto == "ranking":
            head = ("## Ranking protocol: leave-one-out by time; each user's last rating ranked against "
                    "**99 negatives drawn uniformly without replacement from the items the user never rated** "
                    "(seeded); every rating is a positive. "
                    "AUC = mean per-list AUC; metrics are tie-aware and computed from logits")
        elif proto == "full":
            head = ("## Full ranking: the same test targets ranked against **every item the user never rated** "
                    "(~1,580 per user); the ranking runs' selected checkpoints, tested again (`seminar-zoo test "
                    "--data.protocol full`); "
                    "`test wall s` = wall time of that `test` command (full ranking of 943 users, plus ~8 s of start-up)")
        else:
            head = ("## CTR protocol: every rating is a labelled sample, rating >= 4 -> 1, else 0 (no sampled "
                    "negatives); per user the last pseudo-request (block of >= 10 ratings) is test, the one "
                    "before validation, the 3 before that training (`experiments/datasets/ml100k_ctr.yaml`); selection and "
                    "early stopping on validation AUC; AUC over all "
                    "test samples, GAUC per user (weighted by samples)")
        parts += [head, ""]
        table = None
        if d.exists() and has_compare:
            table = compare_table(d, spec["metrics"], ROOT / args.runs / f"compare_{proto}")
            if table:
                parts += ["(aggregated by `seminar-zoo compare`)", ""]
        if table is None:
            table, n = builtin_table(d, spec["metrics"], order) if d.exists() else ("(no runs)", 0)
        parts += [table, ""]
        peer = ROOT / "experiments/results/recbole_parity.json"
        if proto in ("ranking", "full") and peer.exists():
            parts += [peer_rows(json.loads(peer.read_text()), proto), ""]
    parts += ["## Reading (computed from the runs above)", ""] + reading(ROOT / args.runs) + [""]
    parts += ablation_section()
    parts += ["## Coverage", ""]
    ran = sorted({p.parent.parent.name for p in (ROOT / args.runs).glob("*/*/seed*/metrics.json")},
                 key=lambda k: order.index(k) if k in order else 99)
    parts.append(f"Models with results: {', '.join(ran) or 'none'}.")
    if missing:
        parts.append(f"Configs missing at run time (not run): {', '.join(missing)}.")
    if failures:
        parts.append("Failed runs: " + "; ".join(failures) + ".")
    parts.append(f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs; fit times "
                 f"are indicative only). Script wall time this invocation: {wall / 60:.1f} min.")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts) + "\n")
    print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
