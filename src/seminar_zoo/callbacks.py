"""Trainer callbacks of the ``seminar-zoo`` command (importable, so they can be tested alone).

* :class:`ThroughputMonitor`: training rows per second (metrics.json ``samples_per_second``).
* :class:`LastCheckpoint`: ``last.ckpt`` after every epoch and when the run is stopped by
  SIGTERM / SIGINT; must run after the monitored ``ModelCheckpoint`` so ``last.ckpt`` records
  this epoch's best (``fit --ckpt_path last`` then restores the best path and score exactly).
* :class:`StageTrainer`: a Trainer for one stage of ``experiment`` (SEMINAR's PSU pretraining)
  that resumes from its own ``last.ckpt`` when the experiment is resumed.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

# The signal that stopped the run (None while running): the CLI turns it into exit code 128 + signum
# and prints the command that resumes the run.
STOPPED = {"signal": None, "checkpoint": None}


def stop_signal(exception: BaseException) -> Optional[int]:
    """SIGTERM / SIGINT when ``exception`` is how Lightning reports that signal, else None."""
    if isinstance(exception, SIGTERMException):
        return int(signal.SIGTERM)
    if isinstance(exception, KeyboardInterrupt):
        return int(signal.SIGINT)
    return None


def _on_sigterm(signum, frame) -> None:
    STOPPED["signal"] = int(signum)
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        # no Trainer is running (start-up, between SEMINAR's stages): stop here. While one runs,
        # Lightning's own handler calls this one after flagging the trainer, which stops at the batch end.
        raise SIGTERMException()


@contextmanager
def stop_handler():
    """SIGTERM stops the run with exit 143 at any point, not only inside ``Trainer.fit``."""
    import threading

    STOPPED.update(signal=None, checkpoint=None)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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
    """Writes ``last.ckpt`` after every training epoch (validation included), whether or not the
    monitored metric improved, and when SIGTERM / SIGINT stops the fit (a mid-epoch checkpoint:
    Lightning resumes it at that batch, but the rest of that epoch is not bit-exact)."""

    def __init__(self, dirpath: str):
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True)

    def on_train_epoch_end(self, trainer, pl_module):
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module):
        pass

    def on_exception(self, trainer, pl_module, exception):
        sig = stop_signal(exception)
        if sig is None:
            return
        STOPPED["signal"] = sig
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            if trainer.validating:
                # mid-validation: Lightning would resume past this epoch's training and skip the rest of its
                # validation (an EarlyStopping check then finds no metric). Keep the previous epoch's last.ckpt:
                # the resumed run redoes this epoch, exactly (data and negatives are functions of the epoch).
                path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
                STOPPED["checkpoint"] = path if os.path.exists(path) else None
                return
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            STOPPED["checkpoint"] = self.last_model_path


class StageTrainer(pl.Trainer):
    """``fit`` resumes from ``resume_from`` (the stage's ``last.ckpt``) when it exists and no
    ``ckpt_path`` is given; a stage that had already finished restores and returns at once."""

    resume_from: Optional[str] = None

    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None, **kw):
        if ckpt_path is None and self.resume_from and os.path.exists(self.resume_from):
            ckpt_path = self.resume_from
        return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path=ckpt_path, **kw)
