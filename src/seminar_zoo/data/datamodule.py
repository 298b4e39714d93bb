"""LifelongSequenceDataModule: the one DataModule every model trains and evaluates on.

Sequences are never materialised per sample. The module keeps, for all users, the
positive behaviours (label 1) as flat arrays sorted by (user, ts) plus per-user
offsets; a sample stores only where its history ends (the first behaviour with
``ts >= sample ts``: history is strictly earlier, no leakage) and
``__getitems__`` gathers the ``max_len`` most recent behaviours for a whole batch
with one vectorised numpy gather.

Protocols (DESIGN.md, "Evaluation protocol"):

* ``ranking`` (default): per user, the last behaviour is the test target, the one
  before the validation target, the ``train_window`` before that are training
  targets (``None`` = all). Each training target is paired with
  ``train_negatives`` uniformly sampled items (seeded by ``seed``, epoch, index);
  each evaluation target is ranked against ``n_eval_negatives`` seeded items the
  user never interacted with. The group id of a ranking list is the sample index.
* ``ctr``: labelled impressions; per user the last request is test, the one before
  validation, the ``train_window`` requests before that training. Groups are the
  dataset's ``request_id``.

A batch is a dict of tensors: ``item_id``, ``query_id``, ``label``, ``user_id``,
``request_id`` with shape [B]; ``hist_item_id``, ``hist_query_id``, ``hist_mask``
with shape [B, L], L = min(max_len, the longest history in the batch),
chronological and right-aligned (the most recent
behaviour is at index -1; padding, id 0, on the left). Attributes and text/image
embeddings are looked up by id from :meth:`feature_tables`, held by the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Literal, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .schema import DatasetError, Tables, read_meta, validate_dataset

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
            view = np.lib.stride_tricks.sliding_window_view
            self._win = (view(self._pad_item, max_len), view(self._pad_query, max_len))
            self._win_len = max_len
        return self._win

    def gather(self, user: np.ndarray, end: np.ndarray, max_len: int):
        """Right-aligned [B, L] histories, L = min(max_len, longest history in the batch)."""
        n_hist = np.minimum(end - self.offsets[user], max_len)
        width = int(n_hist.max()) if len(n_hist) else 1
        width = max(width, 1)
        w_item, w_query = self._windows(max_len)
        rows = end  # window row e ends just before global index e
        mask = np.arange(max_len - width, max_len)[None, :] >= (max_len - n_hist)[:, None]
        item = w_item[rows, max_len - width:] * mask
        query = w_query[rows, max_len - width:] * mask
        return item, query, mask

    def __getstate__(self):
        # the padded copies are rebuilt lazily in each worker instead of being pickled
        return {k: v for k, v in self.__dict__.items() if k not in ("_win", "_pad_item", "_pad_query", "_win_len")}


class SampleSet(Dataset):
    """Samples of one split. Row j maps to sample ``j // per_sample`` and candidate ``j % per_sample``.

    For training with sampled negatives the index space also encodes the epoch
    (``epoch * len + j``, see :class:`EpochShardSampler`) so negatives are a pure
    function of (seed, epoch, row): resumed runs see exactly the same data.
    """

    def __init__(self, store: SequenceStore, max_len: int, user, end, item, query, label, group,
                 candidates: Optional[np.ndarray] = None, n_train_neg: int = 0, n_items: int = 0, seed: int = 0):
        self.store, self.max_len = store, max_len
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
            neg = (_mix(self.seed, epoch, rows) % np.uint64(self.n_items)).astype(np.int64) + 1
            item = np.where(c == 0, self.item[s], neg)
            label = (c == 0).astype(np.float32)
        else:
            item, label = self.item[s], self.label[s]
        h_item, h_query, mask = self.store.gather(self.user[s], self.end[s], self.max_len)
        return {
            "item_id": torch.from_numpy(item),
            "query_id": torch.from_numpy(self.query[s]),
            "label": torch.from_numpy(label),
            "user_id": torch.from_numpy(self.user[s]),
            "request_id": torch.from_numpy(self.group[s]),
            "hist_item_id": torch.from_numpy(h_item),
            "hist_query_id": torch.from_numpy(h_query),
            "hist_mask": torch.from_numpy(mask),
        }

    def history_lengths(self) -> np.ndarray:
        return np.minimum(self.end - self.store.offsets[self.user], self.max_len)


def _collate(batch):
    return batch  # __getitems__ already returns a collated dict


class EpochShardSampler(DistributedSampler):
    """Shuffled (train) or contiguous, unpadded (eval) shards of the index space.

    Subclasses DistributedSampler so Lightning leaves it in place under DDP. Eval
    shards are not padded, so a 2-process test sees every sample exactly once and
    gives the same metrics as 1 process (torchmetrics gathers uneven states).
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, encode_epoch: bool):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.encode_epoch = encode_epoch
        n = len(dataset)
        if shuffle:
            self.num_samples = -(-n // num_replicas)
        else:
            lo, hi = n * rank // num_replicas, n * (rank + 1) // num_replicas
            self.num_samples = hi - lo
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(n, generator=g)
            pad = self.total_size - n
            if pad:
                idx = torch.cat([idx, idx[:pad]])
            idx = idx[self.rank::self.num_replicas]
        else:
            lo = n * self.rank // self.num_replicas
            idx = torch.arange(lo, lo + self.num_samples)
        if self.encode_epoch:
            idx = idx + self.epoch * n
        return iter(idx.tolist())


class LifelongSequenceDataModule(pl.LightningDataModule):
    """Shared DataModule. See the module docstring for protocols and the batch format.

    Args:
        path: a prepared dataset folder (``seminar-zoo prepare ...``).
        protocol: ``ranking`` (leave-one-out vs sampled negatives) or ``ctr``.
        max_len: number of most recent behaviours in each history.
        train_window: training targets per user (the most recent before val); None = all.
        n_eval_negatives: sampled negatives per ranking evaluation target.
        train_negatives: sampled negatives per ranking training target.
        seed: seeds the sampled negatives and the shuffle.
    """

    def __init__(self, path: str = "runs/data/synthetic", protocol: Literal["ranking", "ctr"] = "ranking",
                 max_len: int = 200, train_window: Optional[int] = 20, batch_size: int = 256,
                 eval_batch_size: int = 1000, num_workers: int = 0, n_eval_negatives: int = 99,
                 train_negatives: int = 1, seed: int = 0):
        super().__init__()
        if protocol not in ("ranking", "ctr"):
            raise DatasetError(f"--data.protocol must be 'ranking' or 'ctr', got {protocol!r}")
        if max_len < 1:
            raise DatasetError(f"--data.max_len must be >= 1, got {max_len}")
        # logger=False: the model's own ``max_len`` would clash when Lightning merges hparams;
        # the full CLI config (data included) is logged by the CLI instead.
        self.save_hyperparameters(logger=False)
        self.path = Path(path)
        self.meta = read_meta(self.path)
        if protocol not in self.meta.get("protocols", ["ranking", "ctr"]):
            raise DatasetError(f"{self.path / 'meta.json'}: dataset does not support protocol {protocol!r} "
                               f"(protocols: {self.meta.get('protocols')})")
        self.tables: Optional[Tables] = None
        self.store: Optional[SequenceStore] = None
        self.splits: Dict[str, SampleSet] = {}

    # ---- what the model needs to build its embedding tables
    @property
    def data_meta(self) -> dict:
        m = self.meta
        return {
            "name": m.get("name", self.path.name),
            "n_items": int(m["n_items"]),
            "n_queries": int(m.get("n_queries", 0)),
            "n_users": int(m["n_users"]),
            "attr_cols": list(m.get("attr_cols", [])),
            "attr_cardinality": [int(m["attr_cardinality"][c]) for c in m.get("attr_cols", [])],
            "dims": {k: int(v) for k, v in m.get("dims", {}).items()},
            "modalities": list(m["modalities"]),
        }

    def feature_tables(self) -> Dict[str, Optional[torch.Tensor]]:
        t = self._load()
        conv = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
        return {"item_attr": conv(t.item_attr), "item_text": conv(t.item_text),
                "item_image": conv(t.item_image), "query_text": conv(t.query_text)}

    def _load(self) -> Tables:
        if self.tables is None:
            self.tables = validate_dataset(self.path)
            self.store = SequenceStore(self.tables.events, int(self.meta["n_users"]))
        return self.tables

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        t = self._load()
        ev, st, hp = t.events, self.store, self.hparams
        n_items = t.n_items
        if hp.protocol == "ranking":
            self.splits = self._ranking_splits(st, n_items)
        else:
            self.splits = self._ctr_splits(ev, st)
        for name, ds in self.splits.items():
            hl = ds.history_lengths()
            rank_zero_info(f"[data] {name}: {ds.n_samples} samples ({len(ds)} rows), history length "
                           f"avg {hl.mean():.1f} max {hl.max() if len(hl) else 0} (max_len {hp.max_len})")

    def _ranking_splits(self, st: SequenceStore, n_items: int) -> Dict[str, SampleSet]:
        hp = self.hparams
        n_users = len(st.offsets) - 2
        users = np.arange(1, n_users + 1)
        cnt = st.offsets[users + 1] - st.offsets[users]
        out = {}
        for name, back in (("test", 1), ("val", 2)):
            ok = cnt >= back + 1  # needs at least one earlier behaviour
            u = users[ok]
            g = st.offsets[u] + cnt[ok] - back
            out[name] = (u, g)
        # training targets: the train_window behaviours before the validation target, never position 0
        last = cnt - 2
        first = np.maximum(1, last - hp.train_window) if hp.train_window is not None else np.ones_like(last)
        n_tr = np.maximum(last - first, 0)
        u_tr = np.repeat(users, n_tr)
        g_tr = np.repeat(st.offsets[users] + first, n_tr) + (np.arange(n_tr.sum()) - np.repeat(np.cumsum(n_tr) - n_tr, n_tr))
        out["train"] = (u_tr, g_tr)
        sets = {}
        for k, (name, (u, g)) in enumerate(sorted(out.items())):
            end = st.history_end(u, st.ts[g])
            cands = None
            if name != "train":
                cands = self._eval_candidates(st, u, st.item[g], n_items, salt=k + 1)
            sets[name] = SampleSet(st, hp.max_len, u, end, st.item[g], st.query[g], np.ones(len(u)),
                                   np.arange(len(u), dtype=np.int64), cands,
                                   n_train_neg=hp.train_negatives if name == "train" else 0,
                                   n_items=n_items, seed=hp.seed)
        return sets

    def _eval_candidates(self, st: SequenceStore, user, target, n_items: int, salt: int) -> np.ndarray:
        """[S, 1 + n_eval_negatives]: the target, then distinct items the user never interacted with."""
        n_neg = self.hparams.n_eval_negatives
        rng = np.random.default_rng([self.hparams.seed, salt])
        seen = np.sort(st.user * (n_items + 1) + st.item)  # membership by binary search
        out = np.zeros((len(user), n_neg), np.int64)
        todo = np.arange(len(user))
        big = np.int64(n_items + 1)  # sentinel for rejected draws, sorts last
        for _ in range(20):
            if not len(todo):
                break
            m = min(4 * n_items, 3 * n_neg + 10)
            draw = rng.integers(1, n_items + 1, (len(todo), m))
            key = user[todo, None] * (n_items + 1) + draw
            pos = np.minimum(np.searchsorted(seen, key), len(seen) - 1)
            draw = np.where(seen[pos] == key, big, draw)
            draw.sort(axis=1)
            dup = np.zeros_like(draw, dtype=bool)
            dup[:, 1:] = draw[:, 1:] == draw[:, :-1]
            draw = np.where(dup, big, draw)
            draw.sort(axis=1)
            enough = draw[:, n_neg - 1] < big
            # sorted by id after de-duplication: shuffle so list order carries no signal
            sel = draw[enough, :n_neg]
            sel = np.take_along_axis(sel, np.argsort(rng.random(sel.shape), axis=1), 1)
            out[todo[enough]] = sel
            todo = todo[~enough]
        if len(todo):
            u = int(user[todo[0]])
            raise DatasetError(f"{self.path}: user {u} has interacted with too many items to sample "
                               f"{n_neg} unseen negatives out of {n_items}; lower --data.n_eval_negatives")
        return np.concatenate([target[:, None], out], 1)

    def _ctr_splits(self, ev: Dict[str, np.ndarray], st: SequenceStore) -> Dict[str, SampleSet]:
        hp = self.hparams
        u, req = ev["user_id"], ev["request_id"]
        # rank of each event's request from the end of the user's log (0 = last request)
        new_req = np.ones(len(u), bool)
        new_req[1:] = (u[1:] != u[:-1]) | (req[1:] != req[:-1])
        req_idx = np.cumsum(new_req) - 1
        user_first_req = np.zeros(len(u), np.int64)
        user_start = np.ones(len(u), bool)
        user_start[1:] = u[1:] != u[:-1]
        user_first_req = req_idx[np.flatnonzero(user_start)][np.cumsum(user_start) - 1]
        user_last_req = np.maximum.reduceat(req_idx, np.flatnonzero(user_start))[np.cumsum(user_start) - 1]
        from_end = user_last_req - req_idx
        n_req = user_last_req - user_first_req + 1
        end = st.history_end(u, ev["ts"])
        has_hist = end > st.offsets[u]
        sel = {
            "test": (from_end == 0) & (n_req >= 2),
            "val": (from_end == 1) & (n_req >= 3),
            "train": (from_end >= 2) & ((from_end < 2 + hp.train_window) if hp.train_window is not None else True),
        }
        sets = {}
        for name, m in sel.items():
            m = m & has_hist
            i = np.flatnonzero(m)
            sets[name] = SampleSet(st, hp.max_len, u[i], end[i], ev["item_id"][i], ev["query_id"][i],
                                   ev["label"][i], req[i], seed=hp.seed)
        return sets

    # ---- dataloaders
    def _loader(self, name: str, train: bool) -> DataLoader:
        if name not in self.splits:
            self.setup()
        ds = self.splits[name]
        if len(ds) == 0:
            raise DatasetError(f"{self.path}: the {name} split is empty (protocol {self.hparams.protocol}); "
                               "users need at least 3 behaviours")
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochShardSampler(ds, world, rank, shuffle=train, seed=self.hparams.seed,
                                    encode_epoch=train and ds.n_train_neg > 0)
        bs = self.hparams.batch_size if train else self.hparams.eval_batch_size
        nw = self.hparams.num_workers
        return DataLoader(ds, batch_size=bs, sampler=sampler, collate_fn=_collate, num_workers=nw,
                          persistent_workers=False, pin_memory=False)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)

    @property
    def stats(self) -> dict:
        self.setup()
        out = {}
        for name, ds in self.splits.items():
            hl = ds.history_lengths()
            out[name] = {"samples": int(ds.n_samples), "rows": int(len(ds)),
                         "avg_hist_len": float(hl.mean()) if len(hl) else 0.0, "max_hist_len": int(hl.max()) if len(hl) else 0}
        return out
