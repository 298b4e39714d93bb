"""The ``seminar-zoo experiment`` pipeline: the stages of a run, outside the models.

:func:`run` takes the LightningCLI-built model, DataModule and Trainer and runs

1. **pretrain** (models with a pretraining stage, SEMINAR: :func:`pretrain_psu`): a PSU with the model's
   ``embed_dim`` / ``num_heads`` (and its ``pretrain`` settings) is fitted on the same DataModule by its own
   Trainer (:meth:`ExperimentContext.make_trainer`, logging under ``RUN/psu``), saved as
   ``RUN/psu/psu.ckpt`` and **restored** into the model; skipped with ``psu_ckpt`` or ``pretrain.epochs 0``;
2. **finetune**: ``trainer.fit`` (from ``RUN/checkpoints/last.ckpt`` when resumed);
3. **test** the best checkpoint (by ``val/auc``): for ``retrieval: pq`` the codebooks are fitted first and
   written into that checkpoint (:func:`write_codebooks`, so ``seminar-zoo test --ckpt_path BEST`` reuses
   them), then ``trainer.test``; ``RUN/metrics.json`` gets the test metrics and the model's test extras.

Every stage resumes: a stopped PSU stage continues from ``RUN/psu/checkpoints/last.ckpt``, a finished one
restores and returns at once. :class:`EpochLog` prints one line per training epoch of each stage.
"""
from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info


class EpochLog(pl.Callback):
    """One log line per training epoch of a stage (issue 16 §1), with or without the progress bar:
    ``[psu] epoch 1/2: loss 1.234, next_pair 0.567, ... | 12.3 s, 456 samples/s``. The losses are the
    row-weighted means of the ``train/*`` values logged at each step; samples are training rows (all processes)."""

    def __init__(self, stage: str):
        self.stage = stage
        self._reset()

    def _reset(self) -> None:
        self._t0, self._rows, self._sums = time.perf_counter(), 0, defaultdict(float)

    def on_train_start(self, trainer, pl_module) -> None:
        self._reset()  # a fit resumed mid-epoch does not call on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = int(batch["label"].shape[0])
        self._rows += rows
        for k, v in trainer.callback_metrics.items():
            if k.startswith("train/"):
                self._sums[k[len("train/"):]] += float(v) * rows

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sec = time.perf_counter() - self._t0
        n = max(self._rows, 1)
        keys = sorted(self._sums, key=lambda k: (k != "loss", k))
        losses = ", ".join(f"{k} {self._sums[k] / n:.4f}" for k in keys)
        rate = self._rows * trainer.world_size / max(sec, 1e-9)
        rank_zero_info(f"[{self.stage}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {losses or 'no loss logged'}"
                       f" | {sec:.1f} s, {rate:.0f} samples/s")


class ExperimentContext:
    """What the stages share: the run folder, the CLI's DataModule / Trainer / config, the run's label."""

    def __init__(self, run_dir: Path, cli, name: str, resume: bool = False):
        self.run_dir, self.cli, self.name, self.resume = Path(run_dir), cli, name, resume
        self.datamodule = cli.datamodule
        self.trainer = cli.trainer
        self.config = cli.config

    def make_trainer(self, subdir: str, **overrides):
        """A Trainer with the experiment's trainer settings, logging under ``run_dir/subdir``, writing
        ``run_dir/subdir/checkpoints/last.ckpt`` each epoch and on SIGTERM/SIGINT; when the experiment
        is resumed, its ``fit`` continues from that checkpoint."""
        from .callbacks import LastCheckpoint, StageTrainer
        from .tracking import ZooWandbLogger

        t = self.config.trainer
        kw = dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, precision=t.precision,
                  max_epochs=t.max_epochs, num_nodes=t.num_nodes, enable_model_summary=False,
                  default_root_dir=str(self.run_dir / subdir), num_sanity_val_steps=0,
                  limit_train_batches=t.limit_train_batches, enable_progress_bar=t.enable_progress_bar,
                  deterministic=t.deterministic)
        kw["logger"] = ZooWandbLogger(save_dir=str(self.run_dir / subdir), name=f"{self.name}-{subdir}")
        kw.update(overrides)
        ckpt_dir = self.run_dir / subdir / "checkpoints"
        kw["enable_checkpointing"] = True  # the stage's own last.ckpt is what makes it resumable
        kw["callbacks"] = [*(kw.get("callbacks") or []), LastCheckpoint(str(ckpt_dir))]
        trainer = StageTrainer(**kw)
        if self.resume:
            trainer.resume_from = str(ckpt_dir / "last.ckpt")
        return trainer


def pretrain_psu(model, ctx: ExperimentContext) -> None:
    """Stage 1 for SEMINAR: pretrain the PSU (unless ``psu_ckpt``), save it, restore it. Says at start-up which
    settings each stage uses, and logs one line per epoch of both stages (:class:`EpochLog`)."""
    from .models.seminar import PSU

    cfg, hp, t = model.pretrain_cfg, model.hparams, ctx.trainer
    kw = cfg.psu_kwargs(hp)
    epochs, limit = int(cfg.epochs), cfg.limit_train_batches
    skip = f"skipped (psu_ckpt {hp.psu_ckpt})" if hp.psu_ckpt else "skipped (pretrain.epochs 0)" if not epochs else None
    psu_line = skip or (f"{epochs} epochs (pretrain.epochs; trainer.max_epochs does not apply), lr {kw['lr']}, "
                        f"limit_train_batches {limit if limit is not None else t.limit_train_batches} "
                        f"(pretrain.limit_train_batches, else trainer's), "
                        f"losses w_align/w_next/w_relevance {cfg.w_align}/{cfg.w_next}/{cfg.w_relevance}")
    rank_zero_info(f"[seminar] stage 1 (psu pretraining): {psu_line}; stage 2 (finetune): {t.max_epochs} epochs "
                   f"(trainer.max_epochs), lr {hp.lr}, limit_train_batches {t.limit_train_batches}, "
                   f"retrieval {hp.retrieval} at test time")
    if not any(isinstance(c, EpochLog) for c in t.callbacks):
        t.callbacks.append(EpochLog("finetune"))
    if skip:
        return
    psu = PSU(data_meta=hp.data_meta, embed_dim=hp.embed_dim, num_heads=hp.num_heads, **kw)
    over = dict(max_epochs=epochs, enable_checkpointing=False, callbacks=[EpochLog("psu")])
    if limit is not None:
        over["limit_train_batches"] = limit
    trainer = ctx.make_trainer("psu", **over)
    trainer.fit(psu, ctx.datamodule)
    path = Path(ctx.run_dir) / "psu" / "psu.ckpt"
    trainer.save_checkpoint(str(path))
    if trainer.strategy.world_size > 1:
        trainer.strategy.barrier("psu_saved")
    model.hparams.psu_ckpt = str(path)
    model.restore_psu(str(path))


def write_codebooks(model, ctx: ExperimentContext, best: str) -> None:
    """Before the test of a ``retrieval: pq`` model: fit the codebooks and write them into the best checkpoint."""
    model.fit_pq(ctx.datamodule)
    if best and Path(best).is_file() and ctx.trainer.is_global_zero:
        ckpt = torch.load(best, map_location="cpu", weights_only=False)
        ckpt["state_dict"].update(model.codebook_state())
        torch.save(ckpt, best)


def best_checkpoint(trainer) -> str:
    """The monitored best checkpoint, else the last one written ('' when none)."""
    ckpts = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    best = ckpts[0].best_model_path if ckpts else ""
    return best or next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")


def run(cli, run_dir: Path, label: Optional[str], resume: bool) -> dict:
    """pretrain -> restore -> finetune -> test (module docstring); writes and returns RUN/metrics.json's record."""
    from .run_metrics import run_record, write_metrics

    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    name = label or type(model).__name__
    ctx = ExperimentContext(run_dir, cli, name, resume=resume)
    t0 = time.time()
    if hasattr(model, "restore_psu"):
        pretrain_psu(model, ctx)
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    trainer.fit(model, dm, ckpt_path=str(last) if resume and last.exists() else None)
    fit_seconds = time.time() - t0
    best = best_checkpoint(trainer)
    if best:
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    if name != type(model).__name__ and hasattr(model, "run_name"):
        model.run_name = name
    if getattr(model, "pq_index", None) is not None:
        write_codebooks(model, ctx, best)
    t1 = time.time()
    res = trainer.test(model, dm, verbose=False)[0]
    test_seconds = time.time() - t1
    tp = cli.throughput
    seed = int(cli.config.seed_everything) if cli.config.seed_everything is not None else None
    out = run_record(model, dm, trainer, res, seed=seed, fit_seconds=fit_seconds, name=name,
                     samples_per_second=tp.rows / tp.seconds if tp.seconds else None,
                     peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     best_checkpoint=best, epochs=trainer.current_epoch, test_seconds=test_seconds)
    if trainer.is_global_zero:
        write_metrics(Path(run_dir) / "metrics.json", out)
        if hasattr(trainer.logger, "experiment") and hasattr(trainer.logger.experiment, "summary"):
            try:
                trainer.logger.experiment.summary.update({k: v for k, v in out.items() if v is not None})
            except Exception:  # a disabled run has no summary to update
                pass
        print(json.dumps({k: out[k] for k in out if k.startswith("test/") or k in ("name", "fit_seconds")}, indent=1))
    return out
