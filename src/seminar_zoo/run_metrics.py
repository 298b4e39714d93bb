"""The one ``metrics.json`` writer, shared by ``seminar-zoo test`` and ``experiment``.

Both paths record the same fields, so ``seminar-zoo compare`` groups their runs alike:
``model``, ``name``, ``dataset`` (name), ``data_fingerprint`` (name, counts and a hash of
meta.json's counts and generator arguments: :func:`~seminar_zoo.data.schema.dataset_fingerprint`),
``protocol``, ``n_eval_negatives`` (ranking only),
``repeat_targets``, ``data_seed`` and ``seed`` (seed_everything), every ``test/*``
metric, the model's extras, ``fit_seconds``, ``model_max_len`` (the model's own cut,
None = all), ``data_max_len`` (what the DataModule gathers), ``max_len`` (the
effective one) and ``n_test`` (lists actually scored, over all processes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .data.schema import dataset_fingerprint


def run_record(model, dm, trainer, results: dict, seed: Optional[int], fit_seconds: Optional[float] = None,
               **extra) -> dict:
    """The metrics.json record of one tested model (``results``: the ``test/*`` metrics)."""
    hp = dm.hparams
    model_max_len = model.hparams.get("max_len")
    n_test = getattr(model, "n_test_scored", None)
    out = {
        "model": type(model).__name__,
        "name": type(model).__name__,
        "dataset": dm.data_meta["name"],
        "data_fingerprint": dataset_fingerprint(dm.meta),
        "data_path": str(dm.path),
        "protocol": hp.protocol,
        "n_eval_negatives": hp.n_eval_negatives if hp.protocol == "ranking" else None,
        "repeat_targets": hp.get("repeat_targets", "keep"),
        "data_seed": hp.seed,
        "seed": seed,
        "model_max_len": model_max_len,
        "data_max_len": hp.max_len,
        "max_len": min(model_max_len or hp.max_len, hp.max_len),
        "n_test": int(n_test) if n_test is not None else int(dm.split_sizes()["test"]),
        "fit_seconds": fit_seconds,
        "world_size": trainer.world_size,
        # the training recipe (README "Training recipe")
        "loss": model.hparams.get("loss", "bce"),
        "tower_input": model.hparams.get("tower_input", "auto"),
        "train_window": hp.get("train_window"),
        "train_negatives": hp.get("train_negatives"),
        "train_stride": hp.get("train_stride", 1),
    }
    best = [c for c in getattr(trainer, "checkpoint_callbacks", []) if getattr(c, "monitor", None)]
    if best and best[0].best_model_score is not None:  # model selection on validation, for tuning
        out["best_val"] = {"monitor": best[0].monitor, "score": float(best[0].best_model_score)}
    out.update(extra)
    out.update({k: float(v) for k, v in results.items() if k.startswith("test/")})
    out.update(getattr(model, "extra_test_metrics", {}) or {})
    return out


def write_metrics(path: Path, record: dict) -> Path:
    """Atomically write ``record`` to ``path`` (a run folder or a .json file)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)
    return path
