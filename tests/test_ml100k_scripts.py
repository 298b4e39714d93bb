"""experiments/real/ml100k_ablation.py and ml100k.py's ablation section: table maths and splicing, no training."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments/real" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(runs, label, seed, ndcg):
    d = runs / "ranking" / label / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"test/ndcg@10": ndcg, "test/hr@10": 0.5, "test/mrr": 0.3,
                                                "test/auc": 0.8, "epochs": 3, "fit_seconds": 10.0}))


def test_ablation_table_pairs_each_change_with_its_shipped_seed(tmp_path):
    abl = _load("ml100k_ablation")
    rows = [("A", None, "a.yaml", [], "shipped"), ("A-x", "A", "a.yaml", [], "change x")]
    for seed, base, changed in ((0, 0.40, 0.35), (1, 0.42, 0.36), (2, 0.44, 0.40)):
        _run(tmp_path, "A", seed, base)
        _run(tmp_path, "A-x", seed, changed)
    md, recs = abl.table(tmp_path, rows, [0, 1, 2])
    line = next(x for x in md.splitlines() if x.startswith("| A-x |"))
    # paired deltas -0.05, -0.06, -0.04: mean -0.05, sample std 0.01
    assert "-0.0500 ± 0.0100 (n=3)" in line and "| 3 |" in line
    assert "0.4200 ± 0.0200" in next(x for x in md.splitlines() if x.startswith("| A |"))
    assert set(recs) == {"A", "A-x"}
    md1, _ = abl.table(tmp_path, rows, [0])  # a missing pair leaves the delta over the seeds that have one
    assert "(n=1)" in md1


def test_ml100k_splices_the_ablation_section_without_touching_the_rest(tmp_path, monkeypatch):
    ml = _load("ml100k")
    abl_md = tmp_path / "abl.md"
    abl_md.write_text("# title\n\nbody v1\n")
    monkeypatch.setattr(ml, "ablation_section", lambda path=abl_md: ["## Recipe ablations: x",
                                                                     *abl_md.read_text().splitlines()[1:], ""])
    md = tmp_path / "ml100k.md"
    md.write_text("# t\n\n## Reading\n\nr\n\n## Coverage\n\nc\n")
    ml.splice_ablations(md)
    first = md.read_text()
    assert first.index("## Reading") < first.index("body v1") < first.index("## Coverage")
    abl_md.write_text("# title\n\nbody v2\n")
    ml.splice_ablations(md)  # replaced, not appended
    text = md.read_text()
    assert "body v2" in text and "body v1" not in text and text.count("## Recipe ablations") == 1
    assert text.endswith("## Coverage\n\nc\n") and text.startswith("# t\n\n## Reading\n\nr\n")
    bad = tmp_path / "x.md"
    bad.write_text("no sections")
    with pytest.raises(ValueError):  # nowhere to put it: refused, file unchanged
        ml.splice_ablations(bad)
    assert bad.read_text() == "no sections"


def test_tune_report_picks_on_validation_not_test(tmp_path):
    rep = _load("ml100k_tune_report")
    folder = tmp_path / "sasrec"
    points = []
    # r1 is the best on validation, r2 on test; r3 (better still on validation) lies beyond a budget of 3
    for i, (val, test) in enumerate(((0.50, 0.45), (0.52, 0.40), (0.48, 0.47), (0.60, 0.50))):
        run = folder / f"r{i}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"test/ndcg@10": test, "epochs": 5, "fit_seconds": 9.0}))
        points.append({"name": f"r{i}", "status": "done", "run_dir": str(run), "seconds": 10.0,
                       "metric": {"monitor": "val/ndcg@10", "score": val},
                       "parameters": {"model.init_args.lr": 0.001 * (i + 1), "model.init_args.embed_dim": 32,
                                      "model.init_args.dropout": 0.1}})
    points[0].update(status="skipped", seconds=None)  # finished by an earlier invocation: still counts
    points.append({"name": "r4", "status": "running", "run_dir": str(folder / "r4"), "parameters": {}})
    (folder / "sweep_summary.json").write_text(json.dumps({"seed": 0, "points": points}))
    r = rep.model_report(folder, budget=3)
    # in-budget points by validation score, then the one beyond the budget; unfinished left out
    assert [p["name"] for p in r["points"]] == ["r1", "r0", "r2", "r3"] and r["in_budget"] == 3
    assert r["picked"]["name"] == "r1" and r["picked"]["test_ndcg@10"] == 0.40  # not the best test point
    assert r["points"][1]["seconds"] == 9.0  # a skipped point's time comes from its metrics.json
    md = rep.render({"sasrec": r}, budget=3)
    assert "| 1 (picked) | 0.00200 |" in md and "| - (beyond the budget) | 0.00400 |" in md
    assert rep.model_report(folder, budget=4)["picked"]["name"] == "r3"
    assert rep.model_report(folder, budget=5)["picked"] is None  # r4 unfinished: no pick under budget
    # a sweep that changed the recipe (batch, validation share) is not held against the ablation's shipped run
    abl = tmp_path / "abl.json"
    abl.write_text(json.dumps({"runs": {"SASRec": [{"seed": 0, "best_val": {"score": 0.5}, "test/ndcg@10": 0.4}]}}))
    assert rep.shipped_point("sasrec", 0, abl) == {"val_ndcg@10": 0.5, "test_ndcg@10": 0.4}
    assert rep.shipped_point("sasrec", 0, abl, overrides=["--seed_everything", "0", "--data.batch_size", "32"]) is None
    assert rep.shipped_point("sasrec", 0, abl, overrides=["--trainer.limit_val_batches=1.0"]) is None
    rep.main(["--sweeps", str(tmp_path), "--budget", "3", "--out", str(tmp_path / "rep"),
              "--write-configs", str(tmp_path / "tuned")])
    import yaml
    overlay = yaml.safe_load((tmp_path / "tuned" / "sasrec.yaml").read_text())
    assert overlay == {"model": {"init_args": {"lr": 0.002, "embed_dim": 32, "dropout": 0.1}}}
    with pytest.raises(SystemExit) as e:
        rep.main(["--sweeps", str(tmp_path), "--models", "absent", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not (tmp_path / "o.md").exists()
    # --merge: re-read one model's sweep, keep the other models of the existing report (and their overlays)
    kept = json.loads((tmp_path / "rep.json").read_text())
    kept["din"] = dict(kept["sasrec"], data_path="elsewhere")
    (tmp_path / "rep.json").write_text(json.dumps(kept))
    shutil.copytree(folder, tmp_path / "sim")  # its run_dir entries still point at sasrec/
    rep.main(["--sweeps", str(tmp_path), "--models", "sim", "--budget", "3", "--out", str(tmp_path / "rep"),
              "--merge", "--write-configs", str(tmp_path / "tuned")])
    merged = json.loads((tmp_path / "rep.json").read_text())
    assert list(merged) == ["din", "sasrec", "sim"] and merged["din"]["data_path"] == "elsewhere"
    assert merged["sim"]["picked"]["name"] == "r1" and (tmp_path / "tuned" / "sim.yaml").exists()
    assert not (tmp_path / "tuned" / "din.yaml").exists()  # only the re-read sweeps get overlays
    assert (tmp_path / "rep.md").read_text().count("| 1 (picked) |") == 3  # kept reports keep their pick mark


def test_ml100k_splices_the_peer_tables_per_protocol(tmp_path):
    ml = _load("ml100k")
    run = {"model": "GRU4Rec", "sampled": {"ndcg@10": 0.43, "hr@10": 0.7, "mrr": 0.36, "auc": 0.89},
           "full": {"ndcg@10": 0.095, "hr@10": 0.18, "ndcg@50": 0.15, "hr@50": 0.44, "mrr": 0.085}}
    peer = tmp_path / "peer.json"
    peer.write_text(json.dumps({"meta": {"epochs": 100, "stopping_step": 10, "seeds": [0, 1],
                                         "not_finished": ["GRU4Rec seed 1"]}, "runs": [run]}))
    md = tmp_path / "ml100k.md"
    old = "Peer on the same split old\n\n| peer | n |\n|---|---|\n| RecBole GRU4Rec | 2 | 0.1 |\n"
    reading = ("- ranking (NDCG@10, mean over seeds): HSTU 0.4400 > Popularity 0.2300. SEMINAR; x. The zoo's best, "
               "HSTU 0.4400 ± 0.0100, is below RecBole's best of the models run (old), old 0.9 (n=1), on the same "
               "candidates.\n- full (NDCG@10, mean over seeds): HSTU 0.0900 > Popularity 0.0400. y.\n"
               "- ctr (AUC, mean over seeds): HSTU 0.7000 > Popularity 0.6000. z.\n")
    md.write_text("# t\n\n## Ranking\n\nzoo\n\n" + old + "\n## Full\n\nzoo\n\n" + old + "\n## Reading\n\n" + reading)
    ml.splice_peers(md, peer)
    text = md.read_text()
    ranking, full = text.split("## Full")
    assert "| RecBole GRU4Rec | 1 | 0.4300 ± 0.0000 | 0.7000 ± 0.0000 |" in ranking and "0.1 |" not in ranking
    assert "| RecBole GRU4Rec | 1 | 0.0950 ± 0.0000 | 0.1800 ± 0.0000 | 0.1500 ± 0.0000 |" in full
    assert text.count("Peer on the same split") == 2 and "zoo" in full
    assert text.count("seeds [0, 1]; not finished yet: GRU4Rec seed 1):") == 2
    # the Reading's zoo-vs-peer sentence follows the new peer runs; lines without one are left as they were
    assert text.endswith("## Reading\n\n- ranking (NDCG@10, mean over seeds): HSTU 0.4400 > Popularity 0.2300. "
                         "SEMINAR; x. The zoo's best, HSTU 0.4400 ± 0.0100, is at or above RecBole's best of the "
                         "models run (GRU4Rec), GRU4Rec 0.4300 (n=1), on the same candidates.\n"
                         + reading.split("\n", 1)[1])


def test_ml100k_uses_the_tuned_overlay_under_ranking_only(tmp_path, monkeypatch):
    ml = _load("ml100k")
    monkeypatch.setattr(ml, "ROOT", tmp_path)
    assert ml.hyper_overrides("SASRec", "ranking") == ml.COMMON  # no overlay yet: the common lr
    (tmp_path / ml.TUNED).mkdir(parents=True)
    (tmp_path / ml.TUNED / "seminar.yaml").write_text("model:\n  init_args:\n    lr: 0.002\n")
    want = ["--config", f"{ml.TUNED}/seminar.yaml"]
    assert ml.hyper_overrides("SEMINAR", "ranking") == want and ml.hyper_overrides("SEMINAR-pq", "ranking") == want
    assert ml.hyper_overrides("SEMINAR", "ctr") == ml.COMMON  # CTR was not tuned
    assert ml.hyper_overrides("SASRec", "ranking") == ml.COMMON
    assert "for SEMINAR, SEMINAR-pq under the ranking protocol" in ml.hyper_text()


def test_ml100k_jobs_split_models_by_cost_and_keep_seminar_pq_with_seminar():
    ml = _load("ml100k")
    labels = [m[0] for m in ml.MODELS]
    groups = ml.shard_models(labels, 2)
    assert sorted(sum(groups, [])) == sorted(labels)  # every model once
    g = next(g for g in groups if "SEMINAR" in g)
    assert "SEMINAR-pq" in g and g.index("SEMINAR") < g.index("SEMINAR-pq")
    loads = [sum(ml.COST[x] for x in g) for g in groups]
    assert max(loads) - min(loads) <= max(ml.COST.values())  # greedy longest-first: within one job
    assert ml.shard_models(["SEMINAR-pq", "DIN", "SEMINAR"], 3)[0:3].count([]) == 1  # one unit of two
    assert ml.worker_argv(["--seeds", "0", "1", "--jobs", "2", "--models", "DIN", "SIM", "--force-prepare",
                           "--runs", "r", "--extra", "--models", "x", "--jobs", "3"]) == \
        ["--seeds", "0", "1", "--runs", "r", "--extra", "--models", "x", "--jobs", "3"]
    assert ml.worker_argv(["--jobs=2", "--models=DIN", "--epochs", "3"]) == ["--epochs", "3"]
    assert ml.main(["--jobs", "0"]) == 2


def test_ml100k_reading_flags_models_within_their_spread_of_popularity_and_compares_the_peer(tmp_path):
    ml = _load("ml100k")
    vals = {"Popularity": [0.044] * 3, "HSTU": [0.10, 0.11, 0.12], "SIM": [0.0440, 0.0445, 0.0450],
            "SEMINAR": [0.05, 0.06, 0.055], "ETA": [0.04, 0.041, 0.042]}
    for model, vs in vals.items():
        for seed, v in enumerate(vs):
            d = tmp_path / "runs" / "full" / model / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"test/ndcg@10": v}))
    peer = tmp_path / "peer.json"
    peer.write_text(json.dumps({"runs": [{"model": "GRU4Rec", "full": {"ndcg@10": v}} for v in (0.12, 0.13)]
                               + [{"model": "SASRec", "full": {"ndcg@10": 0.09}}]}))
    (line,) = ml.reading(tmp_path / "runs", peer)
    assert line.startswith("- full (NDCG@10, mean over seeds): HSTU 0.1100 > SEMINAR 0.0550 > SIM 0.0445 > "
                           "Popularity 0.0440 > ETA 0.0410. SEMINAR is 2 of 4 learned models")
    assert "not above Popularity: ETA" in line
    assert "above it by no more than its own seed spread: SIM (+0.0005, seed std 0.0005)" in line  # not SEMINAR
    assert "HSTU 0.1100 ± 0.0100, is below RecBole's best of the models run (GRU4Rec, SASRec), GRU4Rec 0.1250" in line


def test_ml100k_sequence_models_get_small_window_batches_and_full_validation_under_ranking_only(tmp_path, monkeypatch):
    import types
    ml = _load("ml100k")
    monkeypatch.setattr(ml, "ROOT", tmp_path)
    cmds = []
    monkeypatch.setattr(ml, "sh", lambda cmd, log=None, env=None: cmds.append([str(c) for c in cmd]) or 0)
    args = types.SimpleNamespace(runs="runs", epochs=40, extra=[])
    for proto in ("ranking", "ctr"):
        for label, cfg, extra in [m for m in ml.MODELS if m[0] in ("SASRec", "HSTU", "DIN")]:
            ml._run_one(args, proto, ml.PROTOCOLS[proto], 0, label, cfg, extra, None, [])

    def value(cmd, flag):  # the last occurrence wins in LightningCLI
        return cmd[len(cmd) - 1 - cmd[::-1].index(flag) + 1] if flag in cmd else None

    got = {(c[c.index("--name") + 1], "ctr" if "runs/data/ml100k_ctr" in c else "ranking"): c for c in cmds}
    for label in ("SASRec", "HSTU"):
        assert value(got[label, "ranking"], "--data.batch_size") == "32"
        assert value(got[label, "ranking"], "--trainer.limit_val_batches") == "1.0"
        assert value(got[label, "ctr"], "--data.batch_size") is None  # per-sample BCE: the YAML's 256 targets
    assert value(got["DIN", "ranking"], "--data.batch_size") is None
