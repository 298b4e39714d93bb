"""``seminar-zoo sweep FILE``: run a W&B-schema sweep file offline, one experiment per point.

The sweep file is a W&B sweep configuration (``method``, ``metric``, ``parameters``,
``command``, optional ``name``, ``program``, ``run_cap``), so
``wandb sweep experiments/sweeps/lambda.yaml`` + ``wandb agent`` run the very same file
where a W&B server is reachable. Offline this module is the agent:

* ``method: grid``: the Cartesian product of the parameters' values (first parameter
  outermost), in file order; ``values``, ``value``, ``int_uniform`` and ``q_uniform``
  parameters are discrete. ``method: random``: ``--max-runs`` (or ``run_cap``) points
  drawn from W&B's distributions (``values`` [+ ``probabilities``], ``value``, ``uniform``,
  ``int_uniform``, ``q_uniform``, ``log_uniform_values``, ``q_log_uniform_values``,
  ``log_uniform``, ``normal``, ``q_normal``, ``log_normal``) with a numpy generator seeded
  by ``--seed`` (same seed, same points: a random sweep is resumable too).
  ``bayes`` needs W&B's server and is refused with a clear error.
* The ``command`` is expanded with W&B's macros (``${env}``, ``${interpreter}``,
  ``${program}``, ``${args}`` = ``--key=value``, ``${args_no_hyphens}``,
  ``${args_no_boolean_flags}``, ``${args_no_equals}``, ``${args_json}``,
  ``${args_json_file}``, ``${envvar:NAME}``), a ``seminar-zoo`` token runs this
  interpreter's package (``python -m seminar_zoo.cli``), and the runner appends
  ``--run_dir OUT/<point>`` (replacing any ``--run_dir`` in the file), ``--data.path`` and the
  extra overrides given on the command line.
* Each point runs as its own subprocess (a crash, a bad value or an out-of-memory kill
  fails that point only), in a run directory named from the parameter values
  (``lambda_q=0.3``, ``n_centroids=16__n_sub=4``; random points are prefixed ``r007__``).
  ``sweep_point.json`` there records the sweep name and parameter values (``compare``
  reads it), ``sweep.log`` the run's output.
* Resumable: a point whose run directory has ``metrics.json`` is skipped and never
  overwritten; an unfinished one (no metrics.json) is run again.
* ``OUT/sweep_summary.json`` (rewritten after every point) lists each point's status
  (``done``, ``skipped`` = finished earlier, ``failed`` with return code and log tail).
  At the end a markdown table of the metric against the parameter(s) is printed
  (:mod:`seminar_zoo.compare`); the exit code is 1 if any point failed.
* W&B: each run's logger is grouped by the sweep name (``WANDB_RUN_GROUP``) and named
  ``<sweep>/<point>`` (``WANDB_NAME``); the mode stays whatever ``WANDB_MODE`` says
  (``offline`` by default, see :mod:`seminar_zoo.tracking`).

Why not W&B's own engine (PyPI ``sweeps``, the open-source code behind the W&B sweep
server): ``sweeps`` 0.3.0 requires ``numpy<2`` (installing it would downgrade the
numpy 2.x that torch, pyarrow and pandas here run on) and pulls in scipy and
scikit-learn (for ``bayes``, which offline sweeps do not need). Grid and random search
are a few dozen lines, written here to W&B's documented semantics.

Paper link: ``experiments/sweeps/lambda.yaml`` repeats SEMINAR's sensitivity study of the
query/item fusion weight λ (arXiv 2407.10714, experiments: λ in {0.1, 0.3, 0.5, 0.7, 0.9} on
KuaiSAR; here on the synthetic data), ``codebook.yaml`` the size of the multi-modal product
quantizer of its approximate retrieval (Sec. 3.4; the reference uses 16 sub-vectors x 256
centroids). Simplified: no early termination (W&B's ``early_terminate``/hyperband is ignored
offline), points run one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .compare import collect, summarize
from .compare_format import markdown_table, short_names
from .runguard import atomic_json as _atomic_json
from .sweep_spec import SweepError, grid_values, load_spec, sweep_points  # noqa: F401 (grid_values: public API)

_ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]*)\}")


# --------------------------------------------------------------------------- naming
def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple, dict)):
        v = json.dumps(v, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", str(v)).strip("-") or "x"


def point_name(point: Dict[str, Any], index: Optional[int] = None) -> str:
    short = short_names(list(point))
    name = "__".join(f"{short[k]}={format_value(v)}" for k, v in point.items())
    return f"r{index:03d}__{name}" if index is not None else name


# --------------------------------------------------------------------------- the command
def _arg_strings(point: Dict[str, Any]) -> Dict[str, list]:
    flags, no_hyph, no_bool, no_eq = [], [], [], []
    for k, v in point.items():
        flags.append(f"--{k}={v}")
        no_hyph.append(f"{k}={v}")
        no_eq += [f"--{k}", str(v)]
        if isinstance(v, bool):
            if v:
                no_bool.append(f"--{k}")
        else:
            no_bool.append(f"--{k}={v}")
    return {"args": flags, "args_no_hyphens": no_hyph, "args_no_boolean_flags": no_bool,
            "args_no_equals": no_eq, "args_json": [json.dumps(point)]}


def _resolve_config_paths(cmd: List[str], spec_file: Path) -> List[str]:
    """``--config X`` paths relative to the current directory; if missing there, relative to the
    nearest ancestor of the sweep file that has them (so the sweep also runs outside the repo root)."""
    out = list(cmd)
    for i, tok in enumerate(out):
        path = None
        if tok == "--config" and i + 1 < len(out):
            path, j = out[i + 1], i + 1
        elif tok.startswith("--config="):
            path, j = tok.split("=", 1)[1], i
        if path is None or Path(path).is_absolute() or Path(path).exists():
            continue
        for anc in spec_file.resolve().parents:
            if (anc / path).exists():
                new = str(anc / path)
                out[j] = new if j == i + 1 else f"--config={new}"
                break
        else:
            raise SweepError(f"{spec_file}: the command's config {path} is not found (from {Path.cwd()} "
                             "or any folder above the sweep file); run from the repository root")
    return out


def _strip_run_dir(cmd: List[str]) -> List[str]:
    out, skip = [], False
    for tok in cmd:
        if skip:
            skip = False
            continue
        if tok in ("--run_dir", "--run-dir"):
            skip = True
            continue
        if tok.startswith(("--run_dir=", "--run-dir=")):
            continue
        out.append(tok)
    return out


def build_command(spec: dict, point: Dict[str, Any], run_dir: Path, data_path: Optional[str] = None,
                  overrides: Sequence[str] = ()) -> List[str]:
    """The argv the W&B agent would run for ``point``, made runnable offline (module docstring)."""
    macros = _arg_strings(point)
    macros.update(env=[], interpreter=[sys.executable],
                  program=[str(spec["program"])] if spec.get("program") else None)
    cmd: List[str] = []
    for tok in spec["command"]:
        tok = _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), tok)
        if tok.startswith("${") and tok.endswith("}"):
            key = tok[2:-1]
            if key == "args_json_file":
                f = run_dir / "sweep_args.json"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps(point))
                cmd.append(str(f))
                continue
            if key not in macros:
                raise SweepError(f"{spec['file']}: unknown command macro {tok}")
            if macros[key] is None:
                raise SweepError(f"{spec['file']}: command uses ${{program}} but the file has no 'program'")
            cmd += macros[key]
        elif tok == "seminar-zoo":
            cmd += [sys.executable, "-m", "seminar_zoo.cli"]
        else:
            cmd.append(tok)
    if "experiment" not in cmd:
        raise SweepError(f"{spec['file']}: the offline runner needs a `seminar-zoo experiment ...` command "
                         "(it sets --run_dir and reads RUN/metrics.json)")
    cmd = _resolve_config_paths(_strip_run_dir(cmd), Path(spec["file"]))
    # --resume: a point stopped by a kill continues from its last.ckpt when the sweep is rerun
    cmd += ["--run_dir", str(run_dir), "--resume"]
    if data_path:
        cmd += ["--data.path", str(data_path)]
    return cmd + list(overrides)


def _override_keys(overrides: Sequence[str]) -> List[str]:
    return [o[2:].split("=", 1)[0] for o in overrides if o.startswith("--")]


# --------------------------------------------------------------------------- running
def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_sweep(file: os.PathLike, out: Optional[os.PathLike] = None, data_path: Optional[str] = None,
              max_runs: Optional[int] = None, seed: int = 0, overrides: Sequence[str] = (),
              dry_run: bool = False, runner=None, echo=print) -> dict:
    """Run (or, with ``dry_run``, only list) every point of the sweep; returns the summary dict.

    ``runner(cmd, env, log_path) -> returncode`` runs one point (default: a subprocess
    whose output goes to ``log_path``); tests replace it.
    """
    spec = load_spec(file)
    if max_runs is not None and max_runs < 1:
        raise SweepError(f"--max-runs must be >= 1 (got {max_runs})")
    if data_path is not None and not Path(data_path).is_dir():
        raise SweepError(f"--data.path {data_path}: no such folder (prepare it with `seminar-zoo prepare`)")
    clash = sorted(set(_override_keys(overrides)) & set(spec["parameters"]))
    if clash:
        raise SweepError(f"override(s) {', '.join('--' + c for c in clash)} set a swept parameter of {file}")
    out = Path(out) if out is not None else Path("runs") / "sweeps" / spec["name"]
    points = sweep_points(spec, max_runs, seed)
    names = [point_name(p, i if spec["method"] == "random" else None) for i, p in enumerate(points)]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SweepError(f"{file}: points share a run directory name ({', '.join(sorted(dup))}); "
                         "make the values distinct")
    runner = runner or _subprocess_runner
    out.mkdir(parents=True, exist_ok=True)
    metric = spec["metric"].get("name")
    summary = {"sweep": spec["name"], "file": str(file), "method": spec["method"], "metric": spec["metric"],
               "seed": seed, "data_path": data_path, "overrides": list(overrides), "out": str(out),
               "parameters": list(spec["parameters"]), "points": []}
    echo(f"sweep {spec['name']}: {spec['method']}, {len(points)} point(s) -> {out}")
    for i, (point, name) in enumerate(zip(points, names)):
        run_dir = out / name
        rec = {"name": name, "parameters": point, "run_dir": str(run_dir)}
        summary["points"].append(rec)
        tag = f"[{i + 1}/{len(points)}] {name}"
        mfile, pfile = run_dir / "metrics.json", run_dir / "sweep_point.json"
        if pfile.is_file():
            old = json.loads(pfile.read_text()).get("parameters")
            if old != json.loads(json.dumps(point)):
                rec.update(status="failed", error=f"{run_dir} holds a different point {old}; not touched")
                echo(f"{tag}: FAILED: {rec['error']}")
                _atomic_json(out / "sweep_summary.json", summary)
                continue
        if mfile.is_file():
            rec.update(status="skipped", reason="finished earlier (metrics.json exists)")
            rec["metric"] = json.loads(mfile.read_text()).get(metric) if metric else None
            echo(f"{tag}: skipped, finished earlier")
            continue
        if dry_run:
            cmd = build_command(spec, point, run_dir, data_path, overrides)
            rec.update(status="planned", command=cmd)
            echo(f"{tag}: {' '.join(cmd)}")
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = build_command(spec, point, run_dir, data_path, overrides)
        _atomic_json(pfile, {"sweep": spec["name"], "file": str(file), "method": spec["method"],
                             "index": i, "seed": seed, "parameters": point, "command": cmd})
        env = dict(os.environ)
        env.setdefault("WANDB_RUN_GROUP", spec["name"])
        env["WANDB_NAME"] = f"{spec['name']}/{name}"
        log = run_dir / "sweep.log"
        echo(f"{tag}: running")
        t0 = time.time()
        try:
            rc = runner(cmd, env, log)
        except KeyboardInterrupt:
            rec.update(status="interrupted")
            _atomic_json(out / "sweep_summary.json", summary)
            raise
        except OSError as e:  # the command could not even start
            rc, rec["error"] = -1, str(e)
        rec.update(returncode=rc, seconds=round(time.time() - t0, 1))
        if rc == 0 and mfile.is_file():
            rec["status"] = "done"
            rec["metric"] = json.loads(mfile.read_text()).get(metric) if metric else None
            echo(f"{tag}: done in {rec['seconds']:.0f}s" + (f", {metric}={rec['metric']:.4f}"
                                                            if isinstance(rec.get("metric"), float) else ""))
        else:
            rec["status"] = "failed"
            rec.setdefault("error", f"exit code {rc}" + ("" if rc else ", but no metrics.json was written"))
            rec["log_tail"] = _tail(log)
            echo(f"{tag}: FAILED ({rec['error']}); log: {log}\n    " + rec["log_tail"].replace("\n", "\n    "))
        _atomic_json(out / "sweep_summary.json", summary)
    counts = {s: sum(p.get("status") == s for p in summary["points"]) for s in ("done", "skipped", "failed", "planned")}
    summary["counts"] = counts
    _atomic_json(out / "sweep_summary.json", summary)
    echo(f"sweep {spec['name']}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    if not dry_run:
        finished = [Path(p["run_dir"]) for p in summary["points"] if p.get("status") in ("done", "skipped")]
        if finished:
            metrics = [metric] if metric else []
            rows = summarize(collect(finished))
            table = markdown_table(rows, metrics + [m for m in ("test/auc", "test/ndcg@10") if m != metric],
                                   goal={metric: spec["metric"].get("goal", "maximize")} if metric else None)
            summary["table"] = table
            _atomic_json(out / "sweep_summary.json", summary)
            echo("\n" + table)
        failed = [p for p in summary["points"] if p.get("status") == "failed"]
        if failed:
            echo("failed points: " + ", ".join(p["name"] for p in failed))
    return summary


def _subprocess_runner(cmd: List[str], env: dict, log: Path) -> int:
    """Run one point in its own process group (DDP workers included); if the sweep is interrupted
    (Ctrl-C, SIGTERM) the whole group is stopped, and if the sweep dies (SIGKILL) the kernel
    sends the point SIGTERM (``PR_SET_DEATHSIG``, Linux), so no run trains on unowned."""
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            return proc.wait()
        except BaseException:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            raise


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the sweep process dies (Linux prctl PR_SET_DEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_DEATHSIG


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- CLI
def main(argv: Optional[List[str]] = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="seminar-zoo sweep", allow_abbrev=False,
        description="Run a W&B sweep file offline: one `seminar-zoo experiment` per point, resumable. "
                    "Unknown options are passed to every run (e.g. --trainer.max_epochs 3).")
    ap.add_argument("file", help="W&B sweep YAML (method, metric, parameters, command)")
    ap.add_argument("--data.path", "--data-path", dest="data_path", default=None,
                    help="dataset folder passed to every run")
    ap.add_argument("--max-runs", "--max_runs", dest="max_runs", type=int, default=None,
                    help="run at most N points (grid: the first N; random: N samples)")
    ap.add_argument("--out", default=None, help="sweep folder (default runs/sweeps/<sweep name>)")
    ap.add_argument("--seed", type=int, default=0, help="seed of a random sweep's sampler")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a, rest = ap.parse_known_args(argv)
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGTERM: stop the running point, keep the summary
        old_handler = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        summary = run_sweep(a.file, a.out, a.data_path, a.max_runs, a.seed, rest, a.dry_run)
    except SweepError as e:
        print(f"seminar-zoo sweep: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
    if summary["counts"].get("failed"):
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
