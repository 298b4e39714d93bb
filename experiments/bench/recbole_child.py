"""Runs inside RecBole's own virtual environment (numpy<2); called by recbole_parity.py.

Reads ``job.json`` (atomic-file folder, model, seed, epochs, ...) and ``histories.npy``
([U, L] our item ids, right-aligned, 0 = padding), trains the RecBole model with
RecBole's own trainer on the atomic files, then writes ``scores.npy``: [U, n_items + 1]
scores over OUR item ids (column 0 unused) from ``model.full_sort_predict`` on exactly
our histories, plus ``recbole_result.json`` (RecBole's own valid/test metrics).
"""
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

# RecBole 1.2.1 calls torch.load(checkpoint) without weights_only; torch >= 2.6 defaults to True.
torch.load = partial(torch.load, weights_only=False)

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.utils import get_model, get_trainer, init_seed  # noqa: E402


def resume_if_interrupted(trainer, last: Path) -> dict:
    """Per-epoch resume for long peer runs (RecBole SASRec on one CPU thread takes hours; a session can
    end mid-run). RecBole saves a checkpoint only when validation improves; here, at the start of every
    epoch after the first, the trainer's whole state after the previous epoch's validation (weights,
    optimizer, patience counter, best score and the best model's file, global RNG states) is written to
    ``last``, and a later run of the same job continues from it. Not bit-identical to an uninterrupted
    run (RecBole's data loader keeps its own shuffling generator, which is not saved), the same recipe."""
    import random

    state = {}
    if last.exists():
        ck = torch.load(last, map_location="cpu")
        trainer.resume_checkpoint(last)  # weights, optimizer, start_epoch, cur_step, best score
        trainer.saved_model_file = ck["best_file"]  # resume_checkpoint points it at `last`
        trainer.best_valid_result = ck["best_valid_result"]
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        state = {"best_valid_result": ck["best_valid_result"], "fit_seconds": ck["fit_seconds"]}
        print(f"resumed from {last} at epoch {trainer.start_epoch} (best so far {trainer.best_valid_score})",
              flush=True)
    train_epoch, t_start, before = trainer._train_epoch, time.time(), state.get("fit_seconds", 0.0)

    def train_epoch_saving_last(train_data, epoch_idx, *a, **kw):
        if epoch_idx > trainer.start_epoch:  # the previous epoch and its validation are complete
            ck = {"config": trainer.config, "epoch": epoch_idx - 1, "cur_step": trainer.cur_step,
                  "best_valid_score": trainer.best_valid_score, "state_dict": trainer.model.state_dict(),
                  "other_parameter": trainer.model.other_parameter(), "optimizer": trainer.optimizer.state_dict(),
                  "best_file": trainer.saved_model_file, "best_valid_result": trainer.best_valid_result,
                  "fit_seconds": before + time.time() - t_start,
                  "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
            tmp = last.with_suffix(".tmp")
            torch.save(ck, tmp, pickle_protocol=4)
            tmp.replace(last)
        return train_epoch(train_data, epoch_idx, *a, **kw)

    trainer._train_epoch = train_epoch_saving_last
    return state


def main(job_dir: str) -> None:
    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    cfg = {
        "data_path": job["data_path"], "dataset": job["dataset"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": job["max_len"], "loss_type": "CE", "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit", "MRR"], "topk": [10], "valid_metric": "NDCG@10",
        "epochs": job["epochs"], "stopping_step": job["stopping_step"], "seed": job["seed"],
        "reproducibility": True, "train_batch_size": 256, "eval_batch_size": 4096,
        "learning_rate": job["lr"], "device": "cpu", "use_gpu": False, "show_progress": False,
        "checkpoint_dir": str(job_dir / "saved"), "log_wandb": False, "state": "INFO",
        **job.get("model_args", {}),
    }
    config = Config(model=job["model"], config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    resumed = resume_if_interrupted(trainer, job_dir / "saved" / "last.pth")
    t0 = time.time()
    best_valid, valid_result = trainer.fit(train, valid, saved=True, show_progress=False)
    valid_result = valid_result if valid_result is not None else resumed.get("best_valid_result")
    fit_s = time.time() - t0 + resumed.get("fit_seconds", 0.0)
    test_result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    model.eval()

    tok = dataset.field2id_token["item_id"]  # internal id -> our id as a string ('[PAD]' at 0)
    ours_to_rb = np.zeros(job["n_items"] + 1, np.int64)
    for rb_id, t in enumerate(tok):
        if rb_id and t != "[PAD]":
            ours_to_rb[int(t)] = rb_id
    hist = np.load(job_dir / "histories.npy")  # [U, L], right-aligned
    n_valid = (hist > 0).sum(1)
    left = np.zeros_like(hist)  # RecBole wants left-aligned sequences
    for i, n in enumerate(n_valid):
        if n:
            left[i, :n] = ours_to_rb[hist[i, -n:]]
    scores = np.zeros((len(hist), job["n_items"] + 1), np.float32)
    known = ours_to_rb > 0
    with torch.no_grad():
        for s in range(0, len(hist), 512):
            inter = Interaction({"item_id_list": torch.from_numpy(left[s:s + 512]),
                                 "item_length": torch.from_numpy(np.maximum(n_valid[s:s + 512], 1))})
            rb = model.full_sort_predict(inter).view(len(left[s:s + 512]), -1).numpy()
            scores[s:s + 512, known] = rb[:, ours_to_rb[known]]
            scores[s:s + 512, ~known] = -np.inf  # items RecBole never saw (none on ML-100K)
    np.save(job_dir / "scores.npy", scores)
    (job_dir / "recbole_result.json").write_text(json.dumps({
        "best_valid": float(best_valid), "valid": {k: float(v) for k, v in valid_result.items()},
        "test_recbole_protocol": {k: float(v) for k, v in test_result.items()}, "fit_seconds": fit_s,
        "epochs_run": int(trainer.cur_epoch if hasattr(trainer, "cur_epoch") else -1)}))


if __name__ == "__main__":
    main(sys.argv[1])
