"""``ZooCLI``: the LightningCLI of ``seminar-zoo fit | validate | test | predict`` and of ``experiment``.

Every RecModel subclass is a ``--model`` (subclass mode) over the shared
``LifelongSequenceDataModule``; YAML configs merge left to right (``--config A --config B``: B's
settings win, so an overlay such as ``experiments/ablations/no_gsu.yaml`` holds only what it changes).
What it adds to LightningCLI:

* defaults: 5 epochs, ``runs/default``, the W&B logger (offline unless ``WANDB_MODE``), no sanity
  validation, deterministic kernels (exact resume needs them), seed 0, no option abbreviations;
* a ``checkpoint`` section (ModelCheckpoint on ``val/auc``, max) writing to ``ROOT/checkpoints``,
  then :class:`~seminar_zoo.callbacks.LastCheckpoint` after it (``last.ckpt`` each epoch and on
  SIGTERM / SIGINT) and :class:`~seminar_zoo.callbacks.ThroughputMonitor` (``self.throughput``);
* ``test --ckpt_path C --model.init_args.X V``: the command line's model settings win over the
  checkpoint's hyper-parameters;
* ``test`` writes ``metrics.json`` to the run folder (``after_test``).

Importing this module imports Lightning; ``seminar_zoo.cli`` imports it only when a verb needs it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from .callbacks import LastCheckpoint, ThroughputMonitor
from .data.datamodule import LifelongSequenceDataModule
from .models import RecModel


class ZooCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        self._zoo_args = kwargs.get("args")
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # "--trainer.max_epoch 1" must be an error, not silently max_epochs (subcommands inherit it)
        kwargs.setdefault("parser_kwargs", {"allow_abbrev": False})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("trainer_defaults", {
            "max_epochs": 5,
            "default_root_dir": "runs/default",
            "logger": {"class_path": "seminar_zoo.tracking.ZooWandbLogger"},
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            # multi-threaded CPU kernels (e.g. index_add in embedding backward on large batches) are
            # not bitwise reproducible otherwise, and exact resume needs them to be
            "deterministic": "warn",
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
        """`seminar-zoo test` writes metrics.json to the run folder: --trainer.default_root_dir when
        given, else the folder holding the checkpoint's ``checkpoints/`` (RUN/checkpoints/x.ckpt -> RUN)."""
        if not self.trainer.is_global_zero:
            return
        from .run_metrics import run_record, write_metrics

        cfg = self._cfg()
        ckpt = cfg.get("ckpt_path")
        folder = Path(self.trainer.default_root_dir)
        if ckpt and os.path.exists(str(ckpt)) and str(cfg.trainer.default_root_dir) == "runs/default":
            folder = Path(ckpt).parent
            folder = folder.parent if folder.name == "checkpoints" else folder
        rec = run_record(self.model, self.datamodule, self.trainer, self.trainer.callback_metrics,
                         seed=cfg.get("seed_everything"), checkpoint=str(ckpt))
        write_metrics(folder, rec)

    def instantiate_trainer(self, **kwargs):
        self.throughput = ThroughputMonitor()
        # --trainer.callbacks from the command line / config, which a callbacks kwarg would replace
        extra = [*(self._get(self.config_init, "trainer", default={}).get("callbacks") or []),
                 *(kwargs.pop("callbacks", None) or [])]
        return super().instantiate_trainer(callbacks=[*extra, self.throughput], **kwargs)

    def _instantiate_trainer(self, config, callbacks):
        # last.ckpt must be written after the monitored ModelCheckpoint has recorded this epoch's
        # best: Lightning keeps checkpoint callbacks in list order at the end of the list, so the
        # last-checkpoint callback goes after the config's "checkpoint" one (tests/test_callbacks.py).
        last = LastCheckpoint(self._cfg().checkpoint.dirpath)
        return super()._instantiate_trainer(config, [*callbacks, last])
