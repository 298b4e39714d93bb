"""The plots of ``seminar-zoo compare``: ``compare.png`` (bars per group with ±std error bars, a
dashed line at AUC 0.5) and ``sweep.png`` (each metric against the first numeric swept parameter,
one line per model and value of the other parameters; log2 x axis for integers spanning a factor
of 8 or more, log10 for values spanning a factor of 100 or more).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .compare_format import fmt_param, header_line, param_order, pretty, short_names, sort_key

PLOT_METRICS = ["test/auc", "test/ndcg@10"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_label(g: Dict[str, Any], params: Sequence[str]) -> str:
    short = short_names(params)
    extra = [f"{short[p]}={fmt_param(g['params'][p])}" for p in params if p in g["params"]]
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
    xs_all = sorted({g["params"][xp] for g in swept if xp in g["params"]}, key=sort_key)
    numeric = all(_numeric(v) for v in xs_all)
    ints = numeric and all(isinstance(v, int) for v in xs_all)
    ratio = max(xs_all) / min(xs_all) if numeric and min(xs_all) > 0 else 0
    logx = (2 if ints and ratio >= 8 else 10 if ratio >= 100 else None) if numeric else None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics), 4.5), squeeze=False)
    series: Dict[str, List[Dict[str, Any]]] = {}
    for g in swept:
        name = ", ".join([str(g["label"])] + [f"{short[p]}={fmt_param(g['params'][p])}" for p in others
                                              if p in g["params"]])
        series.setdefault(name, []).append(g)
    for ax, m in zip(axes[0], metrics):
        for name, gs in series.items():
            pts = sorted(((g["params"][xp], g["stats"][m]) for g in gs if m in g["stats"] and xp in g["params"]),
                         key=lambda t: sort_key(t[0]))
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
            ax.set_xticklabels([fmt_param(v) for v in xs_all])
        else:
            ax.set_xticks(range(len(xs_all)))
            ax.set_xticklabels([fmt_param(v) for v in xs_all])
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
