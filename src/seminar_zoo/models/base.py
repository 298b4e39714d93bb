"""RecModel: the LightningModule every model subclasses.

It owns what must be identical across models for a fair comparison: the
multi-modal item / query encoders, the (query, item) pair fusion that feeds queries to
every model (``use_queries``, ``lambda_q``), the short-term branch (off by default), the
tower, the loss (binary cross-entropy, plus any auxiliary losses a model
registers), the optimiser and the metrics, logged as ``{stage}/auc``,
``{stage}/ndcg@10``, ... A subclass implements only :meth:`interest`: how it
turns (target, history) into a user-interest vector.
"""
from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..metrics import RecMetrics
from ..modules.attention import TargetAttention
from ..modules.encoders import ItemEncoder, QueryEncoder, UsesFeatureTables
from ..modules.ops import StepRNG, encode_unique
from ..modules.pair import PairEncoder, data_has_queries
from ..modules.tower import Tower


class RecModel(UsesFeatureTables, pl.LightningModule):
    """Shared step, loss, metrics and optimiser.

    Args:
        data_meta: dataset facts (ids, attribute cardinalities, embedding dims); the CLI
            links it from the DataModule, so configs never set it by hand.
        embed_dim: width of every modality vector.
        max_len: use only the most recent ``max_len`` behaviours (None = all the data gives).
        short_term_len: if > 0, add target attention over the last n behaviours to the tower input.
        tower_dims, dropout, lr, weight_decay: the tower and optimiser.
        use_queries: feed (query, item) pair vectors instead of item vectors, for the target and
            every behaviour (:meth:`target_vector`, :meth:`history_vectors`), as SEMINAR's
            reference code feeds its baselines. None = on when the dataset has queries.
        lambda_q: the query's exact share of a pair vector (items: 1 - lambda_q; see
            :class:`~seminar_zoo.modules.pair.PairEncoder`), SEMINAR's fusion weight.
        loss: training loss over a target and its ``train_negatives`` sampled negatives (README
            "Training recipe"): ``bce`` (binary cross-entropy per row; the only one under ctr; with
            one negative it is SASRec's loss, Kang & McAuley 2018 Eq. 12), ``softmax`` (sampled
            softmax: cross-entropy of the target against its negatives), ``bpr`` (Rendle et al.
            2009: -log sigmoid(target - negative), averaged over the negatives), ``full_softmax``
            (cross-entropy over the whole catalogue, RecBole's ``CE``; only models whose score is a
            dot product, SASRec and HSTU, which score every item in one matrix product).
        tower_input: what the tower reads, with t the target vector and u the interest vector:
            ``concat`` = [t, u] (FuxiCTR's DNN input), ``product`` = [t, u, t * u] (needs
            interest_dim == embed_dim), ``auto`` (default) = ``product`` when the widths match, else
            ``concat``. Recorded in metrics.json.
    """

    def __init__(self, data_meta: Optional[dict] = None, embed_dim: int = 32, max_len: Optional[int] = None,
                 short_term_len: int = 0, num_heads: int = 4, tower_dims: List[int] = [128, 64],
                 dropout: float = 0.1, lr: float = 1e-3, weight_decay: float = 0.0,
                 use_queries: Optional[bool] = None, lambda_q: float = 0.5,
                 loss: Literal["bce", "softmax", "bpr", "full_softmax"] = "bce",
                 tower_input: Literal["auto", "concat", "product"] = "auto"):
        super().__init__()
        if data_meta is None:
            raise ValueError("data_meta is required: build models through the CLI, or pass "
                             "LifelongSequenceDataModule(...).data_meta")
        if not 0.0 <= float(lambda_q) <= 1.0:
            raise ValueError(f"lambda_q must be in [0, 1], got {lambda_q}")
        if tower_input not in ("auto", "concat", "product"):
            raise ValueError(f"tower_input must be auto, concat or product; got {tower_input!r}")
        if loss not in ("bce", "softmax", "bpr", "full_softmax"):
            raise ValueError(f"loss must be one of bce, softmax, bpr, full_softmax; got {loss!r}")
        if loss == "full_softmax" and not hasattr(self, "all_item_logits"):
            raise ValueError(f"loss full_softmax needs a model that scores the whole catalogue in one product "
                             f"(SASRec, HSTU); {type(self).__name__} scores each (history, target) pair: use "
                             "softmax or bce with --data.train_negatives")
        has_q = data_has_queries(data_meta)
        if use_queries and not has_q:
            raise ValueError(f"use_queries=True but dataset {data_meta.get('name', '?')!r} has no queries "
                             f"(n_queries={data_meta.get('n_queries', 0)}, modalities={data_meta.get('modalities')}); "
                             "pass --model.init_args.use_queries false or leave it unset")
        self.save_hyperparameters()
        self.item_encoder = ItemEncoder(data_meta, embed_dim)
        self.query_encoder = QueryEncoder(data_meta, embed_dim)
        self.use_queries = has_q if use_queries is None else bool(use_queries)
        # no parameter is created without queries: state and initialisation stay as they were
        self.pair = PairEncoder(self.item_encoder.modalities, True, lambda_q) if self.use_queries else None
        self.short_term = TargetAttention(embed_dim, num_heads) if short_term_len > 0 else None
        self.val_metrics = RecMetrics()
        self.test_metrics = RecMetrics()
        self._aux: Dict[str, torch.Tensor] = {}
        self.extra_test_metrics: Dict[str, float] = {}
        self.step_rng = StepRNG()

    # ---- to be built by subclasses
    @property
    def interest_dim(self) -> int:
        return self.hparams.embed_dim

    def build_tower(self) -> None:
        """Call at the end of a subclass __init__, once ``interest_dim`` is known."""
        d = self.hparams.embed_dim
        mode = self.hparams.get("tower_input", "auto")
        if mode == "product" and self.interest_dim != d:
            raise ValueError(f"tower_input product needs interest_dim == embed_dim ({self.interest_dim} != {d}); "
                             "use concat or auto")
        self.tower_product = mode == "product" or (mode == "auto" and self.interest_dim == d)
        d_in = d + self.interest_dim + (d if self.tower_product else 0) + (d if self.short_term else 0)
        self.tower = Tower(d_in, self.hparams.tower_dims, self.hparams.dropout)

    def interest(self, batch: Dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- shared pieces
    def history(self, batch: Dict[str, torch.Tensor]):
        """(hist_item_id, hist_query_id, hist_mask) cut to the model's ``max_len``."""
        n = self.hparams.max_len
        h, q, m = batch["hist_item_id"], batch["hist_query_id"], batch["hist_mask"]
        if n is not None and n < h.shape[1]:
            h, q, m = h[:, -n:], q[:, -n:], m[:, -n:]
        return h, q, m

    def target_vector(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, d]: the (target query, target item) pair vector, or the item vector without queries."""
        if self.pair is None:
            return self.item_encoder.fused(batch["item_id"])
        return self.pair.fused(self.item_encoder, self.query_encoder, batch["item_id"], batch["query_id"])

    def history_vectors(self, h_item: torch.Tensor, h_query: torch.Tensor, unique: bool = False,
                        return_parts: bool = False):
        """Behaviour vectors [..., d]: fused (query, item) pairs, or item vectors without queries.

        ``unique``: encode each distinct behaviour (item, or (item, query) pair) once and index
        back (same values; cheaper on long histories); ``return_parts`` (implies unique) also
        returns (vectors per distinct behaviour [U, d], inverse index shaped like ``h_item``), as
        :func:`~seminar_zoo.modules.attention.encode_unique`.
        """
        if self.pair is None:
            if not (unique or return_parts):
                return self.item_encoder.fused(h_item)
            return encode_unique(self.item_encoder.fused, h_item, return_parts)
        if not (unique or return_parts):  # PairEncoder.fused already encodes per distinct id
            return self.pair.fused(self.item_encoder, self.query_encoder, h_item, h_query)
        nq = self.query_encoder.id_emb.num_embeddings
        return encode_unique(lambda k: self.pair.fused(self.item_encoder, self.query_encoder, k // nq, k % nq),
                             h_item * nq + h_query, return_parts)

    def add_aux_loss(self, name: str, value: torch.Tensor) -> None:
        """Register an auxiliary loss (already weighted) for this step; logged as ``train/{name}``."""
        self._aux[name] = value

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """CTR logits [B]."""
        self._aux = {}
        t = self.target_vector(batch)
        u = self.interest(batch, t)
        feats = [t, u] + ([t * u] if self.tower_product else [])
        if self.short_term is not None:
            h, q, m = self.history(batch)
            n = self.hparams.short_term_len
            feats.append(self.short_term(t, self.history_vectors(h[:, -n:], q[:, -n:]), m[:, -n:]))
        return self.tower(torch.cat(feats, -1))

    def _shared_step(self, batch: Dict[str, torch.Tensor], stage: str):
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        full = stage != "train" and "seen_ptr" in batch
        if full:  # full ranking: before the plain forward, so a model's per-forward state ends on [B] rows
            self._full_rank_update(batch, metrics)
        if stage == "train" and self.hparams.loss == "full_softmax":
            return self._full_softmax_step(batch)
        logits = self(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
        bs = batch["label"].shape[0]
        if stage == "train":
            self.log("train/bce", loss, prog_bar=False, batch_size=bs)
            if self.hparams.loss != "bce":
                loss = self.listwise_loss(logits, batch["label"])
                self.log(f"train/{self.hparams.loss}", loss, batch_size=bs)
            total = loss + sum(self._aux.values()) if self._aux else loss
            for k, v in self._aux.items():
                self.log(f"train/{k}", v, batch_size=bs)
            self.log("train/loss", total, prog_bar=True, batch_size=bs)
            return total
        if not full:  # raw logits: sigmoid saturates to 1.0 in float32 and would create false ties
            metrics.update(logits, batch["label"], batch["request_id"], batch["user_id"])
        self.log(f"{stage}/loss", loss, batch_size=bs, sync_dist=True)
        return {"loss": loss, "logits": logits.detach()}  # callbacks' on_*_batch_end read the logits

    def listwise_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Sampled softmax or BPR over groups [target, its negatives]: the DataModule puts each
        training target right before its ``train_negatives`` negatives (whole groups per batch)."""
        n_pos = int(label.sum().item())
        per = label.numel() // max(n_pos, 1)
        grid, lab = logits.view(-1, per), label.view(-1, per)
        if n_pos * per != label.numel() or per < 2 or not bool((lab[:, 0] == 1).all() and (lab[:, 1:] == 0).all()):
            raise ValueError(f"loss {self.hparams.loss} needs each positive followed by its sampled negatives "
                             "(ranking/full protocol with --data.train_negatives >= 1)")
        if self.hparams.loss == "softmax":
            return F.cross_entropy(grid, torch.zeros(len(grid), dtype=torch.long, device=grid.device))
        return -F.logsigmoid(grid[:, :1] - grid[:, 1:]).mean()

    def _full_softmax_step(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of each positive row's target over every item (padding id 0 excluded)."""
        pos = batch["label"] > 0.5
        rows = {k: v[pos] for k, v in batch.items() if torch.is_tensor(v) and v.shape[:1] == pos.shape}
        self._aux = {}
        logits = self.all_item_logits(rows)  # [P, n_items + 1]
        logits[:, 0] = float("-inf")
        loss = F.cross_entropy(logits, rows["item_id"])
        total = loss + sum(self._aux.values()) if self._aux else loss
        self.log("train/full_softmax", loss, batch_size=len(rows["item_id"]))
        self.log("train/loss", total, prog_bar=True, batch_size=len(rows["item_id"]))
        return total

    # history cells (users x candidates x history length) per forward call of full ranking
    full_rank_cells: int = 1 << 21

    def score_candidates(self, batch: Dict[str, torch.Tensor], item_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of each request (its history and query) for candidate items [B, C].

        Default: repeat each row C times with ``item_id`` replaced and call :meth:`forward`;
        candidate rows carry label 0 (they are unlabelled). Models may override it with
        something faster (Popularity does)."""
        b, c = item_ids.shape
        rows = {k: v.repeat_interleave(c, 0) for k, v in batch.items()
                if torch.is_tensor(v) and not k.startswith("seen_") and v.shape[:1] == (b,)}
        rows["item_id"] = item_ids.reshape(-1)
        rows["label"] = torch.zeros(b * c, dtype=batch["label"].dtype, device=item_ids.device)
        return self(rows).view(b, c)

    @torch.no_grad()
    def _full_rank_update(self, batch: Dict[str, torch.Tensor], metrics: RecMetrics) -> None:
        """Full ranking (README "Evaluation protocol"): per user, count the items it never
        interacted with that score above / equal to its target, chunk by chunk, so neither
        [users x items x L] nor [users x items] scores are kept."""
        ptr, seen = batch["seen_ptr"], batch["seen_item"]
        b, n = ptr.numel() - 1, int(self.hparams.data_meta["n_items"])
        interacted = torch.zeros(b, n + 1, dtype=torch.bool, device=seen.device)
        interacted[:, 0] = True  # padding id
        interacted[torch.repeat_interleave(torch.arange(b, device=seen.device), ptr.diff()), seen] = True
        pos = self.score_candidates(batch, batch["item_id"][:, None])[:, 0]
        above = torch.zeros(b, dtype=torch.long, device=pos.device)
        equal = torch.zeros_like(above)
        step = max(1, min(n, self.full_rank_cells // max(1, b * batch["hist_item_id"].shape[1])))
        chunks = range(1, n + 1, step)
        bar = self._trainer is not None and self.trainer.is_global_zero and \
            self.trainer.progress_bar_callback is not None and len(chunks) > 1
        if bar:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="full ranking", leave=False, unit="chunk")
        for lo in chunks:
            ids = torch.arange(lo, min(lo + step, n + 1), device=pos.device)
            s = self.score_candidates(batch, ids.expand(b, -1))
            free = ~interacted[:, lo:lo + ids.numel()]
            above += ((s > pos[:, None]) & free).sum(1)
            equal += ((s == pos[:, None]) & free).sum(1)
        metrics.update_counts(above, equal, (~interacted).sum(1))

    def training_step(self, batch, batch_idx):
        with self.step_rng.active():
            return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        logit = self(batch)
        return {"logit": logit, "score": torch.sigmoid(logit.double()), "user_id": batch["user_id"],
                "request_id": batch["request_id"], "item_id": batch["item_id"], "label": batch["label"]}

    def _log_epoch(self, stage: str, metrics: RecMetrics) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        metrics.protocol = getattr(dm, "protocol", "ranking")
        vals = metrics.compute()
        n_lists = int(vals.pop("n_lists"))
        if stage == "test":
            self.n_test_scored = n_lists  # lists actually scored (all processes), for metrics.json
        head = "auc" if metrics.protocol == "ctr" else "ndcg@10"  # the one metric on the progress bar
        self.log_dict({f"{stage}/{k}": v for k, v in vals.items() if k != head}, prog_bar=False)
        if head in vals:
            self.log(f"{stage}/{head}", vals[head], prog_bar=True)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # dropout (and any other draw of the step) depends only on (seed, global_step): a fit resumed from a
        # checkpoint continues exactly as the uninterrupted one would. The stream is the model's own
        # (:class:`~seminar_zoo.modules.ops.StepRNG`): the caller's global RNG is neither reseeded nor advanced.
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.step_rng.seed(base * 1_000_003 + self.global_step, self.device)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
