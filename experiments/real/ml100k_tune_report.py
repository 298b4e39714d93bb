"""Report of the per-model tuning sweeps (experiments/sweeps/ml100k_tune.yaml, issue 12 item 2).

    python experiments/real/ml100k_tune_report.py [--sweeps runs/sweeps/ml100k_tune] [--models sasrec hstu]
        [--budget 6] [--write-configs experiments/tuned/ml100k]

Reads each model's ``sweep_summary.json`` (written by ``seminar-zoo sweep``) and the runs' metrics.json; the
point is picked on validation NDCG@10 (``best_val``, the checkpoint monitor), never on test; test NDCG@10 is
shown beside it only to read what the pick is worth. The budget is the same for every model: the pick is
made among the sweep's first ``--budget`` points (a seeded random sweep draws the same points in the same
order for every model, so a model swept further keeps its extra points in the table, outside the pick).
Writes experiments/results/ml100k_tune.{md,json} and, with ``--write-configs``, one overlay per model whose
budget is complete, holding only the picked values (``experiments/real/ml100k.py`` applies it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ml100k", ROOT / "experiments/real/ml100k.py")
ml100k = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ml100k)
SHORT = {"model.init_args.lr": "lr", "model.init_args.embed_dim": "embed_dim", "model.init_args.dropout": "dropout"}


def model_report(folder: Path, budget: int = 6) -> dict:
    """One model's sweep -> {"points": [...] sorted by validation score, "picked": the best of the first
    ``budget`` points (None until all of them are done), "in_budget": how many of them are done}."""
    summary = json.loads((folder / "sweep_summary.json").read_text())
    points = []
    for index, p in enumerate(summary["points"]):
        # "skipped": finished by an earlier invocation of the same sweep (its metrics.json is reused)
        if p.get("status") not in ("done", "skipped") or p.get("metric", {}).get("score") is None:
            continue
        run = Path(p["run_dir"])
        run = run if run.is_absolute() else ROOT / run
        rec = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
        points.append({"name": p["name"], "index": index, **{SHORT.get(k, k): v for k, v in p["parameters"].items()},
                       "val_ndcg@10": p["metric"]["score"], "test_ndcg@10": rec.get("test/ndcg@10"),
                       "epochs": rec.get("epochs"), "seconds": p.get("seconds") or rec.get("fit_seconds"),
                       "in_budget": index < budget})
    points.sort(key=lambda r: (not r["in_budget"], -r["val_ndcg@10"]))
    done = sum(p["in_budget"] for p in points)
    ov = summary.get("overrides", [])
    run_seed = int(ov[ov.index("--seed_everything") + 1]) if "--seed_everything" in ov[:-1] else None
    return {"seed": summary.get("seed"), "run_seed": run_seed, "data_path": summary.get("data_path"),
            "overrides": [str(x) for x in summary.get("overrides", [])], "started": len(summary["points"]), "points": points,
            "in_budget": done, "picked": points[0] if points and done >= budget else None}


# the options of ml100k.py's RANKING_EXTRA, which the ablation's shipped rows predate (its SHARE they had): a
# sweep run with any of them trains on other batches and validates on other users than those rows
RECIPE_FLAGS = tuple(sorted({flag for extra in ml100k.RANKING_EXTRA.values() for flag in extra[::2]}))


def shipped_point(model: str, seed: int = 0, path: Path = ROOT / "experiments/results/ml100k_ablation.json",
                  overrides=()):
    """The shipped config's run of the same seed on the same data (the ablation's shipped rows), or None (also
    when the sweep's ``overrides`` change the recipe: its validation scores would not be comparable)."""
    label = {"sasrec": "SASRec", "hstu": "HSTU", "din": "DIN"}.get(model)
    if label is None or not path.exists() or any(str(o).split("=")[0] in RECIPE_FLAGS for o in overrides):
        return None
    runs = [r for r in json.loads(path.read_text()).get("runs", {}).get(label, []) if r.get("seed") == seed]
    if not runs or not isinstance(runs[0].get("best_val"), dict):
        return None
    return {"val_ndcg@10": runs[0]["best_val"]["score"], "test_ndcg@10": runs[0].get("test/ndcg@10")}


def data_lines(reports: dict) -> list:
    """Which data the sweeps ran on (the text encoder changes the item vectors of every model)."""
    out = []
    for path in sorted({r.get("data_path") for r in reports.values() if r.get("data_path")}):
        meta = ROOT / path / "meta.json"
        enc = json.loads(meta.read_text()).get("text", {}).get("encoder", {}).get("name") if meta.exists() else None
        out.append(f"Data `{path}`" + (f" (text encoder `{enc}`)" if enc else "") + ".")
    return out + [""] if out else []


def render(reports: dict, budget: int = 6) -> str:
    lines = ["# ML-100K per-model tuning on validation (`experiments/sweeps/ml100k_tune.yaml`)", "",
             f"Random search, the same seeded points for every model (`--seed 0 --max-runs {budget}`): lr log-uniform in "
             "[5e-4, 1e-2], embed_dim {32, 64}, dropout {0, 0.1, 0.2, 0.3}; each run trains with the recipe of "
             "`experiments/datasets/ml100k.yaml` (early stopping on validation NDCG@10, best checkpoint tested), "
             "`--seed_everything 0`, one thread. **The pick is the highest validation NDCG@10**; test NDCG@10 is "
             "shown only to read what the pick is worth. Validation scores compare points of one model, not models: "
             "a model's runs may validate on a different share of the users (each section's overrides, e.g. "
             "`--trainer.limit_val_batches`). Produced by `python experiments/real/ml100k_tune_report.py`.",
             "", *data_lines(reports),
             f"Budget {budget} points per model (the pick is made among the first {budget} seeded points, the "
             "same for every model; points a model was swept beyond them are listed below its budget, unused): "
             + ", ".join(f"{m} {r['in_budget']}/{budget}" for m, r in reports.items())
             + ("" if all(r["in_budget"] >= budget for r in reports.values()) else
                " (a model under budget has no pick yet)") + ".", ""]
    picked = {m: r["picked"] for m, r in reports.items() if r["picked"]}
    if picked:
        lines += ["Picks (each model's overlay `experiments/tuned/ml100k/<model>.yaml`), by validation NDCG@10:", "",
                  "| model | lr | embed_dim | dropout | val NDCG@10 | test NDCG@10 | epochs |", "|---|---|---|---|---|---|---|"]
        for m, p in sorted(picked.items(), key=lambda kv: -kv[1]["val_ndcg@10"]):
            test = f"{p['test_ndcg@10']:.4f}" if p["test_ndcg@10"] is not None else "n/a"
            lines.append(f"| {m} | {p['lr']:.5f} | {p['embed_dim']} | {p['dropout']} | {p['val_ndcg@10']:.4f} | "
                         f"{test} | {p['epochs']} |")
        lines.append("")
    for model, r in reports.items():
        pts = r["points"]
        lines += [f"## {model}: {r['in_budget']}/{budget} budget points done ({len(pts)} done, {r['started']} started)",
                  ""]
        if r.get("overrides"):
            lines += [f"Every point also had: `{' '.join(r['overrides'])}`", ""]
        if not pts:
            continue
        lines += ["| rank (val) | lr | embed_dim | dropout | val NDCG@10 | test NDCG@10 | epochs | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for i, p in enumerate(pts, 1):
            test = f"{p['test_ndcg@10']:.4f}" if p["test_ndcg@10"] is not None else "n/a"
            mark = (" (picked)" if r["picked"] and p["name"] == r["picked"]["name"] else "") if p["in_budget"] else " (beyond the budget)"
            rank = str(i) if p["in_budget"] else "-"
            lines.append(f"| {rank}{mark} | {p['lr']:.5f} | {p['embed_dim']} | {p['dropout']} | "
                         f"{p['val_ndcg@10']:.4f} | {test} | {p['epochs']} | {p['seconds']:.0f} |")
        ship = r.get("shipped")
        if ship and r["picked"]:
            lines += ["", f"Shipped config (lr 0.005 as in ml100k.md, its YAML's embed_dim and dropout), same data and "
                      f"seed ({'`experiments/results/ml100k_ablation.md`'}): val {ship['val_ndcg@10']:.4f}, test "
                      f"{ship['test_ndcg@10']:.4f}; the pick: val {r['picked']['val_ndcg@10']:.4f}, test "
                      f"{r['picked']['test_ndcg@10']:.4f}."]
        lines.append("")
    return "\n".join(lines)


def write_overlay(folder: Path, model: str, picked: dict, budget: int) -> Path:
    """The picked values as a config overlay (model.init_args only), atomically."""
    path = folder / f"{model}.yaml"
    text = (f"# ML-100K values for {model}, picked on validation NDCG@10 among the first {budget} points of\n"
            f"# experiments/sweeps/ml100k_tune.yaml (point {picked['name']}: val {picked['val_ndcg@10']:.4f}).\n"
            "# Written by experiments/real/ml100k_tune_report.py --write-configs; an overlay that goes after the\n"
            "# model's config and experiments/datasets/ml100k.yaml (experiments/real/ml100k.py adds it).\n"
            "model:\n  init_args:\n"
            f"    lr: {picked['lr']:.6g}\n    embed_dim: {int(picked['embed_dim'])}\n    dropout: {picked['dropout']}\n")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", default="runs/sweeps/ml100k_tune")
    ap.add_argument("--models", nargs="+", default=None, help="sweep folders under --sweeps (default: all)")
    ap.add_argument("--out", default="experiments/results/ml100k_tune")
    ap.add_argument("--budget", type=int, default=6, help="points per model: the pick is made among each sweep's "
                    "first BUDGET points (at most the sweeps' --max-runs)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the models of the existing --out JSON that --models does not re-read (re-sweep one "
                    "model after its sweep folders of the others are gone)")
    ap.add_argument("--write-configs", default=None, metavar="DIR",
                    help="write DIR/<model>.yaml holding the picked lr/embed_dim/dropout of each complete model")
    args = ap.parse_args(argv)
    base = ROOT / args.sweeps
    names = args.models or sorted(p.parent.name for p in base.glob("*/sweep_summary.json"))
    missing = [n for n in names if not (base / n / "sweep_summary.json").exists()]
    if missing:
        print(f"ml100k_tune_report: no sweep_summary.json under {base} for {', '.join(missing)} "
              "(run `seminar-zoo sweep experiments/sweeps/ml100k_tune.yaml --out ...` first)", file=sys.stderr)
        sys.exit(2)
    if args.budget < 1:
        print(f"ml100k_tune_report: --budget must be >= 1 (got {args.budget})", file=sys.stderr)
        sys.exit(2)
    reports = {n: model_report(base / n, args.budget) for n in names}
    for n, r in reports.items():
        r["shipped"] = shipped_point(n, r["run_seed"], overrides=r["overrides"]) if r["run_seed"] is not None else None
    out = ROOT / args.out
    if args.merge and out.with_suffix(".json").exists():
        kept = json.loads(out.with_suffix(".json").read_text())
        reports = dict(sorted({**{n: r for n, r in kept.items() if n not in reports}, **reports}.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(reports, indent=1))
    md = render(reports, args.budget)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    if args.write_configs:
        for n in names:  # the sweeps read now (--merge keeps the others' overlays as they are)
            r = reports[n]
            if r["picked"]:
                print(f"wrote {write_overlay(ROOT / args.write_configs, n, r['picked'], args.budget)}")


if __name__ == "__main__":
    main()
