"""Popularity: the no-learning reference row of every table.

The logit of an item is ``log(1 + n)``, with ``n`` its number of positive behaviours in
the DataModule's training part of the log (:meth:`LifelongSequenceDataModule.train_item_counts`:
everything before each user's validation target under ranking/full, the requests before
validation under ctr). It ignores the user, so it scores through the same metrics code
as every model and shows how much of a metric popularity alone explains (issue 11 point 5).

Training does nothing: ``training_step`` returns None, so Lightning skips the optimiser
step and an epoch only reads the data; ``experiment`` and ``fit`` work unchanged.
"""
from __future__ import annotations

import warnings
from typing import Dict

import torch

from .base import RecModel


warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")  # on purpose, see above


class Popularity(RecModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # persistent: a checkpoint tested later scores with the counts it was fitted on
        self.register_buffer("train_counts", torch.zeros(int(self.hparams.data_meta["n_items"]) + 1))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "train_item_counts"):
            self.fit_counts(dm.train_item_counts())

    def fit_counts(self, counts) -> None:
        c = torch.as_tensor(counts, dtype=torch.float32)
        self.train_counts.copy_(c.to(self.train_counts.device))

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        self._aux = {}
        return torch.log1p(self.train_counts[batch["item_id"]])

    def score_candidates(self, batch: Dict[str, torch.Tensor], item_ids: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.train_counts[item_ids])

    def training_step(self, batch, batch_idx):
        return None  # nothing to learn
