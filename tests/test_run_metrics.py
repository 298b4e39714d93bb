"""The one metrics.json writer: fields, max_len naming, n_test and the dataset fingerprint."""
import json

import pytorch_lightning as pl

from seminar_zoo.data.datamodule import LifelongSequenceDataModule
from seminar_zoo.models.din import DIN
from seminar_zoo.data.schema import dataset_fingerprint
from seminar_zoo.run_metrics import run_record, write_metrics


def test_record_fields_and_n_test(tiny_data, tmp_path):
    dm = LifelongSequenceDataModule(str(tiny_data), max_len=20, eval_batch_size=3000, seed=4)
    model = DIN(data_meta=dm.data_meta, embed_dim=8, max_len=5, tower_dims=[8])
    tr = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, limit_test_batches=2, default_root_dir=str(tmp_path))
    res = tr.test(model, dm, verbose=False)[0]
    rec = run_record(model, dm, tr, res, seed=7, fit_seconds=1.5, name="din-x")
    assert rec["model"] == "DIN" and rec["name"] == "din-x" and rec["protocol"] == "ranking"
    assert rec["model_max_len"] == 5 and rec["data_max_len"] == 20 and rec["max_len"] == 5
    assert rec["seed"] == 7 and rec["data_seed"] == 4 and rec["n_eval_negatives"] == 99
    assert rec["n_test"] == 60  # 2 batches of 30 lists (3000 rows) scored, not the 120 of the split
    assert rec["fit_seconds"] == 1.5 and "test/auc_pooled" in rec and "test/auc_pb" not in rec
    assert rec["dataset"] == "synthetic" and rec["data_fingerprint"] == dataset_fingerprint(dm.meta)
    assert rec["loss"] == "bce" and rec["tower_input"] == "auto" and rec["train_window"] is None
    assert rec["train_negatives"] == 1 and rec["train_stride"] == 1 and "best_val" not in rec  # no checkpointing
    out = write_metrics(tmp_path / "run", rec)
    assert out == tmp_path / "run" / "metrics.json" and json.loads(out.read_text())["n_test"] == 60


def test_fingerprint_follows_counts():
    a = {"n_users": 10, "n_items": 20, "n_events": 100, "name": "synthetic"}
    assert dataset_fingerprint(a) == dataset_fingerprint(dict(a, licence="x"))
    assert dataset_fingerprint(a) != dataset_fingerprint(dict(a, n_users=11))
