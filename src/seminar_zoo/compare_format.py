"""The tables of ``seminar-zoo compare`` (and of ``seminar-zoo sweep``'s closing summary).

* :func:`markdown_table`: a header line (protocol, negatives, dataset), then one row per group with
  mean ± std, ``n`` and the best mean per column in bold (:func:`best_rows`: higher is better,
  except losses, seconds and memory; ``epochs`` is not ranked);
* :func:`write_csv`: the same numbers, mean and ``_std`` columns, plus the seeds;
* naming: :func:`pretty` (column titles), :func:`short_names` (swept parameters by their last
  dotted component where unambiguous), :func:`param_order`, :func:`sort_key` (numbers before text).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

LOWER_IS_BETTER = ("loss", "seconds", "rss", "_mb", "latency")
NOT_RANKED = ("epochs",)  # descriptive columns: neither higher nor lower is better
ONE_DECIMAL = ("fit_seconds", "test_seconds", "test_wall_seconds", "samples_per_second", "peak_rss_mb", "epochs")
PRETTY = {"test/auc": "AUC", "test/gauc": "GAUC", "test/mrr": "MRR", "fit_seconds": "fit s",
          "samples_per_second": "train rows/s", "peak_rss_mb": "peak RSS MB", "test_seconds": "test s",
          "test_wall_seconds": "test wall s"}



def pretty(metric: str) -> str:
    if metric in PRETTY:
        return PRETTY[metric]
    m = metric[5:] if metric.startswith("test/") else metric
    if m.startswith("gsu/recall@"):
        return "GSU recall@" + m.split("@", 1)[1]
    return m.upper() if "@" in m else m



def sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, json.dumps(v))


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
        cells += [fmt_param(g["params"][p]) if p in g["params"] else "–" for p in params]
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


def fmt_param(v) -> str:
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
            row = [g["label"]] + [fmt_param(g["params"][p]) if p in g["params"] else "" for p in params]
            row += [g["dataset"], g["protocol"], g["n_eval_negatives"], g["n"], " ".join(map(str, g["seeds"]))]
            for m in metrics:
                if m in g["stats"]:
                    mean, std, _ = g["stats"][m]
                    row += [f"{mean:.6g}", "" if math.isnan(std) else f"{std:.6g}"]
                else:
                    row += ["", ""]
            w.writerow(row)
