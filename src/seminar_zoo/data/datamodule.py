"""LifelongSequenceDataModule: the one DataModule every model trains and evaluates on.

Sequences are never materialised per sample. The module keeps, for all users, the
positive behaviours (label 1) as flat arrays sorted by (user, ts) plus per-user
offsets; a sample (:class:`~seminar_zoo.data.samples.SampleSet`) stores only where its
history ends (the first behaviour with ``ts >= sample ts``: history is strictly earlier,
no leakage), and a batch's ``max_len`` most recent behaviours are gathered with one
vectorised numpy gather.

Code outside ``data/`` (models, serving, experiments) uses the public API, not the splits:
:meth:`~LifelongSequenceDataModule.batch` / :meth:`~LifelongSequenceDataModule.eval_lists`
(rows as a batch), :meth:`~LifelongSequenceDataModule.sample_batches` (a seeded sample of rows),
:meth:`~LifelongSequenceDataModule.train_target_items`, ``split_sizes``, ``rows_per_sample``,
``eval_candidates`` / ``eval_users`` / ``eval_histories``, ``positive_log``, ``train_item_counts``,
``interacted_items``, ``feature_tables``, ``protocol``.

Protocols (DESIGN.md, "Evaluation protocol"):

* ``ranking`` (default): per user, the last behaviour is the test target, the one
  before the validation target, the ``train_window`` before that are training
  targets (``None`` = all). Each training target is paired with
  ``train_negatives`` items drawn uniformly among those the user never interacted
  with (a pure function of ``seed``, epoch and row); each evaluation target is
  ranked against ``n_eval_negatives`` seeded items drawn uniformly without
  replacement among those the user never interacted with (``negatives.py``).
  The group id of a ranking list is the sample index.
* ``full``: as ``ranking``, but each evaluation target is ranked against every item
  the user never interacted with; an evaluation batch carries the users' interacted
  items as CSR (``seen_ptr`` [B+1], ``seen_item``) and the model scores all items.
* ``ctr``: labelled impressions; per user the last request is test, the one before
  validation, the ``train_window`` requests before that training. Groups are the
  dataset's ``request_id``.

A batch is a dict of tensors: ``item_id``, ``query_id``, ``label``, ``user_id``,
``request_id`` with shape [B]; ``hist_item_id``, ``hist_query_id``, ``hist_mask``,
``hist_ts`` (the behaviours' ``ts``, 0 on padding; HSTU's time bias) with shape
[B, L], L = min(max_len, the longest history in the batch), chronological and right-aligned (the most recent
behaviour is at index -1; padding, id 0, on the left). Attributes and text/image
embeddings are looked up by id from :meth:`feature_tables`, held by the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Literal, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from .negatives import Interacted
from .schema import DatasetError, Tables, read_meta, validate_dataset
from .samples import SampleSet
from .sequences import EpochShardSampler, SequenceStore, _collate, _first_occurrence


class LifelongSequenceDataModule(pl.LightningDataModule):
    """Shared DataModule. See the module docstring for protocols and the batch format.

    Args:
        path: a prepared dataset folder (``seminar-zoo prepare ...``).
        protocol: ``ranking`` (leave-one-out vs sampled negatives), ``full`` (leave-one-out vs
            every unseen item) or ``ctr``.
        max_len: number of most recent behaviours in each history.
        train_window: training targets per user (the most recent before val); None (default) = every
            position, the way SASRec and RecBole train (README "Training recipe").
        batch_size: training targets per batch; a batch holds each with its ``train_negatives``
            negatives, right after it (``batch_size * (1 + train_negatives)`` rows). For a sequence
            model trained on all positions (SASRec/HSTU ``all_positions``) each row is a history window
            with a target at every position, up to ``max_len`` targets per row.
        n_eval_negatives: sampled negatives per ranking evaluation target.
        train_negatives: sampled negatives per ranking training target (0: positives only, for
            models trained with a full softmax over the catalogue).
        seed: seeds the sampled negatives and the shuffle.
        repeat_targets: ``keep`` or ``drop`` (ranking/full) val/test targets that already occur
            in the user's earlier history (repeat consumption; see README "Evaluation protocol").
        train_stride: under ranking/full, keep every ``train_stride``-th training target, counting
            back from the last; with ``train_stride = max_len`` and a sequence model trained on all
            positions (SASRec/HSTU ``all_positions``), each position is a target exactly once (the
            history windows tile the log), which is SASRec's recipe and ~max_len x cheaper;
            ``"max_len"`` = the DataModule's ``max_len``.
        full_val: under ``full``, rank the validation targets against every unseen item too;
            by default they use the ``n_eval_negatives`` sampled candidates of ``ranking`` (the
            same lists), which keeps per-epoch model selection cheap.
    """

    def __init__(self, path: str = "runs/data/synthetic", protocol: Literal["ranking", "full", "ctr"] = "ranking",
                 max_len: int = 200, train_window: Optional[int] = None, batch_size: int = 256,
                 eval_batch_size: int = 1000, num_workers: int = 0, n_eval_negatives: int = 99,
                 train_negatives: int = 1, seed: int = 0, repeat_targets: Literal["keep", "drop"] = "keep",
                 full_val: bool = False, train_stride: Union[int, Literal["max_len"]] = 1):
        super().__init__()
        if protocol not in ("ranking", "full", "ctr"):
            raise DatasetError(f"--data.protocol must be 'ranking', 'full' or 'ctr', got {protocol!r}")
        if repeat_targets not in ("keep", "drop"):
            raise DatasetError(f"--data.repeat_targets must be 'keep' or 'drop', got {repeat_targets!r}")
        if max_len < 1:
            raise DatasetError(f"--data.max_len must be >= 1, got {max_len}")
        if train_stride != "max_len" and (not isinstance(train_stride, int) or train_stride < 1):
            raise DatasetError(f"--data.train_stride must be an integer >= 1 or 'max_len', got {train_stride!r}")
        # logger=False: the model's own ``max_len`` would clash when Lightning merges hparams;
        # the full CLI config (data included) is logged by the CLI instead.
        self.save_hyperparameters(logger=False)
        self.path = Path(path)
        self.meta = read_meta(self.path)
        if {"full": "ranking"}.get(protocol, protocol) not in self.meta.get("protocols", ["ranking", "ctr"]):
            raise DatasetError(f"{self.path / 'meta.json'}: dataset does not support protocol {protocol!r} "
                               f"(protocols: {self.meta.get('protocols')})")
        self.tables: Optional[Tables] = None
        self.store: Optional[SequenceStore] = None
        self.splits: Dict[str, SampleSet] = {}
        self.interacted: Optional[Interacted] = None
        self._train_counts: Optional[np.ndarray] = None
        self.summary: Dict[str, dict] = {}

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
            ev = self.tables.events
            self.store = SequenceStore(ev, int(self.meta["n_users"]))
            self.interacted = Interacted(ev["user_id"], ev["item_id"], int(self.meta["n_users"]), self.tables.n_items)
        return self.tables

    # ---- public API for models (Popularity) and reports
    @property
    def protocol(self) -> str:
        return self.hparams.protocol

    def train_item_counts(self) -> np.ndarray:
        """[n_items + 1] positive behaviours per item in the training part of the log
        (ranking/full: before each user's validation target; ctr: requests before val)."""
        self.setup()
        return self._train_counts

    def split_sizes(self) -> Dict[str, int]:
        """Evaluation lists (samples) per split."""
        self.setup()
        return {k: int(v.n_samples) for k, v in self.splits.items()}

    def interacted_items(self, user_ids) -> tuple:
        """(ptr, items): CSR of the distinct items each of ``user_ids`` interacted with (any label)."""
        self._load()
        return self.interacted.of(np.asarray(user_ids, np.int64))

    def train_target_items(self) -> np.ndarray:
        """Item ids of the positive training targets (one per target; SEMINAR's cold items are the others)."""
        tr = self._split("train")
        return tr.item[tr.label > 0.5]

    def rows_per_sample(self, split: str) -> int:
        """Rows of a sample in ``split``: 1 + its sampled negatives (train) or its candidates (evaluation)."""
        return int(self._split(split).per_sample)

    def batch(self, split: str, rows) -> Dict[str, torch.Tensor]:
        """Rows of ``split`` as one batch (the module docstring's format); row j is candidate
        ``j % rows_per_sample`` of sample ``j // rows_per_sample`` (training rows: epoch 0's negatives)."""
        return self._split(split).__getitems__(rows)

    def eval_lists(self, split: str, n: int) -> Dict[str, torch.Tensor]:
        """The first ``n`` ranking lists of ``split`` (each target with its candidates) as one batch."""
        ds = self._split(split)
        return ds.__getitems__(list(range(min(n * ds.per_sample, len(ds)))))

    def sample_batches(self, split: str = "train", seed: int = 0, batch_size: int = 64) -> Iterator[Dict[str, torch.Tensor]]:
        """Batches of ``split``'s rows in a seeded random order (the same on every process), e.g. a sample of
        training histories to fit codebooks on; stop iterating when you have enough."""
        ds = self._split(split)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
        for s in range(0, len(order), batch_size):
            yield ds.__getitems__(order[s:s + batch_size].tolist())

    def eval_candidates(self, split: str) -> Optional[np.ndarray]:
        """[S, C] candidates of each ranking list of ``split`` (column 0 = the target); None under the full
        protocol (every unseen item) and ctr (labelled rows)."""
        return self._split(split).candidates

    def eval_users(self, split: str) -> np.ndarray:
        """[S] the user of each sample of ``split``."""
        return self._split(split).user

    def eval_histories(self, split: str, max_len: Optional[int] = None):
        """(items, queries, mask) [S, L] of each sample's history in ``split`` (the ``max_len`` most recent,
        default the DataModule's, right-aligned), as numpy arrays."""
        ds = self._split(split)
        return self.store.gather(ds.user, ds.end, max_len or self.hparams.max_len)[:3]

    def positive_log(self):
        """(user, item, offsets): every positive behaviour sorted by (user, time), user u's behaviours at
        ``offsets[u]:offsets[u + 1]`` (the flat arrays histories are gathered from)."""
        self._load()
        return self.store.user, self.store.item, self.store.offsets

    def _split(self, name: str) -> SampleSet:
        self.setup()
        return self.splits[name]

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        t = self._load()
        ev, st, hp = t.events, self.store, self.hparams
        n_items = t.n_items
        if hp.protocol in ("ranking", "full"):
            self.splits = self._ranking_splits(st, n_items)
        else:
            self.splits = self._ctr_splits(ev, st)
        for name, ds in self.splits.items():
            hl = ds.history_lengths()
            extra = "".join(f", {v}" for v in self.summary.get(name, {}).get("notes", []))
            rank_zero_info(f"[data] {name}: {ds.n_samples} samples ({len(ds)} rows), history length "
                           f"avg {hl.mean() if len(hl) else 0:.1f} max {hl.max() if len(hl) else 0} "
                           f"(max_len {hp.max_len}){extra}")

    def _ranking_splits(self, st: SequenceStore, n_items: int) -> Dict[str, SampleSet]:
        hp = self.hparams
        n_users = len(st.offsets) - 2
        users = np.arange(1, n_users + 1)
        cnt = st.offsets[users + 1] - st.offsets[users]
        out = {}
        first = _first_occurrence(st.user * np.int64(n_items + 1) + st.item)
        for name, back in (("test", 1), ("val", 2)):
            ok = cnt >= back + 1  # needs at least one earlier behaviour
            u = users[ok]
            g = st.offsets[u] + cnt[ok] - back
            rep = first[g] < g  # the target item already occurs earlier in the user's log
            notes = [f"{int((~ok).sum())} users dropped (fewer than {back + 1} behaviours)",
                     f"{rep.mean() if len(rep) else 0:.1%} of targets already in the user's history "
                     f"({'dropped' if hp.repeat_targets == 'drop' else 'kept'}, --data.repeat_targets)"]
            self.summary[name] = {"dropped_users": int((~ok).sum()), "repeat_share": float(rep.mean()) if len(rep) else 0.0,
                                  "notes": notes}
            if hp.repeat_targets == "drop":
                u, g = u[~rep], g[~rep]
            out[name] = (u, g)
        # training targets: the train_window behaviours before the validation target, never position 0
        last = cnt - 2
        first = np.maximum(1, last - hp.train_window) if hp.train_window is not None else np.ones_like(last)
        # every train_stride-th position counting back from the last one (stride 1: all of them)
        k = hp.max_len if hp.train_stride == "max_len" else hp.train_stride
        n_tr = np.maximum(-(-(last - first) // k), 0)
        u_tr = np.repeat(users, n_tr)
        j = np.arange(n_tr.sum()) - np.repeat(np.cumsum(n_tr) - n_tr, n_tr)  # 0, 1, .. per user
        g_tr = np.repeat(st.offsets[users] + last - 1 - (n_tr - 1) * k, n_tr) + j * k  # ascending
        out["train"] = (u_tr, g_tr)
        before_val = np.arange(len(st.item)) - st.offsets[st.user] < np.repeat(cnt - 2, cnt)
        self._train_counts = np.bincount(st.item[before_val], minlength=n_items + 1)
        sets = {}
        for k, (name, (u, g)) in enumerate(sorted(out.items())):
            full = hp.protocol == "full" and (name == "test" or (name == "val" and hp.full_val))
            end = st.history_end(u, st.ts[g])
            cands = None
            if name != "train" and not full:
                cands = self._eval_candidates(u, st.item[g], salt=k + 1)
            sets[name] = SampleSet(st, hp.max_len, u, end, st.item[g], st.query[g], np.ones(len(u)),
                                   np.arange(len(u), dtype=np.int64), cands,
                                   n_train_neg=hp.train_negatives if name == "train" else 0,
                                   n_items=n_items, seed=hp.seed, interacted=self.interacted,
                                   full=full and name != "train")
        return sets

    def _eval_candidates(self, user, target, salt: int) -> np.ndarray:
        """[S, 1 + n_eval_negatives]: the target, then distinct items drawn uniformly without
        replacement among those the user never interacted with (seeded by ``seed`` and split)."""
        n_neg, it = self.hparams.n_eval_negatives, self.interacted
        short = np.flatnonzero(it.n_unseen[user] < n_neg)
        if len(short):
            u = int(user[short[0]])
            raise DatasetError(f"{self.path}: user {u} has interacted with too many items to sample "
                               f"{n_neg} unseen negatives out of {it.n_items}; lower --data.n_eval_negatives")
        neg = it.sample(user, n_neg, np.random.default_rng([self.hparams.seed, salt]))
        return np.concatenate([target[:, None], neg], 1)

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
        pos = ev["label"] == 1
        self._train_counts = np.bincount(ev["item_id"][pos & (from_end >= 2)], minlength=int(self.meta["n_items"]) + 1)
        sets = {}
        for name, m in sel.items():
            if name != "train":
                dropped = np.unique(u[sel[name] & ~has_hist])
                self.summary[name] = {"dropped_users": len(dropped),
                                      "notes": [f"{len(dropped)} users dropped (no earlier positive behaviour)"]}
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
        group = ds.per_sample if train and ds.candidates is None else 1
        sampler = EpochShardSampler(ds, world, rank, shuffle=train, seed=self.hparams.seed,
                                    encode_epoch=train and ds.n_train_neg > 0, group=group)
        # training: batch_size targets, each with its sampled negatives (whole groups, in order)
        bs = self.hparams.batch_size * group if train else self.hparams.eval_batch_size
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
