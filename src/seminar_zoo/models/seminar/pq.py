"""SEMINAR's approximate GSU: codebooks of the multi-modal product quantizer (arXiv 2407.10714, Sec. 3.4).

:class:`PQRetrieval` is mixed into :class:`~seminar_zoo.models.seminar.model.SEMINAR`. With ``retrieval: pq``
the model owns a :class:`~seminar_zoo.modules.quantization.MultiModalPQ` (``pq_index``); training and
validation select with the exact GSU scores (the keys move while training), test and predict with the
quantizer (:meth:`use_pq`, switched by :class:`~seminar_zoo.models.seminar.extras.SeminarTestExtras`):
faiss fast-scan (``n_centroids <= 16``) or 8-bit IndexPQ on CPU with ``backend: auto``, the torch gather
elsewhere. The search itself is :meth:`GSU.select <seminar_zoo.models.seminar.gsu.GSU.select>`.

Codebooks: fitted on GSU keys of a seeded sample of training histories (:meth:`fit_pq`) when the loaded
weights have none; ``experiment`` writes them into the best checkpoint (:meth:`codebook_state`), so
``seminar-zoo test --ckpt_path BEST`` reuses them. A checkpoint of an exact model (or one with codebooks of
another size) loads into a ``retrieval: pq`` model without a warning: the missing or mismatched quantizer
state is refitted at test start.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch
from pytorch_lightning.utilities import rank_zero_info

from ...modules.quantization import MultiModalPQ
from .config import PQConfig


class PQRetrieval:
    """Owns the quantizer of ``retrieval: pq`` (module docstring)."""

    pq_index: Optional[MultiModalPQ]

    def _make_pq(self, cfg: PQConfig) -> MultiModalPQ:
        self.pq_fit_rows = int(cfg.fit_rows)
        return MultiModalPQ(n_modalities=len(self.pair.active), dim=self.hparams.embed_dim, **cfg.quantizer_kwargs())

    @property
    def pq_active(self) -> bool:
        """True while the GSU selects by PQ (test / predict of a ``retrieval: pq`` model)."""
        return self.pq_index is not None and self._pq_on

    def use_pq(self, on: bool = True) -> None:
        """Select the GSU's top-K with the quantizer (``on``) or exactly; fits the codebooks first if needed."""
        if on and self.pq_index is None:
            raise RuntimeError("use_pq: this model was built with retrieval: exact")
        if on and not bool(self.pq_index.is_fitted):
            raise RuntimeError("retrieval: pq: the quantizer has no codebooks yet; call fit_pq(datamodule)")
        self._pq_on = bool(on)

    @torch.no_grad()
    def fit_pq(self, dm, seed: int = 0) -> None:
        """Fit the codebooks on GSU key vectors of a seeded sample of training histories (the same sample on
        every process, so all processes fit the same codebooks)."""
        if self.pq_index is None:
            raise RuntimeError("fit_pq: this model was built with retrieval: exact")
        t0 = time.perf_counter()
        if self.item_encoder.item_attr.abs().sum() == 0 and hasattr(dm, "feature_tables"):
            self.load_tables(dm.feature_tables())
        was = self.training
        self.eval()
        vecs, n = [], 0
        for batch in dm.sample_batches("train", seed=seed, batch_size=64):
            h, q, m = (x.to(self.device) for x in self.history(batch))
            kv = self.gsu.attn.k(self.gsu.proj(self.modal(h, q)))[m]  # [n, M, d] real behaviours only
            vecs.append(kv.float().cpu())
            n += kv.shape[0]
            if n >= self.pq_fit_rows:
                break
        self.pq_index.fit(torch.cat(vecs)[: self.pq_fit_rows].to(self.device))
        self.train(was)
        rank_zero_info(f"[seminar] retrieval: pq: fitted {self.pq_index.extra_repr()} on {min(n, self.pq_fit_rows)} "
                       f"training behaviours in {time.perf_counter() - t0:.1f} s")

    def codebook_state(self) -> Dict[str, torch.Tensor]:
        """The quantizer's state as checkpoint ``state_dict`` entries (empty for ``retrieval: exact``)."""
        if self.pq_index is None:
            return {}
        return {f"pq_index.{k}": v.cpu() for k, v in self.pq_index.state_dict().items()}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Reconcile the checkpoint's quantizer state with this model's: drop it for ``retrieval: exact``; fill
        in this model's unfitted state when it is missing or of another size (refitted at test start)."""
        state = checkpoint.get("state_dict", {})
        keys = [k for k in state if k.startswith("pq_index.")]
        if self.pq_index is None:
            for k in keys:
                del state[k]
            return
        own = {f"pq_index.{k}": v for k, v in self.pq_index.state_dict().items()}
        if any(k not in state or state[k].shape != v.shape for k, v in own.items()):
            if keys:
                rank_zero_info("[seminar] the checkpoint's PQ codebooks have another size; refitting at test start")
            for k in keys:
                del state[k]
            state.update({k: v.clone() for k, v in own.items()})
            state["pq_index.is_fitted"] = torch.tensor(False)
