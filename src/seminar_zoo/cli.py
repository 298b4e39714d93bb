"""The ``seminar-zoo`` command.

* ``fit | validate | test | predict``: LightningCLI over every RecModel subclass
  (``--model DIN``) and the shared DataModule, with YAML configs (``--config``,
  merged left to right).
* ``experiment --config CFG --data.path DIR --run_dir RUN [overrides]``: fit, then
  test the best checkpoint, write ``RUN/metrics.json``.
* ``prepare synthetic|movielens|kuaisar|amazon ...``: build a dataset folder.
* ``check-data DIR...``: validate dataset folders against the contract.
* ``sweep``, ``compare``, ``bench``: see their own ``--help``.

Bad input (``DatasetError``) prints one clear message and exits with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

from .data.schema import DatasetError
from .runguard import UsageExit, check_data_main, quiet_startup

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")


# --------------------------------------------------------------------------- LightningCLI
def _make_cli_class():
    """The LightningCLI subclass (imported here, not at start-up: it imports Lightning)."""
    from .lightning_cli import ZooCLI

    return ZooCLI


def lightning_main(args: Optional[List[str]] = None):
    cls = _make_cli_class()
    return cls(args=args)


# --------------------------------------------------------------------------- experiment
EXPERIMENT_USAGE = """usage: seminar-zoo experiment --config CFG [--data.path DIR] --run_dir RUN [--name LABEL]
                               [--resume | --overwrite] [LightningCLI fit overrides]

Fits (for SEMINAR: PSU pretraining, then finetuning), tests the best checkpoint and writes
RUN/metrics.json. RUN is locked while the run is live. A finished RUN (metrics.json) needs
--overwrite; an interrupted one (checkpoints, no metrics) needs --resume (continue the stage that
was stopped, from its last.ckpt) or --overwrite (start over). SIGTERM / Ctrl-C save last.ckpt,
exit 143 / 130 and print the command that resumes.

The fit options follow (seminar-zoo fit --help):
"""


def experiment_main(argv: List[str]) -> dict:
    from .runguard import RunFolder, preflight

    if any(a in ("-h", "--help") for a in argv):
        print(EXPERIMENT_USAGE)
        lightning_main(["fit", "--help"])
        return {}
    ap = argparse.ArgumentParser(prog="seminar-zoo experiment", add_help=False, allow_abbrev=False,
                                 usage=EXPERIMENT_USAGE.split("\n\n")[0][7:])
    ap.add_argument("--run_dir", "--run-dir", dest="run_dir", required=True)
    ap.add_argument("--name", default=None, help="label of this run in tables (default: the model class)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--ckpt_path", default=None)
    known, rest = ap.parse_known_args(argv)
    if known.ckpt_path not in (None, "last"):
        ap.error("--ckpt_path: experiment resumes only from its own checkpoints: use --resume (= --ckpt_path last)")
    resume = known.resume or known.ckpt_path == "last"
    if resume and known.overwrite:
        ap.error("--resume and --overwrite exclude each other")
    preflight(rest)
    run_dir = Path(os.path.expandvars(known.run_dir))  # wandb agent: runs/sweeps/x/$WANDB_RUN_ID
    folder = RunFolder(run_dir, overwrite=known.overwrite, resume=resume)
    from .callbacks import stop_handler

    with folder, stop_handler():
        try:
            return _run_experiment(run_dir, rest, known.name, resume)
        except BaseException as e:
            from .runguard import config_error

            if isinstance(e, DatasetError) or config_error(e) is not None:
                folder.discard_if_empty()
            raise


def _run_experiment(run_dir: Path, rest: List[str], label: Optional[str], resume: bool) -> dict:
    from .pipeline import run

    cli = _make_cli_class()(args=["--trainer.default_root_dir", str(run_dir), *rest], run=False)
    return run(cli, run_dir, label, resume)


# --------------------------------------------------------------------------- prepare
PREPARE_USAGE = "usage: seminar-zoo prepare {synthetic,movielens,kuaisar,amazon} --out DIR [...]"


def prepare_main(argv: List[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(PREPARE_USAGE + "\n\nBuild a dataset folder; see `seminar-zoo prepare NAME --help`.")
        return
    if not argv:
        raise UsageExit(PREPARE_USAGE + "\nseminar-zoo prepare: error: name a dataset")
    which, rest = argv[0], argv[1:]
    out = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--out"), None)
    if out:  # a killed prepare's temp folder goes now, not after this one's long parse
        from .data.schema import remove_stale_temp

        remove_stale_temp(Path(out))
    if which == "synthetic":
        from .data.synthetic import generate

        ap = argparse.ArgumentParser(prog="seminar-zoo prepare synthetic", allow_abbrev=False)
        ap.add_argument("--out", required=True)
        ap.add_argument("--users", type=int, default=2000)
        ap.add_argument("--items", type=int, default=2000)
        ap.add_argument("--seq-len", type=int, default=200)
        ap.add_argument("--seed", type=int, default=0)
        a = ap.parse_args(rest)
        for k in ("users", "items", "seq_len"):
            if getattr(a, k) < (3 if k == "seq_len" else 1):
                ap.error(f"--{k.replace('_', '-')} must be >= {3 if k == 'seq_len' else 1}, got {getattr(a, k)}")
        generate(a.out, users=a.users, items=a.items, seq_len=a.seq_len, seed=a.seed, verbose=True)
        return
    _dispatch(f"seminar_zoo.data.prepare.{which}", rest, f"prepare {which}")


def _dispatch(module: str, argv: List[str], verb: str):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise UsageExit(f"seminar-zoo: error: unknown command '{verb}' (see seminar-zoo --help)")
        raise
    return mod.main(argv)


# --------------------------------------------------------------------------- entry point
def _bench(rest: List[str]) -> None:
    """Benchmarks live in the repository (experiments/bench/NAME.py), not in the package."""
    import runpy

    if rest and rest[0] in ("-h", "--help"):
        print("usage: seminar-zoo bench NAME [options]: runs experiments/bench/NAME.py of a seminar-zoo "
              "checkout (e.g. `seminar-zoo bench retrieval --help`)")
        return
    roots = [Path(__file__).resolve().parents[2], Path.cwd()]
    files = [r / "experiments" / "bench" / f"{rest[0]}.py" for r in roots] if rest else []
    found = [f for f in files if rest and rest[0].isidentifier() and f.is_file()]
    if not found:
        raise UsageExit(f"usage: seminar-zoo bench NAME [options], NAME a file experiments/bench/NAME.py of "
                        f"the seminar-zoo repository (run from a checkout); not found: "
                        f"{', '.join(map(str, files)) or 'no NAME given'}")
    runpy.run_path(str(found[0]), run_name="seminar_zoo_bench")["main"](rest[1:])


def _run_verb(verb: str, rest: List[str], argv: List[str]) -> None:
    if verb in LIGHTNING_VERBS:
        if not any(a in ("-h", "--help", "--print_config") or a.startswith("--print_config=") for a in rest):
            from .runguard import preflight

            preflight(rest)  # before torch/Lightning are even imported
        from .callbacks import stop_handler
        from .runguard import folder_lock

        with stop_handler(), folder_lock(rest):
            lightning_main(argv)
    elif verb == "experiment":
        experiment_main(rest)
    elif verb == "prepare":
        prepare_main(rest)
    elif verb == "check-data":
        check_data_main(rest)
    elif verb in ("sweep", "compare"):
        _dispatch(f"seminar_zoo.{verb}", rest, verb)
    elif verb in ("export", "serve-bench"):
        from . import serving

        (serving.export_main if verb == "export" else serving.serve_bench_main)(rest)
    elif verb == "bench":
        _bench(rest)
    else:
        raise UsageExit(f"seminar-zoo: error: unknown command '{verb}' (see seminar-zoo --help)")


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_startup()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stdout if argv else sys.stderr)
        if not argv:
            sys.exit(2)  # no verb: a usage error
        return
    verb, rest = argv[0], argv[1:]
    if "seminar_zoo.callbacks" in sys.modules:  # main() called again in one process (tests)
        sys.modules["seminar_zoo.callbacks"].STOPPED.update(signal=None, checkpoint=None)
    try:
        _run_verb(verb, rest, argv)
    except DatasetError as e:
        print(f"seminar-zoo: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (SystemExit, KeyboardInterrupt, Exception) as e:
        from .runguard import config_error

        if isinstance(e, KeyboardInterrupt) and "seminar_zoo.callbacks" in sys.modules:
            sys.modules["seminar_zoo.callbacks"].STOPPED["signal"] = int(signal.SIGINT)
        _exit_if_stopped(verb, rest)
        msg = None if isinstance(e, (SystemExit, KeyboardInterrupt)) else config_error(e)
        if msg is None:
            raise
        print(f"seminar-zoo: error: {msg}", file=sys.stderr)
        sys.exit(2)
    _exit_if_stopped(verb, rest)


def _exit_if_stopped(verb: str, rest: List[str]) -> None:
    """After SIGTERM / SIGINT: say where last.ckpt is and how to resume; exit 128 + signal."""
    if "seminar_zoo.callbacks" not in sys.modules:
        return
    from .callbacks import STOPPED

    sig = STOPPED["signal"]
    if sig is None:
        return
    from .runguard import resume_command

    where = f"; last checkpoint: {STOPPED['checkpoint']}" if STOPPED["checkpoint"] else ""
    print(f"seminar-zoo: stopped by signal {sig}{where}\nresume with:\n  {resume_command(rest, verb)}",
          file=sys.stderr, flush=True)
    sys.exit(128 + sig)


if __name__ == "__main__":
    main()
