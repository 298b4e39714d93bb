"""Checks and guards around a run, applied before Lightning starts.

* :func:`preflight`: reads ``--config`` files and ``--data.*`` / ``--model*`` flags the way
  LightningCLI will (later wins), then validates the dataset folder and the arguments a
  newcomer gets wrong first, so a bad input costs a second, not the Lightning start-up.
* :class:`RunFolder`: an ``fcntl`` lock on a run folder; a second run into a live folder, or a
  run into a finished folder without ``--overwrite``, is refused.
* :func:`config_error`: the message a model or DataModule raised while jsonargparse built it
  (jsonargparse wraps it in a union-validation dump).
* :func:`resume_command`: the exact command that resumes a stopped run.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .data.schema import DatasetError, validate_dataset


# training losses of RecModel (models/base.py, README "Training recipe")
LOSSES = ("bce", "softmax", "bpr", "full_softmax")


class UsageError(DatasetError):
    """A bad command-line argument; printed without a traceback, exit code 2."""


def _flag_values(argv: List[str]):
    """(name, value) for every ``--name value`` / ``--name=value`` / ``-c value`` in argv."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and "=" in a:
            k, v = a.split("=", 1)
            yield k.lstrip("-"), v
        elif a.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            yield a.lstrip("-"), argv[i + 1]
            i += 1
        elif a.startswith("-"):
            yield a.lstrip("-"), None
        i += 1


def _load_yaml(path: str, flag: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--{flag} {path}: file does not exist")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--{flag} {path}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"--{flag} {path}: expected a mapping of sections (model, data, trainer)")
    return cfg


def effective_args(argv: List[str]) -> Dict[str, object]:
    """Flattened ``data.*`` and ``model*`` settings from configs and flags, later ones winning."""
    out: Dict[str, object] = {}
    for k, v in _flag_values(argv):
        if k in ("config", "c") and v is not None:
            cfg = _load_yaml(v, "config")
            for sec in ("data", "model"):
                body = cfg.get(sec)
                if isinstance(body, str):
                    out[sec] = body
                elif isinstance(body, dict):
                    if "class_path" in body:
                        out[sec] = body["class_path"]
                    for kk, vv in {**body, **(body.get("init_args") or {})}.items():
                        if kk not in ("class_path", "init_args"):
                            out[f"{sec}.{kk}"] = vv
        elif k.startswith("data.") or k == "model" or k.startswith("model."):
            out[k.replace("model.init_args.", "model.")] = v
    return out


def _int_arg(args: dict, key: str, lo: int) -> Optional[int]:
    v = args.get(key)
    if v is None or (isinstance(v, str) and v.lower() in ("null", "none")):
        return None
    try:
        n = int(v)
    except (TypeError, ValueError):
        return None  # jsonargparse reports the type error itself
    if n < lo:
        raise UsageError(f"--{key} must be >= {lo}, got {n}")
    return n


def preflight(argv: List[str], default_path: str = "runs/data/synthetic", warn=print) -> Dict[str, object]:
    """Validate what ``fit/validate/test/predict/experiment`` would load; raises UsageError/DatasetError."""
    args = effective_args(argv)
    for key, lo in (("data.batch_size", 1), ("data.eval_batch_size", 1), ("data.max_len", 1),
                    ("data.n_eval_negatives", 1), ("data.train_negatives", 0), ("data.num_workers", 0),
                    ("data.train_window", 1), ("model.topk", 1), ("model.max_len", 1)):
        _int_arg(args, key, lo)
    path = Path(str(args.get("data.path") or default_path))
    if not path.is_dir():
        raise UsageError(f"--data.path {path}: folder does not exist (make one with `seminar-zoo prepare`)")
    tables = validate_dataset(path)
    neg = _int_arg(args, "data.n_eval_negatives", 1)
    if neg is not None and neg >= tables.n_items:
        raise UsageError(f"--data.n_eval_negatives {neg}: the dataset has only {tables.n_items} items")
    model = args.get("model") or args.get("model.class_path")
    if not model:
        raise UsageError("no model class: name one with --model NAME or a --config whose model has a class_path; "
                         "an overlay (experiments/ablations/*.yaml, experiments/seminar_pq.yaml) goes after the "
                         "config it changes: --config experiments/seminar.yaml --config experiments/ablations/no_gsu.yaml")
    if isinstance(model, str) and model.strip():  # last: the registry imports torch
        from .models import registry

        names = sorted(registry())
        short = model.rsplit(".", 1)[-1].lower()
        if short not in {n.lower() for n in names}:
            raise UsageError(f"--model {model}: unknown model; registered models: {', '.join(names)}")
    stride = args.get("data.train_stride")
    if stride is not None and str(stride) != "max_len":
        _int_arg(args, "data.train_stride", 1)
    loss = str(args.get("model.loss") or "bce")
    if loss not in LOSSES:
        raise UsageError(f"--model.init_args.loss {loss}: unknown loss; choose one of {', '.join(LOSSES)}")
    protocol = str(args.get("data.protocol") or "ranking")
    if loss != "bce" and protocol == "ctr":
        raise UsageError(f"--model.init_args.loss {loss} needs sampled negatives (--data.protocol ranking or "
                         "full); under ctr the labels are given, use loss bce")
    n_neg = _int_arg(args, "data.train_negatives", 0)
    if loss in ("softmax", "bpr") and n_neg == 0:
        raise UsageError(f"--model.init_args.loss {loss} compares each target with its sampled negatives: "
                         "--data.train_negatives must be >= 1")
    topk = _int_arg(args, "model.topk", 1)
    max_len = _int_arg(args, "model.max_len", 1) or _int_arg(args, "data.max_len", 1)
    if topk is not None and max_len is not None and topk > max_len:
        warn(f"seminar-zoo: warning: --model.init_args.topk {topk} > max_len {max_len}: "
             f"retrieval keeps the whole history (top-{topk} of {max_len})", file=sys.stderr)
    return args


def config_error(exc: BaseException) -> Optional[str]:
    """The user-facing message inside an exception chain: a DatasetError anywhere, or the error a
    model raised in ``__init__`` that jsonargparse wrapped in "Does not validate against any of
    the Union subtypes"; None for anything else (a real bug keeps its traceback)."""
    seen, e = [], exc
    while e is not None and e not in seen:
        seen.append(e)
        if isinstance(e, DatasetError):
            return str(e)
        e = e.__cause__ or e.__context__
    if "Does not validate against any of the Union subtypes" in str(exc):
        inner = [x for x in seen[1:] if isinstance(x, (ValueError, TypeError))]
        if inner:
            return str(inner[-1])
    return None


class RunFolder:
    """Exclusive use of a run folder for one process (``RUN/.lock``, released when it exits).

    A folder holding ``metrics.json`` is finished: it needs ``overwrite`` (which empties it).
    A folder with checkpoints but no metrics is an interrupted run: ``resume`` continues it,
    ``overwrite`` starts over; neither is refused."""

    def __init__(self, path, overwrite: bool = False, resume: bool = False, lock_only: bool = False,
                 flag: str = "--run_dir"):
        self.path, self.overwrite, self.resume = Path(path), overwrite, resume
        self.lock_only, self.flag = lock_only, flag  # lock_only: refuse a live folder, nothing else
        self.created = not self.path.exists()
        self._fh = None

    def __enter__(self) -> "RunFolder":
        if int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)):
            return self  # a DDP worker Lightning launched re-runs the command: rank 0 holds the lock
        self.path.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            who = self._fh.read().strip() or "?"
            self._fh.close()
            self._fh = None
            raise UsageError(f"{self.flag} {self.path}: in use by another run (pid {who}); wait for it "
                             "or choose another folder") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        if self.lock_only:
            return self
        if (self.path / "metrics.json").exists() and not self.overwrite:
            self.release()
            raise UsageError(f"--run_dir {self.path}: holds a finished run (metrics.json); pass --overwrite "
                             "to replace it or choose another folder")
        stopped = [p for p in [self.path / "checkpoints" / "last.ckpt", *self.path.glob("*/checkpoints/last.ckpt")]
                   if p.exists()]
        if stopped and not (self.resume or self.overwrite):
            self.release()
            raise UsageError(f"--run_dir {self.path}: holds an interrupted run ({stopped[0]}); pass --resume to "
                             "continue it or --overwrite to start over")
        if self.overwrite:
            for p in self.path.iterdir():
                if p.name != ".lock":
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return self

    def release(self) -> None:
        if self._fh is not None:
            try:
                (self.path / ".lock").unlink()
            except FileNotFoundError:
                pass
            self._fh.close()
            self._fh = None

    def discard_if_empty(self) -> None:
        """After a usage error: leave nothing behind in a folder this run created."""
        self.release()
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def folder_lock(argv: List[str]):
    """Hold ``--trainer.default_root_dir`` for one fit/validate/test/predict: two commands writing
    one folder would interleave checkpoints and metrics.json; the second exits 2."""
    root = dict(_flag_values(argv)).get("trainer.default_root_dir")
    if not root:
        yield
        return
    with RunFolder(root, lock_only=True, flag="--trainer.default_root_dir") as guard:
        try:
            yield
        except BaseException:
            guard.discard_if_empty()
            raise


def atomic_json(path: Path, obj) -> None:
    """Write JSON so a reader never sees half a file (a kill leaves the old file or the new one)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)


def resume_command(argv: List[str], verb: str) -> str:
    """``seminar-zoo VERB ...`` with the flag that resumes: ``--resume`` for experiment,
    ``--ckpt_path last`` for fit; ``--overwrite`` and any old ``--ckpt_path`` dropped."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--overwrite", "--resume") or a.startswith("--ckpt_path="):
            continue
        if a == "--ckpt_path":
            skip = True
            continue
        out.append(a)
    out += ["--resume"] if verb == "experiment" else ["--ckpt_path", "last"]
    return "seminar-zoo " + " ".join(shlex.quote(a) for a in [verb, *out])


def quiet_startup() -> None:
    """Drop start-up noise (warnings about our own choices, Lightning's litlogger advert)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*have no `validation_step`.*")  # PSU stage: no val loop by design
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # torch vs Lightning
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "lightning.pytorch.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _NoTip) for f in lg.filters):
            lg.addFilter(_NoTip())


class _NoTip(logging.Filter):
    def filter(self, record):  # Lightning's "Tip: ... install litlogger" advert on every start
        return "litlogger" not in str(record.msg)


class UsageExit(SystemExit):
    """A usage error: message on stderr, exit code 2."""

    def __init__(self, msg: str):
        print(msg, file=sys.stderr)
        super().__init__(2)


def check_data_main(argv: List[str]) -> None:
    ap = argparse.ArgumentParser(prog="seminar-zoo check-data", allow_abbrev=False,
                                 description="Validate dataset folders against the contract (DESIGN.md): every "
                                             "file, column, row and meta.json count. Exit 0 if all are valid, 2 "
                                             "with a message naming file, column and row otherwise.")
    ap.add_argument("paths", nargs="+", metavar="DIR", help="prepared dataset folder(s)")
    for d in ap.parse_args(argv).paths:
        t = validate_dataset(d)
        print(f"{d}: ok ({t.meta.get('n_users')} users, {t.n_items} items, {len(t.events['user_id'])} events)")
