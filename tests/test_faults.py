"""Faults (issue 15 §2-3, issue 16 §2): SIGKILL + resume restores the best checkpoint exactly,
SIGTERM saves last.ckpt and prints a working resume command, a live run folder is refused,
killing a sweep ends its point, a killed prepare's temp folder is removed by the next prepare."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

CLI = [sys.executable, "-m", "seminar_zoo.cli"]
SMALL = ["--data.max_len", "20", "--data.batch_size", "128", "--data.eval_batch_size", "2000",
         "--model.init_args.embed_dim", "8", "--trainer.enable_progress_bar", "false"]

# A callback that kills its own process at the start of an epoch (after the previous epoch's
# checkpoints are on disk) or after a training batch: a real signal at a reproducible point.
KILLER = textwrap.dedent("""
    import os
    from pytorch_lightning import Callback

    class Kill(Callback):
        def __init__(self, epoch: int = 0, batch: int = -1, sig: int = 9):
            self.epoch, self.batch, self.sig = epoch, batch, sig

        def on_train_epoch_start(self, trainer, pl_module):
            if self.batch < 0 and trainer.current_epoch == self.epoch:
                os.kill(os.getpid(), self.sig)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == self.epoch and batch_idx == self.batch:
                os.kill(os.getpid(), self.sig)
    class KillInValidation(Callback):
        def __init__(self, epoch: int = 1, batch: int = 1, sig: int = 15):
            self.epoch, self.batch, self.sig = epoch, batch, sig
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if trainer.current_epoch == self.epoch and batch_idx == self.batch and not trainer.sanity_checking:
                os.kill(os.getpid(), self.sig)
""")


def _env(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    pp = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": pp}


def _default_sigint():
    # A shell's background job (`cmd &`, nohup, some CI runners) starts with SIGINT ignored, and
    # children inherit that; Python then installs no KeyboardInterrupt handler. Restore the default
    # so the Ctrl-C test tests our handling, not the caller's shell.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args, tmp_path, rc=0, timeout=300):
    r = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=_env(tmp_path),
                       preexec_fn=_default_sigint)
    assert r.returncode == rc, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _kill_cb(**kw):
    return ["--trainer.callbacks", json.dumps([{"class_path": "killer.Kill", "init_args": kw}])]


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _best_state(run):
    """(best file name, best score, files in checkpoints/) as recorded by the monitored ModelCheckpoint."""
    c = _ckpt(run / "checkpoints" / "last.ckpt")
    st = next(v for k, v in c["callbacks"].items() if k.startswith("ModelCheckpoint") and "'monitor': 'val/auc'" in k)
    return os.path.basename(st["best_model_path"]), float(st["best_model_score"]), \
        sorted(p.name for p in (run / "checkpoints").iterdir())


def test_sigkill_then_resume_restores_best_checkpoint_exactly(tiny_data, tmp_path, capsys):
    base = ["fit", "--model", "DIN", "--data.path", str(tiny_data), "--model.init_args.dropout", "0.3",
            "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "8", *SMALL]
    _cli(base + ["--trainer.default_root_dir", str(tmp_path / "a")], tmp_path)
    # SIGKILL at the start of epoch 2: epoch 1's best-* and last.ckpt are written, nothing after
    _cli(base + ["--trainer.default_root_dir", str(tmp_path / "b"), *_kill_cb(epoch=2, sig=9)], tmp_path, rc=-9)
    assert _ckpt(tmp_path / "b/checkpoints/last.ckpt")["epoch"] == 1
    _cli(base + ["--trainer.default_root_dir", str(tmp_path / "b"), "--ckpt_path", "last"], tmp_path)
    a, b = _best_state(tmp_path / "a"), _best_state(tmp_path / "b")
    assert a == b  # same best file, same score, no stale best-epoch=*.ckpt
    assert b[0] in b[2] and len([n for n in b[2] if n.startswith("best-")]) == 1
    for name in (a[0], "last.ckpt"):
        wa, wb = _ckpt(tmp_path / "a/checkpoints" / name), _ckpt(tmp_path / "b/checkpoints" / name)
        assert wa["epoch"] == wb["epoch"]
        for k in wa["state_dict"]:
            assert torch.equal(wa["state_dict"][k], wb["state_dict"][k]), (name, k)
    # `test` of the best checkpoint writes metrics.json to the run folder, not into checkpoints/
    code, _ = _main(["test", "--model", "DIN", "--data.path", str(tiny_data), *SMALL,
                     "--ckpt_path", str(tmp_path / "b/checkpoints" / b[0])], capsys)
    assert code in (0, None)
    m = json.loads((tmp_path / "b/metrics.json").read_text())
    assert m["checkpoint"].endswith(b[0]) and 0 <= m["test/auc"] <= 1
    assert not (tmp_path / "b/checkpoints/metrics.json").exists()


def test_sigterm_during_validation_resumes_exactly_with_early_stopping(tiny_data, tmp_path):
    """SIGTERM in the middle of epoch 1's validation: no mid-validation last.ckpt (Lightning would resume past
    the epoch's training, skip the rest of its validation, and EarlyStopping would find no metric); the
    resumed run redoes epoch 1 and ends bit-identical to an uninterrupted run."""
    stop = {"class_path": "pytorch_lightning.callbacks.EarlyStopping",
            "init_args": {"monitor": "val/auc", "mode": "max", "patience": 5}}
    base = ["fit", "--model", "DIN", "--data.path", str(tiny_data), "--trainer.max_epochs", "3",
            "--trainer.limit_train_batches", "6", "--data.eval_batch_size", "40", *SMALL[:4], *SMALL[6:]]
    _cli(base + ["--trainer.default_root_dir", str(tmp_path / "a"), "--trainer.callbacks", json.dumps([stop])],
         tmp_path)
    kill = {"class_path": "killer.KillInValidation", "init_args": {"epoch": 1, "batch": 1}}
    r = _cli(base + ["--trainer.default_root_dir", str(tmp_path / "b"), "--trainer.callbacks",
                     json.dumps([kill, stop])], tmp_path, rc=143)
    assert _ckpt(tmp_path / "b/checkpoints/last.ckpt")["epoch"] == 0 and "Traceback" not in r.stderr
    _cli(base + ["--trainer.default_root_dir", str(tmp_path / "b"), "--trainer.callbacks", json.dumps([stop]),
                 "--ckpt_path", "last"], tmp_path)
    assert _best_state(tmp_path / "a") == _best_state(tmp_path / "b")
    wa, wb = _ckpt(tmp_path / "a/checkpoints/last.ckpt"), _ckpt(tmp_path / "b/checkpoints/last.ckpt")
    assert wa["epoch"] == wb["epoch"] == 2
    assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])


def test_sigterm_in_seminar_experiment_saves_stage_and_resumes(tiny_data, tmp_path):
    """SIGTERM during SEMINAR's PSU pretraining: exit 143, psu/checkpoints/last.ckpt written, the
    printed command resumes the experiment to its metrics.json."""
    cfg = os.path.join(os.path.dirname(__file__), "..", "experiments", "seminar.yaml")
    run = tmp_path / "run"
    args = ["experiment", "--config", cfg, "--data.path", str(tiny_data), "--run_dir", str(run),
            "--trainer.max_epochs", "1", "--model.init_args.pretrain", "{epochs: 2}", "--model.init_args.topk", "8",
            "--model.init_args.num_heads", "2", "--trainer.limit_train_batches", "6", *SMALL]
    p = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         env=_env(tmp_path))
    psu_last = run / "psu" / "checkpoints" / "last.ckpt"
    t0 = time.time()
    while not psu_last.exists() and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    assert "Traceback" not in err and psu_last.exists() and not (run / "metrics.json").exists()
    cmd = err.split("resume with:")[1].strip().splitlines()[0]
    assert cmd.startswith("seminar-zoo experiment ") and cmd.endswith("--resume")
    _cli(args + ["--resume"], tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"] == "SEMINAR" and 0 <= m["test/auc"] <= 1
    assert _ckpt(psu_last)["epoch"] == 1  # the PSU stage finished its 2 epochs on resume


def _main(argv, capsys):
    """Run the CLI in-process; returns (exit code, stderr)."""
    from seminar_zoo.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_concurrent_run_dir_is_refused(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from seminar_zoo.runguard import RunFolder
        with RunFolder({str(run)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _main(["experiment", "--config", "baselines/din.yaml", "--data.path", str(tiny_data),
                           "--run_dir", str(run)], capsys)
        assert code == 2 and f"--run_dir {run}: in use by another run (pid {holder.pid})" in err
        assert "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock went with it, so the folder is free again,
    # but a finished run needs --overwrite
    (run / "metrics.json").write_text("{}")
    code, err = _main(["experiment", "--config", "baselines/din.yaml", "--data.path", str(tiny_data),
                       "--run_dir", str(run)], capsys)
    assert code == 2 and "holds a finished run (metrics.json); pass --overwrite" in err
    (run / "metrics.json").unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_text("x")
    code, err = _main(["experiment", "--config", "baselines/din.yaml", "--data.path", str(tiny_data),
                       "--run_dir", str(run)], capsys)
    assert code == 2 and "holds an interrupted run" in err and "--resume" in err


CHILD = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    # a point that starts a worker of its own, records both pids, then trains "forever"; on SIGTERM it
    # stops its worker and exits 143, as `experiment` does (Lightning's launcher stops DDP workers)
    w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    signal.signal(signal.SIGTERM, lambda *a: (w.terminate(), os._exit(143)))
    run_dir = sys.argv[sys.argv.index("--run_dir") + 1]
    os.makedirs(run_dir, exist_ok=True)
    open(os.path.join(run_dir, "pids"), "w").write(f"{os.getpid()} {w.pid}")
    time.sleep(120)
""")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_a_sweep_ends_its_running_point(tmp_path, sig):
    """SIGTERM: the sweep stops the point's process group; SIGKILL: the kernel sends the point
    SIGTERM (PR_SET_DEATHSIG)."""
    import yaml

    (tmp_path / "child.py").write_text(CHILD)
    spec = {"name": "k", "method": "grid", "program": str(tmp_path / "child.py"),
            "metric": {"name": "test/auc", "goal": "maximize"}, "parameters": {"a": {"values": [1, 2]}},
            "command": ["${interpreter}", "${program}", "experiment", "${args}"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    sweep = subprocess.Popen(CLI + ["sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path))
    pids_file = tmp_path / "out" / "a=1" / "pids"
    t0 = time.time()
    while not (pids_file.exists() and pids_file.read_text()) and time.time() - t0 < 60:
        time.sleep(0.05)
    child, worker = map(int, pids_file.read_text().split())
    assert _alive(child) and _alive(worker)
    sweep.send_signal(sig)
    sweep.wait(timeout=60)
    t0 = time.time()
    while (_alive(child) or _alive(worker)) and time.time() - t0 < 30:
        time.sleep(0.05)
    alive = [p for p in (child, worker) if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"left running after {sig.name} to the sweep: {alive}"
    assert not (tmp_path / "out" / "a=2").exists()  # the sweep stopped, it did not go on


def test_killed_prepare_leaves_a_temp_folder_that_the_next_prepare_removes(tmp_path):
    out = tmp_path / "data" / "syn"
    args = CLI + ["prepare", "synthetic", "--out", str(out), "--users", "400", "--items", "400", "--seq-len", "60"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(tmp_path))
    t0 = time.time()
    while not list(out.parent.glob(".syn.tmp-*")) and p.poll() is None and time.time() - t0 < 60:
        time.sleep(0.005)
    p.kill()
    p.wait()
    stale = list(out.parent.glob(".syn.tmp-*"))
    if not stale:  # the writer was faster than the poll: plant what a kill leaves
        (out.parent / f".syn.tmp-{p.pid}-abc").mkdir(parents=True)
    live = out.parent / f".syn.tmp-{os.getpid()}-live"  # a concurrent writer's folder is not touched
    live.mkdir(parents=True)
    r = subprocess.run(args, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([".syn.tmp-%d-live" % os.getpid(), "syn"])
    assert (out / "meta.json").exists()


def test_ctrl_c_mid_epoch_saves_last_and_prints_resume(tiny_data, tmp_path):
    """SIGINT after batch 3 of epoch 0 (no epoch-end checkpoint yet): last.ckpt is written at that
    batch, exit 130, and the printed command (fit ... --ckpt_path last) finishes the fit."""
    run = tmp_path / "r"
    base = ["fit", "--model", "DIN", "--data.path", str(tiny_data), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "8", "--trainer.default_root_dir", str(run), *SMALL]
    r = _cli(base + _kill_cb(epoch=0, batch=3, sig=int(signal.SIGINT)), tmp_path, rc=130)
    c = _ckpt(run / "checkpoints" / "last.ckpt")
    assert c["epoch"] == 0 and c["global_step"] == 4  # 4 optimizer steps done, the epoch unfinished
    assert "Traceback" not in r.stderr
    cmd = r.stderr.split("resume with:")[1].strip().splitlines()[0]
    assert cmd.startswith("seminar-zoo fit ") and cmd.endswith("--ckpt_path last")
    _cli(base + ["--ckpt_path", "last"], tmp_path)
    assert _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 8
