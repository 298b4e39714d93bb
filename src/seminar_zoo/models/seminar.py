"""SEMINAR: Search Enhanced Multi-modal Interest Network and Approximate Retrieval (arXiv 2407.10714).

Two stages (Sec. 3), one command (``seminar-zoo experiment --config experiments/seminar.yaml``):

1. **Pretraining** (:class:`~seminar_zoo.models.psu.PSU`, in :meth:`SEMINAR.before_fit`): unless
   ``psu_ckpt`` is given, a PSU with this model's ``embed_dim`` / ``num_heads`` / ``lambda_q`` is
   trained for ``pretrain["epochs"]`` epochs on the same DataModule and saved as
   ``RUN/psu/psu.ckpt``; ``pretrain`` holds the PSU's other settings (loss weights, ...).
   ``pretrain: {epochs: 0}`` skips it (the "no pretraining" ablation: random initialisation).
2. **Finetuning** (this RecModel): the PSU's item / query encoders, modality weights gamma and
   multi-head target attention are restored (``restore_psu``); then

   * pair vectors: per-modality vectors of (query, item) pairs, the query weighted lambda_q and
     item modality j (1 - lambda_q) softmax(gamma)_j (RecModel's ``lambda_q``; see
     :class:`~seminar_zoo.modules.pair.PairEncoder`: **without queries in the data, with
     ``use_queries: false`` or with lambda_q = 0, the query part is dropped and lambda has no
     effect**), each projected by its G(j) in R^{d x d} (identity-initialised) and summed;
   * GSU (``use_gsu``): the restored target attention's head-averaged logit scores all L
     behaviours (:meth:`gsu_scores`; per-modality form :meth:`gsu_vectors`), :meth:`gsu_topk`
     keeps the top ``topk`` valid ones (exact, or ``retrieval: pq``, see below);
     ``use_gsu: false`` takes the last ``topk`` behaviours instead (the ablation);
   * ESU: multi-head target attention over the K (initialised from the PSU's attention); with
     ``gsu_bias`` the selected behaviours' GSU scores are added to its logits, which is how the GSU
     (its W_q, W_k and G(j)) gets gradients through the non-differentiable top-K;
   * tower: [target pair vector, ESU output, their product] (RecModel's tower). The data contract
     has no user features, so none are concatenated.

   ``freeze_psu`` freezes what was restored (encoders, gamma, the GSU's attention); G(j), the ESU
   and the tower still train.

``retrieval: pq`` selects the top-K at test / predict time with the multi-modal product quantizer
of ``modules/quantization.py`` (faiss fast-scan on CPU), see ``models/seminar_pq.py``: codebooks fitted
on training histories or loaded from the checkpoint, one index per distinct history. Training and
validation always use the exact scores (the keys move while training), and the ESU bias uses the
exact scores of the K selected behaviours.

Test extras (``metrics.json`` via ``extra_test_metrics``): ``test/auc_cold_targets`` /
``test/auc_warm_targets`` (AUC over test lists whose positive item never / sometimes was a
training target, computed from the DataModule's train split), ``test/n_cold_targets``,
``test/modality_weight/<m>`` (mean share of modality m in the GSU score of the true targets,
weighted by the GSU attention, see :meth:`GSU.modality_shares`), ``test/gamma/<m>`` (softmax(gamma)),
``test/gsu/recall@K`` and ``test/gsu/ms_per_request`` (exact and pq; see ``models/seminar_pq.py``).

Simplified: one attention layer per unit; the GSU score is the head-averaged logit (the
reference concatenates heads); dropout 0.1 instead of the reference's 0.5 on our small data.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Literal, Optional

import torch
from pytorch_lightning.utilities import rank_zero_info

from ..modules.pair import PairEncoder
from ..modules.seminar_parts import GSU, ColdTargetAUC, MultiHeadTargetAttention, gather_rows, masked_topk
from .base import RecModel
from .seminar_pq import GSURetrieval

PRETRAIN_DEFAULTS: Dict[str, Any] = {"epochs": 2}


def _psu_kwargs() -> set:
    from .psu import PSU

    return set(inspect.signature(PSU.__init__).parameters) - {"self", "data_meta", "embed_dim", "num_heads"}


class SEMINAR(GSURetrieval, RecModel):
    """See the module docstring.

    Args:
        psu_ckpt: a PSU checkpoint to restore (skips pretraining in ``experiment``), e.g. the
            ``RUN/psu/psu.ckpt`` an earlier experiment saved. A finetuned SEMINAR checkpoint records
            it; ``SEMINAR.load_from_checkpoint(path, psu_ckpt=None)`` loads one without the PSU file.
        freeze_psu: freeze the restored encoders, gamma and GSU attention.
        retrieval: ``exact`` or ``pq`` GSU scoring.
        lambda_q, use_queries: RecModel's (the query's share of the pair vector; queries on/off).
        use_gsu: GSU top-K over the whole history (False: the last ``topk`` behaviours).
        topk: behaviours the ESU attends to.
        gsu_bias: add the GSU scores of the selected behaviours to the ESU logits.
        pretrain: PSU settings: ``epochs`` (0 = no pretraining) and any PSU argument
            (``w_align``, ``w_next``, ``w_relevance``, ``temperature``, ``lr``, ``positions``, ...);
            ``limit_train_batches`` caps the PSU's batches per epoch.
        pq: MultiModalPQ settings for ``retrieval: pq`` (n_sub, n_centroids, fit_rows, ...).
    """

    def __init__(self, psu_ckpt: Optional[str] = None, freeze_psu: bool = False,
                 retrieval: Literal["exact", "pq"] = "exact", use_gsu: bool = True,
                 topk: int = 50, gsu_bias: bool = True, pretrain: Optional[Dict[str, Any]] = None,
                 pq: Optional[Dict[str, Any]] = None, **kwargs):
        super().__init__(**kwargs)
        hp = self.hparams
        if retrieval not in ("exact", "pq"):
            raise ValueError(f"retrieval must be 'exact' or 'pq', got {retrieval!r}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.pretrain_cfg = self._check_pretrain(pretrain)
        d = hp.embed_dim
        if self.pair is None:  # no queries: SEMINAR still fuses the item modalities (weight 1)
            self.pair = PairEncoder(self.item_encoder.modalities, False, hp.lambda_q)
        self.gsu = GSU(self.pair.names, d, hp.num_heads, hp.dropout)
        self.esu = MultiHeadTargetAttention(d, hp.num_heads, hp.dropout)
        self.pq_index = None
        if retrieval == "pq":
            self.pq_index = self._make_pq(pq or {})
        self.cold_auc = ColdTargetAUC()
        self._cold_items: Optional[torch.Tensor] = None
        self._shares: list = []
        self._reset_gsu_stats()
        self._collect = False
        self.build_tower()
        if psu_ckpt:
            self.restore_psu(psu_ckpt)
        self._freeze_unused()

    def _freeze_unused(self) -> None:
        """Parameters that can never get a gradient are frozen (so DDP never waits for them):
        the query encoder when the pair has no query part, the GSU attention's W_v / out (the GSU
        scores with W_q, W_k only), and W_q / W_k too unless ``gsu_bias`` feeds the GSU scores on."""
        off = [self.gsu.attn.v, self.gsu.attn.out]
        if not (self.hparams.use_gsu and self.hparams.gsu_bias):
            off += [self.gsu.attn.q, self.gsu.attn.k]
        if not self.pair.use_query:
            off.append(self.query_encoder)
        for mod in off:
            for prm in mod.parameters():
                prm.requires_grad_(False)

    # ---------------------------------------------------------------- configuration
    @staticmethod
    def _check_pretrain(pretrain: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        cfg = {**PRETRAIN_DEFAULTS, **(pretrain or {})}
        allowed = _psu_kwargs() | {"epochs", "limit_train_batches"}
        bad = sorted(set(cfg) - allowed)
        if bad:
            raise ValueError(f"unknown pretrain settings {bad}; allowed: {sorted(allowed)}")
        if int(cfg["epochs"]) < 0:
            raise ValueError(f"pretrain.epochs must be >= 0, got {cfg['epochs']}")
        return cfg

    # ---------------------------------------------------------------- PSU restore
    def restore_psu(self, path: str) -> None:
        """Copy encoders, gamma and the target attention from a PSU checkpoint (GSU and ESU)."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"psu_ckpt {p} does not exist")
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
        state = ckpt.get("state_dict", ckpt)
        php = ckpt.get("hyper_parameters", {})
        for k in ("embed_dim", "num_heads"):
            if k in php and php[k] != self.hparams[k]:
                raise ValueError(f"psu_ckpt {p}: {k}={php[k]} but SEMINAR has {k}={self.hparams[k]}")
        mapping = {"item_encoder.": [self.item_encoder], "query_encoder.": [self.query_encoder],
                   "pair.": [self.pair], "attn.": [self.gsu.attn, self.esu]}
        for prefix, targets in mapping.items():
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise ValueError(f"psu_ckpt {p}: no '{prefix}*' weights; is it a PSU checkpoint?")
            for t in targets:
                own = t.state_dict()
                for k, v in sub.items():
                    if k in own and own[k].shape != v.shape:
                        raise ValueError(f"psu_ckpt {p}: {prefix}{k} has shape {tuple(v.shape)}, "
                                         f"this model expects {tuple(own[k].shape)} (different dataset?)")
                t.load_state_dict(sub, strict=True)
        if self.hparams.freeze_psu:
            for m in (self.item_encoder, self.query_encoder, self.pair, self.gsu.attn):
                for prm in m.parameters():
                    prm.requires_grad_(False)

    def before_fit(self, ctx) -> None:
        """`seminar-zoo experiment`: pretrain the PSU (unless ``psu_ckpt``), save it, restore it. Says at
        start-up which settings each stage uses, and logs one line per epoch of both stages (:class:`EpochLog`)."""
        from .psu import PSU, EpochLog

        cfg = dict(self.pretrain_cfg)
        epochs = int(cfg.pop("epochs"))
        limit = cfg.pop("limit_train_batches", None)
        hp, t = self.hparams, ctx.trainer
        cfg.setdefault("lambda_q", hp.lambda_q)
        cfg.setdefault("dropout", hp.dropout)
        cfg.setdefault("max_len", hp.max_len)
        cfg.setdefault("lr", hp.lr)
        skip = f"skipped (psu_ckpt {hp.psu_ckpt})" if hp.psu_ckpt else "skipped (pretrain.epochs 0)" if not epochs else None
        psu_line = skip or (f"{epochs} epochs (pretrain.epochs; trainer.max_epochs does not apply), lr {cfg['lr']}, "
                            f"limit_train_batches {limit if limit is not None else t.limit_train_batches} "
                            f"(pretrain.limit_train_batches, else trainer's), "
                            f"losses w_align/w_next/w_relevance {cfg.get('w_align', 1.0)}/{cfg.get('w_next', 1.0)}/"
                            f"{cfg.get('w_relevance', 1.0)}")
        rank_zero_info(f"[seminar] stage 1 (psu pretraining): {psu_line}; stage 2 (finetune): {t.max_epochs} epochs "
                       f"(trainer.max_epochs), lr {hp.lr}, limit_train_batches {t.limit_train_batches}, "
                       f"retrieval {hp.retrieval} at test time")
        if not any(isinstance(c, EpochLog) for c in t.callbacks):
            t.callbacks.append(EpochLog("finetune"))
        if skip:
            return
        psu = PSU(data_meta=hp.data_meta, embed_dim=hp.embed_dim, num_heads=hp.num_heads, **cfg)
        over = dict(max_epochs=epochs, enable_checkpointing=False, callbacks=[EpochLog("psu")])
        if limit is not None:
            over["limit_train_batches"] = limit
        trainer = ctx.make_trainer("psu", **over)
        trainer.fit(psu, ctx.datamodule)
        path = Path(ctx.run_dir) / "psu" / "psu.ckpt"
        trainer.save_checkpoint(str(path))
        if trainer.strategy.world_size > 1:
            trainer.strategy.barrier("psu_saved")
        self.hparams.psu_ckpt = str(path)
        self.restore_psu(str(path))

    # ---------------------------------------------------------------- representations
    def modal(self, item_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        """Weighted per-modality pair vectors [..., M, d] (before G)."""
        return self.pair(self.item_encoder, self.query_encoder, item_ids, query_ids)

    def pair_vector(self, item_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        """G-projected fused pair vectors [..., d] (= gsu.pair(modal(...)), computed per distinct id)."""
        return self.pair.fused(self.item_encoder, self.query_encoder, item_ids, query_ids, self.gsu.proj)

    def target_vector(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pair_vector(batch["item_id"], batch["query_id"])

    # ---------------------------------------------------------------- GSU API
    def gsu_vectors(self, target_modal: torch.Tensor, hist_modal: torch.Tensor):
        """(target [B, M, d], history [B, L, M, d]): gamma/lambda-weighted, G(j)-projected and
        attention-projected per-modality vectors; gsu_scores = sum over both M axes of their dot products."""
        return self.gsu.vectors(target_modal, hist_modal)

    def gsu_scores(self, target_modal: torch.Tensor, hist_modal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] exact GSU scores (padding -> -inf)."""
        return self.gsu.scores(target_modal, hist_modal, mask)

    def gsu_topk(self, target_modal: torch.Tensor, hist_modal: torch.Tensor, mask: torch.Tensor,
                 k: Optional[int] = None):
        """(idx [B, K], selected mask [B, K], scores [B, L]) of the top-K behaviours by the GSU score
        (approximate PQ scores while ``retrieval: pq`` is active, i.e. at test / predict time)."""
        k = k or self.hparams.topk
        if self._pq_active:
            t, kv = self.gsu_vectors(target_modal, hist_modal)
            s = self._pq_scores(t, kv, mask)
        else:
            s = self.gsu_scores(target_modal, hist_modal, mask)
        idx, sel = masked_topk(s, mask, k)
        return idx, sel, s

    # ---------------------------------------------------------------- forward
    def interest(self, batch: Dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        h, q, m = self.history(batch)
        # rows of one request share their history: encode each distinct history once
        L = h.shape[1]
        uniq, inv = torch.unique(torch.cat([h, q], 1), dim=0, return_inverse=True)
        hu, qu = uniq[:, :L], uniq[:, L:]
        hist_pair_u = self.pair_vector(hu, qu)  # [U, L, d]
        hist_pair = hist_pair_u[inv]
        K = min(self.hparams.topk, L)
        bias = None
        if self.hparams.use_gsu:
            idx, sel, bias = self.gsu_select(batch, target, hu, qu, inv, m, self.gsu.attn.k(hist_pair_u), K)
            keys = gather_rows(hist_pair, idx)
        else:
            keys, sel = hist_pair[:, -K:], m[:, -K:]
        if self._collect and self.hparams.use_gsu:
            self._collect_shares(batch, target, hu, qu, inv, m)
        return self.esu(target, keys, sel, bias=bias)

    # ---------------------------------------------------------------- test extras
    def _collect_shares(self, batch, target, hu, qu, inv, m) -> None:
        pos = batch["label"] > 0.5
        if not bool(pos.any()):
            return
        with torch.no_grad():
            sh = self.gsu.modality_shares(target[pos], self.modal(hu[inv[pos]], qu[inv[pos]]), m[pos])
        self._shares.append(sh.float().cpu())

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "splits"):
            self._cold_items = self.cold_items_from(dm)

    @staticmethod
    def cold_items_from(dm) -> torch.Tensor:
        """Bool [n_items + 1]: items that are never a positive training target of ``dm``."""
        dm.setup()
        tr = dm.splits["train"]
        pos_items = tr.item[tr.label > 0.5]
        n = int(dm.data_meta["n_items"])
        cold = torch.ones(n + 1, dtype=torch.bool)
        cold[torch.as_tensor(pos_items, dtype=torch.long)] = False
        cold[0] = False
        return cold

    def on_test_epoch_start(self) -> None:
        self._pq_start()
        self.cold_auc.reset()
        self._shares = []
        self._reset_gsu_stats()
        self._collect = True

    def test_step(self, batch, batch_idx):
        loss = super().test_step(batch, batch_idx)
        self.cold_auc.update(self._last_logits, batch["label"], batch["request_id"], batch["item_id"])
        return loss

    def forward(self, batch):
        logits = super().forward(batch)
        self._last_logits = logits.detach()
        return logits

    def on_predict_epoch_start(self) -> None:
        self._pq_start()

    def on_predict_epoch_end(self) -> None:
        self._pq_on = False

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._collect = False
        extra: Dict[str, float] = {}
        if self._cold_items is not None:
            per_row = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("protocol") == "ctr"
            res = self.cold_auc.compute_split(self._cold_items, per_row=per_row)
            if res:
                extra.update({"test/auc_cold_targets": res["cold"], "test/auc_warm_targets": res["warm"],
                              "test/n_cold_targets": res["n_cold"], "test/n_warm_targets": res["n_warm"]})
        names = self.pair.active
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.hparams.use_gsu:  # every process reduces, even one that saw no positive row
            sh = torch.cat(self._shares).sum(0) if self._shares else torch.zeros(len(names))
            n = torch.tensor(float(sum(x.shape[0] for x in self._shares)))
            both = torch.cat([sh.double(), n.double().view(1)])
            if dist:
                both = both.to(self.device)
                torch.distributed.all_reduce(both)
            if float(both[-1]) > 0:
                for i, name in enumerate(names):
                    extra[f"test/modality_weight/{name}"] = float(both[i] / both[-1])
        if self.hparams.use_gsu:
            extra.update(self.gsu_test_metrics())
        for name, w in zip(self.pair.item_modalities, self.pair.item_weights().tolist()):
            extra[f"test/gamma/{name}"] = w
        self.extra_test_metrics.update(extra)
        self.cold_auc.reset()
        self._shares, self._pq_on = [], False
        self._reset_gsu_stats()
