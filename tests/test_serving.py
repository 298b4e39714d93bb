"""seminar-zoo export / serve-bench: the exported TorchScript + per-id tables reproduce the model's logits."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seminar_zoo.models.seminar import SEMINAR
from seminar_zoo.serving import Server, export_model

ROOT = Path(__file__).resolve().parents[1]


def _model(dm):
    torch.manual_seed(0)
    m = SEMINAR(data_meta=dm.data_meta, embed_dim=16, num_heads=2, topk=8, dropout=0.0)
    m.load_tables(dm.feature_tables())
    return m.eval()


def test_export_refuses_a_time_aware_esu(tiny_dm, tmp_path):
    torch.manual_seed(0)
    m = SEMINAR(data_meta=tiny_dm.data_meta, embed_dim=16, num_heads=2, topk=8, time_embedding=True)
    with pytest.raises(ValueError, match="time_embedding"):
        export_model(m, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()  # refused before anything is written


def test_export_reproduces_in_process_logits(tiny_dm, tmp_path):
    pytest.importorskip("faiss")
    m = _model(tiny_dm)
    b = tiny_dm.batch("test", list(range(12)))
    with torch.no_grad():
        ref = m(b)
    export_model(m, tmp_path / "exp", n_sub=2, n_centroids=16, fit_rows=500, rerank_factor=10)
    # the scripted module loads with plain torch
    assert isinstance(torch.jit.load(str(tmp_path / "exp" / "esu_tower.pt")), torch.jit.ScriptModule)
    for backend in ("torch", "faiss4"):
        server = Server(tmp_path / "exp", backend=backend)
        got = []
        for i in range(12):
            mask = b["hist_mask"][i]
            got.append(server.logit(b["hist_item_id"][i][mask], b["hist_query_id"][i][mask],
                                    int(b["item_id"][i]), int(b["query_id"][i])))
        # R*K = 80 >= L = 40: the re-rank sees every behaviour, so the served logits equal the exact model's
        torch.testing.assert_close(torch.tensor(got), ref.float(), atol=1e-4, rtol=1e-4)
    # a history shorter than K: padded with masked rows, same logit as the model on the left-padded row
    short = dict(b)
    pad = torch.arange(b["hist_mask"].shape[1]) < b["hist_mask"].shape[1] - 3
    short["hist_mask"] = b["hist_mask"] & ~pad
    with torch.no_grad():
        ref3 = m(short)[0]
    keep = short["hist_mask"][0]
    got3 = server.logit(b["hist_item_id"][0][keep], b["hist_query_id"][0][keep], int(b["item_id"][0]), int(b["query_id"][0]))
    assert abs(got3 - float(ref3)) < 1e-4


def test_serve_bench_cli_and_errors(tiny_dm, tmp_path):
    pytest.importorskip("faiss")
    export_model(_model(tiny_dm), tmp_path / "exp", n_sub=2, n_centroids=16, fit_rows=500)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "seminar_zoo.cli", *a], cwd=ROOT, env=env,
                                    capture_output=True, text=True)
    p = run("serve-bench", "--export", str(tmp_path / "exp"), "--lengths", "100,300", "--requests", "4", "--users", "2",
            "--out", str(tmp_path / "sb.json"))
    assert p.returncode == 0, p.stderr
    assert "L=100: p50" in p.stdout and "L=300: p50" in p.stdout and "index build" in p.stdout
    res = json.loads((tmp_path / "sb.json").read_text())
    assert {"p50_ms@300", "p99_ms@300", "build_ms@300", "exact_p50_ms@300", "load_average"} <= set(res)
    p = run("serve-bench", "--export", str(tmp_path / "exp"), "--lengths", "0")
    assert p.returncode == 2 and "--lengths" in p.stderr and "Traceback" not in p.stderr
    p = run("serve-bench", "--export", str(tmp_path / "nothing"))
    assert p.returncode == 2 and "not an export" in p.stderr and "Traceback" not in p.stderr
    p = run("export", "--ckpt_path", str(tmp_path / "no.ckpt"), "--out", str(tmp_path / "e2"))
    assert p.returncode == 2 and "--ckpt_path" in p.stderr and "Traceback" not in p.stderr


def test_server_caches_the_user_index_and_replay_matches_the_model(tiny_data, tiny_dm, tmp_path):
    pytest.importorskip("faiss")
    import pytorch_lightning as pl

    from seminar_zoo.serving import replay

    m = _model(tiny_dm)
    export_model(m, tmp_path / "exp", n_sub=2, n_centroids=16, fit_rows=500, rerank_factor=10)
    b = tiny_dm.batch("test", list(range(6)))
    server = Server(tmp_path / "exp", backend="faiss4", cache_users=2)
    args = lambda i: (b["hist_item_id"][i][b["hist_mask"][i]], b["hist_query_id"][i][b["hist_mask"][i]],
                      int(b["item_id"][i]), int(b["query_id"][i]))
    plain = [server.logit(*args(i)) for i in range(6)]
    cached = [server.logit(*args(i), user=int(b["user_id"][i])) for i in range(6)]
    assert cached == pytest.approx(plain, abs=1e-6)
    # R*K = 80 >= L = 40: the PQ stage keeps every behaviour, so the exact path gives the same logits
    assert [server.logit(*args(i), exact=True) for i in range(6)] == pytest.approx(plain, abs=1e-5)
    users = b["user_id"].tolist()
    assert server.cache_hits == 6 - len(set(users)) and len(server.cache) <= 2
    h, q, it, qt = args(0)  # a changed history rebuilds the user's index instead of reusing a stale one
    changed = server.logit(h[:-5], q[:-5], it, qt, user=users[0])
    assert changed == pytest.approx(server.logit(h[:-5], q[:-5], it, qt), abs=1e-6)
    # replayed test requests: R*K = 80 >= L = 40, so served == in-process, and so is the AUC
    rep = replay(Server(tmp_path / "exp"), m, tiny_dm, n_requests=4)
    assert rep["requests"] == 4 and rep["max_abs_logit_diff"] < 1e-4
    assert rep["auc_served"] == pytest.approx(rep["auc_model"], abs=1e-6) and rep["cache_hits"] == 4 * 99
    # the CLI: serve-bench --ckpt_path --data prints the replay line
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    from seminar_zoo.serving import serve_bench_main

    res = serve_bench_main(["--export", str(tmp_path / "exp"), "--lengths", "", "--ckpt_path", str(ckpt),
                            "--data", str(tiny_data), "--max_len", "40", "--replay", "3"])
    assert res["replay/requests"] == 3 and res["replay/max_abs_logit_diff"] < 1e-4
    with pytest.raises(SystemExit):
        serve_bench_main(["--export", str(tmp_path / "exp"), "--ckpt_path", str(ckpt)])
