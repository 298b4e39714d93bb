"""The seminar-zoo command: experiment end to end, DDP == single process (exact resume: test_faults.py)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "seminar_zoo.cli"]
SMALL = ["--data.max_len", "20", "--data.batch_size", "128", "--data.eval_batch_size", "2000",
         "--model.init_args.embed_dim", "8", "--trainer.enable_progress_bar", "false"]


def run(args, cwd, timeout=300, env=None):
    e = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    r = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=e)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def din_cfg():
    return os.path.join(os.path.dirname(__file__), "..", "baselines", "din.yaml")


def test_experiment_writes_metrics(tiny_data, din_cfg, tmp_path):
    run(["experiment", "--config", din_cfg, "--data.path", str(tiny_data), "--run_dir", str(tmp_path / "run"),
         "--trainer.max_epochs", "1", *SMALL], cwd=tmp_path)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for k in ("model", "dataset", "protocol", "seed", "n_test", "test/auc", "test/ndcg@10", "test/hr@10",
              "test/mrr", "fit_seconds", "samples_per_second", "peak_rss_mb"):
        assert k in m, k
    assert m["model"] == "DIN" and m["protocol"] == "ranking" and m["n_test"] == 120
    assert 0.0 <= m["test/auc"] <= 1.0 and m["samples_per_second"] > 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_experiment_ctr_reports_gauc(tiny_data, din_cfg, tmp_path):
    run(["experiment", "--config", din_cfg, "--data.path", str(tiny_data), "--run_dir", str(tmp_path / "run"),
         "--data.protocol", "ctr", "--trainer.max_epochs", "1", *SMALL], cwd=tmp_path)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["protocol"] == "ctr" and "test/gauc" in m and m["n_eval_negatives"] is None


@pytest.mark.ddp
def test_ddp_two_processes_match_one(tiny_data, tmp_path):
    run(["fit", "--model", "DIN", "--data.path", str(tiny_data), "--trainer.max_epochs", "1",
         "--trainer.default_root_dir", str(tmp_path / "fit"), *SMALL], cwd=tmp_path)
    ckpt = tmp_path / "fit/checkpoints/last.ckpt"
    res = {}
    for n, extra in ((1, []), (2, ["--trainer.strategy", "ddp", "--trainer.devices", "2",
                                   "--trainer.accelerator", "cpu"])):
        d = tmp_path / f"test{n}"
        d.mkdir()
        shutil.copy(ckpt, d / "model.ckpt")
        run(["test", "--model", "DIN", "--data.path", str(tiny_data), "--ckpt_path", str(d / "model.ckpt"),
             "--trainer.default_root_dir", str(d), *SMALL, *extra], cwd=tmp_path)
        res[n] = json.loads((d / "metrics.json").read_text())
    assert res[2]["world_size"] == 2 and res[1]["world_size"] == 1
    for k in ("test/auc", "test/gauc", "test/ndcg@10", "test/hr@10", "test/mrr"):
        assert res[1][k] == pytest.approx(res[2][k], abs=1e-6), k


@pytest.mark.ddp
def test_seminar_experiment_both_stages_under_ddp(tiny_data, tmp_path):
    """`experiment` pretrains the PSU and finetunes SEMINAR with 2 gloo processes; the run dir keeps both
    checkpoints, and the test pass scores every test list exactly once."""
    cfg = os.path.join(os.path.dirname(__file__), "..", "experiments", "seminar.yaml")
    run(["experiment", "--config", cfg, "--data.path", str(tiny_data), "--run_dir", str(tmp_path / "run"),
         "--trainer.max_epochs", "1", "--model.init_args.pretrain", "{epochs: 1}", "--model.init_args.topk", "8",
         "--model.init_args.num_heads", "2", "--trainer.strategy", "ddp", "--trainer.devices", "2",
         "--trainer.accelerator", "cpu", *SMALL], cwd=tmp_path, timeout=600)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["model"] == "SEMINAR" and m["world_size"] == 2 and m["n_test"] == 120
    assert 0.0 <= m["test/auc"] <= 1.0
    assert (tmp_path / "run" / "psu" / "psu.ckpt").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
