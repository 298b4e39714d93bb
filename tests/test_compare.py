"""seminar-zoo compare on hand-made metrics.json files: grouping, mean ± std, bold best, CSV, PNGs."""
import csv
import json
import math

import pytest

from seminar_zoo import compare as C
from seminar_zoo import compare_format as F


def write_run(root, name, seed, auc, ndcg, loss=0.5, model=None, params=None, sweep=None, **extra):
    d = root / f"{name}_{seed}" if params is None else root / (name + "_" + "_".join(f"{k}{v}" for k, v in params.items()) + f"_s{seed}")
    d.mkdir(parents=True)
    m = {"name": name, "model": model or name, "dataset": "synthetic", "protocol": "ranking", "seed": seed,
         "n_eval_negatives": 99, "test/auc": auc, "test/ndcg@10": ndcg, "test/loss": loss,
         "data_path": "/data/syn", **extra}
    (d / "metrics.json").write_text(json.dumps(m))
    if params is not None:
        (d / "sweep_point.json").write_text(json.dumps({"sweep": sweep, "parameters": params}))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # DIN: 3 seeds, AUC 0.70/0.72/0.74 -> 0.72 ± 0.02; NDCG 0.30/0.30/0.33 -> 0.31 ± 0.01732
    for s, a, n in [(0, 0.70, 0.30), (1, 0.72, 0.30), (2, 0.74, 0.33)]:
        write_run(root / "din", "DIN", s, a, n, loss=0.40)
    # SIM: 2 seeds, AUC 0.80/0.82 -> 0.81 ± 0.01414 (best), NDCG 0.20/0.22 -> 0.21 (worse), loss 0.6
    for s, a, n in [(0, 0.80, 0.20), (1, 0.82, 0.22)]:
        write_run(root / "nested" / "sim", "SIM", s, a, n, loss=0.60)
    return root


def test_summary_means_and_stds(runs):
    rows = C.summarize(C.collect([runs]), ["test/auc", "test/ndcg@10", "test/loss"])
    assert [r["label"] for r in rows] == ["DIN", "SIM"]
    din, sim = rows
    assert din["n"] == 3 and din["seeds"] == [0, 1, 2] and sim["n"] == 2
    assert din["stats"]["test/auc"][0] == pytest.approx(0.72)
    assert din["stats"]["test/auc"][1] == pytest.approx(0.02)  # sample std (ddof 1)
    assert din["stats"]["test/ndcg@10"][1] == pytest.approx(math.sqrt(0.0003))
    assert sim["stats"]["test/auc"] == pytest.approx((0.81, math.sqrt(2e-4), 2))
    assert F.best_rows(rows, "test/auc") == [1]
    assert F.best_rows(rows, "test/ndcg@10") == [0]
    assert F.best_rows(rows, "test/loss") == [0]  # losses: lower is better
    assert F.best_rows(rows, "test/auc", goal="minimize") == [0]


def test_compare_writes_table_csv_and_plots(runs, tmp_path):
    out = tmp_path / "cmp"
    res = C.main([str(runs / "din"), str(runs / "nested"), "--out", str(out),
                  "--metrics", "test/auc", "test/ndcg@10", "test/loss"])
    md = (out / "table.md").read_text()
    assert res["n_runs"] == 5
    header = md.splitlines()[0]
    assert "ranking" in header and "99 sampled negatives" in header and "synthetic" in header
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "model" not in ln}
    din, sim = lines["DIN"], lines["SIM"]
    cells = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]
    assert cells(din) == ["DIN", "3", "0.7200 ± 0.0200", "**0.3100 ± 0.0173**", "**0.4000 ± 0.0000**"]
    assert cells(sim) == ["SIM", "2", "**0.8100 ± 0.0141**", "0.2100 ± 0.0141", "0.6000 ± 0.0000"]
    assert md.splitlines()[2].startswith("| model | n | AUC | NDCG@10 | loss |")
    with open(out / "table.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["DIN", "SIM"]
    assert float(rows[0]["test/auc"]) == pytest.approx(0.72) and float(rows[0]["test/auc_std"]) == pytest.approx(0.02)
    assert rows[1]["n"] == "2" and rows[1]["seeds"] == "0 1" and rows[1]["n_eval_negatives"] == "99"
    png = out / "compare.png"
    assert png.is_file() and png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "sweep.png").exists()  # no swept parameters


def test_single_run_has_no_std_and_label_falls_back_to_model(tmp_path):
    d = write_run(tmp_path, "x", 0, 0.6, 0.1)
    m = json.loads((d / "metrics.json").read_text())
    del m["name"]
    m["model"] = "ETA"
    (d / "metrics.json").write_text(json.dumps(m))
    write_run(tmp_path, "TWIN", 0, 0.65, 0.1)
    rows = C.summarize(C.collect([tmp_path]), ["test/auc"])
    assert sorted(r["label"] for r in rows) == ["ETA", "TWIN"]
    table = C.markdown_table(rows, ["test/auc"])
    assert "| ETA | 1 | 0.6000 |" in table and "| TWIN | 1 | **0.6500** |" in table


def test_sweep_grouping_and_plot(tmp_path):
    root = tmp_path / "sweep"
    vals = {0.1: (0.70, 0.72), 0.5: (0.78, 0.80), 0.9: (0.74, 0.74)}
    for lam, aucs in vals.items():
        for seed, a in enumerate(aucs):
            write_run(root, "SEMINAR", seed, a, a / 4, params={"model.init_args.lambda_q": lam, "seed_everything": seed},
                      sweep="lambda")
    res = C.compare([root], tmp_path / "out", ["test/auc", "test/ndcg@10"])
    rows = res["rows"]
    assert [r["params"] for r in rows] == [{"model.init_args.lambda_q": v} for v in (0.1, 0.5, 0.9)]
    assert [r["n"] for r in rows] == [2, 2, 2]  # seed_everything is a repetition, not a grouping key
    assert rows[1]["stats"]["test/auc"][0] == pytest.approx(0.79)
    assert rows[0]["seeds"] == [0, 1]
    md = res["table"]
    assert "| model | lambda_q | n | AUC | NDCG@10 |" in md
    assert "| SEMINAR | 0.5 | 2 | **0.7900 ± 0.0141** |" in md
    for f in ("sweep.png", "compare.png"):
        p = tmp_path / "out" / f
        assert p.is_file() and p.stat().st_size > 10_000
    with open(tmp_path / "out" / "table.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model.init_args.lambda_q"] for r in rows] == ["0.1", "0.5", "0.9"]


def test_two_parameter_sweep_plot(tmp_path):
    root = tmp_path / "cb"
    for nc in (16, 64, 256):
        for ns in (2, 4):
            write_run(root, "SEMINAR-PQ", 0, 0.6 + 0.01 * ns + 0.0001 * nc, 0.1,
                      params={"model.init_args.n_centroids": nc, "model.init_args.n_sub": ns}, sweep="codebook")
    res = C.compare([root], tmp_path / "out", ["test/auc"])
    assert len(res["rows"]) == 6
    best = [r for i, r in enumerate(res["rows"]) if i in F.best_rows(res["rows"], "test/auc")]
    assert best[0]["params"] == {"model.init_args.n_centroids": 256, "model.init_args.n_sub": 4}
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 10_000


def test_errors(tmp_path):
    with pytest.raises(C.CompareError, match="no such run directory"):
        C.collect([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CompareError, match="no metrics.json"):
        C.collect([tmp_path / "empty"])
    write_run(tmp_path / "r", "DIN", 0, 0.7, 0.2)
    with pytest.raises(C.CompareError, match="test/nope"):
        C.compare([tmp_path / "r"], tmp_path / "o", ["test/nope"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(C.CompareError, match="not valid JSON"):
        C.collect([bad])
    with pytest.raises(SystemExit) as e:
        C.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    assert e.value.code == 2


def test_protocols_differ_become_columns(tmp_path):
    write_run(tmp_path, "DIN", 0, 0.7, 0.2)
    d = write_run(tmp_path, "DINctr", 0, 0.6, 0.2)
    m = json.loads((d / "metrics.json").read_text())
    m.update(name="DIN", protocol="ctr", n_eval_negatives=None)
    (d / "metrics.json").write_text(json.dumps(m))
    rows = C.summarize(C.collect([tmp_path]), ["test/auc"])
    assert len(rows) == 2  # never averaged across protocols
    table = C.markdown_table(rows, ["test/auc"])
    assert "| model | protocol | n_eval_negatives | n | AUC |" in table
    assert "ctr (labelled impressions" in table.splitlines()[0]


def test_runs_on_different_datasets_are_not_merged(tmp_path):
    """Same name "synthetic", different sizes: two groups, each size in the header (issue 15 §5)."""
    from seminar_zoo.data.schema import dataset_fingerprint

    base = {"name": "synthetic", "n_users": 200, "n_items": 300, "n_events": 9000, "generator": {"seq_len": 40}}
    big = {**base, "n_users": 2000, "n_events": 90000}
    for i, meta in enumerate((base, big)):
        for s in (0, 1):
            write_run(tmp_path / f"d{i}", "DIN", s, 0.6 + 0.1 * i, 0.3, data_fingerprint=dataset_fingerprint(meta))
    # an old metrics.json without the field: fingerprinted from its data_path's meta.json
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps(big))
    write_run(tmp_path / "old", "DIN", 2, 0.7, 0.3, data_path=str(data))
    rows = C.summarize(C.collect([tmp_path]), ["test/auc"])
    assert sorted(r["n"] for r in rows) == [2, 3]
    by = {r["n"]: r for r in rows}
    assert by[2]["stats"]["test/auc"][0] == pytest.approx(0.6)
    assert by[3]["stats"]["test/auc"][0] == pytest.approx(0.7)
    head = F.header_line(rows)
    assert "synthetic (200 users, 300 items, 9000 events;" in head
    assert "synthetic (2000 users, 300 items, 90000 events;" in head
    assert dataset_fingerprint(base) != dataset_fingerprint({**base, "generator": {"seq_len": 41}})


def test_descriptive_columns_are_not_ranked_and_read_as_counts():
    from seminar_zoo.compare_format import best_rows, fmt_stat

    rows = [{"stats": {"epochs": (26.0, 1.0, 3), "fit_seconds": (30.0, 1.0, 3)}},
            {"stats": {"epochs": (16.0, 3.0, 3), "fit_seconds": (20.0, 2.0, 3)}}]
    assert best_rows(rows, "epochs") == []  # neither more nor fewer epochs is "best"
    assert best_rows(rows, "fit_seconds") == [1]
    assert fmt_stat("epochs", (26.0, 1.0, 3)) == "26.0 ± 1.0"
    assert fmt_stat("test_wall_seconds", (478.36, 49.3, 3)) == "478.4 ± 49.3"
