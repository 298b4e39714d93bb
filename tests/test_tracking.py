"""ZooWandbLogger: offline by default, config/git/meta.json/summary logged, disabled writes nothing."""
import json
import subprocess

import pytest

from seminar_zoo import tracking
from seminar_zoo.tracking import (ZooWandbLogger, dataset_meta_for_logging, git_info, offline_runs,
                                  read_offline_run, wandb_mode)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline with every W&B folder inside tmp_path (nothing lands in the repo or $HOME)."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    (tmp_path / "wandb_home").mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()


def finish_wandb():
    """Finish the run and stop W&B's service: only then is an offline run's log fully written."""
    import wandb

    wandb.finish()
    wandb.teardown()


def test_wandb_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")  # under a W&B sweep agent results must reach the server
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # what Lightning sets for offline loggers
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        wandb_mode()


def test_dataset_meta_skips_per_item_lists(tiny_data):
    meta, skipped = dataset_meta_for_logging(tiny_data)
    full = json.loads((tiny_data / "meta.json").read_text())
    assert "cold_items" not in meta and "item_topic" not in meta
    assert skipped == {"cold_items": len(full["cold_items"]), "item_topic": len(full["item_topic"])}
    assert meta["n_items"] == full["n_items"] and meta["modalities"] == full["modalities"]
    assert meta["attr_cols"] == full["attr_cols"]  # short lists stay
    assert dataset_meta_for_logging(tiny_data / "nope") == (None, {})


def test_git_info(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True).stdout
    run("init", "-q")
    (repo / "f.txt").write_text("x")
    run("add", "f.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    sha = run("rev-parse", "HEAD").strip()
    assert git_info(repo) == {"commit": sha, "dirty": False}
    (repo / "f.txt").write_text("y")
    assert git_info(repo) == {"commit": sha, "dirty": True}
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_info(plain) is None


def test_disabled_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    lg = ZooWandbLogger(save_dir=str(tmp_path / "run"))
    lg.log_hyperparams({"lr": 0.1})
    lg.log_metrics({"val/auc": 0.5}, step=0)
    lg.log_summary({"test/auc": 0.6})
    assert not (tmp_path / "run" / "wandb").exists()


def test_each_logger_gets_its_own_run(wandb_env):
    """A pretraining stage's logger and the main one give two runs (plain WandbLogger would reuse one)."""
    a = ZooWandbLogger(save_dir=str(wandb_env / "run" / "psu"), name="stage-a", group="g")
    a.log_metrics({"train/loss": 1.0}, step=0)
    b = ZooWandbLogger(save_dir=str(wandb_env / "run"), name="stage-b", group="g")
    b.log_metrics({"train/loss": 2.0}, step=0)
    b.log_summary({"test/auc": 0.75, "skip": None})
    assert a.experiment.id != b.experiment.id
    finish_wandb()
    ra = read_offline_run(offline_runs(wandb_env / "run" / "psu")[0])
    rb = read_offline_run(offline_runs(wandb_env / "run" / "wandb")[0])
    assert ra["name"] == "stage-a" and rb["name"] == "stage-b" and ra["group"] == rb["group"] == "g"
    assert [h["train/loss"] for h in ra["history"]] == [1.0]
    assert [h["train/loss"] for h in rb["history"]] == [2.0]
    assert rb["summary"]["test/auc"] == 0.75 and "skip" not in rb["summary"]


def test_offline_experiment_logs_config_history_and_summary(tiny_data, wandb_env, monkeypatch):
    from seminar_zoo.cli import experiment_main

    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-x")  # what `seminar-zoo sweep` sets
    run_dir = wandb_env / "run_din"
    out = experiment_main([
        "--config", str(tracking.Path(__file__).resolve().parents[1] / "baselines" / "din.yaml"),
        "--data.path", str(tiny_data), "--run_dir", str(run_dir), "--data.max_len", "10",
        "--model.init_args.embed_dim", "8", "--model.init_args.attention_hidden", "[8]",
        "--model.init_args.tower_dims", "[16]", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"])
    finish_wandb()
    runs = offline_runs(run_dir / "wandb")
    assert len(runs) == 1 and runs[0].parent == run_dir / "wandb"  # the offline run lives in the run dir
    r = read_offline_run(runs[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == out
    # summary = the final metrics.json
    for k in ("test/auc", "test/ndcg@10", "n_test", "name", "protocol"):
        assert r["summary"][k] == pytest.approx(metrics[k]) if isinstance(metrics[k], float) else r["summary"][k] == metrics[k]
    # per-epoch validation metrics
    vals = [h["val/auc"] for h in r["history"] if "val/auc" in h]
    assert len(vals) == 2 and all(0.0 <= v <= 1.0 for v in vals)
    # config: model hparams, the full CLI config, git commit, dataset meta without per-item lists
    cfg = r["config"]
    assert cfg["embed_dim"] == 8
    assert cfg["cli"]["model"]["class_path"].endswith("DIN")
    assert cfg["cli"]["data"]["path"] == str(tiny_data) and cfg["cli"]["trainer"]["max_epochs"] == 2
    assert cfg["dataset_meta"]["n_items"] == 320 and "cold_items" not in cfg["dataset_meta"]
    assert cfg["dataset_meta_skipped"]["cold_items"] > 0
    expected_git = git_info()
    if expected_git is not None:
        assert cfg["git"]["commit"] == expected_git["commit"] and len(cfg["git"]["commit"]) == 40
    assert r["group"] == "sweep-x" and r["name"] == "run_din"
    # nothing outside tmp_path
    assert not list(tracking.Path(__file__).resolve().parents[1].glob("wandb"))
