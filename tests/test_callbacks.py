"""The run tooling's Trainer callbacks (seminar_zoo.callbacks) and ZooCLI (seminar_zoo.lightning_cli), on their
own: a Lightning demo model on CPU, no dataset, no subprocess."""
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.utilities.exceptions import SIGTERMException

from seminar_zoo import callbacks as CB


class ValModel(BoringModel):
    """BoringModel logging a validation metric that improves every epoch (lowest at the last, epoch 2)."""

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(2 - self.current_epoch))
        return super().validation_step(batch, batch_idx)


class StopAt(CB.Callback):
    """Raises what Lightning raises on SIGTERM, at one global step."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise SIGTERMException()


def _trainer(root, *callbacks, **kw):
    kw = {"max_epochs": 3, "limit_train_batches": 4, "limit_val_batches": 2, "logger": False,
          "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
          "default_root_dir": str(root), **kw}
    return kw.pop("cls", Trainer)(callbacks=list(callbacks), **kw)


def test_throughput_monitor_counts_training_rows_and_time():
    tp = CB.ThroughputMonitor()
    trainer = SimpleNamespace(world_size=2)
    for _ in range(3):
        tp.on_train_batch_start(trainer, None, None, 0)
        tp.on_train_batch_end(trainer, None, None, {"label": torch.zeros(5)}, 0)
    assert tp.rows == 3 * 5 * 2 and tp.seconds > 0
    tp.on_train_batch_end(trainer, None, None, {"label": torch.zeros(5)}, 0)  # no start: still counted once more
    assert tp.rows == 40


def test_stop_signal_names_sigterm_and_sigint_only():
    assert CB.stop_signal(SIGTERMException()) == signal.SIGTERM
    assert CB.stop_signal(KeyboardInterrupt()) == signal.SIGINT
    assert CB.stop_signal(ValueError("x")) is None


def test_stop_handler_turns_sigterm_into_an_exception_and_restores_the_old_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SIGTERMException):
        with CB.stop_handler():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises before the next statement
            for _ in range(1000):
                pass
    assert CB.STOPPED["signal"] == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    with CB.stop_handler():  # entering resets the record
        assert CB.STOPPED == {"signal": None, "checkpoint": None}


def test_last_checkpoint_is_written_every_epoch_after_the_monitored_best(tmp_path):
    best = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/score", mode="min", filename="best-{epoch}")
    _trainer(tmp_path, best, CB.LastCheckpoint(str(tmp_path / "ck"))).fit(ValModel())
    assert sorted(os.listdir(tmp_path / "ck")) == ["best-epoch=2.ckpt", "last.ckpt"]
    state = torch.load(tmp_path / "ck" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2
    saved = [v for k, v in state["callbacks"].items() if "val/score" in k]
    # last.ckpt holds the monitored callback's state after its own epoch's best: resuming restores it exactly
    assert saved and saved[0]["best_model_path"].endswith("best-epoch=2.ckpt") and float(saved[0]["best_model_score"]) == 0


def test_last_checkpoint_on_sigterm_saves_mid_epoch_and_records_it(tmp_path):
    CB.STOPPED.update(signal=None, checkpoint=None)
    last = CB.LastCheckpoint(str(tmp_path / "ck"))
    with pytest.raises(SIGTERMException):
        _trainer(tmp_path, StopAt(6), last).fit(BoringModel())
    assert CB.STOPPED["signal"] == signal.SIGTERM and CB.STOPPED["checkpoint"] == last.last_model_path
    state = torch.load(last.last_model_path, map_location="cpu", weights_only=False)
    assert state["global_step"] == 6  # epoch 1, batch 2: where Lightning resumes
    CB.STOPPED.update(signal=None, checkpoint=None)


def test_stage_trainer_resumes_from_its_last_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    first = _trainer(tmp_path, CB.LastCheckpoint(str(ck)), max_epochs=1, cls=CB.StageTrainer)
    first.fit(BoringModel())
    assert first.global_step == 4
    again = _trainer(tmp_path, CB.LastCheckpoint(str(ck)), max_epochs=2, cls=CB.StageTrainer)
    again.resume_from = str(ck / "last.ckpt")
    again.fit(BoringModel())
    assert again.global_step == 8  # epoch 0 restored, only epoch 1 trained
    fresh = _trainer(tmp_path / "fresh", max_epochs=1, cls=CB.StageTrainer, enable_checkpointing=False)
    fresh.resume_from = str(tmp_path / "missing.ckpt")  # no checkpoint yet: a fresh fit
    fresh.fit(BoringModel())
    assert fresh.global_step == 4


def test_zoo_cli_is_importable_and_is_what_the_command_uses():
    from seminar_zoo.cli import _make_cli_class
    from seminar_zoo.lightning_cli import ZooCLI

    assert _make_cli_class() is ZooCLI
