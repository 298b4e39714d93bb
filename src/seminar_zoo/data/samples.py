"""SampleSet: the samples of one split, as indices into the DataModule's flat behaviour arrays.

A sample stores only its user, where its history ends in :class:`~seminar_zoo.data.sequences.SequenceStore`
(the first behaviour with ``ts >= sample ts``: the history is strictly earlier), its target and group;
:meth:`SampleSet.__getitems__` gathers the ``max_len`` most recent behaviours of a whole batch with one
vectorised numpy gather. Code outside ``data/`` uses the DataModule's public API instead.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .negatives import Interacted
from .sequences import SequenceStore, _mix


class SampleSet(Dataset):
    """Samples of one split. Row j maps to sample ``j // per_sample`` and candidate ``j % per_sample``.

    For training with sampled negatives the index space also encodes the epoch
    (``epoch * len + j``, see :class:`EpochShardSampler`) so negatives are a pure
    function of (seed, epoch, row): resumed runs see exactly the same data.
    """

    def __init__(self, store: SequenceStore, max_len: int, user, end, item, query, label, group,
                 candidates: Optional[np.ndarray] = None, n_train_neg: int = 0, n_items: int = 0, seed: int = 0,
                 interacted: Optional[Interacted] = None, full: bool = False):
        self.store, self.max_len = store, max_len
        self.interacted, self.full = interacted, full
        self.user, self.end, self.item, self.query = user, end, item, query
        self.label, self.group = label.astype(np.float32), group
        self.candidates = candidates  # [S, C] for ranking evaluation, col 0 = target
        self.n_train_neg, self.n_items, self.seed = n_train_neg, n_items, seed
        if candidates is not None:
            self.per_sample = candidates.shape[1]
        else:
            self.per_sample = 1 + n_train_neg

    @property
    def n_samples(self) -> int:
        return len(self.user)

    def __len__(self) -> int:
        return self.n_samples * self.per_sample

    def __getitem__(self, j):
        return self.__getitems__([j])

    def __getitems__(self, rows) -> Dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        n = len(self)
        epoch, rows = rows // n, rows % n
        s, c = rows // self.per_sample, rows % self.per_sample
        if self.candidates is not None:
            item = self.candidates[s, c]
            label = (c == 0).astype(np.float32)
        elif self.n_train_neg:
            h = _mix(self.seed, epoch, rows)
            neg = (h % np.uint64(self.n_items)).astype(np.int64) + 1
            if self.interacted is not None:  # uniform over the user's unseen items, no rejection loop
                n_u = self.interacted.n_unseen[self.user[s]]
                rank = (h % np.maximum(n_u, 1).astype(np.uint64)).astype(np.int64)
                neg = np.where(n_u > 0, self.interacted.unseen(self.user[s], rank), neg)
            item = np.where(c == 0, self.item[s], neg)
            label = (c == 0).astype(np.float32)
        else:
            item, label = self.item[s], self.label[s]
        h_item, h_query, mask, h_ts = self.store.gather(self.user[s], self.end[s], self.max_len)
        out = {}
        if self.full:
            ptr, seen = self.interacted.of(self.user[s])
            out = {"seen_ptr": torch.from_numpy(ptr), "seen_item": torch.from_numpy(seen)}
        return {**out,
            "item_id": torch.from_numpy(item),
            "query_id": torch.from_numpy(self.query[s]),
            "label": torch.from_numpy(label),
            "user_id": torch.from_numpy(self.user[s]),
            "request_id": torch.from_numpy(self.group[s]),
            "hist_item_id": torch.from_numpy(h_item),
            "hist_query_id": torch.from_numpy(h_query),
            "hist_mask": torch.from_numpy(mask),
            "hist_ts": torch.from_numpy(h_ts),
        }

    def history_lengths(self) -> np.ndarray:
        return np.minimum(self.end - self.store.offsets[self.user], self.max_len)
