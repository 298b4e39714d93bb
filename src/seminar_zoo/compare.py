"""``seminar-zoo compare RUN_DIRS... [--out DIR] [--metrics ...]``: tables and plots from runs.

Reads every ``metrics.json`` under the given paths (a run directory, a parent of many,
or a metrics.json file; searched recursively) written by ``seminar-zoo experiment``,
plus ``sweep_point.json`` where ``seminar-zoo sweep`` left one (the swept parameter
values). Runs are grouped by label (``name``, falling back to ``model``), dataset,
protocol, number of evaluation negatives and swept parameter values (the seed,
``seed_everything``, is never a grouping key: runs that differ only by seed are the
repetitions a row averages). Written to ``--out`` (default ``runs/compare``):

* ``table.md``: a header line with protocol, negatives and dataset, then one row per
  group: mean ± sample standard deviation (ddof 1) over its runs, ``n`` runs, the best
  mean per column in bold (higher is better, except losses, seconds and memory);
* ``table.csv``: the same numbers, mean and ``_std`` columns, plus the seeds;
* ``compare.png``: bars of AUC and NDCG@10 (``--plot-metrics``) per group with ±std
  error bars (a dashed line marks AUC 0.5, chance);
* ``sweep.png`` (when runs record swept parameters): each plotted metric against the
  first numeric swept parameter, one line per model and value of the other parameters,
  ±std error bars; log2 x axis for integers spanning a factor of 8 or more (codebook sizes),
  log10 for values spanning a factor of 100 or more (learning rates).

Reading and grouping are here; the tables are :mod:`seminar_zoo.compare_format`, the plots
:mod:`seminar_zoo.compare_plots`.

Simplifications: the standard deviation is over whatever runs share a group (normally
seeds); no significance test is computed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .compare_format import markdown_table, param_order, sort_key, write_csv
from .compare_plots import PLOT_METRICS, plot_compare, plot_sweep

DEFAULT_METRICS = ["test/auc", "test/gauc", "test/ndcg@10", "test/hr@10", "test/mrr"]
SEED_KEYS = ("seed_everything",)


class CompareError(ValueError):
    pass


# --------------------------------------------------------------------------- reading
def find_metrics(paths: Iterable[os.PathLike]) -> List[Path]:
    found, seen = [], set()
    for p in map(Path, paths):
        if p.is_file() and p.name == "metrics.json":
            cands = [p]
        elif p.is_dir():
            cands = sorted(p.rglob("metrics.json"))
        else:
            raise CompareError(f"{p}: no such run directory or metrics.json")
        for c in cands:
            r = c.resolve()
            if r not in seen:
                seen.add(r)
                found.append(c)
    return found


def collect(paths: Iterable[os.PathLike]) -> List[Dict[str, Any]]:
    """One record per metrics.json: ``{"metrics", "run_dir", "label", "params", "param_order", "sweep", "seed"}``."""
    files = find_metrics(paths)
    if not files:
        raise CompareError("no metrics.json found under " + ", ".join(map(str, paths)))
    recs = []
    for f in files:
        try:
            m = json.loads(f.read_text())
        except ValueError as e:
            raise CompareError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(m, dict):
            raise CompareError(f"{f}: expected a JSON object")
        params, order, sweep, seed = {}, [], None, m.get("seed")
        sp = f.parent / "sweep_point.json"
        if sp.is_file():
            point = json.loads(sp.read_text())
            sweep = point.get("sweep")
            allp = point.get("parameters") or {}
            order = [k for k in allp if k not in SEED_KEYS]
            params = {k: allp[k] for k in order}
            seed = next((allp[k] for k in SEED_KEYS if k in allp), seed)
        m = {**m, "dataset": _fingerprint(m)}
        recs.append({"metrics": m, "run_dir": str(f.parent), "label": m.get("name") or m.get("model") or f.parent.name,
                     "params": params, "param_order": order, "sweep": sweep, "seed": seed})
    return recs


def _fingerprint(m: Dict[str, Any]) -> Optional[str]:
    """The run's dataset told apart by its meta.json counts and generator arguments (recorded by
    ``experiment`` as ``data_fingerprint``, else read from ``data_path``), else its name."""
    if m.get("data_fingerprint"):
        return m["data_fingerprint"]
    meta = Path(str(m.get("data_path"))) / "meta.json"
    if m.get("data_path") and meta.is_file():
        from .data.schema import dataset_fingerprint

        try:
            return dataset_fingerprint(json.loads(meta.read_text()))
        except ValueError:
            pass
    return m.get("dataset")


# --------------------------------------------------------------------------- grouping
def summarize(records: List[Dict[str, Any]], metrics: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Group records (module docstring) and compute mean/std/n per metric; rows in a stable order."""
    groups: Dict[tuple, Dict[str, Any]] = {}
    label_order: List[str] = []
    for r in records:
        m = r["metrics"]
        key = (r["label"], m.get("dataset"), m.get("protocol"), m.get("n_eval_negatives"),
               json.dumps(r["params"], sort_keys=True, default=str))
        if r["label"] not in label_order:
            label_order.append(r["label"])
        g = groups.setdefault(key, {"label": r["label"], "dataset": m.get("dataset"), "protocol": m.get("protocol"),
                                    "n_eval_negatives": m.get("n_eval_negatives"), "data_path": m.get("data_path"),
                                    "params": dict(r["params"]), "param_order": list(r["param_order"]),
                                    "sweep": r["sweep"], "runs": []})
        g["runs"].append(r)
    names = metrics
    if names is None:
        names = sorted({k for r in records for k, v in r["metrics"].items() if isinstance(v, (int, float))
                        and not isinstance(v, bool)})
    rows = []
    for g in groups.values():
        g["n"] = len(g["runs"])
        g["seeds"] = sorted((r["seed"] for r in g["runs"] if r["seed"] is not None), key=sort_key)
        g["run_dirs"] = [r["run_dir"] for r in g["runs"]]
        g["stats"] = {}
        for k in names:
            vals = [float(r["metrics"][k]) for r in g["runs"]
                    if isinstance(r["metrics"].get(k), (int, float)) and not isinstance(r["metrics"].get(k), bool)
                    and math.isfinite(float(r["metrics"][k]))]
            if vals:
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else float("nan")
                g["stats"][k] = (mean, std, len(vals))
        del g["runs"]
        rows.append(g)
    order = param_order(rows)
    rows.sort(key=lambda g: (label_order.index(g["label"]), str(g["dataset"]), str(g["protocol"]),
                             [sort_key(g["params"].get(p)) for p in order]))
    return rows


# --------------------------------------------------------------------------- CLI
def compare(paths: Sequence[os.PathLike], out: os.PathLike = "runs/compare", metrics: Optional[Sequence[str]] = None,
            plot_metrics: Sequence[str] = PLOT_METRICS) -> Dict[str, Any]:
    recs = collect(paths)
    metrics = list(metrics) if metrics else [m for m in DEFAULT_METRICS
                                             if any(m in r["metrics"] for r in recs)]
    missing = [m for m in metrics if not any(m in r["metrics"] for r in recs)]
    if missing:
        known = sorted({k for r in recs for k in r["metrics"]})
        raise CompareError(f"metric(s) {', '.join(missing)} in no metrics.json (known: {', '.join(known)})")
    rows = summarize(recs, list(dict.fromkeys(list(metrics) + list(plot_metrics))))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, metrics)
    (out / "table.md").write_text(table)
    write_csv(rows, metrics, out / "table.csv")
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv"}
    p = plot_compare(rows, out / "compare.png", plot_metrics)
    if p:
        files["compare.png"] = p
    p = plot_sweep(rows, out / "sweep.png", plot_metrics)
    if p:
        files["sweep.png"] = p
    return {"rows": rows, "table": table, "files": files, "n_runs": len(recs)}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(prog="seminar-zoo compare", allow_abbrev=False,
                                 description="Tables (mean ± std over seeds) and plots from runs' metrics.json.")
    ap.add_argument("runs", nargs="+", help="run directories or their parents (searched recursively)")
    ap.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    ap.add_argument("--metrics", nargs="+", default=None, help=f"table columns (default: {' '.join(DEFAULT_METRICS)})")
    ap.add_argument("--plot-metrics", nargs="+", default=PLOT_METRICS, help="metrics in the plots")
    a = ap.parse_args(argv)
    try:
        res = compare(a.runs, a.out, a.metrics, a.plot_metrics)
    except CompareError as e:
        print(f"seminar-zoo compare: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(res["table"])
    print(f"{res['n_runs']} run(s) -> " + ", ".join(str(p) for p in res["files"].values()))
    return res


if __name__ == "__main__":
    main()
