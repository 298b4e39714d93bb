"""Flat per-user behaviour arrays, deterministic hashing and the epoch-aware sampler.

Used by :mod:`seminar_zoo.data.datamodule` (see its docstring for the batch format).
"""
from __future__ import annotations

from typing import Dict, Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler

_KEY = np.int64(1) << 34  # ts < 2^34 s (year 2514); user * _KEY + ts stays in int64


def _mix(*xs: np.ndarray) -> np.ndarray:
    """Deterministic 64-bit hash (splitmix64 finaliser) of integer arrays."""
    h = np.zeros(np.broadcast(*xs).shape, np.uint64)
    with np.errstate(over="ignore"):
        for x in xs:
            h ^= np.asarray(x).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2))
            h ^= h >> np.uint64(30)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(27)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return h


def _first_occurrence(key: np.ndarray) -> np.ndarray:
    """For each position, the index of the first position holding the same key."""
    order = np.argsort(key, kind="stable")
    sk = key[order]
    start = np.ones(len(sk), bool)
    start[1:] = sk[1:] != sk[:-1]
    out = np.empty(len(key), np.int64)
    out[order] = order[start][np.cumsum(start) - 1]
    return out


class SequenceStore:
    """Per-user positive behaviours as flat arrays plus offsets."""

    def __init__(self, ev: Dict[str, np.ndarray], n_users: int):
        pos = ev["label"] == 1
        self.user = ev["user_id"][pos]
        self.ts = ev["ts"][pos]
        self.item = ev["item_id"][pos]
        self.query = ev["query_id"][pos]
        self.key = self.user * _KEY + self.ts  # sorted (validated)
        counts = np.bincount(self.user, minlength=n_users + 1)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # user u: [offsets[u], offsets[u+1])

    def history_end(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Global index one past the last behaviour of ``user`` strictly before ``ts``."""
        return np.searchsorted(self.key, user * _KEY + ts, side="left")

    def _windows(self, max_len: int):
        # [n + 1, max_len] strided views over the arrays left-padded with max_len zeros:
        # row e holds behaviours e - max_len .. e - 1, so a batch gather is one fancy-index copy.
        if getattr(self, "_win_len", None) != max_len:
            pad = np.zeros(max_len, np.int64)
            self._pad_item = np.concatenate([pad, self.item])
            self._pad_query = np.concatenate([pad, self.query])
            self._pad_ts = np.concatenate([pad, self.ts.astype(np.int64)])
            view = np.lib.stride_tricks.sliding_window_view
            self._win = (view(self._pad_item, max_len), view(self._pad_query, max_len), view(self._pad_ts, max_len))
            self._win_len = max_len
        return self._win

    def gather(self, user: np.ndarray, end: np.ndarray, max_len: int):
        """Right-aligned [B, L] histories (item ids, query ids, mask, timestamps; 0 on padding),
        L = min(max_len, longest history in the batch)."""
        n_hist = np.minimum(end - self.offsets[user], max_len)
        width = int(n_hist.max()) if len(n_hist) else 1
        width = max(width, 1)
        w_item, w_query, w_ts = self._windows(max_len)
        rows = end  # window row e ends just before global index e
        mask = np.arange(max_len - width, max_len)[None, :] >= (max_len - n_hist)[:, None]
        item = w_item[rows, max_len - width:] * mask
        query = w_query[rows, max_len - width:] * mask
        ts = w_ts[rows, max_len - width:] * mask
        return item, query, mask, ts

    def __getstate__(self):
        # the padded copies are rebuilt lazily in each worker instead of being pickled
        return {k: v for k, v in self.__dict__.items() if k not in ("_win", "_pad_item", "_pad_query", "_pad_ts", "_win_len")}


def _collate(batch):
    return batch  # __getitems__ already returns a collated dict


class EpochShardSampler(DistributedSampler):
    """Shuffled (train) or contiguous, unpadded (eval) shards of the index space.

    Subclasses DistributedSampler so Lightning leaves it in place under DDP. Eval
    shards are not padded, so a 2-process test sees every sample exactly once and
    gives the same metrics as 1 process (torchmetrics gathers uneven states).

    ``group``: shuffle whole groups of ``group`` consecutive rows (a training target and its
    sampled negatives), so a batch of ``k * group`` rows holds complete groups, in order, which
    listwise losses (sampled softmax, BPR) need.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, encode_epoch: bool,
                 group: int = 1):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.encode_epoch, self.group = encode_epoch, max(1, int(group))
        n = len(dataset)
        if n % self.group:
            raise ValueError(f"{n} rows do not split into groups of {self.group}")
        if shuffle:
            self.num_samples = -(-n // self.group // num_replicas) * self.group
        else:
            lo, hi = n * rank // num_replicas, n * (rank + 1) // num_replicas
            self.num_samples = hi - lo
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g, k = torch.Generator().manual_seed(self.seed + self.epoch), self.group
            idx = torch.randperm(n // k, generator=g)
            pad = (self.total_size - n) // k
            if pad:
                idx = torch.cat([idx, idx[:pad]])
            idx = idx[self.rank::self.num_replicas]
            if k > 1:
                idx = (idx[:, None] * k + torch.arange(k)).reshape(-1)
        else:
            lo = n * self.rank // self.num_replicas
            idx = torch.arange(lo, lo + self.num_samples)
        if self.encode_epoch:
            idx = idx + self.epoch * n
        return iter(idx.tolist())
