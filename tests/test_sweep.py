"""seminar-zoo sweep: W&B-schema parsing, grid/random points, commands, resumability, failures."""
import json
import sys
from pathlib import Path

import pytest
import yaml

from seminar_zoo import sweep as S

REPO = Path(__file__).resolve().parents[1]
DIN_YAML = str(REPO / "baselines" / "din.yaml")


def write_spec(path, **spec):
    base = {"method": "grid", "metric": {"name": "test/auc", "goal": "maximize"},
            "command": ["${env}", "seminar-zoo", "experiment", "--config", DIN_YAML, "${args}"]}
    base.update(spec)
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


# --------------------------------------------------------------------------- points
def test_grid_expansion_order_and_names(tmp_path):
    f = write_spec(tmp_path / "g.yaml", parameters={
        "model.init_args.lr": {"values": [0.001, 0.01]},
        "data.max_len": {"distribution": "int_uniform", "min": 3, "max": 5},
        "model.init_args.dropout": {"value": 0.1}})
    spec = S.load_spec(f)
    assert spec["name"] == "g" and list(spec["parameters"]) == ["model.init_args.lr", "data.max_len",
                                                                 "model.init_args.dropout"]
    pts = S.sweep_points(spec)
    assert len(pts) == 6
    assert pts[0] == {"model.init_args.lr": 0.001, "data.max_len": 3, "model.init_args.dropout": 0.1}
    assert [p["data.max_len"] for p in pts] == [3, 4, 5, 3, 4, 5]  # first parameter outermost
    assert [p["model.init_args.lr"] for p in pts] == [0.001] * 3 + [0.01] * 3
    assert S.sweep_points(spec, max_runs=4) == pts[:4]
    assert S.point_name(pts[0]) == "lr=0.001__max_len=3__dropout=0.1"
    assert S.grid_values({"distribution": "q_uniform", "min": 0.1, "max": 0.5, "q": 0.2}) == [0.1, 0.3, 0.5]


def test_nested_parameters_and_ambiguous_short_names(tmp_path):
    f = write_spec(tmp_path / "n.yaml", parameters={
        "model": {"parameters": {"init_args": {"parameters": {"lr": {"values": [0.1]}}}}},
        "optimizer.lr": {"values": [1]}})
    spec = S.load_spec(f)
    assert list(spec["parameters"]) == ["model.init_args.lr", "optimizer.lr"]
    assert S.point_name(S.sweep_points(spec)[0]) == "model.init_args.lr=0.1__optimizer.lr=1"


def test_random_sampling_is_seeded_and_in_range(tmp_path):
    f = write_spec(tmp_path / "r.yaml", method="random", parameters={
        "model.init_args.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "model.init_args.dropout": {"min": 0.0, "max": 0.5},
        "data.max_len": {"min": 5, "max": 9},
        "model.init_args.embed_dim": {"values": [8, 16, 32]}})
    spec = S.load_spec(f)
    a = S.sweep_points(spec, max_runs=20, seed=3)
    assert a == S.sweep_points(spec, max_runs=20, seed=3)  # same seed, same points
    assert a != S.sweep_points(spec, max_runs=20, seed=4)
    assert S.sweep_points(spec, max_runs=5, seed=3) == a[:5]  # a longer sweep extends a shorter one
    for p in a:
        assert 1e-4 <= p["model.init_args.lr"] <= 1e-1
        assert 0.0 <= p["model.init_args.dropout"] <= 0.5 and isinstance(p["model.init_args.dropout"], float)
        assert p["data.max_len"] in range(5, 10) and isinstance(p["data.max_len"], int)
        assert p["model.init_args.embed_dim"] in (8, 16, 32)
    assert len({p["model.init_args.embed_dim"] for p in a}) == 3
    assert len({p["data.max_len"] for p in a}) > 1
    names = [S.point_name(p, i) for i, p in enumerate(a)]
    assert names[0].startswith("r000__lr=") and len(set(names)) == 20
    with pytest.raises(S.SweepError, match="--max-runs"):
        S.sweep_points(spec)
    spec["run_cap"] = 2
    assert len(S.sweep_points(spec)) == 2


@pytest.mark.parametrize("spec, match", [
    ({"method": "bayes", "parameters": {"a": {"values": [1]}}}, "bayes needs a W&B server"),
    ({"method": "grid"}, "'parameters' must be"),
    ({"method": "grid", "parameters": {"a": {"min": 0.0, "max": 1.0}}}, "parameters.a: grid search needs discrete"),
    ({"method": "grid", "parameters": {"a": [1, 2]}}, "parameters.a must be a mapping"),
    ({"method": "random", "parameters": {"a": {"distribution": "normal", "mu": 0}}}, "needs mu, sigma"),
    ({"method": "grid", "parameters": {"a": {"values": [1]}}, "metric": {"name": "x", "goal": "up"}}, "metric.goal"),
    ({"method": "sideways", "parameters": {"a": {"values": [1]}}}, "method must be grid or random"),
])
def test_bad_sweep_files(tmp_path, spec, match):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(spec))
    with pytest.raises(S.SweepError, match=match):
        S.load_spec(f)


# --------------------------------------------------------------------------- commands
def test_build_command_expands_wandb_macros(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_TEST_CFG", DIN_YAML)
    f = write_spec(tmp_path / "c.yaml", parameters={"model.init_args.lr": {"values": [0.01]},
                                                    "trainer.enable_progress_bar": {"values": [False]}},
                   command=["${env}", "seminar-zoo", "experiment", "--config", "${envvar:ZOO_TEST_CFG}",
                            "--run_dir", "runs/x/$WANDB_RUN_ID", "${args}", "${args_no_boolean_flags}"])
    spec = S.load_spec(f)
    pt = S.sweep_points(spec)[0]
    cmd = S.build_command(spec, pt, tmp_path / "run", "/data", ["--trainer.max_epochs", "1"])
    assert cmd[:3] == [sys.executable, "-m", "seminar_zoo.cli"]
    assert cmd[3:6] == ["experiment", "--config", DIN_YAML]
    assert "runs/x/$WANDB_RUN_ID" not in cmd and cmd.count("--run_dir") == 1  # the runner's run dir wins
    i = cmd.index("--model.init_args.lr=0.01")
    assert cmd[i + 1] == "--trainer.enable_progress_bar=False"  # ${args}: W&B's --key=value
    assert cmd[i + 2] == "--model.init_args.lr=0.01"  # ${args_no_boolean_flags} drops false booleans
    assert cmd[-7:] == ["--run_dir", str(tmp_path / "run"), "--resume", "--data.path", "/data", "--trainer.max_epochs", "1"]


def test_relative_config_resolved_from_the_sweep_files_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "experiments" / "sweeps").mkdir(parents=True)
    (repo / "baselines").mkdir()
    (repo / "baselines" / "din.yaml").write_text("model: {}\n")
    f = write_spec(repo / "experiments" / "sweeps" / "s.yaml", parameters={"a": {"values": [1]}},
                   command=["seminar-zoo", "experiment", "--config", "baselines/din.yaml", "${args}"])
    monkeypatch.chdir(tmp_path)  # not the repo root
    spec = S.load_spec(f)
    cmd = S.build_command(spec, {"a": 1}, tmp_path / "r")
    assert cmd[cmd.index("--config") + 1] == str(repo / "baselines" / "din.yaml")
    (repo / "baselines" / "din.yaml").unlink()
    with pytest.raises(S.SweepError, match="config baselines/din.yaml is not found"):
        S.build_command(spec, {"a": 1}, tmp_path / "r")


def test_command_must_be_an_experiment(tmp_path):
    f = write_spec(tmp_path / "c.yaml", parameters={"a": {"values": [1]}}, command=["seminar-zoo", "fit", "${args}"])
    with pytest.raises(S.SweepError, match="needs a `seminar-zoo experiment"):
        S.build_command(S.load_spec(f), {"a": 1}, tmp_path / "r")


def test_override_of_a_swept_parameter_is_refused(tmp_path):
    f = write_spec(tmp_path / "c.yaml", parameters={"model.init_args.lr": {"values": [1]}})
    with pytest.raises(S.SweepError, match="--model.init_args.lr"):
        S.run_sweep(f, tmp_path / "o", overrides=["--model.init_args.lr=3"], runner=lambda *a: 0, echo=lambda *a: None)


# --------------------------------------------------------------------------- running (mocked runner)
class FakeRunner:
    """Writes metrics.json like `seminar-zoo experiment` would; fails where told."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, cmd, env, log):
        run_dir = Path(cmd[cmd.index("--run_dir") + 1])
        lr = next(float(c.split("=")[1]) for c in cmd if c.startswith("--model.init_args.lr="))
        self.calls.append((run_dir.name, env["WANDB_RUN_GROUP"], env["WANDB_NAME"]))
        log.write_text("training...\nValueError: boom\n" if lr in self.fail else "ok\n")
        if lr in self.fail:
            return 1
        (run_dir / "metrics.json").write_text(json.dumps({
            "name": "DIN", "model": "DIN", "dataset": "synthetic", "protocol": "ranking", "seed": 0,
            "n_eval_negatives": 99, "test/auc": 0.5 + lr, "test/ndcg@10": lr}))
        return 0


def lr_sweep(tmp_path, values=(0.01, 0.02, 0.03)):
    return write_spec(tmp_path / "lr.yaml", name="lrs", parameters={"model.init_args.lr": {"values": list(values)}})


def test_resumable_skips_finished_points_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    f, out = lr_sweep(tmp_path), tmp_path / "out"
    r1 = FakeRunner()
    s1 = S.run_sweep(f, out, runner=r1, echo=lambda *a: None)
    assert [c[0] for c in r1.calls] == ["lr=0.01", "lr=0.02", "lr=0.03"]
    assert {c[1] for c in r1.calls} == {"lrs"} and r1.calls[0][2] == "lrs/lr=0.01"  # W&B group / name
    assert s1["counts"]["done"] == 3
    point = json.loads((out / "lr=0.02" / "sweep_point.json").read_text())
    assert point["sweep"] == "lrs" and point["parameters"] == {"model.init_args.lr": 0.02}
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("metrics.json")}
    r2 = FakeRunner()
    s2 = S.run_sweep(f, out, runner=r2, echo=lambda *a: None)
    assert r2.calls == [] and s2["counts"]["skipped"] == 3
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("metrics.json")} == before
    assert [p["metric"] for p in s2["points"]] == pytest.approx([0.51, 0.52, 0.53])
    # an unfinished point (no metrics.json) is run again; the others are still skipped
    (out / "lr=0.03" / "metrics.json").unlink()
    r3 = FakeRunner()
    S.run_sweep(f, out, runner=r3, echo=lambda *a: None)
    assert [c[0] for c in r3.calls] == ["lr=0.03"]


def test_failed_point_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
    f, out = lr_sweep(tmp_path), tmp_path / "out"
    runner = FakeRunner(fail={0.02})
    s = S.run_sweep(f, out, runner=runner, echo=print)
    assert [c[0] for c in runner.calls] == ["lr=0.01", "lr=0.02", "lr=0.03"]  # went on after the failure
    status = {p["name"]: p["status"] for p in s["points"]}
    assert status == {"lr=0.01": "done", "lr=0.02": "failed", "lr=0.03": "done"}
    saved = json.loads((out / "sweep_summary.json").read_text())
    bad = next(p for p in saved["points"] if p["name"] == "lr=0.02")
    assert bad["returncode"] == 1 and "ValueError: boom" in bad["log_tail"] and saved["counts"]["failed"] == 1
    printed = capsys.readouterr().out
    assert "lr=0.02: FAILED (exit code 1)" in printed and "failed points: lr=0.02" in printed
    assert "| DIN | 0.01 | 1 | 0.5100 | 0.0100 |" in printed  # metric table over finished points
    assert "| DIN | 0.03 | 1 | **0.5300** | **0.0300** |" in printed
    # the CLI exits 1 when a point failed (after running the rest)
    monkeypatch_runner = FakeRunner(fail={0.02})
    S._subprocess_runner, orig = monkeypatch_runner, S._subprocess_runner
    try:
        with pytest.raises(SystemExit) as e:
            S.main([str(f), "--out", str(tmp_path / "out2")])
        assert e.value.code == 1
    finally:
        S._subprocess_runner = orig


def test_point_dir_holding_another_point_is_not_touched(tmp_path):
    f, out = lr_sweep(tmp_path, values=(0.01,)), tmp_path / "out"
    (out / "lr=0.01").mkdir(parents=True)
    (out / "lr=0.01" / "sweep_point.json").write_text(json.dumps({"parameters": {"model.init_args.lr": 0.5}}))
    runner = FakeRunner()
    s = S.run_sweep(f, out, runner=runner, echo=lambda *a: None)
    assert runner.calls == [] and s["points"][0]["status"] == "failed" and "different point" in s["points"][0]["error"]


def test_dry_run_and_cli_errors(tmp_path, capsys):
    f = lr_sweep(tmp_path)
    s = S.run_sweep(f, tmp_path / "o", dry_run=True, runner=FakeRunner(), echo=print)
    assert [p["status"] for p in s["points"]] == ["planned"] * 3 and not (tmp_path / "o" / "lr=0.01").exists()
    assert "--model.init_args.lr=0.01 --run_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        S.main([str(tmp_path / "missing.yaml")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        S.main([str(f), "--data.path", str(tmp_path / "no_data")])
    assert e.value.code == 2


def test_interrupt_stops_the_running_point(tmp_path):
    """Ctrl-C / SIGTERM (turned into KeyboardInterrupt by main) terminates the point's subprocess."""
    import os
    import signal
    import time

    pidf = tmp_path / "pid"
    code = f"import os, time; open({str(pidf)!r}, 'w').write(str(os.getpid())); time.sleep(120)"

    def boom(*a):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, 4.0)
    t0 = time.time()
    try:
        with pytest.raises(KeyboardInterrupt):
            S._subprocess_runner([sys.executable, "-c", code], dict(os.environ), tmp_path / "log")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.time() - t0 < 60
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidf.read_text()), 0)


# --------------------------------------------------------------------------- the shipped sweep files
def _configs_given(cmd):
    """The --config files of a built command, in order."""
    return [Path(cmd[i + 1]) for i, tok in enumerate(cmd) if tok == "--config"]


def _model_init_args(config: Path):
    """(class name, every __init__ argument along its MRO) of the model class a config names."""
    import importlib
    import inspect

    path = yaml.safe_load(Path(config).read_text())["model"]["class_path"]
    mod_name, cls_name = path.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError):
        pytest.skip(f"{path} not on this branch yet")
    return cls_name, {a for k in cls.__mro__ if "__init__" in vars(k) for a in inspect.signature(k.__init__).parameters}


@pytest.mark.parametrize("name, n_points, configs", [("lambda", 15, ["seminar.yaml"]),
                                                      ("codebook", 27, ["seminar.yaml", "seminar_pq.yaml"])])
def test_shipped_sweep_files(name, n_points, configs, monkeypatch):
    spec = S.load_spec(REPO / "experiments" / "sweeps" / f"{name}.yaml")
    assert spec["name"] == name and spec["metric"] == {"name": "test/auc", "goal": "maximize"}
    assert "${args}" in spec["command"] and spec["command"][1:3] == ["seminar-zoo", "experiment"]
    pts = S.sweep_points(spec)
    assert len(pts) == n_points
    per_seed = n_points // 3
    assert [p["seed_everything"] for p in pts] == [0] * per_seed + [1] * per_seed + [2] * per_seed  # outermost
    if name == "lambda":
        assert [p["model.init_args.lambda_q"] for p in pts[:5]] == [0.1, 0.3, 0.5, 0.7, 0.9]
    else:
        assert {(p["model.init_args.pq.n_centroids"], p["model.init_args.pq.n_sub"]) for p in pts[:9]} == {
            (c, s) for c in (16, 64, 256) for s in (2, 4, 8)}
    monkeypatch.chdir(REPO)
    cmd = S.build_command(spec, pts[0], Path("/tmp/x"))
    given = _configs_given(cmd)
    assert [p.name for p in given] == configs and all(p.is_file() for p in given)  # overlays after seminar.yaml
    assert cmd[cmd.index("--run_dir") + 1] == "/tmp/x"
    # every swept name is an __init__ argument of the model class the config names
    cls_name, sig = _model_init_args(given[0])
    for p in spec["parameters"]:
        if p.startswith("model.init_args."):
            arg = p.split(".")[2]  # model.init_args.pq.n_sub: the dict argument pq
            assert arg in sig, f"{p}: {arg} is not an argument of {cls_name}"
    if name == "codebook":
        import inspect

        from seminar_zoo.modules.quantization import MultiModalPQ

        pq_args = set(inspect.signature(MultiModalPQ.__init__).parameters)
        assert {"n_centroids", "n_sub"} <= pq_args


# --------------------------------------------------------------------------- real end to end
@pytest.mark.slow
def test_real_two_point_din_sweep(tiny_data, tmp_path, monkeypatch, capsys):
    """Two real `seminar-zoo experiment` subprocesses on the tiny dataset, then a resumed re-run."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    f = write_spec(tmp_path / "din.yaml", name="din_tiny",
                   parameters={"model.init_args.lr": {"values": [0.001, 0.01]}})
    out = tmp_path / "sweep"
    tiny = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "2", "--data.max_len", "8", "--model.init_args.embed_dim", "8",
            "--model.init_args.attention_hidden", "[8]", "--model.init_args.tower_dims", "[8]",
            "--trainer.enable_progress_bar", "false", "--data.num_workers", "0"]
    summary = S.main([str(f), "--data.path", str(tiny_data), "--out", str(out), *tiny])
    assert summary["counts"]["done"] == 2, json.dumps(summary, indent=1)
    for d in ("lr=0.001", "lr=0.01"):
        m = json.loads((out / d / "metrics.json").read_text())
        assert m["model"] == "DIN" and 0.0 <= m["test/auc"] <= 1.0 and m["max_len"] == 8
        assert json.loads((out / d / "sweep_point.json").read_text())["parameters"]["model.init_args.lr"] in (0.001, 0.01)
        cfg = yaml.safe_load((out / d / "config.yaml").read_text())
        assert cfg["model"]["init_args"]["lr"] == float(d.split("=")[1])  # the swept value reached the model
    printed = capsys.readouterr().out
    assert "| model | lr | n | AUC | NDCG@10 |" in printed
    again = S.main([str(f), "--data.path", str(tiny_data), "--out", str(out), *tiny])
    assert again["counts"]["skipped"] == 2 and not again["counts"]["done"]


def test_ml100k_tuning_sweep_gives_every_model_the_same_points_and_selects_on_validation(monkeypatch):
    """experiments/sweeps/ml100k_tune.yaml: one random budget for every model (the points depend only on
    --seed), selection on metrics.json's best_val (validation), the model config from MODEL_CONFIG."""
    spec = S.load_spec(REPO / "experiments" / "sweeps" / "ml100k_tune.yaml")
    assert spec["method"] == "random" and spec["metric"] == {"name": "best_val", "goal": "maximize"}
    pts = S.sweep_points(spec, max_runs=12, seed=0)
    assert len(pts) == 12 and pts == S.sweep_points(spec, max_runs=12, seed=0)
    assert all(5e-4 <= p["model.init_args.lr"] <= 1e-2 and p["model.init_args.embed_dim"] in (32, 64)
               and p["model.init_args.dropout"] in (0.0, 0.1, 0.2, 0.3) for p in pts)
    monkeypatch.chdir(REPO)
    for cfg in ("baselines/sasrec.yaml", "baselines/din.yaml", "experiments/seminar.yaml"):
        monkeypatch.setenv("MODEL_CONFIG", cfg)
        cmd = S.build_command(spec, pts[0], Path("/tmp/x"))
        given = _configs_given(cmd)
        assert [g.name for g in given] == [Path(cfg).name, "ml100k.yaml"]
        _, sig = _model_init_args(REPO / cfg)
        assert {"lr", "embed_dim", "dropout"} <= sig, (cfg, sorted(sig))
