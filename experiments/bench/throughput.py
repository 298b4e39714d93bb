"""Training throughput and peak memory of every model at max_len 100, 1000 and 2000 (CPU, batch 256).

For each model config (baselines/*.yaml except the recent-window din_last50, plus
experiments/seminar.yaml when the SEMINAR model exists), one subprocess builds the
model from the config's ``init_args`` for each history length L (``max_len`` = L),
takes real training batches of the shared DataModule from a synthetic dataset with
2000-behaviour histories (gathered once per L, shared by all models), runs one
warm-up step and ``--steps`` timed training steps (forward, loss incl. auxiliary
losses, backward, Adam step), and reports

* samples/s = training rows / process CPU seconds of the timed steps (torch runs one
  thread, so CPU time is the work done; wall-clock samples/s is in the JSON too: the
  machine is shared, so wall time is noisier);
* peak memory = the peak resident set size during the warm-up and timed steps (the
  kernel's high-water mark VmHWM, reset just before them), minus the RSS just before
  them (model, data and batches already in memory): the extra memory a training step
  needs. Freed heap is returned to the OS (malloc_trim) before each point.

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
import importlib.util
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


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


class PeakRSS:
    """Peak resident set size inside the block. Exact where the kernel lets us reset the
    high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0); otherwise RSS is
    sampled every ``interval`` seconds by a thread (may miss short peaks)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.base = _rss_bytes()
        self.peak = self.base
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled"
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak = max(self.peak, _hwm_bytes())
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, _rss_bytes())


def make_batches(data: Path, L: int, steps: int, batch_size: int, work: Path) -> Path:
    """Gather the training batches of one (dataset, L) point once and save them for the workers."""
    import torch

    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    path = work / f"batches-{data.name}-L{L}-b{batch_size}-n{steps + 1}.pt"
    if not path.exists():
        dm = LifelongSequenceDataModule(str(data), max_len=L, batch_size=batch_size, train_window=20, seed=0)
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        batches = [next(it) for _ in range(steps + 1)]
        torch.save({"batches": batches, "data_meta": dm.data_meta, "tables": dm.feature_tables()}, path)
    return path


def _trim_heap() -> None:
    """Return freed heap memory to the OS so the next point's RSS baseline is honest."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def worker(cfg_path: str, points: list, steps: int, encode_only: bool) -> list:
    """All (batches, L) points of one model config, in one process (imports are paid once)."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch
    import torch.nn.functional as F
    import yaml

    torch.set_num_threads(1)
    cfg = yaml.safe_load(Path(cfg_path).read_text())["model"]
    mod, cls = cfg["class_path"].rsplit(".", 1)
    out = []
    for batches_path, L in points:
        torch.manual_seed(0)
        saved = torch.load(batches_path, weights_only=False)
        batches, meta = saved["batches"], saved["data_meta"]
        init = dict(cfg.get("init_args") or {})
        init.update(data_meta=meta, max_len=L)
        try:
            model = getattr(importlib.import_module(mod), cls)(**init)
            model.load_tables(saved["tables"])
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

            _trim_heap()
            with PeakRSS() as mem:
                step(batches[0])
                w0, c0 = time.perf_counter(), time.process_time()
                for b in batches[1:steps + 1]:
                    step(b)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        except Exception as e:  # one failing point must not hide the others
            out.append({"L": L, "error": f"{type(e).__name__}: {e}"})
            continue
        timed = batches[1:steps + 1]
        rows = sum(int(b["label"].shape[0]) for b in timed)
        uniq = float(sum(torch.unique(b["hist_item_id"]).numel() for b in timed) / len(timed))
        out.append({"L": L, "samples_per_s_cpu": rows / cpu, "samples_per_s_wall": rows / wall,
                    "ms_per_step_cpu": 1000 * cpu / len(timed), "peak_step_mb": (mem.peak - mem.base) / 2**20,
                    "rss_before_mb": mem.base / 2**20, "peak_method": mem.method, "distinct_items_per_batch": uniq, "n_items": meta["n_items"],
                    "history_len_avg": float(sum(b["hist_mask"].sum().item() for b in timed) / rows)})
        del model, opt, saved, batches
    return out


def run_model(name, cfg, points, args, encode_only=False):
    """points: [(catalog, batches_path, L)] -> result rows."""
    cmd = [sys.executable, __file__, "--worker", str(cfg), "--points", json.dumps([[str(p), L] for _, p, L in points]),
           "--steps", str(args.steps)] + (["--encode-only"] if encode_only else [])
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        err = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[throughput] {name}: FAILED ({err})", flush=True)
        return [{"model": name, "L": L, "catalog": cat, "error": err} for cat, _, L in points]
    rows = []
    for (cat, _, _), res in zip(points, json.loads(line[0][7:])):
        res = {"model": name, "catalog": cat, **res}
        rows.append(res)
        if "error" in res:
            print(f"[throughput] {name:10s} L={res['L']:5d} items={cat:6d}: FAILED ({res['error']})", flush=True)
        else:
            print(f"[throughput] {name:10s} L={res['L']:5d} items={cat:6d}: {res['samples_per_s_cpu']:8.0f} samples/s "
                  f"(cpu), {res['ms_per_step_cpu']:7.0f} ms/step, peak +{res['peak_step_mb']:6.0f} MB", flush=True)
    print(f"[throughput] {name}: {time.time() - t:.0f}s", flush=True)
    return rows


def ensure_data(path: Path, users: int, items: int, seq_len: int) -> Path:
    from seminar_zoo.data.synthetic import generate

    if not (path / "meta.json").exists():
        generate(path, users=users, items=items, seq_len=seq_len, seed=0)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--encode-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--points", default=None, help=argparse.SUPPRESS)
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
        print("RESULT " + json.dumps(worker(args.worker, json.loads(args.points), args.steps, args.encode_only)),
              flush=True)
        return None
    Lmax = max(args.lengths)
    work = Path(args.work)
    data = ensure_data(work / f"syn-u{args.users}-i{args.items}-l{Lmax}", args.users, args.items, Lmax)
    cfgs = [c for c in configs() if not args.only or c.stem in args.only]
    t0, load0 = time.time(), os.getloadavg()[0]
    work.mkdir(parents=True, exist_ok=True)
    points = [(args.items, make_batches(data, L, args.steps, args.batch_size, work), L) for L in args.lengths]
    if args.extra_catalog:
        big = ensure_data(work / f"syn-u{args.users}-i{args.extra_catalog}-l{Lmax}", args.users, args.extra_catalog, Lmax)
        points.append((args.extra_catalog, make_batches(big, Lmax, args.steps, args.batch_size, work), Lmax))
    rows = run_model("encode", cfgs[0], points, args, encode_only=True)
    for cfg in cfgs:
        rows += run_model(cfg.stem, cfg, points, args)
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("worker", "encode_only", "points")},
              "seconds": time.time() - t0, "rows": rows, "ratios": ratios(rows, Lmax),
              "load_average": [load0, os.getloadavg()[0]], "cpus": os.cpu_count()}
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
             f"peak = peak RSS (VmHWM) during the steps minus RSS before them. CPU: {result['cpu']} ({result['cpus']} cores, "
             f"1-min load average {result['load_average'][0]:.1f} at the start, {result['load_average'][1]:.1f} at the end: "
             "a shared machine, so absolute numbers move between runs; the ratios are the stable part), "
             f"torch {result['torch']}. "
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
