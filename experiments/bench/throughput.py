"""Training throughput and peak memory of every model at max_len 100, 1000 and 2000 (CPU, batch 256).

For each model config (baselines/*.yaml except the recent-window din_last50, plus
experiments/seminar.yaml when the SEMINAR model exists) and each history length L,
a fresh subprocess builds the model from the config's ``init_args`` (``max_len`` =
L), takes real training batches of the shared DataModule from a synthetic dataset
with 2000-behaviour histories, runs one warm-up step and ``--steps`` timed training
steps (forward, loss incl. auxiliary losses, backward, Adam step), and reports

* samples/s = training rows / process CPU seconds of the timed steps (torch runs one
  thread, so CPU time is the work done; wall-clock samples/s is in the JSON too: the
  machine is shared, so wall time is noisier);
* peak memory = the highest resident set size sampled every 2 ms during the warm-up
  and timed steps, minus the RSS just before them (model, data and batches already
  in memory): the extra memory a training step needs.

Every long-sequence baseline encodes each distinct item of a batch once (ETA/SDIM
hash the distinct items, TWIN projects them: see the models). How much that saves
depends on how often items repeat in a batch, so ``--extra-catalog`` adds one point
at L = 2000 on a dataset with a far larger catalogue (default 100,000 items), where
repeats are rare. ``encode`` rows time the shared ItemEncoder alone on the [B, L]
history (forward + backward), the part of DIN's cost that is encoding.

Usage: python experiments/bench/throughput.py [--steps 3 --lengths 100 1000 2000]
Writes experiments/results/throughput.{json,md}.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = {"din_last50"}  # DIN with model max_len 50: not a length-scaling point


def configs():
    cfgs = sorted(p for p in (ROOT / "baselines").glob("*.yaml") if p.stem not in SKIP)
    cfgs.sort(key=lambda p: (p.stem != "din", p.stem))
    sem = ROOT / "experiments" / "seminar.yaml"
    if sem.exists() and importlib.util.find_spec("seminar_zoo.models.seminar") is not None:
        cfgs.append(sem)
    return cfgs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.base = _rss_bytes()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def worker(cfg_path: str, data: str, L: int, steps: int, batch_size: int, encode_only: bool) -> dict:
    """One (model, L) point, in its own process."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch
    import torch.nn.functional as F
    import yaml

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    dm = LifelongSequenceDataModule(data, max_len=L, batch_size=batch_size, train_window=20, seed=0)
    dm.setup()
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(steps + 1)]
    cfg = yaml.safe_load(Path(cfg_path).read_text())["model"]
    mod, cls = cfg["class_path"].rsplit(".", 1)
    init = dict(cfg.get("init_args") or {})
    init.update(data_meta=dm.data_meta, max_len=L)
    model = getattr(importlib.import_module(mod), cls)(**init)
    model.load_tables(dm.feature_tables())
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(b):
        opt.zero_grad(set_to_none=True)
        if encode_only:
            model.item_encoder.fused(b["hist_item_id"]).sum().backward()
            return
        logits = model(b)
        loss = F.binary_cross_entropy_with_logits(logits, b["label"])
        if model._aux:
            loss = loss + sum(model._aux.values())
        loss.backward()
        opt.step()

    with PeakRSS() as mem:
        step(batches[0])
        w0, c0 = time.perf_counter(), time.process_time()
        for b in batches[1:]:
            step(b)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rows = sum(int(b["label"].shape[0]) for b in batches[1:])
    uniq = float(sum(torch.unique(b["hist_item_id"]).numel() for b in batches[1:]) / steps)
    return {"samples_per_s_cpu": rows / cpu, "samples_per_s_wall": rows / wall, "ms_per_step_cpu": 1000 * cpu / steps,
            "peak_step_mb": (mem.peak - mem.base) / 2**20, "rss_before_mb": mem.base / 2**20,
            "distinct_items_per_batch": uniq, "n_items": dm.data_meta["n_items"],
            "history_len_avg": float(sum(b["hist_mask"].sum().item() for b in batches[1:]) / rows)}


def run_point(name, cfg, data, L, args, encode_only=False):
    cmd = [sys.executable, __file__, "--worker", str(cfg), "--data", str(data), "--L", str(L),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size)] + (["--encode-only"] if encode_only else [])
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        err = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[throughput] {name} L={L}: FAILED ({err})", flush=True)
        return {"model": name, "L": L, "error": err}
    res = {"model": name, "L": L, **json.loads(line[0][7:])}
    print(f"[throughput] {name:10s} L={L:5d} items={res['n_items']:6d}: {res['samples_per_s_cpu']:8.0f} samples/s "
          f"(cpu), {res['ms_per_step_cpu']:7.0f} ms/step, peak +{res['peak_step_mb']:6.0f} MB ({time.time() - t:.0f}s)",
          flush=True)
    return res


def ensure_data(path: Path, users: int, items: int, seq_len: int) -> Path:
    from seminar_zoo.data.synthetic import generate

    if not (path / "meta.json").exists():
        generate(path, users=users, items=items, seq_len=seq_len, seed=0)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--encode-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--L", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None)
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 2000])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per point (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--extra-catalog", type=int, default=100_000, help="items of the extra L=2000 point (0 = skip)")
    ap.add_argument("--only", nargs="*", help="config stems to run")
    ap.add_argument("--work", default="/tmp/seminar_zoo_throughput")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "throughput"))
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.data, args.L, args.steps, args.batch_size,
                                            args.encode_only)), flush=True)
        return None
    Lmax = max(args.lengths)
    work = Path(args.work)
    data = ensure_data(work / f"syn-u{args.users}-i{args.items}-l{Lmax}", args.users, args.items, Lmax)
    cfgs = [c for c in configs() if not args.only or c.stem in args.only]
    t0 = time.time()
    rows = []
    for L in args.lengths:
        rows.append(run_point("encode", cfgs[0], data, L, args, encode_only=True) | {"catalog": args.items})
        for cfg in cfgs:
            rows.append(run_point(cfg.stem, cfg, data, L, args) | {"catalog": args.items})
    if args.extra_catalog:
        big = ensure_data(work / f"syn-u{args.users}-i{args.extra_catalog}-l{Lmax}", args.users, args.extra_catalog, Lmax)
        rows.append(run_point("encode", cfgs[0], big, Lmax, args, encode_only=True) | {"catalog": args.extra_catalog})
        for cfg in cfgs:
            rows.append(run_point(cfg.stem, cfg, big, Lmax, args) | {"catalog": args.extra_catalog})
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("worker", "encode_only", "L")},
              "seconds": time.time() - t0, "rows": rows, "ratios": ratios(rows, Lmax)}
    import torch

    result["torch"] = torch.__version__
    result["cpu"] = _cpu_name()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = render(result, args)
    out.with_suffix(".md").write_text(md)
    print(md)
    return result


def ratios(rows, L):
    """cost(DIN) / cost(X) at length L per catalogue size (CPU seconds per sample; > 1: X is cheaper)."""
    out = {}
    for cat in sorted({r["catalog"] for r in rows}):
        at = {r["model"]: r for r in rows if r["L"] == L and r["catalog"] == cat and "error" not in r}
        if "din" not in at:
            continue
        din = at["din"]["samples_per_s_cpu"]
        out[str(cat)] = {m: r["samples_per_s_cpu"] / din for m, r in at.items() if m not in ("din", "encode")}
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def render(result, args) -> str:
    rows = result["rows"]
    Ls = args.lengths
    models = []
    for r in rows:
        if r["model"] not in models:
            models.append(r["model"])
    get = {(r["model"], r["L"], r["catalog"]): r for r in rows}
    lines = ["# Training throughput and peak step memory (CPU)", "",
             f"Batch {args.batch_size}, one torch thread, {args.steps} timed training steps after one warm-up per point, "
             f"real batches of the shared DataModule (synthetic, {args.items} items, histories of 2000 behaviours), "
             f"configs from baselines/*.yaml (model max_len = L). samples/s = rows / process CPU seconds; "
             f"peak = max RSS during the steps minus RSS before them. CPU: {result['cpu']}, torch {result['torch']}. "
             "`encode` = the shared ItemEncoder alone on the [B, L] history (forward + backward).", "",
             "| model | " + " | ".join(f"samples/s L={L}" for L in Ls) + " | " + " | ".join(f"peak MB L={L}" for L in Ls)
             + " |", "|---" * (1 + 2 * len(Ls)) + "|"]
    for m in models:
        cells, mem = [], []
        for L in Ls:
            r = get.get((m, L, args.items))
            ok = r is not None and "error" not in r
            cells.append(f"{r['samples_per_s_cpu']:.0f}" if ok else "failed")
            mem.append(f"{r['peak_step_mb']:.0f}" if ok else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(mem) + " |")
    Lmax = max(Ls)
    for cat, rat in result["ratios"].items():
        lines += ["", f"Cost ratio DIN / X at L={Lmax}, catalogue {int(cat):,} items "
                  f"(how many times cheaper per training sample than DIN):", "",
                  "| model | DIN/X | samples/s | peak MB | distinct items per batch |", "|---|---|---|---|---|"]
        din = get.get(("din", Lmax, int(cat)))
        if din and "error" not in din:
            lines.append(f"| din | 1.00 | {din['samples_per_s_cpu']:.0f} | {din['peak_step_mb']:.0f} | "
                         f"{din['distinct_items_per_batch']:.0f} |")
        for m, v in rat.items():
            r = get[(m, Lmax, int(cat))]
            lines.append(f"| {m} | {v:.2f} | {r['samples_per_s_cpu']:.0f} | {r['peak_step_mb']:.0f} | "
                         f"{r['distinct_items_per_batch']:.0f} |")
        enc = get.get(("encode", Lmax, int(cat)))
        if enc and "error" not in enc and din and "error" not in din:
            lines.append(f"\nEncoding the [B, {Lmax}] history alone (forward + backward): {enc['ms_per_step_cpu']:.0f} ms "
                         f"of DIN's {din['ms_per_step_cpu']:.0f} ms per step.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
