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
import resource
import sys
import time
from pathlib import Path
from typing import List, Optional

from .data.schema import DatasetError

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")


# --------------------------------------------------------------------------- LightningCLI
def _make_cli_class():
    from pytorch_lightning import Callback
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    from .data.datamodule import LifelongSequenceDataModule
    from .models import RecModel

    class ThroughputMonitor(Callback):
        """Training rows per second of pure training time (validation excluded)."""

        def __init__(self):
            self.rows, self.seconds, self._t = 0, 0.0, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self._t is not None:
                self.seconds += time.perf_counter() - self._t
                self.rows += int(batch["label"].shape[0]) * trainer.world_size

    class LastCheckpoint(ModelCheckpoint):
        """Writes ``last.ckpt`` after every training epoch (validation included), whether or not
        the monitored metric improved, so ``fit --ckpt_path last`` always resumes the latest epoch."""

        def __init__(self, dirpath: str):
            super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True)

        def on_train_epoch_end(self, trainer, pl_module):
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

        def on_validation_end(self, trainer, pl_module):
            pass

    class ZooCLI(LightningCLI):
        def __init__(self, *args, **kwargs):
            self._zoo_args = kwargs.get("args")
            kwargs.setdefault("save_config_kwargs", {"overwrite": True})
            kwargs.setdefault("seed_everything_default", 0)
            kwargs.setdefault("trainer_defaults", {
                "max_epochs": 5,
                "default_root_dir": "runs/default",
                "logger": {"class_path": "seminar_zoo.tracking.ZooWandbLogger"},
                "enable_model_summary": False,
                "num_sanity_val_steps": 0,
                "deterministic": False,
            })
            super().__init__(RecModel, LifelongSequenceDataModule, subclass_mode_model=True,
                             auto_configure_optimizers=False, *args, **kwargs)

        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.data_meta", "model.init_args.data_meta", apply_on="instantiate")
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.monitor": "val/auc", "checkpoint.mode": "max",
                                 "checkpoint.save_last": False, "checkpoint.filename": "best-{epoch}"})

        def _cfg(self):
            return self.config[self.subcommand] if self.subcommand else self.config

        def _parse_ckpt_path(self) -> None:
            """The checkpoint's hyper-parameters replace the config's (Lightning), but not the
            ``--model.init_args.X V`` given on the command line (``test --ckpt_path C --model.init_args.retrieval pq``)."""
            import yaml

            super()._parse_ckpt_path()
            argv, sub = list(sys.argv[1:] if self._zoo_args is None else self._zoo_args), self.config.get("subcommand")
            pre, over = "--model.init_args.", {}
            for i, a in enumerate(argv):
                if a.startswith(pre) and sub and self.config[sub].get("ckpt_path"):
                    key, eq, val = a[len(pre):].partition("=")
                    over[key] = yaml.safe_load(val if eq else argv[i + 1] if i + 1 < len(argv) else "")
            if over:
                mc = self.config[sub].model
                self.config = self.parser.parse_object({sub: {"model": {"class_path": mc.class_path, "init_args": over}}},
                                                       self.config)

        def before_instantiate_classes(self) -> None:
            cfg = self._cfg()
            root = cfg.trainer.default_root_dir or "runs/default"
            if cfg.checkpoint.dirpath is None:
                cfg.checkpoint.dirpath = os.path.join(root, "checkpoints")
            lg = cfg.trainer.logger
            lgs = lg if isinstance(lg, list) else [lg]
            for one in lgs:
                if hasattr(one, "class_path") and one.class_path.endswith("ZooWandbLogger"):
                    if one.init_args.get("save_dir") is None:
                        one.init_args.save_dir = root
            if cfg.trainer.callbacks is None:
                cfg.trainer.callbacks = []

        def after_test(self) -> None:
            """`seminar-zoo test` writes metrics.json into the run folder (trainer.default_root_dir)."""
            if not self.trainer.is_global_zero:
                return
            from .run_metrics import run_record, write_metrics

            cfg = self._cfg()
            rec = run_record(self.model, self.datamodule, self.trainer, self.trainer.callback_metrics,
                             seed=cfg.get("seed_everything"), checkpoint=str(cfg.get("ckpt_path")))
            write_metrics(Path(self.trainer.default_root_dir), rec)

        def instantiate_trainer(self, **kwargs):
            self.throughput = ThroughputMonitor()
            extra = kwargs.pop("callbacks", None) or []
            last = LastCheckpoint(self._cfg().checkpoint.dirpath)
            return super().instantiate_trainer(callbacks=[*extra, self.throughput, last], **kwargs)

    return ZooCLI


def _quiet_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    os.environ.setdefault("WANDB_SILENT", "true")


def lightning_main(args: Optional[List[str]] = None):
    cls = _make_cli_class()
    return cls(args=args)


# --------------------------------------------------------------------------- experiment
class ExperimentContext:
    """What a multi-stage model's ``before_fit`` / ``before_test`` hooks may use."""

    def __init__(self, run_dir: Path, cli, name: str):
        self.run_dir, self.cli, self.name = run_dir, cli, name
        self.datamodule = cli.datamodule
        self.trainer = cli.trainer
        self.config = cli.config

    def make_trainer(self, subdir: str, **overrides):
        """A Trainer with the experiment's trainer settings, logging under ``run_dir/subdir``."""
        import pytorch_lightning as pl

        from .tracking import ZooWandbLogger

        t = self.config.trainer
        kw = dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, precision=t.precision,
                  max_epochs=t.max_epochs, num_nodes=t.num_nodes, enable_model_summary=False,
                  default_root_dir=str(self.run_dir / subdir), num_sanity_val_steps=0,
                  limit_train_batches=t.limit_train_batches, enable_progress_bar=t.enable_progress_bar)
        kw["logger"] = ZooWandbLogger(save_dir=str(self.run_dir / subdir), name=f"{self.name}-{subdir}")
        kw.update(overrides)
        return pl.Trainer(**kw)


def experiment_main(argv: List[str]) -> dict:
    import torch

    ap = argparse.ArgumentParser(prog="seminar-zoo experiment", add_help=False)
    ap.add_argument("--run_dir", "--run-dir", dest="run_dir", required=True)
    ap.add_argument("--name", default=None, help="label of this run in tables (default: the model class)")
    ap.add_argument("-h", "--help", action="store_true")
    known, rest = ap.parse_known_args(argv)
    if known.help:
        print("usage: seminar-zoo experiment --config CFG [--data.path DIR] --run_dir RUN [--name LABEL] [overrides]\n"
              "Fits, tests the best checkpoint and writes RUN/metrics.json. Overrides are LightningCLI fit options.")
        lightning_main(["fit", "--help"])
        return {}
    run_dir = Path(os.path.expandvars(known.run_dir))  # wandb agent: runs/sweeps/x/$WANDB_RUN_ID
    run_dir.mkdir(parents=True, exist_ok=True)
    cls = _make_cli_class()
    cli = cls(args=["--trainer.default_root_dir", str(run_dir), *rest], run=False)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    name = known.name or type(model).__name__
    ctx = ExperimentContext(run_dir, cli, name)
    t0 = time.time()
    model.before_fit(ctx)
    trainer.fit(model, dm)
    fit_seconds = time.time() - t0
    ckpts = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    best = ckpts[0].best_model_path if ckpts else ""
    best = best or next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
    if best:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state)
    model.before_test(ctx)
    t1 = time.time()
    res = trainer.test(model, dm, verbose=False)[0]
    test_seconds = time.time() - t1
    from .run_metrics import run_record, write_metrics

    tp = cli.throughput
    seed = int(cli.config.seed_everything) if cli.config.seed_everything is not None else None
    out = run_record(model, dm, trainer, res, seed=seed, fit_seconds=fit_seconds, name=name,
                     samples_per_second=tp.rows / tp.seconds if tp.seconds else None,
                     peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     best_checkpoint=best, epochs=trainer.current_epoch, test_seconds=test_seconds)
    if trainer.is_global_zero:
        write_metrics(run_dir / "metrics.json", out)
        if hasattr(trainer.logger, "experiment") and hasattr(trainer.logger.experiment, "summary"):
            try:
                trainer.logger.experiment.summary.update({k: v for k, v in out.items() if v is not None})
            except Exception:  # a disabled run has no summary to update
                pass
        print(json.dumps({k: out[k] for k in out if k.startswith("test/") or k in ("name", "fit_seconds")}, indent=1))
    return out


# --------------------------------------------------------------------------- prepare
def prepare_main(argv: List[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: seminar-zoo prepare {synthetic,movielens,kuaisar,amazon} --out DIR [...]")
        return
    which, rest = argv[0], argv[1:]
    if which == "synthetic":
        from .data.synthetic import generate

        ap = argparse.ArgumentParser(prog="seminar-zoo prepare synthetic")
        ap.add_argument("--out", required=True)
        ap.add_argument("--users", type=int, default=2000)
        ap.add_argument("--items", type=int, default=2000)
        ap.add_argument("--seq-len", type=int, default=200)
        ap.add_argument("--seed", type=int, default=0)
        a = ap.parse_args(rest)
        generate(a.out, users=a.users, items=a.items, seq_len=a.seq_len, seed=a.seed, verbose=True)
        return
    _dispatch(f"seminar_zoo.data.prepare.{which}", rest, f"prepare {which}")


def _dispatch(module: str, argv: List[str], verb: str):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise SystemExit(f"seminar-zoo: unknown command '{verb}'")
        raise
    return mod.main(argv)


# --------------------------------------------------------------------------- entry point
def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_warnings()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    verb, rest = argv[0], argv[1:]
    try:
        if verb in LIGHTNING_VERBS:
            lightning_main(argv)
        elif verb == "experiment":
            experiment_main(rest)
        elif verb == "prepare":
            prepare_main(rest)
        elif verb == "check-data":
            from .data.schema import validate_dataset

            for d in rest:
                t = validate_dataset(d)
                print(f"{d}: ok ({t.meta.get('n_users')} users, {t.n_items} items, {len(t.events['user_id'])} events)")
        elif verb in ("sweep", "compare"):
            _dispatch(f"seminar_zoo.{verb}", rest, verb)
        elif verb in ("export", "serve-bench"):
            from . import serving

            (serving.export_main if verb == "export" else serving.serve_bench_main)(rest)
        elif verb == "bench":
            # benchmarks live in the repository (experiments/bench/NAME.py), not in the package
            import runpy

            roots = [Path(__file__).resolve().parents[2], Path.cwd()]
            files = [r / "experiments" / "bench" / f"{rest[0]}.py" for r in roots] if rest else []
            found = [f for f in files if rest and rest[0].isidentifier() and f.is_file()]
            if not found:
                raise SystemExit(f"usage: seminar-zoo bench NAME [options], NAME a file experiments/bench/NAME.py of "
                                 f"the seminar-zoo repository (run from a checkout); not found: "
                                 f"{', '.join(map(str, files)) or 'no NAME given'}")
            runpy.run_path(str(found[0]), run_name="seminar_zoo_bench")["main"](rest[1:])
        else:
            raise SystemExit(f"seminar-zoo: unknown command '{verb}' (see seminar-zoo --help)")
    except DatasetError as e:
        print(f"seminar-zoo: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
