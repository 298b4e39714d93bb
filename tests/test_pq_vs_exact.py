"""experiments/pq_vs_exact.py: pairs the exact and pq tests of one checkpoint and checks the issue-13 bounds."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import pq_vs_exact as P  # noqa: E402

sys.path.pop(0)


def _run(tmp, name, seed, auc, ndcg, auc_pq, ndcg_pq):
    run = tmp / name
    for sub, a, n, extra in (("test_exact", auc, ndcg, {}), ("test_pq", auc_pq, ndcg_pq, {
            "test/gsu/recall@20": 0.9, "test/gsu/ms_per_request": 0.02, "test/gsu/exact_ms_per_request": 0.01,
            "gsu_backend": "faiss4", "gsu_bytes_per_behaviour": 24})):
        (run / sub).mkdir(parents=True)
        (run / sub / "metrics.json").write_text(json.dumps({"seed": seed, "protocol": "ranking", "test/auc": a,
                                                            "test/ndcg@10": n, **extra}))
    (run / "metrics.json").write_text(json.dumps({"seed": seed, "test/auc": auc, "test/ndcg@10": ndcg}))
    (run / "config.yaml").write_text("model: {}\n")
    return run


def test_table_deltas_and_bounds(tmp_path):
    a = _run(tmp_path, "a", 0, 0.8, 0.30, 0.801, 0.304)  # inside both bounds
    b = _run(tmp_path, "b", 1, 0.8, 0.30, 0.797, 0.30)   # |dAUC| 0.003 > 0.002
    out = tmp_path / "res"
    rows = P.main(["--runs", str(a), "--label", "toy", "--out", str(out)])
    assert len(rows) == 1 and abs(rows[0]["test/auc/delta"] - 0.001) < 1e-9 and rows[0]["gsu_recall"] == 0.9
    assert rows[0]["topk"] == "20" and "| toy | ranking | 1 | +0.0010 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".md").read_text().rstrip().endswith("| yes |")
    rows = P.main(["--runs", str(b), "--label", "toy", "--out", str(out)])  # appended, same group
    assert len(rows) == 2
    md = out.with_suffix(".md").read_text()
    assert "| toy | ranking | 2 | -0.0010 | 0.0030 |" in md and md.rstrip().endswith("| NO |")


def test_codebook_grid_table_and_plot(tmp_path):
    a = _run(tmp_path, "a", 0, 0.8, 0.30, 0.801, 0.304)
    for size, auc in (("16x2", 0.79), ("64x4", 0.80)):
        d = a / f"test_pq_{size}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"seed": 0, "protocol": "ranking", "test/auc": auc, "test/ndcg@10": 0.3,
                                                    "test/gsu/recall@20": 0.5, "gsu_bytes_per_behaviour": 4}))
    out = tmp_path / "grid"
    rows = P.main(["--runs", str(a), "--label", "toy", "--pq-grid", "16x2", "64x4", "--out", str(out)])
    assert [r["pq_size"] for r in rows] == ["16x2", "64x4"]
    md = out.with_suffix(".md").read_text()
    assert "| 16 | 2 | 4 | 2 | 1 | 0.7900 ± 0.0000 |" in md and "-0.0100 ± 0.0000" in md
    assert out.with_suffix(".png").stat().st_size > 5000
