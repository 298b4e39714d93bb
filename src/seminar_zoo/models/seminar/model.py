"""SEMINAR: Search Enhanced Multi-modal Interest Network and Approximate Retrieval (arXiv 2407.10714).

Two stages (Sec. 3), run by :mod:`seminar_zoo.pipeline` (``seminar-zoo experiment --config
experiments/seminar.yaml``): PSU pretraining (:class:`~seminar_zoo.models.seminar.psu.PSU`, settings
``pretrain``: :class:`~seminar_zoo.models.seminar.config.PretrainConfig`; unless ``psu_ckpt`` is given),
then finetuning this RecModel, whose parts are:

* pair vectors (:class:`~seminar_zoo.modules.pair.PairEncoder`): per-modality vectors of (query, item)
  pairs, the query weighted lambda_q and item modality j (1 - lambda_q) softmax(gamma)_j (RecModel's
  ``lambda_q``; **without queries in the data, with ``use_queries: false`` or with lambda_q = 0, the query
  part is dropped and lambda has no effect**), each projected by its G(j) and summed;
* GSU (``use_gsu``; :class:`~seminar_zoo.models.seminar.gsu.GSU`): the restored target attention's
  head-averaged logit scores all L behaviours, :meth:`select` keeps the top ``topk`` valid ones, exactly
  or (``retrieval: pq`` at test / predict time, :mod:`~seminar_zoo.models.seminar.pq`) by product
  quantization; ``use_gsu: false`` takes the last ``topk`` behaviours instead (the ablation);
* ESU (:class:`~seminar_zoo.models.seminar.esu.ESU`): multi-head target attention over the K
  (initialised from the PSU's attention); with ``gsu_bias`` the selected behaviours' exact GSU scores are
  added to its logits, which is how the GSU (its W_q, W_k and G(j)) gets gradients through the
  non-differentiable top-K;
* tower: RecModel's, on [target pair vector, ESU output, their product]. The data contract has no user
  features, so none are concatenated.

``freeze_psu`` freezes what was restored (encoders, gamma, the GSU's attention); G(j), the ESU and the
tower still train. Test extras (cold-target AUC, modality shares, gamma, GSU recall and timings):
:mod:`~seminar_zoo.models.seminar.extras`.

``time_embedding`` (off by default: the paper's ESU has no time input) adds to each behaviour the ESU reads
a learned embedding of its log2-bucketed gap to the user's latest behaviour
(:class:`~seminar_zoo.modules.time_interval.TimeIntervalEmbedding`, as SIM's and ETA's ESU): an ablation
that asks how much of a time-aware baseline's lead is recency.

Simplified: one attention layer per unit; the GSU score is the head-averaged logit (the reference
concatenates heads); dropout 0.1 instead of the reference's 0.5 on our small data.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Literal, NamedTuple, Optional

import torch

from ...modules.ops import gather_rows
from ...modules.pair import PairEncoder
from ...modules.time_interval import TimeIntervalEmbedding
from ..base import RecModel
from .config import PQConfig, PretrainConfig, as_config
from .esu import ESU
from .extras import SeminarTestExtras
from .gsu import GSU, Selection
from .pq import PQRetrieval


class History(NamedTuple):
    """A batch's histories, each distinct one once: ``items`` / ``queries`` [U, L], row b has history
    ``inv[b]``; ``mask`` [B, L] per row; ``pair`` [U, L, d] the G-projected pair vectors."""

    items: torch.Tensor
    queries: torch.Tensor
    inv: torch.Tensor
    mask: torch.Tensor
    pair: torch.Tensor


class SEMINAR(PQRetrieval, RecModel):
    """See the module docstring.

    Args:
        psu_ckpt: a PSU checkpoint to restore (skips pretraining in ``experiment``), e.g. the
            ``RUN/psu/psu.ckpt`` an earlier experiment saved. A finetuned SEMINAR checkpoint records
            it; ``SEMINAR.load_from_checkpoint(path, psu_ckpt=None)`` loads one without the PSU file.
        freeze_psu: freeze the restored encoders, gamma and GSU attention.
        retrieval: ``exact`` or ``pq`` GSU selection at test / predict time.
        lambda_q, use_queries: RecModel's (the query's share of the pair vector; queries on/off).
        use_gsu: GSU top-K over the whole history (False: the last ``topk`` behaviours).
        topk: behaviours the ESU attends to.
        gsu_bias: add the GSU scores of the selected behaviours to the ESU logits.
        pretrain: the PSU stage (:class:`~seminar_zoo.models.seminar.config.PretrainConfig`).
        pq: the quantizer of ``retrieval: pq`` (:class:`~seminar_zoo.models.seminar.config.PQConfig`;
            None: its defaults).
        time_embedding: add a time-interval embedding to each behaviour in the ESU (not in the paper).
    """

    def __init__(self, psu_ckpt: Optional[str] = None, freeze_psu: bool = False,
                 retrieval: Literal["exact", "pq"] = "exact", use_gsu: bool = True,
                 topk: int = 50, gsu_bias: bool = True, pretrain: PretrainConfig = PretrainConfig(),
                 pq: Optional[PQConfig] = None, time_embedding: bool = False, **kwargs):
        super().__init__(**kwargs)
        hp = self.hparams
        if retrieval not in ("exact", "pq"):
            raise ValueError(f"retrieval must be 'exact' or 'pq', got {retrieval!r}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.pretrain_cfg = as_config(pretrain, PretrainConfig, "pretrain") or PretrainConfig()
        pq_cfg = as_config(pq, PQConfig, "pq")
        # checkpoints and hparams.yaml hold plain dicts
        hp["pretrain"] = dataclasses.asdict(self.pretrain_cfg)
        hp["pq"] = dataclasses.asdict(pq_cfg) if pq_cfg is not None else None
        d = hp.embed_dim
        if self.pair is None:  # no queries: SEMINAR still fuses the item modalities (weight 1)
            self.pair = PairEncoder(self.item_encoder.modalities, False, hp.lambda_q)
        self.gsu = GSU(self.pair.names, d, hp.num_heads, hp.dropout)
        self.esu = ESU(d, hp.num_heads, hp.dropout)
        self.pq_index = self._make_pq(pq_cfg or PQConfig()) if retrieval == "pq" else None
        self._pq_on = False
        self.gsu_probe = None  # a GSUProbe while testing (extras.SeminarTestExtras)
        self.run_name: Optional[str] = None  # the run's label in metrics.json (experiment --name)
        self.build_tower()
        # built only when asked, and last: every other initial value is the time-blind model's
        self.time_emb = TimeIntervalEmbedding(d) if time_embedding else None
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

    def configure_callbacks(self):
        return [SeminarTestExtras()]

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

    # ---------------------------------------------------------------- representations
    def modal(self, item_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        """Weighted per-modality pair vectors [..., M, d] (before G)."""
        return self.pair(self.item_encoder, self.query_encoder, item_ids, query_ids)

    def pair_vector(self, item_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        """G-projected fused pair vectors [..., d] (= gsu.pair(modal(...)), computed per distinct id)."""
        return self.pair.fused(self.item_encoder, self.query_encoder, item_ids, query_ids, self.gsu.proj)

    def target_vector(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pair_vector(batch["item_id"], batch["query_id"])

    def encode_history(self, batch: Dict[str, torch.Tensor]) -> History:
        """Rows of one request share their history: each distinct history is encoded once."""
        h, q, m = self.history(batch)
        L = h.shape[1]
        uniq, inv = torch.unique(torch.cat([h, q], 1), dim=0, return_inverse=True)
        hu, qu = uniq[:, :L], uniq[:, L:]
        return History(hu, qu, inv, m, self.pair_vector(hu, qu))

    # ---------------------------------------------------------------- GSU / ESU
    def select(self, batch: Dict[str, torch.Tensor], target: torch.Tensor, hist: Optional[History] = None,
               k: Optional[int] = None) -> Selection:
        """The GSU's top-K of each row (what :meth:`interest` attends to): exact, or by PQ while
        :attr:`pq_active`; ``target`` = :meth:`target_vector`."""
        hist = hist if hist is not None else self.encode_history(batch)
        k = min(k or self.hparams.topk, hist.mask.shape[1])
        pq_vectors = lambda: self.gsu.vectors(self.modal(batch["item_id"], batch["query_id"]),  # noqa: E731
                                              self.modal(hist.items, hist.queries))
        return self.gsu.select(target, self.gsu.keys(hist.pair), hist.mask, k, inv=hist.inv,
                               bias=self.hparams.gsu_bias, pq=self.pq_index if self.pq_active else None,
                               pq_vectors=pq_vectors, probe=self.gsu_probe is not None)

    def interest(self, batch: Dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        hist = self.encode_history(batch)
        hist_pair = hist.pair[hist.inv]
        L = hist_pair.shape[1]
        K = min(self.hparams.topk, L)
        if not self.hparams.use_gsu:
            keys = hist_pair[:, -K:]
            if self.time_emb is not None:  # gaps to the latest behaviour, which the last K end with
                keys = keys + self.time_emb(batch, K, who="SEMINAR")
            return self.esu(target, keys, hist.mask[:, -K:], bias=None)
        s = self.select(batch, target, hist, K)
        if self.gsu_probe is not None:
            self.gsu_probe.record(self, batch, target, hist, s)
        keys = gather_rows(hist_pair, s.idx)
        if self.time_emb is not None:
            keys = keys + self.time_emb(batch, L, s.idx, who="SEMINAR")
        return self.esu(target, keys, s.sel, bias=s.bias)
