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

Simplifications: the standard deviation is over whatever runs share a group (normally
seeds); no significance test is computed.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

DEFAULT_METRICS = ["test/auc", "test/gauc", "test/ndcg@10", "test/hr@10", "test/mrr"]
PLOT_METRICS = ["test/auc", "test/ndcg@10"]
SEED_KEYS = ("seed_everything",)
LOWER_IS_BETTER = ("loss", "seconds", "rss", "_mb", "latency")
NOT_RANKED = ("epochs",)  # descriptive columns: neither higher nor lower is better
ONE_DECIMAL = ("fit_seconds", "test_seconds", "test_wall_seconds", "samples_per_second", "peak_rss_mb", "epochs")
PRETTY = {"test/auc": "AUC", "test/gauc": "GAUC", "test/mrr": "MRR", "fit_seconds": "fit s",
          "samples_per_second": "train rows/s", "peak_rss_mb": "peak RSS MB", "test_seconds": "test s",
          "test_wall_seconds": "test wall s"}


class CompareError(ValueError):
    pass


def pretty(metric: str) -> str:
    if metric in PRETTY:
        return PRETTY[metric]
    m = metric[5:] if metric.startswith("test/") else metric
    if m.startswith("gsu/recall@"):
        return "GSU recall@" + m.split("@", 1)[1]
    return m.upper() if "@" in m else m


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
def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, json.dumps(v))


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
        g["seeds"] = sorted((r["seed"] for r in g["runs"] if r["seed"] is not None), key=_sort_key)
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
                             [_sort_key(g["params"].get(p)) for p in order]))
    return rows


def param_order(rows: List[Dict[str, Any]]) -> List[str]:
    out: List[str] = []
    for g in rows:
        for p in g["param_order"] or list(g["params"]):
            if p not in out:
                out.append(p)
    return out


def lower_is_better(metric: str) -> bool:
    return any(s in metric for s in LOWER_IS_BETTER)


def best_rows(rows: List[Dict[str, Any]], metric: str, goal: Optional[str] = None) -> List[int]:
    """Indices of rows whose mean is the best for ``metric`` (ties: all); empty with < 2 rows having it."""
    have = [(i, g["stats"][metric][0]) for i, g in enumerate(rows) if metric in g["stats"]]
    if len(have) < 2 or metric in NOT_RANKED:
        return []
    minimize = goal == "minimize" if goal else lower_is_better(metric)
    best = (min if minimize else max)(v for _, v in have)
    return [i for i, v in have if abs(v - best) <= 1e-12 * max(1.0, abs(best))]


def fmt_stat(metric: str, stat) -> str:
    mean, std, n = stat
    f = "{:.1f}" if metric in ONE_DECIMAL else "{:.4f}"
    return f.format(mean) if n < 2 or math.isnan(std) else f"{f.format(mean)} ± {f.format(std)}"


def short_names(names: Sequence[str]) -> Dict[str, str]:
    """Last dotted component of each parameter name, or the whole name where that is ambiguous."""
    last = [n.split(".")[-1] for n in names]
    return {n: (s if last.count(s) == 1 else n) for n, s in zip(names, last)}


def header_line(rows: List[Dict[str, Any]]) -> str:
    parts = []
    protos = sorted({(g["protocol"], g["n_eval_negatives"]) for g in rows}, key=str)
    ps = []
    for proto, neg in protos:
        if proto == "ranking":
            ps.append(f"ranking (each test target ranked against {neg} sampled negatives)")
        elif proto == "ctr":
            ps.append("ctr (labelled impressions; AUC/GAUC over all test samples, NDCG/HR per request)")
        else:
            ps.append(str(proto))
    parts.append("Protocol: " + "; ".join(ps))
    datasets = sorted({str(g["dataset"]) for g in rows})
    parts.append("dataset: " + ", ".join(datasets))
    parts.append("mean ± std over n runs (seeds); best per column in bold")
    return " · ".join(parts)


def markdown_table(rows: List[Dict[str, Any]], metrics: Sequence[str], goal: Optional[Dict[str, str]] = None,
                   header: bool = True) -> str:
    metrics = [m for m in metrics if any(m in g["stats"] for g in rows)]
    params = param_order(rows)
    short = short_names(params)
    vary = [c for c in ("dataset", "protocol", "n_eval_negatives") if len({str(g[c]) for g in rows}) > 1]
    cols = ["model"] + [short[p] for p in params] + vary + ["n"] + [pretty(m) for m in metrics]
    best = {m: set(best_rows(rows, m, (goal or {}).get(m))) for m in metrics}
    lines = [header_line(rows), ""] if header else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" if i < 1 + len(params) + len(vary) else "---:" for i in range(len(cols))) + "|")
    for i, g in enumerate(rows):
        cells = [str(g["label"])]
        cells += [_fmt_param(g["params"][p]) if p in g["params"] else "–" for p in params]
        cells += [str(g[c]) for c in vary]
        cells.append(str(g["n"]))
        for m in metrics:
            if m not in g["stats"]:
                cells.append("–")
                continue
            s = fmt_stat(m, g["stats"][m])
            cells.append(f"**{s}**" if i in best[m] else s)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_param(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def write_csv(rows: List[Dict[str, Any]], metrics: Sequence[str], path: Path) -> None:
    params = param_order(rows)
    cols = ["label"] + params + ["dataset", "protocol", "n_eval_negatives", "n", "seeds"]
    for m in metrics:
        cols += [m, f"{m}_std"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for g in rows:
            row = [g["label"]] + [_fmt_param(g["params"][p]) if p in g["params"] else "" for p in params]
            row += [g["dataset"], g["protocol"], g["n_eval_negatives"], g["n"], " ".join(map(str, g["seeds"]))]
            for m in metrics:
                if m in g["stats"]:
                    mean, std, _ = g["stats"][m]
                    row += [f"{mean:.6g}", "" if math.isnan(std) else f"{std:.6g}"]
                else:
                    row += ["", ""]
            w.writerow(row)


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_label(g: Dict[str, Any], params: Sequence[str]) -> str:
    short = short_names(params)
    extra = [f"{short[p]}={_fmt_param(g['params'][p])}" for p in params if p in g["params"]]
    return "\n".join([str(g["label"])] + extra)


def _subtitle(rows) -> str:
    return header_line(rows).split(" · mean")[0]


def plot_compare(rows: List[Dict[str, Any]], path: Path, metrics: Sequence[str] = PLOT_METRICS) -> Optional[Path]:
    metrics = [m for m in metrics if any(m in g["stats"] for g in rows)]
    if not metrics:
        return None
    plt = _plt()
    params = param_order(rows)
    labels = [group_label(g, params) for g in rows]
    width = max(6.0, 1.0 + 0.9 * len(rows)) * len(metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(min(width, 22), 4.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    models = list(dict.fromkeys(g["label"] for g in rows))
    for ax, m in zip(axes[0], metrics):
        xs, means, errs, cols = [], [], [], []
        for i, g in enumerate(rows):
            if m in g["stats"]:
                mean, std, _ = g["stats"][m]
                xs.append(i)
                means.append(mean)
                errs.append(0.0 if math.isnan(std) else std)
                cols.append(colors(models.index(g["label"]) % 10))
        bars = ax.bar(xs, means, yerr=errs, capsize=4, color=cols, edgecolor="black", linewidth=0.5)
        for b, v, e in zip(bars, means, errs):
            ax.text(b.get_x() + b.get_width() / 2, v + e, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        top = max(v + e for v, e in zip(means, errs))
        ax.set_ylim(0, min(1.0, top * 1.15) if top <= 1 else top * 1.15)
        if m.endswith("auc"):
            ax.axhline(0.5, ls="--", color="gray", lw=1, label="chance (0.5)")
            ax.set_ylim(0, max(1.0, top * 1.05) if top > 0.9 else min(1.0, top * 1.15))
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=30 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center",
                           fontsize=8)
        ax.set_ylabel(f"test {pretty(m)} (mean ± std)")
        ax.set_title(f"{pretty(m)} by model")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(_subtitle(rows), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_sweep(rows: List[Dict[str, Any]], path: Path, metrics: Sequence[str] = PLOT_METRICS) -> Optional[Path]:
    swept = [g for g in rows if g["params"]]
    metrics = [m for m in metrics if any(m in g["stats"] for g in swept)]
    if not swept or not metrics:
        return None
    params = param_order(swept)
    xp = next((p for p in params if all(_numeric(g["params"].get(p)) for g in swept if p in g["params"])), params[0])
    others = [p for p in params if p != xp]
    short = short_names(params)
    xs_all = sorted({g["params"][xp] for g in swept if xp in g["params"]}, key=_sort_key)
    numeric = all(_numeric(v) for v in xs_all)
    ints = numeric and all(isinstance(v, int) for v in xs_all)
    ratio = max(xs_all) / min(xs_all) if numeric and min(xs_all) > 0 else 0
    logx = (2 if ints and ratio >= 8 else 10 if ratio >= 100 else None) if numeric else None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics), 4.5), squeeze=False)
    series: Dict[str, List[Dict[str, Any]]] = {}
    for g in swept:
        name = ", ".join([str(g["label"])] + [f"{short[p]}={_fmt_param(g['params'][p])}" for p in others
                                              if p in g["params"]])
        series.setdefault(name, []).append(g)
    for ax, m in zip(axes[0], metrics):
        for name, gs in series.items():
            pts = sorted(((g["params"][xp], g["stats"][m]) for g in gs if m in g["stats"] and xp in g["params"]),
                         key=lambda t: _sort_key(t[0]))
            if not pts:
                continue
            x = [p[0] if numeric else xs_all.index(p[0]) for p in pts]
            y = [p[1][0] for p in pts]
            e = [0.0 if math.isnan(p[1][1]) else p[1][1] for p in pts]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=4, label=name)
        if logx:
            ax.set_xscale("log", base=logx)
            ax.minorticks_off()
        if numeric:
            ax.set_xticks(xs_all)
            ax.set_xticklabels([_fmt_param(v) for v in xs_all])
        else:
            ax.set_xticks(range(len(xs_all)))
            ax.set_xticklabels([_fmt_param(v) for v in xs_all])
        ax.set_xlabel(xp + (f" (log{logx} scale)" if logx else ""))
        ax.set_ylabel(f"test {pretty(m)} (mean ± std)")
        ax.set_title(f"{pretty(m)} vs {short[xp]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="model" + (", " + ", ".join(short[p] for p in others) if others else ""),
                  title_fontsize=8)
    sweeps = sorted({str(g["sweep"]) for g in swept if g["sweep"]})
    fig.suptitle((f"sweep {', '.join(sweeps)} · " if sweeps else "") + _subtitle(swept), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
